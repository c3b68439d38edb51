"""One behaviour suite for the PendingReports port (skm_runtime.held_actions), run over the
in-memory store and the PostgreSQL one, so the unit tests' store is proven to behave like
the real adapter; and the protocol's durable re-report across a restart on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from skm_runtime.access import AccessCheck, HeldState, Hold, Outcome, Payload, Principal, Verdict
from skm_runtime.held_actions import HeldActions, MemoryPendingReports, PendingReport, PendingReports
from skm_runtime.pending_reports import PostgresPendingReports, pending_reports_ddl
from skm_stack import RunningStack
from tests.support.held_memory import MemoryPolicyCalls

MIKE = Principal(tenant="tenants/t", user="tenants/t/users/mike", roles=("member", "operator"))
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=4)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture(params=["memory", "postgres"])
async def reports(request: pytest.FixtureRequest, stack: RunningStack) -> AsyncIterator[PendingReports]:
    if request.param == "memory":
        yield MemoryPendingReports()
        return
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        schema = f"reports_{uuid.uuid4().hex[:8]}"
        await pool.execute(pending_reports_ddl(schema))
        yield PostgresPendingReports(pool, schema)
    finally:
        await pool.close()


def _report(
    name: str, since: datetime, *, claim: str = "c1", ok: bool = True, who: Principal | None = MIKE
) -> PendingReport:
    return PendingReport(f"tenants/t/blockedActions/{name}", claim, Outcome(ok, "" if ok else "EXIT_1"), who, since)


async def test_an_empty_store_owes_nothing(reports: PendingReports) -> None:
    assert await reports.due(10) == []


async def test_reports_come_back_whole_oldest_first_up_to_the_limit(reports: PendingReports) -> None:
    await reports.add(_report("b", T0 + timedelta(seconds=2), ok=False))
    await reports.add(_report("a", T0 + timedelta(seconds=1), who=None))
    await reports.add(_report("c", T0 + timedelta(seconds=3)))
    due = await reports.due(2)
    assert due == [_report("a", T0 + timedelta(seconds=1), who=None), _report("b", T0 + timedelta(seconds=2), ok=False)]


async def test_adding_the_same_report_again_replaces_its_outcome_and_keeps_its_age(reports: PendingReports) -> None:
    await reports.add(_report("a", T0))
    await reports.add(_report("a", T0 + timedelta(hours=1), ok=False))
    assert await reports.due(10) == [_report("a", T0, ok=False)]


async def test_one_entry_may_be_owed_under_two_claims_and_each_is_removed_alone(reports: PendingReports) -> None:
    await reports.add(_report("a", T0, claim="c1"))
    await reports.add(_report("a", T0 + timedelta(seconds=1), claim="c2"))
    await reports.remove("tenants/t/blockedActions/a", "c1")
    await reports.remove("tenants/t/blockedActions/unknown", "c1")  # nothing happens
    assert await reports.due(10) == [_report("a", T0 + timedelta(seconds=1), claim="c2")]


async def test_an_outcome_owed_before_a_restart_is_reported_by_the_next_process(pool: asyncpg.Pool) -> None:
    schema = f"reports_{uuid.uuid4().hex[:8]}"
    await pool.execute(pending_reports_ddl(schema))
    api = MemoryPolicyCalls()
    check = AccessCheck("user:tenants/t/users/mike", "can_execute", "tool:tenants/t/tools/shell")
    api.verdicts[(check.subject, check.relation, check.object)] = Verdict.REQUIRES_APPROVAL
    first = HeldActions(api, PostgresPendingReports(pool, schema))
    name = (await first.hold(MIKE, check, Hold("r1", Payload("t", b"x")))).blocked_action
    await api.resolve(name, HeldState.APPROVED)
    await first.approval(MIKE, name, "claim-1")
    api.away = True
    await first.complete(MIKE, name, "claim-1", Outcome(succeeded=True))
    await first.close()

    api.away = False
    second = HeldActions(api, PostgresPendingReports(pool, schema), first_backoff=0.01)
    second.start()
    try:
        for _ in range(200):
            if api.state(name).state is HeldState.EXECUTED:  # type: ignore[union-attr]  # the entry exists
                break
            await asyncio.sleep(0.01)
        assert api.outcome(name) == Outcome(True)
        assert await PostgresPendingReports(pool, schema).due(10) == []
    finally:
        await second.close()
