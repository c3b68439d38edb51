"""One behaviour suite for svc_tools's ExecutionStore, run over every implementation: the
Postgres adapter (on a database of its own in the session's real PostgreSQL) and the
in-memory store the unit tests use (tests/support/tools_memory.py). Whatever the unit tests
learn from the in-memory store holds for the real one because both pass this suite.

Leases are short (LEASE_SECONDS) and run out in real time on both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skm.events.v1 import event_pb2
from skm_runtime.access import Decision, Principal, Verdict
from skm_runtime.values import FailureReason
from skm_stack import RunningStack
from svc_tools.adapters.postgres import SCHEMA, PostgresExecutionStore
from svc_tools.model import Change, Execution, ExecutionState, Failure, Success
from svc_tools.ports import ExecutionStore
from tests.support.databases import fresh_database
from tests.support.tools_memory import MemoryExecutionStore

LEASE_SECONDS = 0.5
# Long enough for a lease to run out on either clock.
PAST_THE_LEASE = LEASE_SECONDS + 0.3
T1 = "tenants/t1"
ALICE = Principal(T1, f"{T1}/users/alice", ("member",))
ME, OTHER = "tools-me", "tools-other"
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclasses.dataclass
class Backend:
    """An ExecutionStore under test, and what its outbox holds: (event kind, execution)."""

    store: ExecutionStore
    events: Callable[[], Any]


@pytest.fixture(scope="module")
async def tools_database(stack: RunningStack) -> AsyncIterator[str]:
    """A database of this suite's own in the session's PostgreSQL: svc_tools copies of other
    tests share the `tools` schema of the default one, and would take over what is left here."""
    async with fresh_database(stack, "skm_tools_ports") as dsn:
        yield dsn


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test runs once over every implementation of ExecutionStore."""
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


@pytest.fixture
async def memory_backend() -> Backend:
    memory = MemoryExecutionStore(lease_seconds=LEASE_SECONDS)

    async def events() -> list[tuple[str, str]]:
        return list(memory.events)

    return Backend(memory, events)


@pytest.fixture
async def postgres_backend(tools_database: str) -> AsyncIterator[Backend]:
    postgres = await PostgresExecutionStore.open(tools_database, lease_seconds=LEASE_SECONDS)
    # Each test starts from empty tables: `orphans` and `unreported` look at every row.
    await postgres.pool.execute(f"TRUNCATE {SCHEMA}.executions, {SCHEMA}.outbox")

    async def events() -> list[tuple[str, str]]:
        rows = await postgres.pool.fetch(f"SELECT value FROM {SCHEMA}.outbox ORDER BY seq")
        found: list[tuple[str, str]] = []
        for row in rows:
            event = event_pb2.Event.FromString(row["value"])
            kind = event.WhichOneof("payload")
            if kind == "tool_completed":
                found.append((kind, event.tool_completed.execution.name))
            else:
                found.append((str(kind), _requested[(event.tenant, event.tool_requested.tool_call_id)]))
        return found

    try:
        yield Backend(postgres, events)
    finally:
        await postgres.close()


# ToolRequested carries no execution name: the suite gives each execution a distinct
# tool_call_id and finds the name from it.
_requested: dict[tuple[str, str], str] = {}


def new_execution(*, turn: str = "", **changes: Any) -> Execution:
    name = f"{T1}/executions/{uuid.uuid4()}"
    tool_call_id = f"call-{uuid.uuid4().hex[:8]}"
    _requested[(T1, tool_call_id)] = name
    values: dict[str, Any] = {
        "name": name,
        "tool": f"{T1}/tools/code_execution",
        "arguments_json": '{"runtime": "python", "code": "print(1)"}',
        "principal": ALICE,
        "request_id": str(uuid.uuid4()),
        "fingerprint": uuid.uuid4().hex,
        "state": ExecutionState.CHECKING,
        "create_time": START,
        "turn": turn,
        "tool_call_id": tool_call_id,
        "timeout_seconds": 12.5,
        "policy_context": {"hour": 3},
        "trace_id": "a" * 32,
        **changes,
    }
    return Execution(**values)


def moved(execution: Execution, state: ExecutionState, **changes: Any) -> Execution:
    return dataclasses.replace(execution, state=state, **changes)


def finished(execution: Execution, result: Success | Failure | None = None, **changes: Any) -> Execution:
    result = result or Success('{"exit_code": 0}')
    state = ExecutionState.SUCCEEDED if isinstance(result, Success) else ExecutionState.FAILED
    return moved(execution, state, result=result, end_time=START + timedelta(seconds=9), **changes)


ALLOWED = Decision(Verdict.ALLOW, "ALLOWED", "d1")
HELD = Decision(Verdict.REQUIRES_APPROVAL, "HIGH_RISK", "d2", f"{T1}/blockedActions/b1")


# -- create and get ---------------------------------------------------------------------------------


async def test_create_stores_an_execution_once_per_tenant_and_request_id(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    stored, created = await store.create(execution, ME)
    assert created
    assert stored == execution
    assert await store.get(execution.name) == execution

    retry = new_execution(request_id=execution.request_id, fingerprint="another")
    again, created = await store.create(retry, OTHER)
    assert not created
    assert again == execution
    assert await store.get(retry.name) is None

    elsewhere = new_execution(request_id=execution.request_id, name=f"tenants/t2/executions/{uuid.uuid4()}")
    assert (await store.create(elsewhere, ME))[1]
    assert await store.get(f"{T1}/executions/{uuid.uuid4()}") is None


async def test_an_execution_comes_back_as_it_was_created_with_what_the_wire_carries(backend: Backend) -> None:
    store = backend.store
    execution = new_execution(
        principal=Principal(T1, ALICE.user, ("member", "operator"), constitution_sha256="c" * 64),
        persona=f"{T1}/personas/helper",
        decision=dataclasses.replace(ALLOWED, cached=True),
        claimed=True,
        cancel_requested=True,
    )
    await store.create(execution, ME)
    got = await store.get(execution.name)
    assert got is not None
    # The principal's constitution and a decision's cache flag are not stored; the
    # protocol's flags start false whatever the execution says.
    assert got == dataclasses.replace(
        execution,
        principal=Principal(T1, ALICE.user, ("member", "operator")),
        decision=ALLOWED,
        claimed=False,
        cancel_requested=False,
    )


async def test_direct_runs_are_audited_when_created_and_every_run_when_it_ends(backend: Backend) -> None:
    store = backend.store
    direct = new_execution()
    in_a_turn = new_execution(turn=f"{T1}/sessions/s1/turns/u1")
    await store.create(direct, ME)
    await store.create(in_a_turn, ME)
    await store.create(new_execution(request_id=direct.request_id), ME)
    assert await backend.events() == [("tool_requested", direct.name)]

    running = moved(in_a_turn, ExecutionState.RUNNING, decision=ALLOWED)
    assert await store.save(in_a_turn, running, ME)
    assert await store.save(running, finished(running), ME)
    assert await backend.events() == [("tool_requested", direct.name), ("tool_completed", in_a_turn.name)]


# -- save -------------------------------------------------------------------------------------------


async def test_save_is_a_compare_and_set_on_the_state_and_the_driver(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    held = moved(execution, ExecutionState.AWAITING_APPROVAL, decision=HELD)

    assert not await store.save(execution, held, OTHER)
    assert not await store.save(moved(execution, ExecutionState.RUNNING), held, ME)
    assert await store.get(execution.name) == execution

    assert await store.save(execution, held, ME)
    assert await store.get(execution.name) == held
    # The same transition again finds another state.
    assert not await store.save(execution, held, ME)


async def test_save_writes_the_run_and_the_protocol_but_never_the_request(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    running = moved(
        execution,
        ExecutionState.RUNNING,
        decision=HELD,
        start_time=START + timedelta(seconds=1),
        claimed=True,
        # What the request as accepted says cannot change.
        timeout_seconds=99.0,
        policy_context={"changed": True},
        fingerprint="changed",
        trace_id="b" * 32,
    )
    assert await store.save(execution, running, ME)
    got = await store.get(execution.name)
    assert got == dataclasses.replace(
        running,
        timeout_seconds=execution.timeout_seconds,
        policy_context=execution.policy_context,
        fingerprint=execution.fingerprint,
        trace_id=execution.trace_id,
    )


async def test_a_result_ends_the_drive(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    done = finished(execution, Failure(FailureReason.DENIED, "policy denied the run (NO_RELATION)"), decision=ALLOWED)
    assert await store.save(execution, done, ME)
    assert await store.get(execution.name) == done
    # Nobody drives it, and nobody can take it again.
    assert await store.take(execution.name, OTHER) is None
    assert await store.take(execution.name, ME) is None
    assert not await store.save(done, finished(done), ME)


# -- leases -----------------------------------------------------------------------------------------


async def test_an_execution_is_taken_only_when_nobody_else_drives_it(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    assert await store.take(execution.name, OTHER) is None
    # Its own driver may take it again (a stream of the same process following it).
    assert await store.take(execution.name, ME) == execution

    await store.release(execution.name, OTHER)
    assert await store.take(execution.name, OTHER) is None
    await store.release(execution.name, ME)
    assert await store.take(execution.name, OTHER) == execution
    # OTHER drives it now: ME's writes fail.
    assert not await store.save(execution, moved(execution, ExecutionState.RUNNING), ME)
    assert await store.take(f"{T1}/executions/{uuid.uuid4()}", ME) is None


async def test_a_lease_that_ran_out_lets_another_take_over_unless_renewed(backend: Backend) -> None:
    store = backend.store
    renewed, lapsed = new_execution(), new_execution()
    await store.create(renewed, ME)
    await store.create(lapsed, ME)
    for _ in range(3):
        await asyncio.sleep(LEASE_SECONDS / 2)
        await store.renew(ME, [renewed.name])
    assert await store.take(renewed.name, OTHER) is None
    assert await store.take(lapsed.name, OTHER) == lapsed
    # A renewal by the driver that lost it changes nothing.
    await store.renew(ME, [lapsed.name])
    assert await store.take(lapsed.name, ME) is None


async def test_orphans_are_held_or_running_executions_whose_driver_is_gone(backend: Backend) -> None:
    store = backend.store
    checking, held, running, released, done = (
        new_execution(create_time=START + timedelta(seconds=i)) for i in range(5)
    )
    for execution in (checking, held, running, released, done):
        await store.create(execution, ME)
    held_now = moved(held, ExecutionState.AWAITING_APPROVAL, decision=HELD)
    running_now = moved(running, ExecutionState.RUNNING, decision=ALLOWED)
    released_now = moved(released, ExecutionState.RUNNING, decision=ALLOWED)
    assert await store.save(held, held_now, ME)
    assert await store.save(running, running_now, ME)
    assert await store.save(released, released_now, ME)
    assert await store.save(done, finished(done), ME)
    await store.release(released.name, ME)

    assert await store.orphans(10) == [released_now]
    await asyncio.sleep(PAST_THE_LEASE)
    # CHECKING ones are carried on by whoever follows them, not by maintenance.
    assert await store.orphans(10) == [held_now, running_now, released_now]
    assert await store.orphans(2) == [held_now, running_now]
    await store.renew(ME, [held.name])
    assert await store.orphans(10) == [running_now, released_now]


# -- reporting outcomes --------------------------------------------------------------------------------


async def test_claimed_results_are_unreported_until_marked(backend: Backend) -> None:
    store = backend.store
    first, second, unclaimed, live = new_execution(), new_execution(), new_execution(), new_execution()
    for execution in (first, second, unclaimed, live):
        await store.create(execution, ME)
    claimed = [moved(e, ExecutionState.RUNNING, decision=HELD, claimed=True) for e in (first, second, live)]
    for before, after in zip((first, second, live), claimed, strict=True):
        assert await store.save(before, after, ME)
    assert await store.save(claimed[1], finished(claimed[1]), ME)
    assert await store.save(claimed[0], finished(claimed[0]), ME)
    assert await store.save(unclaimed, finished(unclaimed), ME)

    assert [e.name for e in await store.unreported(10)] == [second.name, first.name]
    assert [e.name for e in await store.unreported(1)] == [second.name]
    await store.mark_reported(second.name)
    assert [e.name for e in await store.unreported(10)] == [first.name]
    got = await store.get(second.name)
    assert got is not None
    assert got.completion_reported


# -- cancel requests and the change feed -----------------------------------------------------------------


async def test_a_cancel_request_is_recorded_on_live_executions_only(backend: Backend) -> None:
    store = backend.store
    live, done = new_execution(), new_execution()
    await store.create(live, ME)
    await store.create(done, ME)
    assert await store.save(done, finished(done), ME)

    await store.request_cancel(live.name)
    await store.request_cancel(done.name)
    got_live, got_done = await store.get(live.name), await store.get(done.name)
    assert got_live is not None
    assert got_live.cancel_requested
    assert got_done is not None
    assert not got_done.cancel_requested
    # A later save keeps the request.
    assert await store.save(got_live, moved(got_live, ExecutionState.RUNNING, cancel_requested=False), ME)
    again = await store.get(live.name)
    assert again is not None
    assert again.cancel_requested


async def test_the_change_feed_carries_saves_and_cancel_requests_of_every_process(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    async with store.changes() as feed:
        changes = aiter(feed)
        running = moved(execution, ExecutionState.RUNNING)
        assert await store.save(execution, running, ME)
        await store.request_cancel(execution.name)
        await store.release(execution.name, ME)
        assert await store.take(execution.name, OTHER) is not None
        assert await store.save(running, finished(running), OTHER)

        seen = [await asyncio.wait_for(anext(changes), 5) for _ in range(3)]
    assert seen == [Change(execution.name), Change(execution.name, cancel_requested=True), Change(execution.name)]


async def test_two_feeds_each_get_every_change(backend: Backend) -> None:
    store = backend.store
    execution = new_execution()
    await store.create(execution, ME)
    async with store.changes() as one, store.changes() as two:
        await store.request_cancel(execution.name)
        for feed in (one, two):
            assert await asyncio.wait_for(anext(aiter(feed)), 5) == Change(execution.name, cancel_requested=True)
