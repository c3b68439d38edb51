"""Sessions in memory: each one's numbered event log, live subscribers and running turn.

A :class:`SessionHandle` is the only writer of its session inside this process. Events get
their sequence numbers here, are stored through the store in one transaction per step, and
are then handed to every attached stream. Token deltas are handed out at once and stored
with the step that follows them (the model_call that ends the attempt), so streaming a
token costs no database round trip.

A model call's tokens reach the handle through a :class:`TokenStream`: its first piece is
handed out at once (no added delay to the first token), the following ones are held and
handed out together as one TokenDelta (one number, one row, one publish, one message per
stream) once ``tick`` seconds pass or ``limit`` pieces are held, whichever comes first.
Held text goes out before any other event of the session (every delta and step hands it
out first), so order holds and no text is lost; a stopped run's held text goes out with
the intervention's step, before the intervention.

Every event also goes to the session's :class:`LiveEvents` (a Redis Stream), for streams
attached to other processes. Each published event carries the sequence of the one this
handle published before it (``prev``): a reader that has not seen that one has missed
something, whichever way the event reached it, and must re-attach rather than go on.

:class:`Handles` holds the handles of the sessions this process uses now: a session is
loaded once however many callers ask for it at the same time, and dropped once idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from skm_runtime.access import Principal
from svc_conversation.errors import SessionNotFound
from svc_conversation.model import (
    ACTIVE,
    TERMINAL,
    Command,
    EventPayload,
    Lease,
    ModelCall,
    Session,
    SessionEvent,
    SessionState,
    StoredEvent,
    TokenDelta,
    Turn,
    TurnState,
    Write,
    turn_ordinal,
)
from svc_conversation.ports import Live, LiveEvents, SessionStore

# Sequence numbers reserved per round trip for token deltas.
_RESERVE_BLOCK = 1024
# A subscriber that falls this far behind is dropped (it re-attaches and replays).
_QUEUE_LIMIT = 20_000

_SESSION_STATE = {
    TurnState.RUNNING: SessionState.RUNNING,
    TurnState.AWAITING_APPROVAL: SessionState.AWAITING_APPROVAL,
    TurnState.INTERRUPTED: SessionState.INTERRUPTED,
}


def now() -> datetime:
    return datetime.now(UTC)


class Closed:
    """Sent to subscribers when the stream must end: the session was deleted, or shutdown."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Item = Live | Closed


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    # The newest sequence handed to the client.
    cursor: int = 0
    # Past the replay: reading live events.
    following: bool = False
    # The newest sequence given or queued: what it has once its queue is read.
    horizon: int = 0


class Stoppable(Protocol):
    """What a handle knows of the run of its turn: it is told to stop."""

    stopped: bool
    detached: bool


class SessionHandle:
    def __init__(self, store: SessionStore, session: Session, reserved: int, live: LiveEvents | None = None) -> None:
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
        self.pending: list[StoredEvent] = []
        # Events of a stopped run for the next step of their turn (see carry).
        self.carried: list[tuple[str, EventPayload]] = []
        # The session's newest turn as this process knows it; while it runs here, with what
        # its run changed and has not stored yet.
        self.turn: Turn | None = None
        self.runner: asyncio.Task[None] | None = None
        self.run: Stoppable | None = None  # the run of `runner`
        self.last_used = time.monotonic()
        self.deleted = False
        # Token text held for one TokenDelta (see TokenStream): of which turn and iteration,
        # and the timer (or task) that hands it out.
        self._held: list[str] = []
        self._held_for: tuple[str, int] = ("", 0)
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.session.name

    def idle(self) -> bool:
        return not self.subscribers and not self.running() and not self.lock.locked()

    def running(self) -> bool:
        """Whether this process runs one of the session's turns now."""
        return self.runner is not None and not self.runner.done()

    def active_turn(self) -> Turn | None:
        """The newest turn, if it runs (here or elsewhere)."""
        return self.turn if self.turn is not None and self.turn.state in ACTIVE else None

    def refresh(self, session: Session, reserved: int, turn: Turn | None) -> None:
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
        await self._reserve_next()
        number = self.next_sequence
        self.next_sequence += 1
        return number

    async def _reserve_next(self) -> None:
        """Makes sure the next number is reserved (a round trip once per block)."""
        if self.next_sequence > self.reserved:
            upto = self.next_sequence + _RESERVE_BLOCK
            await self.store.reserve(self.name, upto)
            self.reserved = upto

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

    async def delta(self, turn: Turn, iteration: int, text: str, *, alive: Callable[[], bool] | None = None) -> None:
        """Streams a token delta now (after the text held before it); it is stored with the next step."""
        async with self.lock:
            if alive is not None and not alive():
                raise asyncio.CancelledError
            await self._hand_out_held()
            self._emit_delta(turn.name, iteration, text, await self._sequence())

    def tokens(self, turn: Turn, iteration: int, *, alive: Callable[[], bool], tick: float, limit: int) -> TokenStream:
        """The stream of one model call's tokens into this session (see TokenStream)."""
        return TokenStream(self, turn, iteration, alive=alive, tick=tick, limit=limit)

    async def hold(
        self, turn: Turn, iteration: int, text: str, *, alive: Callable[[], bool], tick: float, limit: int
    ) -> None:
        """Holds a piece of token text, handed out with the pieces around it once ``tick``
        seconds have passed since the first of them or ``limit`` pieces are held."""
        if not alive():
            raise asyncio.CancelledError
        key = (turn.name, iteration)
        if self._held and self._held_for != key:
            await self.flush(alive=alive)  # left by an earlier call: it goes first
        self._held_for = key
        self._held.append(text)
        if len(self._held) >= limit:
            if not self._release_now():
                await self.flush(alive=alive)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(tick, self._due)

    async def flush(self, *, alive: Callable[[], bool] | None = None) -> None:
        """Hands out the held token text now."""
        async with self.lock:
            if alive is not None and not alive():
                raise asyncio.CancelledError
            await self._hand_out_held()

    def settle(self, *, drop: bool) -> None:
        """A model call ended: its timer stops; what it holds waits for the next step of the
        session (which hands it out first), or is dropped (``drop``: the run was detached, its
        turn goes on elsewhere, and such text would be stored by nobody)."""
        self._stop_timer()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if drop:
            self._held.clear()

    def _due(self) -> None:
        """The tick has passed: the held text goes out now, or as soon as the lock is free
        (a stopped run's too: it was written before the stop, and goes out before the
        intervention's events)."""
        self._timer = None
        if not self._held or self.deleted:
            return
        if self._release_now():
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        # A failure leaves the text held: the run's next delta or step hands it out, or
        # meets the same failure and reports it.
        with contextlib.suppress(Exception):
            async with self.lock:
                await self._hand_out_held()

    def _release_now(self) -> bool:
        """Hands out the held text without waiting, if nothing else numbers events now and
        the next number needs no reservation; False: it could not."""
        if self.lock.locked() or self.next_sequence > self.reserved:
            return False
        self._release_held()
        return True

    async def _hand_out_held(self) -> None:
        """Hands out the held text (with the lock held)."""
        if self._held:
            await self._reserve_next()
        if self._held:  # still: a detached run may have dropped it meanwhile
            self._release_held()

    def _release_held(self) -> None:
        """Hands out the held text as one delta; the next number must be reserved."""
        name, iteration = self._held_for
        text = "".join(self._held)
        self._held.clear()
        self._stop_timer()
        sequence = self.next_sequence
        self.next_sequence += 1
        self._emit_delta(name, iteration, text, sequence)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _emit_delta(self, turn: str, iteration: int, text: str, sequence: int) -> None:
        event = SessionEvent(sequence, turn, TokenDelta(iteration, text), now())
        self.pending.append(StoredEvent(event, turn_ordinal(turn), delta=True))
        self.session = replace(self.session, last_sequence=event.sequence)
        if self.turn is not None and self.turn.name == turn:
            self.turn = replace(self.turn, last_sequence=event.sequence)
        self._publish(event)

    def carry(self, turn: Turn, payload: EventPayload) -> None:
        """Queues an event for the next step of ``turn``, before that step's own events: a
        run stopped by an intervention leaves what it must still record (the model call the
        interrupt cut off) to the intervention's step, which stores it at no round trip of
        its own. A carried model call is counted on the turn that step stores."""
        self.carried.append((turn.name, payload))

    async def step(
        self,
        turn: Turn,
        payloads: Sequence[EventPayload],
        *,
        actor: Principal | None = None,
        commands: Sequence[Command] = (),
        lease: Lease | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[Turn, list[SessionEvent]]:
        """Stores one step of ``turn`` (its new state and events) with the session and the
        audit records of the events (for ``actor``), in one transaction, then publishes it.
        Returns the turn as stored and the numbered events.

        A step whose ``alive`` says no once the lock is held writes nothing (its run was
        stopped while it waited).
        """
        async with self.lock:
            if alive is not None and not alive():
                raise asyncio.CancelledError
            # Token text still held goes out before the step's events (a stopped run's too:
            # before the intervention that stopped it).
            await self._hand_out_held()
            persisted = self.reserved
            carried = [payload for name, payload in self.carried if name == turn.name]
            self.carried = [entry for entry in self.carried if entry[0] != turn.name]
            for payload in carried:
                if isinstance(payload, ModelCall):
                    turn = replace(turn, model_calls=(*turn.model_calls, payload.usage))
            at = now()
            events = [
                SessionEvent(self._stored_sequence(), turn.name, payload, at) for payload in (*carried, *payloads)
            ]
            if events:
                turn = replace(turn, first_sequence=turn.first_sequence or events[0].sequence)
                turn = replace(turn, last_sequence=events[-1].sequence)
            if turn.state in TERMINAL and turn.end_time is None:
                turn = replace(turn, end_time=at)
            session = self.session
            if events:
                session = replace(session, last_sequence=max(session.last_sequence, events[-1].sequence))
            ordinal = turn_ordinal(turn.name)
            if not session.current_turn or ordinal >= turn_ordinal(session.current_turn):
                session = replace(
                    session, current_turn=turn.name, state=_SESSION_STATE.get(turn.state, SessionState.IDLE)
                )
            session = replace(session, update_time=at, etag=uuid.uuid4().hex)
            ended = (ordinal,) if turn.state in TERMINAL else ()
            write = Write(
                session=session,
                reserved_sequence=self.reserved,
                turns=(turn,),
                events=(
                    *(StoredEvent(e, ordinal) for e in events),
                    *(stored for stored in self.pending if stored.turn not in ended),
                ),
                commands=tuple(commands),
                compact_turns=ended,
                lease=lease,
                actor=actor,
            )
            try:
                await self.store.write(write)
            except BaseException:
                # Numbers past the stored reservation must not go to token deltas unreserved.
                self.reserved = persisted
                self.carried[:0] = [(turn.name, payload) for payload in carried]
                raise
            self.pending.clear()
            self.session = session
            if self.turn is None or ordinal >= turn_ordinal(self.turn.name):
                self.turn = turn
            for event in events:
                self._publish(event)
            return turn, events

    async def save_session(self, session: Session) -> None:
        """Stores a change of the session itself (display name, overrides, acknowledgement)."""
        async with self.lock:
            await self.store.write(Write(session=session, reserved_sequence=self.reserved))
            self.session = session

    def subscribe(self, after: int) -> tuple[Subscriber, Session, list[SessionEvent]]:
        """A new live subscriber, the session as of now, and the deltas not stored yet.

        Must be called with the lock held, so nothing is published in between.
        """
        subscriber = Subscriber(cursor=after, horizon=after)
        self.subscribers.add(subscriber)
        return subscriber, self.session, [stored.event for stored in self.pending]

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self.last_used = time.monotonic()

    def close_streams(self, reason: str) -> None:
        self._hand_out(Closed(reason))
        self.subscribers.clear()


class TokenStream:
    """The tokens of one model call, as its run hands them to the session.

    The first piece is handed out at once, so a stream sees the first token without delay;
    the following ones are held and go out together as one TokenDelta once ``tick``
    seconds have passed since the first one held, or ``limit`` pieces are held (``tick``
    0: every piece is its own event). A stream of 2,000 tokens then costs a few dozen
    events rather than 2,000: each is a number, a pending row, a publish and a message to
    every attached stream.
    """

    def __init__(
        self,
        handle: SessionHandle,
        turn: Turn,
        iteration: int,
        *,
        alive: Callable[[], bool],
        tick: float,
        limit: int,
    ) -> None:
        self._handle = handle
        self._turn = turn
        self._iteration = iteration
        self._alive = alive
        self._tick = tick
        self._limit = max(1, limit)
        self._first = True

    async def push(self, text: str) -> None:
        """A piece of the model's text (raises CancelledError once the run is stopped)."""
        if self._first or self._tick <= 0:
            self._first = False
            await self._handle.delta(self._turn, self._iteration, text, alive=self._alive)
        else:
            await self._handle.hold(
                self._turn, self._iteration, text, alive=self._alive, tick=self._tick, limit=self._limit
            )

    def close(self, *, drop: bool = False) -> None:
        """The call ended: nothing of it waits on a timer any more (see SessionHandle.settle)."""
        self._handle.settle(drop=drop)


class Handles:
    """The sessions this process holds in memory, by name."""

    def __init__(self, store: SessionStore, live: LiveEvents | None) -> None:
        self._store = store
        self._live = live
        self._handles: dict[str, SessionHandle] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def __getitem__(self, name: str) -> SessionHandle:
        return self._handles[name]

    def __iter__(self) -> Iterator[SessionHandle]:
        return iter(list(self._handles.values()))

    def find(self, name: str) -> SessionHandle | None:
        return self._handles.get(name)

    def drop(self, name: str) -> None:
        self._handles.pop(name, None)

    def evict_idle(self, before: float) -> None:
        """Drops the handles unused since ``before`` (monotonic) that nothing holds."""
        for name, handle in list(self._handles.items()):
            if handle.idle() and handle.last_used < before:
                del self._handles[name]

    async def get(self, name: str, *, fresh: bool = False) -> SessionHandle:
        """The session's handle; with ``fresh``, one that runs no turn here is brought up to
        what is stored (another process may have written the session since it was loaded)."""
        handle = self._handles.get(name)
        if handle is not None and not handle.deleted:
            handle.last_used = time.monotonic()
            if fresh:
                await self.refresh(handle, lock=True)
            return handle
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            handle = self._handles.get(name)
            if handle is not None and not handle.deleted:
                return handle
            found = await self._store.load(name)
            if found is None:
                raise SessionNotFound(f"session {name!r} does not exist", metadata={"session": name})
            handle = SessionHandle(self._store, found.session, found.reserved, self._live)
            handle.turn = found.turn
            self._handles[name] = handle
        self._loading.pop(name, None)
        return handle

    async def refresh(self, handle: SessionHandle, *, lock: bool = False) -> None:
        """Brings a handle that runs no turn here up to what is stored (with ``lock``, taking
        the handle's lock for it; without, the caller holds it)."""
        if handle.running():
            return
        if lock:
            async with handle.lock:
                await self.refresh(handle)
            return
        found = await self._store.load(handle.name)
        if found is None:
            return  # deleted: the caller's next write finds out
        handle.refresh(found.session, found.reserved, found.turn)
