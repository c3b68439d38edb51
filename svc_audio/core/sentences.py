"""Speaking while the model writes: a streaming reply cut into sentences, made speakable, and a
persona's tone turned into a speech style.

`SentenceCutter` hands out each sentence as soon as its end has arrived, so synthesis of the
first sentence starts while the model is still writing the second. A sentence ends at
". ! ? ; :" followed by white space (closing quotes, brackets and emphasis marks may come
between), or at a newline; not after the common abbreviations of `ABBREVIATIONS`, not at a
decimal point ("3.14": no space follows), and nowhere inside a fenced code block (the block
stays in one piece, for `speakable` to replace). The first sentence alone is also cut at a
comma once it has `first_max_words` words, so the first audio starts sooner.

`speakable` turns markdown into what a voice should say; `style_of` maps tone words to a
`SpeechStyle` (the table is `TONES`).
"""

from __future__ import annotations

import re

from svc_audio.model import SpeechStyle

_ENDS = frozenset(".!?;:")
# What may stand between a sentence's final punctuation and the space after it.
_CLOSERS = frozenset("\"')]}*_\u201d\u2019")
ABBREVIATIONS = frozenset({"e.g.", "i.e.", "mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc."})
FENCE = "```"
CODE_NOTE = "I've put the code in the text."


class SentenceCutter:
    """Cuts one streaming reply into sentences (see the module's docstring)."""

    def __init__(self, first_max_words: int = 8) -> None:
        self.first_max_words = first_max_words
        self._buffer = ""
        self._pos = 0  # where scanning resumes in the buffer
        self._in_fence = False
        self._first = True

    def push(self, token_text: str) -> list[str]:
        """The sentences that `token_text` completes, in order, stripped."""
        self._buffer += token_text
        sentences: list[str] = []
        while (end := self._next_end()) is not None:
            sentence, self._buffer, self._pos = self._buffer[:end].strip(), self._buffer[end:], 0
            if sentence:
                sentences.append(sentence)
                self._first = False
        return sentences

    def flush(self) -> list[str]:
        """The rest of the reply (an unfinished sentence or code block); the cutter starts over."""
        rest = self._buffer.strip()
        self._buffer, self._pos, self._in_fence, self._first = "", 0, False, True
        return [rest] if rest else []

    def _next_end(self) -> int | None:
        # Scans from `_pos`; returns where the next sentence ends (exclusive), or None when
        # more text is needed to decide. `_pos` only moves past what is decided for good.
        text = self._buffer
        i = self._pos
        while i < len(text):
            char = text[i]
            if char == "`":
                run = len(text) - i - len(text[i:].lstrip("`"))
                if i + run == len(text):
                    break  # the run of backticks may go on in the next token
                if run >= len(FENCE):
                    self._in_fence = not self._in_fence
                i += run
                self._pos = i
                continue
            if self._in_fence:
                i += 1
                self._pos = i
                continue
            if char == "\n":
                return i + 1
            if char in _ENDS or (char == "," and self._first):
                after = i + 1
                while after < len(text) and text[after] in _CLOSERS:
                    after += 1
                if after == len(text):
                    break  # what follows decides
                if text[after].isspace() and self._ends_here(text, i):
                    return after
            i += 1
            self._pos = i
        return None

    def _ends_here(self, text: str, i: int) -> bool:
        if text[i] == ",":
            return len(text[:i].split()) >= self.first_max_words
        if text[i] == ".":
            words = text[: i + 1].split()
            return not words or words[-1].lower().lstrip("(\"'") not in ABBREVIATIONS
        return True


_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_LINE_MARKS = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]?|[-*+][ \t]+|\d+[.)][ \t]+)", re.MULTILINE)
_INLINE_CODE = re.compile(r"`([^`]*)`")
_EMPHASIS = (
    re.compile(r"(\*\*|__)(.+?)\1", re.DOTALL),
    re.compile(r"~~(.+?)~~", re.DOTALL),
    re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", re.DOTALL),
    # Underscores inside words (snake_case) are no emphasis.
    re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)", re.DOTALL),
)
_HEADING_RULE = re.compile(r"^[ \t]*(?:[-*_][ \t]*){3,}$", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")


def speakable(text: str) -> str:
    """`text` as a voice should say it: fenced code blocks replaced by a note that the code is
    in the text, markdown marks dropped (headings, bullets, quotes, emphasis, inline code's
    backticks; links and images by their text), white space collapsed. "" when nothing is
    left to say (no letter or digit)."""
    text = _FENCED.sub(f" {CODE_NOTE} ", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _HEADING_RULE.sub(" ", text)
    text = _LINE_MARKS.sub("", text)
    text = _INLINE_CODE.sub(r"\1", text)
    for pattern in _EMPHASIS:
        text = pattern.sub(lambda match: match.group(match.lastindex or 0), text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text if any(char.isalnum() for char in text) else ""


# Contractions a formal tone spells out (both apostrophes: models write either).
_CONTRACTIONS = (
    ("don't", "do not"),
    ("doesn't", "does not"),
    ("didn't", "did not"),
    ("can't", "cannot"),
    ("won't", "will not"),
    ("isn't", "is not"),
    ("aren't", "are not"),
    ("wasn't", "was not"),
    ("weren't", "were not"),
    ("haven't", "have not"),
    ("hasn't", "has not"),
    ("hadn't", "had not"),
    ("wouldn't", "would not"),
    ("shouldn't", "should not"),
    ("couldn't", "could not"),
    ("I'm", "I am"),
    ("you're", "you are"),
    ("we're", "we are"),
    ("they're", "they are"),
    ("it's", "it is"),
    ("that's", "that is"),
    ("there's", "there is"),
    ("I've", "I have"),
    ("you've", "you have"),
    ("we've", "we have"),
    ("I'll", "I will"),
    ("you'll", "you will"),
    ("we'll", "we will"),
    ("let's", "let us"),
)
FORMAL_REPLACEMENTS = tuple(
    (form.replace("'", quote), spelled) for quote in ("'", "\u2019") for form, spelled in _CONTRACTIONS
)

# Tone word -> (rate factor, pitch shift in semitones, replacements). Several words combine:
# rates multiply, semitones add (a semitone is a frequency ratio, so adding them multiplies
# pitch ratios), replacements concatenate; each word counts once, unknown words are ignored,
# and the result is held to RATE_LIMITS and PITCH_LIMITS so a pile of words stays natural.
TONES: dict[str, tuple[float, float, tuple[tuple[str, str], ...]]] = {
    "calm": (0.9, -1.0, ()),
    "warm": (0.9, -1.0, ()),
    "gentle": (0.9, -1.0, ()),
    "energetic": (1.1, 2.0, ()),
    "enthusiastic": (1.1, 2.0, ()),
    "concise": (1.05, 0.0, ()),
    "brief": (1.05, 0.0, ()),
    "formal": (1.0, 0.0, FORMAL_REPLACEMENTS),
}
RATE_LIMITS = (0.7, 1.4)
PITCH_LIMITS = (-4.0, 4.0)


def style_of(tone: str) -> SpeechStyle:
    """The speech style of a persona's tone words ("warm, concise"; see `TONES`)."""
    rate, pitch = 1.0, 0.0
    replacements: list[tuple[str, str]] = []
    seen: set[str] = set()
    for word in (part.strip().lower() for part in tone.split(",")):
        if word not in TONES or word in seen:
            continue
        seen.add(word)
        word_rate, word_pitch, word_replacements = TONES[word]
        rate *= word_rate
        pitch += word_pitch
        replacements.extend(word_replacements)
    return SpeechStyle(
        rate=min(max(rate, RATE_LIMITS[0]), RATE_LIMITS[1]),
        pitch_semitones=min(max(pitch, PITCH_LIMITS[0]), PITCH_LIMITS[1]),
        replacements=tuple(replacements),
    )
