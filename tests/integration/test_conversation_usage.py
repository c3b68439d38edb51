"""svc_conversation's engine client against the stack's real LLM engine (llama-cpp-python's
server on tiny UNTRAINED models): the input tokens it records for streamed calls, and a call
cut off mid-generation.

The client asks for usage in the stream (``stream_options.include_usage``); an engine that
sends it has its own count recorded; one that does not (llama-cpp-python 0.3.36) has its
tokenizer's count of the prompt laid out as ChatML recorded, marked as an estimate: for the
tiny models (ChatML) the count the engine gives for the same prompt unstreamed. The test finds
out which kind the engine is, so it holds whichever way the engine changes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from skm_stack import RunningStack
from skm_stack.tinyllm import TINY_MODELS
from svc_conversation.adapters.openai import ChatRequest, OpenAICompatibleClient
from svc_conversation.model import CallStats, ModelTier
from tests.conftest import StackFactory

TIER0 = TINY_MODELS[0].name
MESSAGES = [
    {"role": "system", "content": "Answer with one JSON tool call."},
    {"role": "user", "content": "Say hello to the operator, please, in a few words."},
]


@pytest.fixture
def llm(stack_factory: StackFactory) -> RunningStack:
    return stack_factory(components=("llm",))


async def _streamed_usage(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """The usage a stream asked for it ends with, if the engine sends one."""
    body = {
        "model": TIER0,
        "messages": MESSAGES,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = None
    async with http.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            data = line.removeprefix("data: ")
            if line.startswith("data: ") and data != "[DONE]":
                usage = json.loads(data).get("usage") or usage
    return usage


async def test_streamed_calls_record_the_engine_s_input_tokens_or_its_stated_estimate(llm: RunningStack) -> None:
    async with httpx.AsyncClient() as http:
        usage = await _streamed_usage(http, llm.llm_url)
        # What the engine counts for the same prompt when it does not stream.
        unstreamed = await http.post(
            f"{llm.llm_url}/chat/completions", json={"model": TIER0, "messages": MESSAGES, "max_tokens": 1}, timeout=60
        )
    prompt_tokens = unstreamed.json()["usage"]["prompt_tokens"]
    tier = ModelTier("models/tiny", 0, llm.llm_url, TIER0, input_cost_per_million=1.0, output_cost_per_million=1.0)
    client = OpenAICompatibleClient()
    try:
        # The first call finds out what the engine does; the later ones count alongside.
        for seed in (1, 2, 3):
            result = await client.complete(tier, ChatRequest(messages=MESSAGES, max_tokens=8, temperature=seed))
            stats = result.stats
            assert stats.output_tokens > 0
            if usage is not None:
                assert (stats.input_tokens, stats.input_tokens_estimated) == (usage["prompt_tokens"], False)
            else:
                assert stats.input_tokens_estimated
                assert stats.input_tokens == prompt_tokens > 0
            assert stats.cost == pytest.approx((stats.input_tokens + stats.output_tokens) / 1e6)
    finally:
        await client.close()


async def test_a_call_cut_off_mid_generation_reports_what_it_generated_and_the_engine_serves_on(
    llm: RunningStack,
) -> None:
    tier = ModelTier("models/tiny", 0, llm.llm_url, TIER0)
    client = OpenAICompatibleClient()
    cut: list[CallStats] = []
    deltas: list[str] = []
    enough = asyncio.Event()

    async def on_delta(text: str) -> None:
        deltas.append(text)
        if len(deltas) == 3:
            # The loop is handing this delta on when the interrupt comes (the tiny model
            # would otherwise finish before the test gets to cancel it).
            enough.set()
            await asyncio.Event().wait()

    try:
        request = ChatRequest(messages=MESSAGES, max_tokens=2000)
        call = asyncio.ensure_future(client.chat(tier, request, on_delta, on_cut=cut.append))
        await asyncio.wait_for(enough.wait(), 60)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        [stats] = cut
        assert stats.model == "models/tiny"
        assert stats.output_tokens == len(deltas) == 3
        assert stats.time_to_first_token is not None
        # The engine let the stream go: the next call is served (requests are served one at a time).
        after = await asyncio.wait_for(client.complete(tier, ChatRequest(messages=MESSAGES, max_tokens=4)), 60)
        assert after.stats.output_tokens > 0
    finally:
        await client.close()
