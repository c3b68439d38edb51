"""The engine client's usage figures (svc_conversation.adapters.openai), against an engine
stand-in on httpx's MockTransport: the input tokens an engine reports are taken as they are;
where its streams report none, they are its tokenizer's count, marked as an estimate (or left
unknown where it cannot count); a call cut off by cancellation reports what it consumed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from svc_conversation.adapters.openai import ChatRequest, ModelCallFailed, OpenAICompatibleClient
from svc_conversation.model import CallStats, ModelTier

TIER = ModelTier(
    "models/tiny",
    0,
    "http://engine.test/v1",
    "tiny",
    input_cost_per_million=1_000_000.0,
    output_cost_per_million=2_000_000.0,
)
REQUEST = ChatRequest(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
# The prompt as a ChatML template lays it out (the stack's models' and Qwen's template).
PROMPT = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
SEGMENTS = [
    "<|im_start|>system\nbe brief<|im_end|>\n",
    "<|im_start|>user\nhello<|im_end|>\n",
    "<|im_start|>assistant\n",
]


class Engine:
    """An OpenAI-compatible engine: streams ``pieces``, with a usage chunk when asked and
    ``reports_usage``; counts tokens (one per blank-separated word) when ``counts``; after ``hang_after``
    pieces it stops sending until the client goes away."""

    def __init__(self, *, reports_usage: bool, counts: bool = True, hang_after: int | None = None) -> None:
        self.reports_usage = reports_usage
        self.counts = counts
        self.hang_after = hang_after
        self.pieces = ["a", "b", "c", "d"]
        self.paths: list[str] = []
        self.counted: list[dict[str, Any]] = []
        self.sent = 0
        self.closed = asyncio.Event()
        self.count_status = 200  # what the count endpoint answers

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        body = json.loads(request.content)
        if request.url.path.endswith("/chat/completions"):
            assert body["stream_options"] == {"include_usage": True}
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._stream())
        if request.url.path == "/extras/tokenize/count" and self.count_status != 200:
            return httpx.Response(self.count_status, json={"error": "busy"})
        if request.url.path == "/extras/tokenize/count" and self.counts:
            self.counted.append(body)
            return httpx.Response(200, json={"count": len(body["input"].split())})
        return httpx.Response(404, json={"detail": "Not Found"})

    async def _stream(self) -> AsyncIterator[bytes]:
        try:
            for index, piece in enumerate(self.pieces):
                if index == self.hang_after:
                    await asyncio.Event().wait()
                self.sent += 1
                yield _event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if self.reports_usage:
                yield _event({"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4}})
            yield b"data: [DONE]\n\n"
        finally:
            self.closed.set()


def _event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def client_for(engine: Engine) -> OpenAICompatibleClient:
    client = OpenAICompatibleClient()
    client._http = httpx.AsyncClient(transport=httpx.MockTransport(engine.handle))
    return client


async def ignore(_: str) -> None:
    return None


async def test_usage_the_engine_reports_is_taken_and_nothing_is_counted() -> None:
    engine = Engine(reports_usage=True)
    client = client_for(engine)
    for _ in range(2):
        result = await client.chat(TIER, REQUEST, ignore)
        assert (result.stats.input_tokens, result.stats.output_tokens) == (17, 4)
        assert not result.stats.input_tokens_estimated
        assert result.stats.cost == pytest.approx(17 * 1.0 + 4 * 2.0)
    assert engine.counted == []
    await client.close()


async def test_without_usage_in_the_stream_the_input_is_the_engine_s_count_marked_as_an_estimate() -> None:
    engine = Engine(reports_usage=False)
    client = client_for(engine)
    first = await client.chat(TIER, REQUEST, ignore)
    # The prompt, counted by the engine's tokenizer for the model that answered, message by
    # message (after what it adds to any text: here nothing), once the call has ended.
    assert [c["input"] for c in engine.counted] == ["", *SEGMENTS]
    assert {c["model"] for c in engine.counted} == {"tiny"}
    assert "".join(SEGMENTS) == PROMPT
    assert (first.stats.input_tokens, first.stats.output_tokens) == (6, 4)
    assert first.stats.input_tokens_estimated
    assert first.stats.cost == pytest.approx(6 * 1.0 + 4 * 2.0)
    # Messages counted before are not asked again: the same figure, nothing counted.
    second = await client.chat(TIER, REQUEST, ignore)
    assert (second.stats.input_tokens, second.stats.input_tokens_estimated) == (6, True)
    assert len(engine.counted) == 1 + len(SEGMENTS)
    # A new message is the only one counted.
    longer = ChatRequest(messages=[*REQUEST.messages, {"role": "user", "content": "and more"}])
    third = await client.chat(TIER, longer, ignore)
    assert [c["input"] for c in engine.counted[1 + len(SEGMENTS) :]] == ["<|im_start|>user\nand more<|im_end|>\n"]
    assert third.stats.input_tokens == 6 + 3  # this engine counts blank-separated words
    await client.close()


async def test_an_engine_that_cannot_count_leaves_the_input_unknown_and_is_asked_once() -> None:
    engine = Engine(reports_usage=False, counts=False)
    client = client_for(engine)
    for _ in range(3):
        result = await client.chat(TIER, REQUEST, ignore)
        assert (result.stats.input_tokens, result.stats.input_tokens_estimated) == (0, False)
        assert result.stats.output_tokens == 4
    assert sum(path.endswith("/tokenize/count") for path in engine.paths) == 1
    await client.close()


async def test_a_call_cut_off_by_cancellation_reports_what_it_consumed_and_stays_cancelled() -> None:
    engine = Engine(reports_usage=True, hang_after=2)
    client = client_for(engine)
    cut: list[CallStats] = []
    two = asyncio.Event()

    async def on_delta(text: str) -> None:
        if text == "b":
            two.set()

    call = asyncio.ensure_future(client.chat(TIER, REQUEST, on_delta, on_cut=cut.append))
    await two.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert engine.closed.is_set()  # the engine's stream was let go: generation stops
    [stats] = cut
    assert (stats.model, stats.tier, stats.output_tokens) == ("models/tiny", 0, 2)
    assert stats.time_to_first_token is not None
    assert stats.duration >= stats.time_to_first_token
    await client.close()


async def test_a_call_that_ends_reports_nothing_to_on_cut() -> None:
    engine = Engine(reports_usage=True)
    client = client_for(engine)
    cut: list[CallStats] = []
    await client.chat(TIER, REQUEST, ignore, on_cut=cut.append)
    assert cut == []
    await client.close()


async def test_an_engine_that_stops_sending_fails_the_call_with_model_timeout() -> None:
    engine = Engine(reports_usage=True, hang_after=1)
    client = OpenAICompatibleClient(idle_timeout=0.05)
    client._http = httpx.AsyncClient(transport=httpx.MockTransport(engine.handle))
    with pytest.raises(ModelCallFailed) as failed:
        await client.chat(TIER, REQUEST, ignore)
    assert failed.value.reason == "MODEL_TIMEOUT"
    assert failed.value.stats.output_tokens == 1
    await client.close()


async def test_a_count_that_fails_is_not_asked_again_for_a_while() -> None:
    """A slow or failing count would hold every call of the turn: the endpoint rests."""
    engine = Engine(reports_usage=False)
    engine.count_status = 503
    client = client_for(engine)
    for _ in range(3):
        result = await client.chat(TIER, REQUEST, ignore)
        assert (result.stats.input_tokens, result.stats.input_tokens_estimated) == (0, False)
    assert sum(path.endswith("/tokenize/count") for path in engine.paths) == 1
    await client.close()
