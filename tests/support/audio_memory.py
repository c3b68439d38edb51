"""In-memory implementations of svc_audio's ports, for fast unit tests of its core.

`MemoryConversations` really implements ports.Conversations: sessions with durable, ordered
events, one turn at a time, an agent that streams its answer token by token (an echo of the
user's words, so tests know what it says), idempotent messages, interrupts that end a turn
INTERRUPTED. `MemoryPersonas`, `MemoryFeatureStore`, `MemoryQualityLog`, `MemoryDirectory`
and `LocalRelay` implement the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from svc_audio.errors import SessionNotFound
from svc_audio.model import AgentEvent, AgentEventKind, FeaturePoint, PersonaVoice, QualityReport, SessionView


@dataclass
class _Session:
    name: str
    tenant: str
    persona: str
    events: list[AgentEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    turns: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    by_request: dict[str, str] = field(default_factory=dict)
    running: str = ""
    policy_contexts: list[dict[str, float]] = field(default_factory=list)


class MemoryConversations:
    """Sessions whose agent answers "You said: <text>. That is all I have to say." a word at a time."""

    def __init__(
        self, token_seconds: float = 0.01, reply: str = "You said: {text}. That is all I have to say."
    ) -> None:
        self._sessions: dict[str, _Session] = {}
        self._token_seconds = token_seconds
        self._reply = reply
        self.interrupted: list[str] = []
        # Event streams still to break (ServiceUnavailable) after `break_after` events, as a
        # svc_conversation process that restarts would break them.
        self.breaks = 0
        self.break_after = 3

    def create(self, tenant: str, persona: str = "") -> str:
        name = f"{tenant}/sessions/{uuid.uuid4()}"
        self._sessions[name] = _Session(name, tenant, persona or f"{tenant}/personas/default")
        return name

    def session(self, name: str) -> _Session:
        return self._sessions[name]

    def _get(self, principal: Principal, session: str) -> _Session:
        found = self._sessions.get(session)
        if found is None or found.tenant != principal.tenant:
            raise SessionNotFound("no such session", metadata={"session": session})
        return found

    async def session_view(self, principal: Principal, session: str) -> SessionView:
        found = self._get(principal, session)
        return SessionView(found.persona, len(found.events), found.running)

    async def send_message(
        self, principal: Principal, session: str, text: str, request_id: str, policy_context: Mapping[str, float]
    ) -> str:
        found = self._get(principal, session)
        if request_id in found.by_request:
            return found.by_request[request_id]
        if found.running:
            raise RuntimeError("TURN_IN_PROGRESS")
        turn = f"{session}/turns/{len(found.by_request) + 1}"
        found.by_request[request_id] = turn
        found.running = turn
        found.policy_contexts.append(dict(policy_context))
        await self._append(found, turn, AgentEventKind.TURN_STATE, state="RUNNING")
        await self._append(found, turn, AgentEventKind.USER_MESSAGE, text=text, request_id=request_id)
        found.turns[turn] = asyncio.get_running_loop().create_task(self._answer(found, turn, text))
        return turn

    async def _answer(self, session: _Session, turn: str, text: str) -> None:
        reply = self._reply.format(text=text.strip().rstrip("."))
        # Written as the agent loop's model writes it: one JSON tool call, a few characters a token.
        raw = json.dumps({"thoughts": ["The user spoke."], "tool_name": "response", "tool_args": {"text": reply}})
        for start in range(0, len(raw), 6):
            await asyncio.sleep(self._token_seconds)
            await self._append(session, turn, AgentEventKind.TOKEN, text=raw[start : start + 6], iteration=1)
        await self._append(session, turn, AgentEventKind.FINAL_RESPONSE, text=reply)
        session.running = ""
        await self._append(session, turn, AgentEventKind.TURN_STATE, state="COMPLETED")

    async def _append(self, session: _Session, turn: str, kind: AgentEventKind, **fields: Any) -> None:
        async with session.changed:
            sequence = len(session.events) + 1
            event = AgentEvent(sequence, turn, kind, wire=("event", sequence, kind.value), **fields)
            session.events.append(event)
            session.changed.notify_all()

    async def events(self, principal: Principal, session: str, after_sequence: int | None) -> AsyncIterator[AgentEvent]:
        found = self._get(principal, session)
        position = after_sequence or 0
        sent = 0
        while True:
            async with found.changed:
                await found.changed.wait_for(lambda seen=position: len(found.events) > seen)
                fresh = found.events[position:]
            for event in fresh:
                if self.breaks and sent >= self.break_after:
                    self.breaks -= 1
                    raise ServiceUnavailable("svc_conversation went away")
                sent += 1
                position += 1
                yield event

    async def interrupt(self, principal: Principal, turn: str, request_id: str) -> None:
        found = self._get(principal, turn.split("/turns/")[0])
        task = found.turns.get(turn)
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.interrupted.append(turn)
        found.running = ""
        await self._append(found, turn, AgentEventKind.TURN_STATE, state="INTERRUPTED")


class MemoryPersonas:
    def __init__(self, voices: Mapping[str, PersonaVoice] | None = None) -> None:
        self._voices = dict(voices or {})

    async def voice_of(self, principal: Principal, persona: str) -> PersonaVoice:
        return self._voices.get(persona, PersonaVoice())


class MemoryFeatureStore:
    def __init__(self) -> None:
        self.points: dict[str, FeaturePoint] = {}

    async def add(self, point: FeaturePoint) -> str:
        point_id = str(uuid.uuid4())
        self.points[point_id] = point
        return point_id


class MemoryQualityLog:
    def __init__(self) -> None:
        self.reports: list[QualityReport] = []

    def record(self, report: QualityReport) -> None:
        self.reports.append(report)


class MemoryDirectory:
    def __init__(self) -> None:
        self.holders: dict[str, str] = {}

    async def claim(self, voice_stream: str, holder: str, ttl_seconds: float) -> None:
        self.holders[voice_stream] = holder

    async def holder(self, voice_stream: str) -> str | None:
        return self.holders.get(voice_stream)

    async def release(self, voice_stream: str) -> None:
        self.holders.pop(voice_stream, None)
