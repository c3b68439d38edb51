"""What every synthesizer does to text before it speaks: a persona's word replacements, the
sentences it is cut into, and whether there is anything to say at all.

Shared by the engines (and by the test fixtures that stand in for them), so that every voice
treats the same text the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# A sentence ends at ., ! or ? (or an ellipsis) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|\s*\n\s*")


def apply_replacements(text: str, replacements: Iterable[tuple[str, str]]) -> str:
    """`text` with each whole-word occurrence of a replacement's first element, in any case,
    replaced by its second, in the order given."""
    for old, new in replacements:
        if not old:
            continue
        # Lookarounds rather than \b: a key that starts or ends with a symbol ("C++") still
        # matches as a whole word.
        pattern = re.compile(rf"(?<!\w){re.escape(old)}(?!\w)", re.IGNORECASE)
        text = pattern.sub(_literal(new), text)
    return text


def _literal(words: str) -> Callable[[re.Match[str]], str]:
    # A function, not a template: the new words are taken as written, backslashes and all.
    return lambda _: words


def speakable(text: str) -> bool:
    """Whether `text` has anything to say: a letter or a digit. Text without one (empty, white
    space, punctuation) is spoken as nothing: a synthesizer yields no chunks for it."""
    return any(character.isalnum() for character in text)


def sentences(text: str) -> list[str]:
    """The speakable sentences of `text`, in order, stripped."""
    return [part.strip() for part in _SENTENCE_END.split(text) if speakable(part)]


def bcp47(tag: str) -> str:
    """A language tag as BCP-47 writes it ("en-us" or "en_US" -> "en-US", "cmn" -> "cmn")."""
    subtags = re.split(r"[-_]", tag.strip())
    written = [subtags[0].lower()]
    for index, subtag in enumerate(subtags[1:], start=1):
        if any(len(earlier) == 1 for earlier in subtags[1:index]):
            written.append(subtag.lower())  # inside an extension or private use ("-x-rp")
        elif len(subtag) == 2 or (len(subtag) == 3 and subtag.isdigit()):
            written.append(subtag.upper())  # a region
        elif len(subtag) == 4 and subtag.isalpha():
            written.append(subtag.title())  # a script
        else:
            written.append(subtag.lower())
    return "-".join(written)
