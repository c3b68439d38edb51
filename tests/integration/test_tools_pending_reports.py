"""svc_tools reports what a previous process of it owed svc_policy, from its PostgreSQL.

An action is held, approved and claimed in a real svc_policy; the outcome of its run is
owed (a row in `tools.pending_reports`, as a process that could not reach svc_policy and
then stopped leaves it). A new svc_tools process, started on that database, reports it as
it starts: the entry ends EXECUTED, with that outcome, and nothing is owed any more.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from skm.policy.v1 import blocked_action_pb2
from skm_runtime.access import Outcome
from skm_runtime.held_actions import PendingReport
from skm_runtime.pending_reports import PostgresPendingReports, pending_reports_ddl
from skm_stack import RunningStack
from svc_tools.adapters.postgres import SCHEMA
from tests.support.databases import fresh_database
from tests.support.policy import held_approved_claimed, held_state, policy_process
from tests.support.tools import serving_tools, tools_settings

State = blocked_action_pb2.BlockedAction.State


async def test_an_outcome_owed_before_a_restart_is_reported_by_the_next_process(stack: RunningStack) -> None:
    with policy_process(stack, "skm-test-tools-owed-") as policy:
        tenant, name = await held_approved_claimed(policy.addr)
        async with fresh_database(stack, "skm_tools_owed") as dsn:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            assert pool is not None
            try:
                await pool.execute(pending_reports_ddl(SCHEMA))
                owed = PostgresPendingReports(pool, SCHEMA)
                await owed.add(PendingReport(name, "claim-1", Outcome(False, "TIMEOUT"), None, datetime.now(UTC)))
                assert (await held_state(policy.addr, tenant, name)).state == State.STATE_EXECUTING

                async with serving_tools(tools_settings(stack, policy.addr, postgres_dsn=dsn)):
                    for _ in range(100):
                        entry = await held_state(policy.addr, tenant, name)
                        if entry.state != State.STATE_EXECUTING:
                            break
                        await asyncio.sleep(0.1)
                    assert entry.state == State.STATE_EXECUTED
                    assert (entry.outcome.succeeded, entry.outcome.failure_reason) == (False, "TIMEOUT")
                    for _ in range(50):
                        if not await owed.due(10):
                            break
                        await asyncio.sleep(0.1)
                    assert await owed.due(10) == []
            finally:
                await pool.close()
