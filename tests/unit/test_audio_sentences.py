"""svc_audio.core.sentences: cutting a streaming reply, speakable text, and tone styles."""

from __future__ import annotations

import pytest

from svc_audio.core.sentences import CODE_NOTE, SentenceCutter, speakable, style_of
from svc_audio.model import SpeechStyle


def stream(text: str, step: int = 1, cutter: SentenceCutter | None = None) -> list[tuple[int, str]]:
    """Each sentence with the number of characters pushed when it came out ("flush": at the end)."""
    cutter = cutter or SentenceCutter()
    out: list[tuple[int, str]] = []
    for i in range(0, len(text), step):
        out += [(min(i + step, len(text)), s) for s in cutter.push(text[i : i + step])]
    return out + [(-1, s) for s in cutter.flush()]


def sentences(text: str, step: int = 1) -> list[str]:
    return [s for _, s in stream(text, step)]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_sentences_end_at_punctuation_and_space_whatever_the_tokens(step: int) -> None:
    text = "Hi there! How are you? Fine; thanks: really. Bye"
    assert sentences(text, step) == ["Hi there!", "How are you?", "Fine;", "thanks:", "really.", "Bye"]


def test_a_sentence_comes_out_as_soon_as_the_space_after_it_arrives() -> None:
    text = "It works. Next"
    assert stream(text) == [(len("It works. "), "It works."), (-1, "Next")]


def test_a_newline_ends_a_sentence() -> None:
    assert sentences("- first item\n- second item\nlast") == ["- first item", "- second item", "last"]


def test_abbreviations_and_decimals_do_not_end_a_sentence() -> None:
    text = "Use a tool, e.g. a hammer. Mr. Smith and Dr. Jones agree, i.e. yes. Pi is 3.14 etc. and so on. End."
    assert sentences(text) == [
        "Use a tool, e.g. a hammer.",
        "Mr. Smith and Dr. Jones agree, i.e. yes.",
        "Pi is 3.14 etc. and so on.",
        "End.",
    ]


def test_closing_quotes_and_emphasis_after_punctuation_still_end_it() -> None:
    assert sentences('He said "stop." Then **done.** Then (fine.) ok') == [
        'He said "stop."',
        "Then **done.**",
        "Then (fine.)",
        "ok",
    ]


def test_nothing_is_cut_inside_a_fenced_code_block() -> None:
    text = "Here is code:\n```python\nx = 1. y = 2\nprint(x)\n```\nThat is all. Bye"
    assert sentences(text, 3) == ["Here is code:", "```python\nx = 1. y = 2\nprint(x)\n```", "That is all.", "Bye"]


def test_a_fence_split_across_tokens_is_still_a_fence() -> None:
    cutter = SentenceCutter()
    pushed = [cutter.push(part) for part in ["Code:\n`", "`", "`\na. b\n``", "`\nDone. "]]
    assert pushed == [["Code:"], [], [], ["```\na. b\n```", "Done."]]


def test_an_unclosed_code_block_comes_out_at_flush() -> None:
    assert sentences("See:\n```\nwhile True. pass\n") == ["See:", "```\nwhile True. pass"]


def test_the_first_sentence_is_cut_early_at_a_comma_after_enough_words() -> None:
    text = "Well, I think the answer to your question is yes, because it is, and more. Later, one, two, three."
    assert sentences(text) == [
        "Well, I think the answer to your question is yes,",
        "because it is, and more.",
        "Later, one, two, three.",
    ]


def test_first_max_words_sets_the_early_cut() -> None:
    cutter = SentenceCutter(first_max_words=3)
    assert [s for _, s in stream("One two, three four, five six.", cutter=cutter)] == [
        "One two, three four,",
        "five six.",
    ]


def test_flush_returns_the_rest_and_starts_over() -> None:
    cutter = SentenceCutter()
    assert cutter.push("Half a sent") == []
    assert cutter.flush() == ["Half a sent"]
    assert cutter.flush() == []
    # Starting over means the first-sentence comma rule applies again.
    assert cutter.push("one two three four five six seven eight, nine ") == ["one two three four five six seven eight,"]


def test_blank_pieces_are_not_sentences() -> None:
    assert sentences("\n\n  \nHello.\n\n") == ["Hello."]


def test_speakable_strips_markdown() -> None:
    text = "## Title\n- **bold** and *em* and _em2_ and ~~gone~~ with [a link](https://x.y) and `code`"
    assert speakable(text) == "Title bold and em and em2 and gone with a link and code"


def test_speakable_keeps_snake_case_and_arithmetic() -> None:
    assert speakable("set max_tokens to 2 * 3 * 4") == "set max_tokens to 2 * 3 * 4"


def test_speakable_replaces_code_blocks_with_a_note() -> None:
    assert speakable("Run this:\n```bash\nls -la\n```\nthen wait.") == f"Run this: {CODE_NOTE} then wait."
    assert speakable("```\nonly code\n```") == CODE_NOTE


@pytest.mark.parametrize("text", ["", "   \n ", "**", "---", "> ", "- "])
def test_nothing_to_say_is_empty(text: str) -> None:
    assert speakable(text) == ""


def test_speakable_collapses_white_space_and_bullets() -> None:
    assert speakable("  1. first\n\n   * second  \t item\n> quoted") == "first second item quoted"


def test_style_of_single_words() -> None:
    assert style_of("calm") == SpeechStyle(rate=0.9, pitch_semitones=-1.0)
    assert style_of("energetic") == SpeechStyle(rate=1.1, pitch_semitones=2.0)
    assert style_of("brief") == SpeechStyle(rate=1.05)
    assert style_of("") == SpeechStyle()
    assert style_of("sarcastic, mysterious") == SpeechStyle()


def test_style_words_combine_rates_multiply_semitones_add() -> None:
    style = style_of("Warm, Concise")
    assert style.rate == pytest.approx(0.9 * 1.05)
    assert style.pitch_semitones == -1.0
    assert style_of("warm, warm") == style_of("warm")  # each word counts once


def test_style_is_held_to_its_limits() -> None:
    style = style_of("calm, warm, gentle")
    assert style.rate == pytest.approx(0.729)
    assert style.pitch_semitones == -3.0
    assert style_of("calm, warm, gentle, formal").rate >= 0.7


def test_formal_spells_out_contractions() -> None:
    replacements = dict(style_of("formal, warm").replacements)
    assert replacements["don't"] == "do not"
    assert replacements["can't"] == "cannot"
    assert replacements["I'm"] == "I am"
    assert replacements["don\u2019t"] == "do not"
    assert style_of("casual").replacements == ()
