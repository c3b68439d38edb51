"""One session in memory: its numbered event log, live subscribers and the running turn.

A :class:`SessionHandle` is the only writer of its session inside this process. Events get
their sequence numbers here, are stored through the store in one transaction per step, and
are then handed to every attached stream. Token deltas are handed out at once and stored
with the step that follows them (the model_call that ends the attempt), so streaming a
token costs no database round trip.

Every event also goes to the session's :class:`LiveEvents` (a Redis Stream), for streams
attached to other processes. Each published event carries the sequence of the one this
handle published before it (``prev``): a reader that has not seen that one has missed
something, whichever way the event reached it, and must re-attach rather than go on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import timestamp_pb2

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm_runtime.outbox import OutboxRecord
from svc_conversation.adapters.postgres import Command, Lease, PostgresSessionStore, Write, turn_ordinal

# Sequence numbers reserved per round trip for token deltas.
_RESERVE_BLOCK = 1024
# A subscriber that falls this far behind is dropped (it re-attaches and replays).
_QUEUE_LIMIT = 20_000

Turn = turn_pb2.Turn
SessionEvent = session_event_pb2.SessionEvent

_SESSION_STATE = {
    Turn.STATE_RUNNING: session_pb2.Session.STATE_RUNNING,
    Turn.STATE_AWAITING_APPROVAL: session_pb2.Session.STATE_AWAITING_APPROVAL,
    Turn.STATE_INTERRUPTED: session_pb2.Session.STATE_INTERRUPTED,
}
TERMINAL = {Turn.STATE_COMPLETED, Turn.STATE_FAILED, Turn.STATE_REFUSED}
ACTIVE = {Turn.STATE_RUNNING, Turn.STATE_AWAITING_APPROVAL}


def timestamp(at: datetime | None = None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at or datetime.now(UTC))
    return stamp


class Closed:
    """Sent to subscribers when the stream must end: the session was deleted, or shutdown."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# A live event and the sequence its publisher published before it.
Live = tuple[SessionEvent, int]
Item = Live | Closed


class LiveEvents(Protocol):
    """Where a process publishes its sessions' events for the other processes."""

    def publish(self, session: str, event: SessionEvent, prev: int) -> None:
        """Queues the event; never waits (the token path calls it)."""
        ...


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    # The newest sequence handed to the client.
    cursor: int = 0
    # Past the replay: reading live events.
    following: bool = False
    # The newest sequence given or queued: what it has once its queue is read.
    horizon: int = 0


class SessionHandle:
    def __init__(
        self,
        store: PostgresSessionStore,
        session: session_pb2.Session,
        reserved: int,
        live: LiveEvents | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.session = session
        # Numbers up to `reserved` may have been handed out by an earlier owner: start after.
        self.next_sequence = max(session.last_sequence, reserved) + 1
        self.reserved = max(session.last_sequence, reserved)
        # The newest event published: the `prev` of the next one. Unstored deltas of an
        # earlier owner are never stored, so nobody needs to have seen them.
        self.published = session.last_sequence
        self.lock = asyncio.Lock()
        self.subscribers: set[Subscriber] = set()
        self.pending: list[tuple[SessionEvent, int]] = []
        # Events of a stopped run for the next step of their turn (see carry).
        self.carried: list[tuple[str, tuple[str, object]]] = []
        self.turn: Turn | None = None
        self.runner: asyncio.Task[None] | None = None
        self.run: Any = None  # the TurnRun of `runner`
        self.last_used = time.monotonic()
        self.deleted = False

    @property
    def name(self) -> str:
        return self.session.name

    def idle(self) -> bool:
        return not self.subscribers and not self.running() and not self.lock.locked()

    def running(self) -> bool:
        """Whether this process runs one of the session's turns now."""
        return self.runner is not None and not self.runner.done()

    def refresh(self, session: session_pb2.Session, reserved: int, turn: Turn | None) -> None:
        """Takes the session as stored now, written by another process meanwhile.

        Only for a handle that runs no turn here; called with the lock held. Deltas not
        stored yet (of a run stopped a moment ago) stay, for the step that records the stop.
        """
        self.session = session
        self.reserved = max(session.last_sequence, reserved)
        self.next_sequence = self.reserved + 1
        self.published = session.last_sequence
        self.turn = turn

    async def _sequence(self) -> int:
        if self.next_sequence > self.reserved:
            upto = self.next_sequence + _RESERVE_BLOCK
            await self.store.reserve(self.name, upto)
            self.reserved = upto
        number = self.next_sequence
        self.next_sequence += 1
        return number

    def _stored_sequence(self) -> int:
        """A number for an event a step stores: a reservation it needs goes into the same
        write (Write.reserved_sequence), so it costs no round trip of its own."""
        number = self.next_sequence
        self.next_sequence += 1
        if number > self.reserved:
            self.reserved = number + _RESERVE_BLOCK
        return number

    def _publish(self, event: SessionEvent) -> None:
        item = (event, self.published)
        self.published = max(self.published, event.sequence)
        if self.live is not None:
            self.live.publish(self.name, event, item[1])
        self._hand_out(item)

    def relay(self, read_after: int, items: Sequence[Live]) -> None:
        """Hands out events another process published, read back from LiveEvents: every
        event after ``read_after`` (unless trimmed or dropped, which ``prev`` shows).

        A subscriber gets them only if they go on from what it has queued: one that is
        further behind waits for the read from its own cursor that following asked for.
        """
        if not items:
            return
        for subscriber in list(self.subscribers):
            if subscriber.following and read_after <= subscriber.horizon:
                for item in items:
                    self._put(subscriber, item)

    def _hand_out(self, item: Item) -> None:
        for subscriber in list(self.subscribers):
            self._put(subscriber, item)

    def _put(self, subscriber: Subscriber, item: Item) -> None:
        if subscriber not in self.subscribers:
            return
        if subscriber.queue.qsize() >= _QUEUE_LIMIT:
            self.subscribers.discard(subscriber)
            subscriber.queue.put_nowait(Closed("OVERFLOW"))
            return
        subscriber.queue.put_nowait(item)
        if not isinstance(item, Closed):
            subscriber.horizon = max(subscriber.horizon, item[0].sequence)

    def _new_event(self, turn: Turn, number: int) -> SessionEvent:
        event = SessionEvent(sequence=number, turn=turn.name)
        event.create_time.CopyFrom(timestamp())
        return event

    async def delta(self, turn: Turn, iteration: int, text: str, *, alive: Callable[[], bool] | None = None) -> None:
        """Streams a token delta now; it is stored with the next step."""
        async with self.lock:
            if alive is not None and not alive():
                raise asyncio.CancelledError
            event = self._new_event(turn, await self._sequence())
            event.token_delta.iteration = iteration
            event.token_delta.text = text
            self.pending.append((event, turn_ordinal(turn.name)))
            self.session.last_sequence = event.sequence
            turn.last_sequence = event.sequence
            self._publish(event)

    def carry(self, turn: Turn, payload: tuple[str, object]) -> None:
        """Queues an event (a (oneof field, message) pair) for the next step of ``turn``,
        before that step's own events: a run stopped by an intervention leaves what it must
        still record (the model call the interrupt cut off) to the intervention's step,
        which stores it at no round trip of its own."""
        self.carried.append((turn.name, payload))

    async def step(
        self,
        turn: Turn,
        payloads: Sequence[tuple[str, object]],
        *,
        audit: Sequence[OutboxRecord] | None = None,
        audit_of: object = None,
        commands: Sequence[Command] = (),
        extra_turns: Sequence[Turn] = (),
        lease: Lease | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> list[SessionEvent]:
        """Stores one step of ``turn`` (events given as (oneof field, message) pairs) with
        the turn, the session and the audit records, in one transaction, then publishes it.

        ``audit_of`` is a callable that maps the numbered events to outbox records. A step
        whose ``alive`` says no once the lock is held writes nothing (its run was stopped
        while it waited).
        """
        async with self.lock:
            if alive is not None and not alive():
                raise asyncio.CancelledError
            persisted = self.reserved
            carried = [entry for entry in self.carried if entry[0] == turn.name]
            self.carried = [entry for entry in self.carried if entry[0] != turn.name]
            events = []
            for field_name, message in [*(payload for _, payload in carried), *payloads]:
                event = self._new_event(turn, self._stored_sequence())
                getattr(event, field_name).CopyFrom(message)
                events.append(event)
            if events:
                if not turn.first_sequence:
                    turn.first_sequence = events[0].sequence
                turn.last_sequence = events[-1].sequence
            if turn.state in TERMINAL and not turn.HasField("end_time"):
                turn.end_time.CopyFrom(timestamp())
            session = session_pb2.Session()
            session.CopyFrom(self.session)
            if events:
                session.last_sequence = max(session.last_sequence, events[-1].sequence)
            newest = max([turn, *extra_turns], key=lambda t: turn_ordinal(t.name))
            if not session.current_turn or turn_ordinal(newest.name) >= turn_ordinal(session.current_turn):
                session.current_turn = newest.name
                session.state = _SESSION_STATE.get(newest.state, session_pb2.Session.STATE_IDLE)
            session.update_time.CopyFrom(timestamp())
            session.etag = uuid.uuid4().hex
            records = list(audit or ())
            if callable(audit_of):
                records.extend(audit_of(events))
            ended = [turn_ordinal(t.name) for t in (turn, *extra_turns) if t.state in TERMINAL]
            write = Write(
                session=session,
                reserved_sequence=self.reserved,
                turns=[turn, *extra_turns],
                events=[(e, turn_ordinal(e.turn), False) for e in events]
                + [(e, ordinal, True) for e, ordinal in self.pending if ordinal not in ended],
                audit=records,
                commands=list(commands),
                compact_turns=ended,
                lease=lease,
            )
            try:
                await self.store.write(write)
            except BaseException:
                # Numbers past the stored reservation must not go to token deltas unreserved.
                self.reserved = persisted
                self.carried[:0] = carried
                raise
            self.pending.clear()
            self.session = session
            if turn_ordinal(newest.name) >= turn_ordinal(self.turn.name if self.turn else "x/0"):
                self.turn = newest
            for event in events:
                self._publish(event)
            return events

    async def save_session(self, session: session_pb2.Session) -> None:
        """Stores a change of the session itself (display name, overrides, acknowledgement)."""
        async with self.lock:
            await self.store.write(Write(session=session, reserved_sequence=self.reserved))
            self.session = session

    def subscribe(self, after: int) -> tuple[Subscriber, session_pb2.Session, list[SessionEvent]]:
        """A new live subscriber, the session as of now, and the deltas not stored yet.

        Must be called with the lock held, so nothing is published in between.
        """
        subscriber = Subscriber(cursor=after, horizon=after)
        self.subscribers.add(subscriber)
        snapshot = session_pb2.Session()
        snapshot.CopyFrom(self.session)
        return subscriber, snapshot, [event for event, _ in self.pending]

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self.last_used = time.monotonic()

    def close_streams(self, reason: str) -> None:
        self._hand_out(Closed(reason))
        self.subscribers.clear()
