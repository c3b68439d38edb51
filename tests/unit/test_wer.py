"""Word error rate: the edit count over normalised words, and what normalising keeps."""

from __future__ import annotations

import pytest

from svc_audio.wer import normalise, word_error_rate, word_errors

REFERENCE = "the quick brown fox jumps over the lazy dog"  # nine words


def test_identical_texts_have_no_errors() -> None:
    assert word_errors(REFERENCE, REFERENCE) == 0
    assert word_error_rate(REFERENCE, REFERENCE) == 0.0


def test_a_substitution_is_one_error_per_reference_word() -> None:
    assert word_errors(REFERENCE, "the quick brown cat jumps over the lazy dog") == 1
    assert word_error_rate(REFERENCE, "the quick brown cat jumps over the lazy dog") == pytest.approx(1 / 9)


def test_insertions_count_and_can_take_the_rate_above_one() -> None:
    assert word_error_rate(REFERENCE, "the very quick brown fox jumps over the lazy dog") == pytest.approx(1 / 9)
    assert word_error_rate("yes", "yes yes yes") == pytest.approx(2.0)


def test_deletions_count() -> None:
    assert word_error_rate(REFERENCE, "the brown fox jumps over the dog") == pytest.approx(2 / 9)
    assert word_error_rate(REFERENCE, "") == 1.0


def test_the_alignment_is_the_cheapest_one() -> None:
    # One deletion and one insertion (2), not six substitutions.
    assert word_errors("a b c d e f", "b c d e f g") == 2


def test_case_and_punctuation_do_not_count() -> None:
    assert word_error_rate("The quick, brown fox!", '"the QUICK brown fox..."') == 0.0
    assert normalise("Hello, World! (Really?)") == ["hello", "world", "really"]


def test_contractions_stay_words_and_quotes_go() -> None:
    assert normalise("Don't say 'maybe', it\u2019s late.") == ["don't", "say", "maybe", "it's", "late"]
    assert word_errors("don't", "do not") == 2


def test_hyphens_split_words() -> None:
    assert normalise("a state-of-the-art idea") == ["a", "state", "of", "the", "art", "idea"]
    assert word_error_rate("a well known idea", "a well-known idea") == 0.0


def test_numbers_stay_digits_without_thousands_separators() -> None:
    assert normalise("It costs $1,000 or 3.5 euros, at 7.") == ["it", "costs", "1000", "or", "3.5", "euros", "at", "7"]
    assert word_errors("42", "forty two") == 2


def test_an_empty_reference_counts_as_one_word() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("...", "  ") == 0.0
    assert word_error_rate("", "thank you") == 2.0
