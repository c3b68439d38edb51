"""One client for every OpenAI-compatible engine: vLLM, llama.cpp's server, hosted providers.

Chat completions are streamed (server-sent events) and handed over token by token; the
client measures what the platform records for every call: tokens in and out, time to
first token, tokens per second, cost and which model answered. Structured output is asked
for with ``response_format`` in the JSON-schema form OpenAI and vLLM take (the local stack's
llama-cpp-python engine accepts it too: see skm_stack.llm_engine).

Input tokens: the engine's count, from the ``usage`` a stream ends with when asked for it
(``stream_options.include_usage``, as OpenAI and vLLM do). llama-cpp-python's server (0.3.36)
ignores that option and sends no usage when streaming; for an engine whose streams report no
usage, the input tokens are its tokenizer's count (llama-cpp-python's
``POST /extras/tokenize/count``, beside its ``/v1``) of the messages as the ChatML chat template
lays them out, marked as an estimate (``CallStats.input_tokens_estimated``): exact for models
whose template is ChatML (the stack's, Qwen's), a few tokens per message off for others. Where
the engine has no such endpoint they stay 0 (unknown). A usage the engine reports is never
replaced. Counting costs the engine time (about 7 ms for a 1,900-token prompt on the stack's
serial engine, as much as a short call), so it is asked only after the call's stream has ended,
never beside it, and message by message: a message's count (its ChatML segment; special
tokens split the prompt there, so the counts add up) is remembered, and each call counts only
the messages the engine has not counted before, usually the newest one or two. The call's
result waits for its count (at most 1 s); an endpoint whose count failed or was slow is not
asked to count for a minute (those calls' input tokens stay 0, unknown).

A call cut off by cancellation (an interrupt) hands what it consumed until then to
``on_cut`` before the cancellation goes on.

A call fails with :class:`ModelCallFailed` and an UPPER_SNAKE_CASE reason (the agent loop
then tries the next tier): MODEL_TIMEOUT (no first token, or a stall between tokens, within
the configured time), MODEL_UNAVAILABLE (connection refused or reset, 5xx, 429),
MODEL_REJECTED (another 4xx, or an error event in the stream: the request itself is wrong for
that engine, e.g. a prompt longer than its context), MODEL_NO_OUTPUT (a reply without a single
token) and MODEL_BAD_RESPONSE (bytes that are not the protocol).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from svc_conversation.errors import ModelCallFailed
from svc_conversation.model import CallStats, ChatRequest, ChatResult, ModelTier
from svc_conversation.ports import OnCut, OnDelta

__all__ = ["ChatRequest", "ChatResult", "ModelCallFailed", "OpenAICompatibleClient", "response_format"]

# llama-cpp-python's token count of a text (its server's "extras", at the root beside /v1);
# other engines answer 404.
_COUNT_PATH = "/extras/tokenize/count"
# A count waits at most this long (the turn waits for it); after a failed or slow one the
# endpoint is not asked to count for a while.
_COUNT_TIMEOUT = 1.0
_COUNT_PAUSE_SECONDS = 60.0
# Remembered message counts (per endpoint, model and message), least recently used out.
_COUNTED_MESSAGES = 4096


@dataclass
class _Meter:
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    chunks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Whether the stream reported usage (then input_tokens is the engine's own count).
    usage_reported: bool = False
    # The engine tokenizer's count of the messages' texts, for a stream without usage.
    counting: asyncio.Future[int] | None = None

    def _input(self) -> tuple[int, bool]:
        """The input tokens, and whether they are an estimate (a count not finished yet is
        not waited for: 0, unknown)."""
        counting = self.counting
        if self.usage_reported or counting is None or not counting.done() or counting.cancelled():
            return self.input_tokens, False
        counted = counting.result() if counting.exception() is None else 0
        return counted, counted > 0

    def stats(self, tier: ModelTier) -> CallStats:
        ended = time.perf_counter()
        output = self.output_tokens or self.chunks
        input_tokens, estimated = self._input()
        ttft = None if self.first_token is None else self.first_token - self.started
        generating = ended - self.first_token if self.first_token is not None else 0.0
        rate = (output - 1) / generating if output > 1 and generating > 0 else 0.0
        cost = (input_tokens * tier.input_cost_per_million + output * tier.output_cost_per_million) / 1_000_000
        return CallStats(
            model=tier.name,
            tier=tier.tier,
            input_tokens=input_tokens,
            output_tokens=output,
            time_to_first_token=ttft,
            duration=ended - self.started,
            tokens_per_second=rate,
            cost=cost,
            currency=tier.currency,
            input_tokens_estimated=estimated,
        )


def _chatml(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """The prompt as the ChatML chat template renders it, up to the assistant's turn, one
    segment per message (each starts with a special token, where tokenization splits)."""
    turns = [f"<|im_start|>{m.get('role', '')}\n{m.get('content', '')}<|im_end|>\n" for m in messages]
    return [*turns, "<|im_start|>assistant\n"]


def response_format(tier: ModelTier, request: ChatRequest) -> dict[str, Any] | None:
    if request.json_schema is None or not tier.structured_output:
        return None
    return {
        "type": "json_schema",
        "json_schema": {"name": request.schema_name, "schema": dict(request.json_schema), "strict": True},
    }


class OpenAICompatibleClient:
    """Streams chat completions over HTTP (embeddings are svc_tools' own: its memory tools embed)."""

    def __init__(
        self,
        *,
        first_token_timeout: float = 30.0,
        idle_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._first_token_timeout = first_token_timeout
        self._idle_timeout = idle_timeout
        self._environ = os.environ if environ is None else environ
        # Endpoints that refused the token count (no such endpoint): never asked again.
        self._cannot_count: set[str] = set()
        # Endpoints whose count failed or was slow: not asked until then (monotonic time).
        self._count_paused: dict[str, float] = {}
        # (endpoint, model) -> the tokens the engine adds to any text it counts (BOS); and
        # (endpoint, model, message digest) -> the message's tokens without them.
        self._count_base: dict[tuple[str, str], int] = {}
        self._counted: OrderedDict[tuple[str, str, bytes], int] = OrderedDict()
        # No overall timeout: generation may run long; the loop below bounds waits.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self, tier: ModelTier, accept: str = "text/event-stream") -> dict[str, str]:
        headers = {"Accept": accept}
        if tier.credential_secret:
            # The secret's name comes from the registry; its value only from the environment.
            key = self._environ.get(tier.credential_secret, "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _count(self, endpoint: str, tier: ModelTier, request: ChatRequest) -> int:
        """The engine tokenizer's count of the prompt, laid out as ChatML; 0 when it cannot say.
        Messages counted before are not asked again."""
        model = (endpoint, tier.served_model)
        base = self._count_base.get(model)
        if base is None:
            base = await self._count_text(endpoint, tier, "")
            if base is None:
                return 0
            self._count_base[model] = base
        total = base
        for segment in _chatml(request.messages):
            key = (endpoint, tier.served_model, hashlib.sha256(segment.encode()).digest())
            tokens = self._counted.get(key)
            if tokens is None:
                counted = await self._count_text(endpoint, tier, segment)
                if counted is None:
                    return 0
                tokens = counted - base
                self._counted[key] = tokens
                if len(self._counted) > _COUNTED_MESSAGES:
                    self._counted.popitem(last=False)
            else:
                self._counted.move_to_end(key)
            total += tokens
        return total if total > 0 else 0

    async def _count_text(self, endpoint: str, tier: ModelTier, text: str) -> int | None:
        """The engine tokenizer's count of `text`, or None when it cannot say."""
        try:
            response = await self._http.post(
                endpoint.removesuffix("/v1") + _COUNT_PATH,
                json={"model": tier.served_model, "input": text},
                headers=self._headers(tier, "application/json"),
                timeout=_COUNT_TIMEOUT,
            )
        except httpx.HTTPError:
            self._count_paused[endpoint] = time.monotonic() + _COUNT_PAUSE_SECONDS
            return None
        if 400 <= response.status_code < 500 and response.status_code != 429:
            self._cannot_count.add(endpoint)
            return None
        if response.status_code != 200:
            self._count_paused[endpoint] = time.monotonic() + _COUNT_PAUSE_SECONDS
            return None
        try:
            count = response.json().get("count") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            count = None
        return count if isinstance(count, int) and count >= 0 else None

    async def chat(
        self, tier: ModelTier, request: ChatRequest, on_delta: OnDelta, *, on_cut: OnCut | None = None
    ) -> ChatResult:
        """One streamed chat completion; ``on_delta`` gets each piece of text as it arrives.

        Cancelled (an interrupt), it calls ``on_cut`` with what the call consumed until then,
        without waiting for anything, and lets the cancellation go on."""
        meter = _Meter()
        endpoint = tier.endpoint_uri.rstrip("/")
        try:
            return await self._chat(endpoint, tier, request, on_delta, meter)
        except asyncio.CancelledError:
            if on_cut is not None:
                on_cut(meter.stats(tier))
            raise
        finally:
            if meter.counting is not None and not meter.counting.done():
                meter.counting.cancel()

    async def _chat(
        self, endpoint: str, tier: ModelTier, request: ChatRequest, on_delta: OnDelta, meter: _Meter
    ) -> ChatResult:
        body: dict[str, Any] = {
            "model": tier.served_model,
            "messages": [dict(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        fmt = response_format(tier, request)
        if fmt is not None:
            body["response_format"] = fmt
        url = endpoint + "/chat/completions"
        pieces: list[str] = []
        finish = ""
        try:
            async with self._http.stream("POST", url, json=body, headers=self._headers(tier)) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:300].decode("utf-8", "replace")
                    retryable = response.status_code >= 500 or response.status_code == 429
                    reason = "MODEL_UNAVAILABLE" if retryable else "MODEL_REJECTED"
                    raise ModelCallFailed(reason, f"HTTP {response.status_code}: {detail}", meter.stats(tier))
                lines = response.aiter_lines()
                while True:
                    wait = self._first_token_timeout if meter.first_token is None else self._idle_timeout
                    try:
                        # Not wait_for: on Python 3.11 it runs the read as a task of its own
                        # (one per line) and drops a cancellation (an interrupt) that comes
                        # as a line arrives.
                        async with asyncio.timeout(wait):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ModelCallFailed(
                            "MODEL_TIMEOUT", f"no token within {wait:g} s", meter.stats(tier)
                        ) from None
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ModelCallFailed(
                            "MODEL_BAD_RESPONSE", "an event that is not JSON", meter.stats(tier)
                        ) from None
                    if not isinstance(chunk, dict):
                        raise ModelCallFailed("MODEL_BAD_RESPONSE", "an event that is not an object", meter.stats(tier))
                    if chunk.get("error"):
                        # Engines report failures met mid-stream (e.g. a prompt longer than the
                        # context window) as an event of their own.
                        error = chunk["error"]
                        detail = str(error.get("message", error) if isinstance(error, dict) else error)[:300]
                        raise ModelCallFailed("MODEL_REJECTED", detail, meter.stats(tier))
                    usage = chunk.get("usage") or {}
                    if usage:
                        meter.usage_reported = True
                        meter.input_tokens = int(usage.get("prompt_tokens") or 0)
                        meter.output_tokens = int(usage.get("completion_tokens") or 0)
                    for choice in chunk.get("choices") or ():
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                        if delta:
                            if meter.first_token is None:
                                meter.first_token = time.perf_counter()
                            meter.chunks += 1
                            pieces.append(delta)
                            await on_delta(delta)
        except httpx.TransportError as error:
            raise ModelCallFailed("MODEL_UNAVAILABLE", type(error).__name__, meter.stats(tier)) from None
        if not pieces:
            # E.g. a prompt that filled the context window, leaving no room to answer.
            raise ModelCallFailed(
                "MODEL_NO_OUTPUT", f"the model wrote nothing (finish_reason {finish or 'none'})", meter.stats(tier)
            )
        if (
            not meter.usage_reported
            and endpoint not in self._cannot_count
            and time.monotonic() >= self._count_paused.get(endpoint, 0.0)
        ):
            # Now that the engine is done with the call, never beside it (see the module's
            # docstring); a cancellation here ends the count with the call.
            meter.counting = asyncio.ensure_future(self._count(endpoint, tier, request))
            await asyncio.wait({meter.counting})
        return ChatResult("".join(pieces), meter.stats(tier), finish)

    async def complete(self, tier: ModelTier, request: ChatRequest) -> ChatResult:
        """A chat completion whose text is only needed whole (pre-processing, compression)."""

        async def ignore(_: str) -> None:
            return None

        return await self.chat(tier, request, ignore)
