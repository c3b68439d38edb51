"""Keeping a turn's prompt within the primary model's context window."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from skm_runtime.access import Principal
from skm_runtime.values import ModelRole
from svc_conversation.core.lookups import Lookups
from svc_conversation.errors import ModelCallFailed
from svc_conversation.fitting import estimated_tokens, fit_messages
from svc_conversation.model import CallStats, ChatRequest, ResolvedProfile, Session
from svc_conversation.ports import ChatModel, Limits

# Records a model call of the turn: (iteration, figures, role, failure reason).
RecordCall = Callable[[int, CallStats, ModelRole, str], Awaitable[None]]


class Compressor:
    """Summarises a session's older history with the UTILITY model, once per length of it."""

    def __init__(self, llm: ChatModel, lookups: Lookups, limits: Limits) -> None:
        self._llm = llm
        self._lookups = lookups
        self._limits = limits
        # Per session: how many messages the summary covers, and the summary.
        self._summaries: dict[str, tuple[int, str]] = {}

    async def compress(
        self,
        key: str,
        principal: Principal,
        session: Session,
        messages: list[dict[str, str]],
        primary: ResolvedProfile,
        *,
        record: RecordCall,
    ) -> list[dict[str, str]]:
        """``messages`` made to fit the primary model's context window.

        Past ``compress_at_context_share`` of the window, the oldest history is summarised
        by the UTILITY model (the two newest messages stay as they are; the calls are
        recorded with ``record``). If the prompt would still leave no room for the answer,
        the longest messages lose their middle. Sizes are estimated at ``bytes_per_token``
        bytes of UTF-8 per token (no engine tokenizer is asked: a cheap estimate, on the
        safe side by default).
        """
        window = min(tier.context_length for tier in primary.tiers)
        per_token = self._limits.bytes_per_token
        if (
            estimated_tokens(messages, per_token) > window * self._limits.compress_at_context_share
            and len(messages) >= 4
        ):
            system, rest = messages[0], messages[1:]
            keep = rest[-2:]
            older = rest[:-2]
            cached = self._summaries.get(key)
            if cached is not None and cached[0] == len(older):
                summary = cached[1]
            else:
                summary = await self._summarise(principal, session, older, record)
                self._summaries[key] = (len(older), summary)
            messages = [system, {"role": "user", "content": f"Summary of the conversation so far: {summary}"}, *keep]
        answer = primary.max_output_tokens or 512
        return fit_messages(messages, int((window - answer) * 0.9 * per_token))

    async def _summarise(
        self, principal: Principal, session: Session, older: list[dict[str, str]], record: RecordCall
    ) -> str:
        profile = await self._lookups.resolve(principal, ModelRole.UTILITY, session)
        window = min((tier.context_length for tier in profile.tiers), default=4096)
        room = int((window - min(profile.max_output_tokens or 256, 256)) * 0.8 * self._limits.bytes_per_token)
        # The newest part of what is summarised, as much as the UTILITY model can read.
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in older).encode()[-room:].decode(errors="ignore")
        request = ChatRequest(
            messages=[
                {"role": "system", "content": "Summarise this conversation in a few sentences, keeping facts."},
                {"role": "user", "content": transcript},
            ],
            max_tokens=min(profile.max_output_tokens or 256, 256),
        )
        for tier in profile.tiers:
            try:
                result = await self._llm.complete(tier, request)
            except ModelCallFailed as failure:
                await record(0, failure.stats, ModelRole.UTILITY, failure.reason)
                continue
            await record(0, result.stats, ModelRole.UTILITY, "")
            return result.text
        # No utility model answered: keep the newest part of the transcript instead.
        return transcript[-2000:]
