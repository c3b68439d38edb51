"""The answer's words read out of the model's streaming JSON tool call (svc_audio.core.replies)."""

from __future__ import annotations

import json

import pytest

from svc_audio.core.replies import ReplyText


def _stream(raw: str, size: int) -> str:
    reply = ReplyText()
    return "".join(reply.push(raw[i : i + size]) for i in range(0, len(raw), size))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_response_text_comes_out_whatever_the_token_boundaries(size: int) -> None:
    text = 'Paris is the "capital" of France.\nIt is \u00e9t\u00e9 \U0001f600 now, 100\\% sure.'
    raw = json.dumps({"thoughts": ['I know "this".'], "tool_name": "response", "tool_args": {"text": text}})
    assert _stream(raw, size) == text.replace("\n", "\n")


def test_thoughts_and_other_tools_are_not_spoken() -> None:
    raw = json.dumps({"thoughts": ["say: hello"], "tool_name": "code_execution", "tool_args": {"code": "print(1)"}})
    assert _stream(raw, 4) == ""
    text_first = '{"tool_args": {"text": "not yet"}, "tool_name": "response"}'
    assert _stream(text_first, 3) == "", "a text before the tool is named is not known to be the answer"


def test_characters_come_as_soon_as_they_are_complete() -> None:
    reply = ReplyText()
    assert reply.push('{"thoughts": [], "tool_name": "response", "tool_args": {"text": "Hel') == "Hel"
    assert reply.push("lo \\") == "lo "  # half an escape waits
    assert reply.push('"you\\') == '"you'
    assert reply.push('u00e9"}}') == "\u00e9"
    assert reply.push(" more") == ""
