"""The session store as records: sessions, turns and events kept as their protobuf
messages (what PostgreSQL stores), and :class:`EncodedSessionStore`, the SessionStore port
over such records.

The encoding (convert.py) and the audit records of each write (audit.py, into the same
transaction: the outbox) are done here, once, for whatever keeps the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm_runtime.records import OutboxRecord
from svc_conversation import convert
from svc_conversation.adapters import audit
from svc_conversation.model import Command, Lease, Loaded, Session, SessionEvent, Turn, Write


@dataclass(slots=True)
class EncodedWrite:
    """Everything one transaction writes for a session, encoded."""

    session: session_pb2.Session
    reserved_sequence: int
    turns: list[turn_pb2.Turn] = field(default_factory=list)
    # (event, turn ordinal, token delta)
    events: list[tuple[session_event_pb2.SessionEvent, int, bool]] = field(default_factory=list)
    audit: list[OutboxRecord] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    # Turns whose token deltas are dropped (they ended; their text is in final_response).
    compact_turns: list[int] = field(default_factory=list)
    # Runner lease to set on the written turns (None keeps what is there).
    lease: Lease | None = None


class SessionRecords(Protocol):
    """What keeps the records (adapters/postgres.py); the SessionStore port's methods, in
    protobuf messages."""

    async def create_session(
        self, session: session_pb2.Session, request_id: str | None, audit: Sequence[OutboxRecord]
    ) -> tuple[session_pb2.Session, bool]: ...

    async def get_session(self, name: str) -> tuple[session_pb2.Session, int] | None: ...

    async def session_state(self, name: str) -> tuple[session_pb2.Session, int, turn_pb2.Turn | None] | None: ...

    async def list_sessions(
        self, tenant: str, owner: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[session_pb2.Session]: ...

    async def delete_session(self, name: str) -> None: ...

    async def reserve(self, name: str, upto: int) -> None: ...

    async def write(self, write: EncodedWrite) -> None: ...

    async def get_turn(self, session: str, ordinal: int) -> turn_pb2.Turn | None: ...

    async def turn_by_request(self, session: str, request_id: str) -> turn_pb2.Turn | None: ...

    async def list_turns(self, session: str, after_ordinal: int, limit: int) -> list[turn_pb2.Turn]: ...

    async def list_events(
        self, session: str, after_sequence: int, limit: int, *, turn: int | None = None
    ) -> list[session_event_pb2.SessionEvent]: ...

    async def command(self, session: str, request_id: str) -> Command | None: ...

    async def renew(self, lease: Lease, sessions: Sequence[str]) -> None: ...

    async def take_own(self, lease: Lease) -> list[str]: ...

    async def take_orphans(self, lease: Lease, now: datetime, limit: int = 50) -> list[str]: ...

    async def lease(self, session: str, ordinal: int) -> tuple[turn_pb2.Turn, Lease | None] | None: ...


def _turn(found: turn_pb2.Turn | None) -> Turn | None:
    return None if found is None else convert.turn_of(found)


def encoded(write: Write) -> EncodedWrite:
    """``write`` as records, with the audit records of its events (for ``write.actor``)."""
    session = convert.session_to(write.session)
    turns = {turn.name: convert.turn_to(turn) for turn in write.turns}
    events = [(convert.event_to(stored.event), stored.turn, stored.delta) for stored in write.events]
    records: list[OutboxRecord] = []
    if write.actor is not None:
        for name, turn in turns.items():
            mine = [event for event, _, delta in events if not delta and event.turn == name]
            if mine:
                records.extend(audit.records_for(session, write.actor, turn, mine))
    return EncodedWrite(
        session=session,
        reserved_sequence=write.reserved_sequence,
        turns=list(turns.values()),
        events=events,
        audit=records,
        commands=list(write.commands),
        compact_turns=list(write.compact_turns),
        lease=write.lease,
    )


class EncodedSessionStore:
    """The SessionStore port over records: domain values in, messages stored."""

    def __init__(self, records: SessionRecords) -> None:
        self.records = records

    async def create_session(self, session: Session, request_id: str | None) -> tuple[Session, bool]:
        stored, created = await self.records.create_session(convert.session_to(session), request_id, ())
        return convert.session_of(stored), created

    async def get_session(self, name: str) -> tuple[Session, int] | None:
        found = await self.records.get_session(name)
        return None if found is None else (convert.session_of(found[0]), found[1])

    async def load(self, name: str) -> Loaded | None:
        found = await self.records.session_state(name)
        if found is None:
            return None
        session, reserved, turn = found
        return Loaded(convert.session_of(session), reserved, _turn(turn))

    async def list_sessions(
        self, tenant: str, owner: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[Session]:
        return [convert.session_of(s) for s in await self.records.list_sessions(tenant, owner, limit, after)]

    async def delete_session(self, name: str) -> None:
        await self.records.delete_session(name)

    async def reserve(self, name: str, upto: int) -> None:
        await self.records.reserve(name, upto)

    async def write(self, write: Write) -> None:
        await self.records.write(encoded(write))

    async def get_turn(self, session: str, ordinal: int) -> Turn | None:
        return _turn(await self.records.get_turn(session, ordinal))

    async def turn_by_request(self, session: str, request_id: str) -> Turn | None:
        return _turn(await self.records.turn_by_request(session, request_id))

    async def list_turns(self, session: str, after_ordinal: int, limit: int) -> list[Turn]:
        return [convert.turn_of(t) for t in await self.records.list_turns(session, after_ordinal, limit)]

    async def list_events(
        self, session: str, after_sequence: int, limit: int, *, turn: int | None = None
    ) -> list[SessionEvent]:
        found = await self.records.list_events(session, after_sequence, limit, turn=turn)
        return [convert.event_of(event) for event in found]

    async def command(self, session: str, request_id: str) -> Command | None:
        return await self.records.command(session, request_id)

    async def renew(self, lease: Lease, sessions: Sequence[str]) -> None:
        await self.records.renew(lease, sessions)

    async def take_own(self, lease: Lease) -> list[str]:
        return await self.records.take_own(lease)

    async def take_orphans(self, lease: Lease, now: datetime, limit: int = 50) -> list[str]:
        return await self.records.take_orphans(lease, now, limit)

    async def lease(self, session: str, ordinal: int) -> tuple[Turn, Lease | None] | None:
        found = await self.records.lease(session, ordinal)
        return None if found is None else (convert.turn_of(found[0]), found[1])
