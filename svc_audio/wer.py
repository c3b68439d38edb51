"""Word error rate: how far a transcript is from what was said, for speech quality metrics.

Both texts are first reduced to comparable words by `normalise`, so that a recogniser is not
charged for case, punctuation or quotes, only for words it got wrong, added or missed. Numbers
are compared as written (``42`` and ``forty-two`` differ): the texts spoken in our checks keep
to one spelling.
"""

from __future__ import annotations

import re

# A word is letters and digits, joined by inner apostrophes (don't, o'clock) or, between
# digits, by a decimal point or a thousands separator (3.5, 1,000). Everything else, hyphens
# included, separates words.
_WORD = re.compile(r"[^\W_]+(?:(?:'|(?<=\d)[.,](?=\d))[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalise(text: str) -> list[str]:
    """The words of ``text`` as compared: lower case, no punctuation, hyphenated words split.

    Contractions stay one word (``don't``); numbers stay digits, without thousands separators
    (``1,000`` is ``1000``, ``3.5`` stays).
    """
    words = _WORD.findall(text.lower().translate(_APOSTROPHES))
    return [word.replace(",", "") if word[0].isdigit() else word for word in words]


def word_errors(reference: str, hypothesis: str) -> int:
    """How many words must be substituted, inserted or deleted to turn one text into the other.

    The numerator of `word_error_rate`; sum it over many utterances (and divide by the sum of
    their reference word counts) for the error rate of a whole test set.
    """
    said, heard = normalise(reference), normalise(hypothesis)
    # Levenshtein distance over words, one row of the table at a time.
    previous = list(range(len(heard) + 1))
    for i, word in enumerate(said, start=1):
        current = [i]
        for j, candidate in enumerate(heard, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != candidate)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors per word of ``reference``: 0.0 is perfect; insertions can take it above 1.0.

    An empty reference (no words once normalised) counts as one word, so that silence
    transcribed as silence scores 0.0 and every word heard in it counts as one whole error,
    rather than dividing by zero.
    """
    return word_errors(reference, hypothesis) / max(len(normalise(reference)), 1)
