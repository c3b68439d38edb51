"""One behaviour suite for svc_conversation's SessionStore port, run over every
implementation of it: the in-memory one the unit tests use
(tests/support/conversation_memory.py) and PostgresSessionStore on a real PostgreSQL. What
passes here for both is what a unit test over the fake may rely on (as openfga's
pkg/storage/test suite holds every storage backend to one behaviour).

Each test gets empty state of its own: a fresh PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from skm_runtime.access import Principal
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from skm_stack import RunningStack
from svc_conversation.adapters.postgres import PostgresSessionStore
from svc_conversation.errors import SessionGone
from svc_conversation.model import (
    Command,
    FinalResponse,
    Lease,
    Session,
    SessionEvent,
    SessionState,
    StoredEvent,
    TokenDelta,
    Turn,
    TurnState,
    TurnStateChanged,
    UserMessage,
    Write,
)
from svc_conversation.ports import SessionStore
from tests.support.conversation_memory import MemorySessionStore
from tests.support.databases import fresh_database

T1, T2 = "tenants/t1", "tenants/t2"
ALICE, BOB = f"{T1}/users/alice", f"{T1}/users/bob"
EPOCH = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, stack: RunningStack) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    async with fresh_database(stack, "skm_conv_ports") as dsn:
        postgres = await PostgresSessionStore.open(dsn)
        try:
            yield postgres
        finally:
            await postgres.close()


def session(n: int, *, tenant: str = T1, owner: str = ALICE, updated: int = 0) -> Session:
    at = EPOCH + timedelta(seconds=updated)
    return Session(
        name=f"{tenant}/sessions/s{n:03d}",
        persona=f"{tenant}/personas/helper",
        mode=DeploymentMode.DEVELOPER,
        display_name=f"session {n}",
        model_overrides=(ModelOverride(ModelRole.PRIMARY, ("models/a", "models/b"), 0.5, 100),),
        state=SessionState.IDLE,
        owner=owner,
        create_time=at,
        update_time=at,
        etag=f"e{n}",
    )


def turn(parent: Session, ordinal: int, state: TurnState = TurnState.RUNNING, request_id: str = "") -> Turn:
    return Turn(
        name=f"{parent.name}/turns/{ordinal}",
        state=state,
        input_text=f"message {ordinal}",
        request_id=request_id or f"r{ordinal}",
        create_time=EPOCH,
    )


def event(of: Turn, sequence: int, payload: object) -> SessionEvent:
    return SessionEvent(sequence, of.name, payload, EPOCH)  # type: ignore[arg-type]  # the test's payloads


def stored(of: Turn, sequence: int, payload: object, *, delta: bool = False) -> StoredEvent:
    return StoredEvent(event(of, sequence, payload), int(of.name.rsplit("/", 1)[1]), delta)


def lease(runner: str, seconds: float) -> Lease:
    return Lease(runner, f"{runner}:1", EPOCH + timedelta(seconds=seconds))


async def test_a_session_is_stored_once_per_owner_and_request_id(store: SessionStore) -> None:
    first, created = await store.create_session(session(1), "req-1")
    assert created
    assert first == session(1)
    again, created = await store.create_session(session(2), "req-1")
    assert not created
    assert again == session(1)
    other, created = await store.create_session(session(3, owner=BOB), "req-1")
    assert created
    assert other.name.endswith("s003")
    assert (await store.create_session(session(4), None))[1]
    assert (await store.create_session(session(5), None))[1]
    assert await store.get_session(session(1).name) == (session(1), 0)
    assert await store.get_session(f"{T1}/sessions/none") is None


async def test_sessions_are_listed_per_tenant_newest_first_after_a_cursor(store: SessionStore) -> None:
    for n, owner in ((1, ALICE), (2, BOB), (3, ALICE), (4, ALICE)):
        await store.create_session(session(n, owner=owner, updated=n), None)
    await store.create_session(session(9, tenant=T2, owner=f"{T2}/users/x", updated=9), None)
    everyone = await store.list_sessions(T1, None, 10, None)
    assert [s.name[-4:] for s in everyone] == ["s004", "s003", "s002", "s001"]
    alices = await store.list_sessions(T1, ALICE, 2, None)
    assert [s.name[-4:] for s in alices] == ["s004", "s003"]
    last = alices[-1]
    assert last.update_time is not None
    rest = await store.list_sessions(T1, ALICE, 2, (last.update_time, "s003"))
    assert [s.name[-4:] for s in rest] == ["s001"]


async def test_a_write_stores_session_turns_events_and_commands_at_once(store: SessionStore) -> None:
    parent, _ = await store.create_session(session(1), None)
    first = turn(parent, 1)
    written = replace(parent, current_turn=first.name, state=SessionState.RUNNING)
    await store.write(
        Write(
            session=written,
            reserved_sequence=1024,
            turns=(first,),
            events=(
                stored(first, 1, TurnStateChanged(TurnState.RUNNING)),
                stored(first, 2, UserMessage("hi", "r1")),
                stored(first, 3, TokenDelta(1, "he"), delta=True),
            ),
            commands=(Command("c1", "NUDGE", 1, "f"),),
            actor=Principal(T1, ALICE),
        )
    )
    loaded = await store.load(parent.name)
    assert loaded is not None
    assert (loaded.session, loaded.reserved, loaded.turn) == (written, 1024, first)
    assert [e.sequence for e in await store.list_events(parent.name, 0, 10)] == [1, 2, 3]
    assert [e.payload for e in await store.list_events(parent.name, 1, 1)] == [UserMessage("hi", "r1")]
    assert await store.command(parent.name, "c1") == Command("c1", "NUDGE", 1, "f")
    assert await store.command(parent.name, "c2") is None
    assert await store.turn_by_request(parent.name, "r1") == first
    # The turn ends: its deltas are dropped, the rest stays; a lower reservation never wins.
    ended = replace(first, state=TurnState.COMPLETED, response_text="hello")
    await store.write(
        Write(
            session=written,
            reserved_sequence=10,
            turns=(ended,),
            events=(stored(ended, 4, FinalResponse("hello")), stored(ended, 5, TurnStateChanged(TurnState.COMPLETED))),
            compact_turns=(1,),
        )
    )
    assert [e.sequence for e in await store.list_events(parent.name, 0, 10)] == [1, 2, 4, 5]
    assert (await store.get_session(parent.name) or (None, 0))[1] == 1024
    assert await store.get_turn(parent.name, 1) == ended


async def test_events_are_read_per_turn_and_turns_by_ordinal(store: SessionStore) -> None:
    parent, _ = await store.create_session(session(1), None)
    one, two = turn(parent, 1, TurnState.COMPLETED), turn(parent, 2)
    current = replace(parent, current_turn=two.name)
    await store.write(Write(current, 0, (one,), (stored(one, 1, UserMessage("a")),)))
    await store.write(Write(current, 0, (two,), (stored(two, 2, UserMessage("b")), stored(two, 3, FinalResponse("c")))))
    assert [e.sequence for e in await store.list_events(parent.name, 0, 10, turn=2)] == [2, 3]
    assert [e.sequence for e in await store.list_events(parent.name, 2, 10, turn=2)] == [3]
    assert [t.name for t in await store.list_turns(parent.name, 0, 10)] == [one.name, two.name]
    assert [t.name for t in await store.list_turns(parent.name, 1, 10)] == [two.name]
    loaded = await store.load(parent.name)
    assert loaded is not None
    assert loaded.turn == two


async def test_a_session_without_a_current_turn_loads_without_one(store: SessionStore) -> None:
    parent, _ = await store.create_session(session(1), None)
    await store.reserve(parent.name, 2048)
    await store.reserve(parent.name, 5)
    loaded = await store.load(parent.name)
    assert loaded is not None
    assert (loaded.reserved, loaded.turn) == (2048, None)
    assert await store.load(f"{T1}/sessions/none") is None


async def test_a_deleted_session_takes_everything_with_it_and_refuses_writes(store: SessionStore) -> None:
    parent, _ = await store.create_session(session(1), None)
    first = turn(parent, 1)
    await store.write(Write(parent, 0, (first,), (stored(first, 1, UserMessage("a")),)))
    await store.delete_session(parent.name)
    assert await store.get_session(parent.name) is None
    assert await store.list_events(parent.name, 0, 10) == []
    assert await store.get_turn(parent.name, 1) is None
    with pytest.raises(SessionGone):
        await store.write(Write(parent, 0, (first,), (stored(first, 2, UserMessage("b")),)))


async def test_leases_are_held_renewed_and_taken_over_once_they_run_out(store: SessionStore) -> None:
    a, _ = await store.create_session(session(1), None)
    b, _ = await store.create_session(session(2), None)
    c, _ = await store.create_session(session(3), None)
    await store.write(Write(a, 0, (turn(a, 1),), lease=lease("one", 10)))
    await store.write(Write(b, 0, (turn(b, 1),), lease=lease("two", 10)))
    await store.write(Write(c, 0, (turn(c, 1, TurnState.COMPLETED),), lease=lease("two", 10)))
    found = await store.lease(a.name, 1)
    assert found is not None
    assert found[1] == lease("one", 10)
    # A write without a lease keeps the one there.
    await store.write(Write(a, 0, (turn(a, 1),)))
    assert (await store.lease(a.name, 1) or (None, None))[1] == lease("one", 10)
    # Renewal: only the runner's own active turns of the sessions named.
    await store.renew(lease("one", 30), [a.name, b.name])
    assert (await store.lease(a.name, 1) or (None, None))[1] == lease("one", 30)
    assert (await store.lease(b.name, 1) or (None, None))[1] == lease("two", 10)
    # At 20 s, two's lease has run out, one's has not; an ended turn is nobody's to take.
    taken = await store.take_orphans(lease("three", 60), EPOCH + timedelta(seconds=20))
    assert taken == [b.name]
    assert (await store.lease(b.name, 1) or (None, None))[1] == lease("three", 60)
    assert await store.take_orphans(lease("four", 90), EPOCH + timedelta(seconds=20)) == []
    # A restarted runner takes its own at once.
    assert await store.take_own(lease("one", 45)) == [a.name]
    assert (await store.lease(a.name, 1) or (None, None))[1] == lease("one", 45)


async def test_a_turn_never_leased_has_no_lease_and_is_anyone_s_to_take(store: SessionStore) -> None:
    a, _ = await store.create_session(session(1), None)
    await store.write(Write(a, 0, (turn(a, 1),)))
    found = await store.lease(a.name, 1)
    assert found is not None
    assert found == (turn(a, 1), None)
    assert await store.lease(a.name, 2) is None
    assert await store.take_orphans(lease("one", 10), EPOCH) == [a.name]
