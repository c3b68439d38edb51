"""The held-action protocol (skm_runtime.held_actions) over svc_policy in memory: hold, wait,
claim exactly once, and outcomes reported until svc_policy takes them, across a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from skm_runtime.access import AccessCheck, ApprovalState, HeldState, Hold, Outcome, Payload, Principal, Verdict
from skm_runtime.held_actions import GONE_NOTE, REPORT_FOR_SECONDS, HeldActions, MemoryPendingReports, PendingReport
from tests.support.held_memory import MemoryPolicyCalls

MIKE = Principal(tenant="tenants/t", user="tenants/t/users/mike", roles=("member",))
CHECK = AccessCheck("user:tenants/t/users/mike", "can_execute", "tool:tenants/t/tools/shell")


async def _no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


def _protocol(
    api: MemoryPolicyCalls,
    reports: MemoryPendingReports | None = None,
    *,
    report_for_seconds: float = REPORT_FOR_SECONDS,
) -> HeldActions:
    return HeldActions(api, reports or MemoryPendingReports(), sleep=_no_sleep, report_for_seconds=report_for_seconds)


async def _held(api: MemoryPolicyCalls, protocol: HeldActions, request_id: str = "r1") -> str:
    api.verdicts[(CHECK.subject, CHECK.relation, CHECK.object)] = Verdict.REQUIRES_APPROVAL
    decision = await protocol.hold(MIKE, CHECK, Hold(request_id, Payload("type/x", b"run"), "run shell"))
    assert decision.verdict is Verdict.REQUIRES_APPROVAL
    return decision.blocked_action


async def test_a_repeated_hold_names_the_same_entry() -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    assert await _held(api, protocol) == await _held(api, protocol)
    assert await _held(api, protocol, "r2") != await _held(api, protocol)


async def test_an_approved_entry_is_claimed_once_and_a_second_caller_sees_it_taken() -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    name = await _held(api, protocol)
    waiting = asyncio.create_task(protocol.approval(MIKE, name, "claim-1"))
    await asyncio.sleep(0)
    assert not waiting.done(), "the wait lasts while the entry is PENDING"
    await api.resolve(name, HeldState.APPROVED, "fine")
    approval = await waiting
    assert approval.state is ApprovalState.CLAIMED
    assert approval.note == "fine"
    assert (await protocol.approval(MIKE, name, "claim-1")).state is ApprovalState.CLAIMED, "the same claim id again"
    assert (await protocol.approval(MIKE, name, "claim-2")).state is ApprovalState.TAKEN


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (HeldState.REJECTED, ApprovalState.REJECTED),
        (HeldState.EXPIRED, ApprovalState.EXPIRED),
        (HeldState.CANCELLED, ApprovalState.CANCELLED),
    ],
)
async def test_an_entry_that_will_not_run_ends_the_wait_unclaimed(state: HeldState, expected: ApprovalState) -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    name = await _held(api, protocol)
    await api.resolve(name, state, "no")
    assert (await protocol.approval(MIKE, name, "claim-1")).state is expected
    assert api.calls.get("claim", 0) == 0
    assert api.state(name).state is state  # type: ignore[union-attr]  # the entry exists


async def test_an_entry_gone_from_svc_policy_reads_as_expired() -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    name = await _held(api, protocol)
    api.forget(name)
    approval = await protocol.approval(MIKE, name, "claim-1")
    assert (approval.state, approval.note) == (ApprovalState.EXPIRED, GONE_NOTE)


async def test_a_claim_svc_policy_cannot_take_now_is_tried_again_with_the_same_claim_id() -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    name = await _held(api, protocol)
    await api.resolve(name, HeldState.APPROVED)
    api.away = True
    waiting = asyncio.create_task(protocol.approval(MIKE, name, "claim-1"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert api.calls["claim"] >= 2
    api.away = False
    assert (await waiting).state is ApprovalState.CLAIMED
    assert api.state(name).claim_id == "claim-1"  # type: ignore[union-attr]  # the entry exists


async def _claimed(api: MemoryPolicyCalls, protocol: HeldActions, request_id: str = "r1") -> str:
    name = await _held(api, protocol, request_id)
    await api.resolve(name, HeldState.APPROVED)
    assert (await protocol.approval(MIKE, name, "claim-1")).state is ApprovalState.CLAIMED
    return name


async def test_an_outcome_is_reported_at_once_when_svc_policy_takes_it() -> None:
    api = MemoryPolicyCalls()
    reports = MemoryPendingReports()
    protocol = _protocol(api, reports)
    name = await _claimed(api, protocol)
    await protocol.complete(MIKE, name, "claim-1", Outcome(succeeded=False, failure_reason="EXIT_1"))
    assert api.state(name).state is HeldState.EXECUTED  # type: ignore[union-attr]  # the entry exists
    assert api.outcome(name) == Outcome(False, "EXIT_1")
    assert await reports.due(10) == []


async def test_an_outcome_svc_policy_cannot_take_is_kept_and_reported_after_a_restart() -> None:
    api = MemoryPolicyCalls()
    reports = MemoryPendingReports()  # the durable store outlives the process's protocol object
    first = _protocol(api, reports)
    name = await _claimed(api, first)
    api.away = True
    await first.complete(MIKE, name, "claim-1", Outcome(succeeded=True))
    owed = await reports.due(10)
    assert [(r.blocked_action, r.claim_id, r.principal) for r in owed] == [(name, "claim-1", MIKE)]
    assert api.state(name).state is HeldState.EXECUTING  # type: ignore[union-attr]  # the entry exists
    await first.close()  # the process ends with the outcome still owed

    api.away = False
    second = _protocol(api, reports)
    second.start()
    try:
        for _ in range(50):
            if not await reports.due(10):
                break
            await asyncio.sleep(0)
        assert await reports.due(10) == []
        assert api.state(name).state is HeldState.EXECUTED  # type: ignore[union-attr]  # the entry exists
        assert api.outcome(name) == Outcome(True)
    finally:
        await second.close()


async def test_the_background_reporter_keeps_trying_while_svc_policy_is_away() -> None:
    api = MemoryPolicyCalls()
    reports = MemoryPendingReports()
    protocol = _protocol(api, reports)
    name = await _claimed(api, protocol)
    api.away = True
    protocol.start()
    try:
        await protocol.complete(MIKE, name, "claim-1", Outcome(succeeded=True))
        for _ in range(30):
            await asyncio.sleep(0)
        assert api.calls["complete"] >= 3, "reported again, more than once"
        assert len(await reports.due(10)) == 1
        api.away = False
        for _ in range(100):
            if not await reports.due(10):
                break
            await asyncio.sleep(0)
        assert api.state(name).state is HeldState.EXECUTED  # type: ignore[union-attr]  # the entry exists
    finally:
        await protocol.close()


async def test_an_outcome_refused_for_good_is_never_kept() -> None:
    api = MemoryPolicyCalls()
    reports = MemoryPendingReports()
    protocol = _protocol(api, reports)
    name = await _claimed(api, protocol)
    await protocol.complete(MIKE, name, "claim-other", Outcome(succeeded=True))
    assert await reports.due(10) == []
    assert api.state(name).state is HeldState.EXECUTING  # type: ignore[union-attr]  # the entry exists


async def test_a_pending_report_older_than_its_limit_is_given_up() -> None:
    api = MemoryPolicyCalls(away=True)
    reports = MemoryPendingReports()
    long_ago = datetime.now(UTC) - timedelta(days=30)
    await reports.add(PendingReport("tenants/t/blockedActions/9", "c", Outcome(True), None, long_ago))
    protocol = _protocol(api, reports, report_for_seconds=3600.0)
    assert await protocol.report_pending() == 0
    assert await reports.due(10) == []
    assert api.calls.get("complete", 0) == 0


async def test_withdrawing_a_pending_entry_cancels_it_and_a_resolved_one_stays() -> None:
    api = MemoryPolicyCalls()
    protocol = _protocol(api)
    name = await _held(api, protocol)
    await protocol.cancel(MIKE, name)
    assert (await protocol.approval(MIKE, name, "c")).state is ApprovalState.CANCELLED
    other = await _held(api, protocol, "r2")
    await api.resolve(other, HeldState.REJECTED)
    await protocol.cancel(MIKE, other)
    assert api.state(other).state is HeldState.REJECTED  # type: ignore[union-attr]  # the entry exists
