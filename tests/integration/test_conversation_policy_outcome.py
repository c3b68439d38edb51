"""svc_conversation reports the outcome of a held action it ran even when svc_policy is away.

svc_policy runs as a process of its own on the real OpenFGA, PostgreSQL, Kafka and Redis.
An action is held, approved by an operator and claimed; then svc_policy stops. The outcome
svc_conversation reports (GrpcPolicy.complete, as after a held subordinate spawn) cannot
be taken: the call returns at once, the turn would go on, and the outcome is reported again
in the background until svc_policy, started again, takes it: the entry ends EXECUTED, not
EXECUTING for ever. An outcome svc_policy refuses for good (another claim id) is not retried.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from skm.policy.v1 import (
    blocked_action_pb2,
)
from skm_runtime.access import Outcome, Principal
from skm_runtime.held_actions import MemoryPendingReports
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from skm_stack.services import start_service
from svc_conversation.adapters.policy import GrpcPolicy
from tests.support.policy import held_approved_claimed, held_state, policy_process

State = blocked_action_pb2.BlockedAction.State


async def test_an_outcome_svc_policy_could_not_take_is_reported_once_it_is_back(stack: RunningStack) -> None:
    with policy_process(stack, "skm-test-outcome-") as service:
        tenant, name = await held_approved_claimed(service.addr)
        mike = Principal(tenant=tenant, user=f"{tenant}/users/mike", roles=("member",))
        assert (await held_state(service.addr, tenant, name)).state == State.STATE_EXECUTING

        service.stop()  # svc_policy is away
        async with signed_channel(service.addr) as channel:
            reports = MemoryPendingReports()
            policy = GrpcPolicy(channel, reports=reports)
            try:
                started = time.monotonic()
                await policy.complete(mike, name, "claim-1", Outcome(succeeded=True))
                assert time.monotonic() - started < 15, "the turn does not wait for svc_policy"

                logs = Path(tempfile.mkdtemp(prefix="skm-test-outcome-again-"))
                again = start_service(service.spec, logs, stack.service_env())  # same port, same store
                try:
                    for _ in range(300):  # reported again with backoff (at most 5 s apart)
                        entry = await held_state(again.addr, tenant, name)
                        if entry.state != State.STATE_EXECUTING:
                            break
                        await asyncio.sleep(0.2)
                    assert entry.state == State.STATE_EXECUTED
                    assert entry.outcome.succeeded
                    assert await reports.due(10) == [], "a taken outcome is owed no more"

                    # Refused for good (not this entry's claim): reported once, never again.
                    second, other = await held_approved_claimed(again.addr)
                    mike = Principal(tenant=second, user=f"{second}/users/mike", roles=("member",))
                    await policy.complete(mike, other, "claim-2", Outcome(succeeded=True))
                    assert await reports.due(10) == [], "a final refusal is not kept to retry"
                    assert (await held_state(again.addr, second, other)).state == State.STATE_EXECUTING
                finally:
                    again.stop()
                    shutil.rmtree(logs, ignore_errors=True)
            finally:
                await policy.close()
