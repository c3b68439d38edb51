"""svc_conversation's live events across processes, at the core: streams attached where a
session's turn does not run read what another process published (in-memory stand-ins for
Postgres and the Redis Streams), each event once and in order, and end when one is missing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm_runtime.access import Principal
from svc_conversation import convert
from svc_conversation.adapters.records import EncodedSessionStore
from svc_conversation.core import Conversation, StreamClosed
from svc_conversation.core.handles import SessionHandle
from svc_conversation.errors import SequenceOutOfRange
from svc_conversation.model import Turn, TurnState, UserMessage
from svc_conversation.ports import Live
from svc_conversation.settings import ConversationSettings

NAME = "tenants/t1/sessions/s1"
ALICE = Principal("tenants/t1", "tenants/t1/users/alice", ("member",))
Event = session_event_pb2.SessionEvent


def event(sequence: int) -> Event:
    made = Event(sequence=sequence, turn=f"{NAME}/turns/1")
    made.token_delta.text = f"t{sequence}"
    return made


class Store:
    """The session as Postgres has it: its row, reservation and stored events."""

    def __init__(self, last: int) -> None:
        self.session = session_pb2.Session(name=NAME, last_sequence=last)
        self.reserved = last
        self.events = [event(n) for n in range(1, last + 1)]
        self.writes: list[Any] = []

    async def session_state(self, name: str) -> tuple[session_pb2.Session, int, turn_pb2.Turn | None] | None:
        copy = session_pb2.Session()
        copy.CopyFrom(self.session)
        return copy, self.reserved, None

    async def list_events(self, name: str, after: int, limit: int, **_: Any) -> list[Event]:
        return [e for e in self.events if e.sequence > after][:limit]

    async def reserve(self, name: str, upto: int) -> None:
        self.reserved = upto

    async def write(self, write: Any) -> None:
        self.writes.append(write)


class Streams:
    """The Redis Streams as one process sees them: what it publishes, what it follows."""

    def __init__(self) -> None:
        self.published: list[tuple[int, int]] = []
        self.following: dict[str, int] = {}
        self.deliver: Callable[[str, int, list[Live]], None] = lambda _n, _a, _e: None
        self.lost: Callable[[str], None] = lambda _n: None

    def start(self, deliver: Callable[[str, int, list[Live]], None], lost: Callable[[str], None]) -> None:
        self.deliver, self.lost = deliver, lost

    def publish(self, session: str, event: Event, prev: int) -> None:
        self.published.append((event.sequence, prev))

    def follow(self, session: str, after: int) -> None:
        self.following[session] = min(after, self.following.get(session, after))

    def unfollow(self, session: str) -> None:
        self.following.pop(session, None)

    def read(self, after: int, *sequences: int, prev: dict[int, int] | None = None) -> None:
        """Hands the process what a read after ``after`` found."""
        prev = prev or {}
        self.deliver(NAME, after, [(event(n), prev.get(n, n - 1)) for n in sequences])


async def conversation(store: Store, streams: Streams) -> Conversation:
    made = Conversation(
        EncodedSessionStore(cast(Any, store)),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        ConversationSettings(),
        runner_id="test",
        streams=streams,
    )
    streams.start(made._attachments.relay, made._attachments.lost)
    return made


async def waiting(stream: AsyncIterator[Event]) -> asyncio.Task[Event]:
    """The stream's next event, asked for now: the stream reaches its live part first."""
    task = asyncio.ensure_future(anext(stream))
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def taken(stream: AsyncIterator[Event], count: int) -> list[int]:
    return [(await anext(stream)).sequence for _ in range(count)]


async def test_a_stream_reads_the_stored_events_then_the_other_process_s_once_and_in_order() -> None:
    store, streams = Store(last=3), Streams()
    core = await conversation(store, streams)
    _, start, stream = await core.attach(ALICE, NAME, 0)
    assert start == 0
    assert await taken(stream, 3) == [1, 2, 3]
    # Past the replay the stream follows the session's Redis Stream from where it is.
    pending = await waiting(stream)
    streams.read(3, 4, 5)
    assert (await pending).sequence == 4
    assert streams.following == {NAME: 3}
    # A read from further back (another stream's) brings what it had again: not twice.
    streams.read(2, 3, 4, 5, 6)
    assert await taken(stream, 2) == [5, 6]


async def test_a_missing_event_ends_the_stream_so_the_client_re_attaches() -> None:
    store, streams = Store(last=3), Streams()
    core = await conversation(store, streams)
    _, _, stream = await core.attach(ALICE, NAME, 0)
    assert await taken(stream, 3) == [1, 2, 3]
    pending = await waiting(stream)
    # 5 says 4 came before it, and this stream never had 4 (trimmed, or dropped).
    streams.read(3, 5, prev={5: 4})
    with pytest.raises(StreamClosed) as closed:
        await pending
    assert closed.value.reason == "GAP"
    assert streams.following == {}


async def test_a_read_from_past_a_stream_s_cursor_waits_for_the_read_from_its_own() -> None:
    store, streams = Store(last=3), Streams()
    core = await conversation(store, streams)
    _, _, stream = await core.attach(ALICE, NAME, 0)
    assert await taken(stream, 3) == [1, 2, 3]
    pending = await waiting(stream)
    # A read that began before this stream followed (after 9, for another one) is not
    # this stream's to judge: the read after 3 it asked for brings its events.
    streams.read(9, 10, 11)
    streams.read(3, 4, 5)
    assert (await pending).sequence == 4
    assert await taken(stream, 1) == [5]


async def test_redis_lost_ends_the_streams_that_follow_it() -> None:
    store, streams = Store(last=2), Streams()
    core = await conversation(store, streams)
    _, _, stream = await core.attach(ALICE, NAME, 0)
    assert await taken(stream, 2) == [1, 2]
    pending = await waiting(stream)
    streams.lost(NAME)
    with pytest.raises(StreamClosed) as closed:
        await pending
    assert closed.value.reason == "UNAVAILABLE"


async def test_attaching_takes_the_session_as_stored_since_another_process_wrote_it() -> None:
    store, streams = Store(last=2), Streams()
    core = await conversation(store, streams)
    _, _, stream = await core.attach(ALICE, NAME, 0)
    assert await taken(stream, 2) == [1, 2]
    # Another process ran a turn: stored up to 40, numbers reserved up to 1064.
    store.session.last_sequence = 40
    store.reserved = 1064
    snapshot, start, _ = await core.attach(ALICE, NAME, 1000)
    assert (start, snapshot.last_sequence) == (1000, 40)
    with pytest.raises(SequenceOutOfRange):
        await core.attach(ALICE, NAME, 1065)


async def test_each_published_event_names_the_one_published_before_it() -> None:
    store, streams = Store(last=7), Streams()
    handle = SessionHandle(
        EncodedSessionStore(cast(Any, store)), convert.session_of(store.session), store.reserved, streams
    )
    turn = Turn(name=f"{NAME}/turns/2", state=TurnState.RUNNING)
    await handle.step(turn, [UserMessage(text="hi")])
    await handle.delta(turn, 1, "a")
    await handle.delta(turn, 1, "b")
    assert streams.published == [(8, 7), (9, 8), (10, 9)]
