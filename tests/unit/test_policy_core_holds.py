"""svc_policy's requeue of held actions through its core, over in-memory ports: holding a
check that requires approval, then approve / reject / cancel / expire / claim / complete,
with etags, claim ids and races lost to another writer."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from skm_runtime.access import AccessCheck, HeldState, Hold, Outcome, Payload, Principal, Verdict
from skm_runtime.errors import InvalidArgument
from svc_policy.errors import (
    BlockedActionAlreadyClaimed,
    BlockedActionAlreadyResolved,
    BlockedActionExpired,
    BlockedActionNotApproved,
    BlockedActionNotClaimed,
    BlockedActionNotFound,
    ClaimIdMismatch,
    EtagMismatch,
    NotAnAdmin,
    NotAnOperator,
    PolicyBackendUnavailable,
    PrincipalMissing,
    RequestIdReused,
    SelfApproval,
)
from svc_policy.model import BlockedAction, Condition, Relationship
from tests.support.policy_memory import MemoryBlockedActionStore, MemoryPolicy, memory_policy

T = "tenants/t1"
TTL = timedelta(hours=1)
PAYLOAD = Payload("type.googleapis.com/google.protobuf.StringValue", b"\n\x06run it")


def who(user: str, tenant: str = T) -> Principal:
    return Principal(tenant, f"{tenant}/users/{user}", ("member",))


def run_code(user: str = "mike", **context: float) -> AccessCheck:
    return AccessCheck(f"user:{T}/users/{user}", "can_execute", f"tool:{T}/tools/code", context)


DEPLOY = AccessCheck(f"user:{T}/users/olga", "can_provision", f"provisioning_action:{T}/provisioningActions/deploy")


async def tenant_core(store: MemoryBlockedActionStore | None = None) -> MemoryPolicy:
    """Tenant t1: alice admin, olga and oscar operators, mike member; the tool `code` is
    high risk (members need approval); deploying is privileged (operators need an admin's
    approval); agitated callers (score above 0.7) are held."""
    core = memory_policy(hold_ttl=TTL, store=store)
    t = f"tenant:{T}"
    await core.policy.write_relationships(
        T,
        [
            Relationship(f"user:{T}/users/alice", "admin", t),
            Relationship(f"user:{T}/users/olga", "operator", t),
            Relationship(f"user:{T}/users/oscar", "operator", t),
            Relationship(f"user:{T}/users/mike", "member", t),
            Relationship(t, "tenant", f"tool:{T}/tools/code"),
            Relationship(t, "high_risk", f"tool:{T}/tools/code"),
            Relationship(t, "tenant", DEPLOY.object),
            Relationship(t, "privileged", DEPLOY.object),
            Relationship(
                f"{t}#member", "agitation_watch", t, Condition("caller_agitated", {"agitation_threshold": 0.7})
            ),
        ],
    )
    return core


@pytest.fixture
async def core() -> MemoryPolicy:
    return await tenant_core()


async def hold(
    core: MemoryPolicy, check: AccessCheck | None = None, principal: Principal | None = None, request_id: str = "r1"
) -> BlockedAction:
    """Check (mike's run of `code` by default) with a hold; the blocked action it left."""
    decision = await core.policy.check(
        check or run_code(),
        fresh=False,
        hold=Hold(request_id, PAYLOAD, "run code for mike", f"{T}/sessions/s1"),
        principal=principal or who("mike"),
    )
    assert decision.verdict is Verdict.REQUIRES_APPROVAL
    return await core.policy.get_blocked(decision.blocked_action)


async def approved(core: MemoryPolicy) -> BlockedAction:
    return await core.policy.approve((await hold(core)).name, who("olga"), "fine", "")


# -- holding ------------------------------------------------------------------------------


async def test_a_check_that_requires_approval_is_held(core: MemoryPolicy) -> None:
    decision = await core.policy.check(run_code(), fresh=False, hold=Hold("r1", PAYLOAD, "why"), principal=who("mike"))
    assert (decision.verdict, decision.reason) == (Verdict.REQUIRES_APPROVAL, "HIGH_RISK_TOOL_NEEDS_APPROVAL")
    assert decision.blocked_action.startswith(f"{T}/blockedActions/")
    action = await core.policy.get_blocked(decision.blocked_action)
    assert action.state is HeldState.PENDING
    assert (action.request_id, action.principal, action.check, action.payload) == (
        "r1",
        who("mike"),
        run_code(),
        PAYLOAD,
    )
    assert action.decision == decision
    assert action.expire_time == core.clock.now + TTL
    assert core.store.events == [(None, action)]
    assert core.audit.decisions[-1][1] == decision


async def test_a_check_that_needs_no_approval_holds_nothing(core: MemoryPolicy) -> None:
    for check, verdict in ((run_code("olga"), Verdict.ALLOW), (run_code("nobody"), Verdict.DENY)):
        decision = await core.policy.check(check, fresh=False, hold=Hold("r", PAYLOAD), principal=who("mike"))
        assert (decision.verdict, decision.blocked_action) == (verdict, "")
    assert core.store.events == []


async def test_the_same_request_held_again_finds_its_entry(core: MemoryPolicy) -> None:
    first = await hold(core)
    again = await hold(core)
    assert again == first
    page, _ = await core.policy.list_blocked(T, [], "", 50, "")
    assert [action.name for action in page] == [first.name]


async def test_a_request_id_may_not_be_reused_for_another_action(core: MemoryPolicy) -> None:
    await hold(core)
    with pytest.raises(RequestIdReused):
        await hold(core, run_code(agitation_score=0.9))


async def test_an_agitated_caller_is_held_though_allowed(core: MemoryPolicy) -> None:
    action = await hold(core, run_code("olga", agitation_score=0.9), who("olga"))
    assert action.decision.reason == "CALLER_AGITATED"


@pytest.mark.parametrize("principal", [None, who("mike", "tenants/t2")], ids=["none", "other-tenant"])
async def test_holding_needs_the_principal_of_the_objects_tenant(
    core: MemoryPolicy, principal: Principal | None
) -> None:
    with pytest.raises(PrincipalMissing):
        await core.policy.check(run_code(), fresh=False, hold=Hold("r1", PAYLOAD), principal=principal)
    assert core.store.events == []


@pytest.mark.parametrize(
    "bad",
    [
        Hold("", PAYLOAD),
        Hold("r1", Payload("", b"x")),
        Hold("r1", Payload(PAYLOAD.type_url, b"x" * (1024 * 1024 + 1))),
        Hold("r1", PAYLOAD, "s" * 301),
        Hold("r1", PAYLOAD, session="tenants/t2/sessions/s1"),
    ],
    ids=["no-request-id", "no-type", "payload-too-large", "summary-too-long", "foreign-session"],
)
async def test_a_malformed_hold_is_refused(core: MemoryPolicy, bad: Hold) -> None:
    with pytest.raises(InvalidArgument):
        await core.policy.check(run_code(), fresh=False, hold=bad, principal=who("mike"))
    assert core.store.events == []


async def test_an_unreachable_store_fails_the_check_closed(core: MemoryPolicy) -> None:
    core.store.down = True
    with pytest.raises(PolicyBackendUnavailable):
        await core.policy.check(run_code(), fresh=False, hold=Hold("r1", PAYLOAD), principal=who("mike"))


# -- deciding -----------------------------------------------------------------------------


async def test_an_operator_approves_with_the_current_etag(core: MemoryPolicy) -> None:
    action = await hold(core)
    core.clock.advance(timedelta(minutes=5))
    after = await core.policy.approve(action.name, who("olga"), "looks fine", action.etag)
    assert after.state is HeldState.APPROVED
    assert (after.resolver, after.note, after.resolve_time) == (who("olga").user, "looks fine", core.clock.now)
    # The claim may take as long as the approval took.
    assert after.expire_time == core.clock.now + TTL
    assert after.etag != action.etag
    assert await core.policy.get_blocked(action.name) == after
    assert core.store.events[-1] == (HeldState.PENDING, after)


async def test_a_stale_etag_is_refused(core: MemoryPolicy) -> None:
    action = await hold(core)
    with pytest.raises(EtagMismatch):
        await core.policy.approve(action.name, who("olga"), "", 'W/"1"')
    assert (await core.policy.get_blocked(action.name)).state is HeldState.PENDING


async def test_an_operator_rejects_and_the_decision_stands(core: MemoryPolicy) -> None:
    action = await hold(core)
    rejected = await core.policy.reject(action.name, who("olga"), "no", "")
    assert rejected.state is HeldState.REJECTED
    with pytest.raises(BlockedActionAlreadyResolved):
        await core.policy.approve(action.name, who("oscar"), "", "")


@pytest.mark.parametrize(
    ("principal", "error"),
    [
        (who("mike"), NotAnOperator),
        (who("stranger"), NotAnOperator),
        (Principal(T), PrincipalMissing),
        (None, PrincipalMissing),
        (who("olga", "tenants/t2"), BlockedActionNotFound),
    ],
    ids=["member", "no-role", "no-user", "nobody", "other-tenant"],
)
async def test_only_the_tenants_operators_decide(
    core: MemoryPolicy, principal: Principal | None, error: type[Exception]
) -> None:
    action = await hold(core)
    with pytest.raises(error):
        await core.policy.approve(action.name, principal, "", "")
    assert (await core.policy.get_blocked(action.name)).state is HeldState.PENDING


async def test_nobody_approves_their_own_request(core: MemoryPolicy) -> None:
    action = await hold(core, run_code("olga", agitation_score=0.9), who("olga"))
    with pytest.raises(SelfApproval):
        await core.policy.approve(action.name, who("olga"), "", "")
    assert (await core.policy.reject(action.name, who("olga"), "changed my mind", "")).state is HeldState.REJECTED


async def test_a_privileged_action_waits_for_an_admin(core: MemoryPolicy) -> None:
    action = await hold(core, DEPLOY, who("olga"))
    assert action.decision.reason == "PRIVILEGED_ACTION_NEEDS_APPROVAL"
    with pytest.raises(NotAnAdmin):
        await core.policy.approve(action.name, who("oscar"), "", "")
    assert (await core.policy.approve(action.name, who("alice"), "", "")).state is HeldState.APPROVED


async def test_an_unknown_entry_is_not_found(core: MemoryPolicy) -> None:
    with pytest.raises(BlockedActionNotFound):
        await core.policy.approve(f"{T}/blockedActions/none", who("olga"), "", "")


# -- expiry -------------------------------------------------------------------------------


async def test_an_entry_nobody_decides_on_expires(core: MemoryPolicy) -> None:
    action = await hold(core)
    core.clock.advance(TTL)
    assert (await core.policy.get_blocked(action.name)).state is HeldState.EXPIRED
    with pytest.raises(BlockedActionExpired):
        await core.policy.approve(action.name, who("olga"), "", "")


async def test_expire_due_expires_pending_and_unclaimed_approved_entries_only(core: MemoryPolicy) -> None:
    pending = await hold(core, request_id="pending")
    approved_ = await core.policy.approve((await hold(core, request_id="approved")).name, who("olga"), "", "")
    rejected = await core.policy.reject((await hold(core, request_id="rejected")).name, who("olga"), "", "")
    assert await core.policy.expire_due() == 0
    core.clock.advance(TTL)
    assert await core.policy.expire_due() == 2
    states = {a.name: (await core.policy.get_blocked(a.name)).state for a in (pending, approved_, rejected)}
    assert states == {
        pending.name: HeldState.EXPIRED,
        approved_.name: HeldState.EXPIRED,
        rejected.name: HeldState.REJECTED,
    }
    assert await core.policy.expire_due() == 0


# -- running it once ----------------------------------------------------------------------


async def test_an_approved_action_is_claimed_once(core: MemoryPolicy) -> None:
    action = await approved(core)
    claimed = await core.policy.claim(action.name, "c1")
    assert (claimed.state, claimed.claim_id) == (HeldState.EXECUTING, "c1")
    assert await core.policy.claim(action.name, "c1") == claimed  # the same executor, again
    with pytest.raises(BlockedActionAlreadyClaimed):
        await core.policy.claim(action.name, "c2")


async def test_only_an_approved_action_can_be_claimed(core: MemoryPolicy) -> None:
    action = await hold(core)
    with pytest.raises(BlockedActionNotApproved):
        await core.policy.claim(action.name, "c1")
    with pytest.raises(InvalidArgument):
        await core.policy.claim(action.name, "")


async def test_the_claimant_completes_it_once(core: MemoryPolicy) -> None:
    action = await approved(core)
    with pytest.raises(BlockedActionNotClaimed):
        await core.policy.complete(action.name, "c1", Outcome(True))
    await core.policy.claim(action.name, "c1")
    with pytest.raises(ClaimIdMismatch):
        await core.policy.complete(action.name, "c2", Outcome(True))
    done = await core.policy.complete(action.name, "c1", Outcome(False, "TOOL_FAILED"))
    assert (done.state, done.outcome) == (HeldState.EXECUTED, Outcome(False, "TOOL_FAILED"))
    assert await core.policy.complete(action.name, "c1", Outcome(True)) == done  # a retried report
    with pytest.raises(BlockedActionAlreadyClaimed):
        await core.policy.claim(action.name, "c2")


async def test_an_approval_nobody_claims_expires(core: MemoryPolicy) -> None:
    action = await approved(core)
    core.clock.advance(TTL)
    with pytest.raises(BlockedActionNotApproved):
        await core.policy.claim(action.name, "c1")
    assert (await core.policy.get_blocked(action.name)).state is HeldState.EXPIRED


async def test_a_claimed_action_does_not_expire(core: MemoryPolicy) -> None:
    action = await approved(core)
    await core.policy.claim(action.name, "c1")
    core.clock.advance(TTL * 2)
    assert await core.policy.expire_due() == 0
    assert (await core.policy.complete(action.name, "c1", Outcome(True))).state is HeldState.EXECUTED


# -- cancelling ---------------------------------------------------------------------------


async def test_the_requester_cancels_before_it_runs(core: MemoryPolicy) -> None:
    pending = await hold(core, request_id="pending")
    approved_ = await core.policy.approve((await hold(core, request_id="approved")).name, who("olga"), "", "")
    for action in (pending, approved_):
        cancelled = await core.policy.cancel(action.name)
        assert cancelled.state is HeldState.CANCELLED
        assert await core.policy.cancel(action.name) == cancelled
    with pytest.raises(BlockedActionAlreadyResolved):
        await core.policy.approve(pending.name, who("olga"), "", "")


async def test_a_claimed_action_can_no_longer_be_cancelled(core: MemoryPolicy) -> None:
    action = await approved(core)
    await core.policy.claim(action.name, "c1")
    with pytest.raises(BlockedActionAlreadyResolved):
        await core.policy.cancel(action.name)


# -- races --------------------------------------------------------------------------------


class RacingStore(MemoryBlockedActionStore):
    """Lets another writer's transition (`rival`: the fields it changes) land just before
    the core's next one."""

    def __init__(self) -> None:
        super().__init__()
        self.rival: dict[str, Any] | None = None

    async def save_transition(self, before: BlockedAction, after: BlockedAction) -> bool:
        if self.rival is not None:
            rival, self.rival = self.rival, None
            assert await super().save_transition(before, dataclasses.replace(before, **rival))
        return await super().save_transition(before, after)


async def test_an_operator_who_loses_a_race_sees_the_winners_decision() -> None:
    core = await tenant_core(store := RacingStore())
    action = await hold(core)
    core.clock.advance(timedelta(seconds=1))
    store.rival = {"state": HeldState.REJECTED, "update_time": core.clock.now, "resolver": who("oscar").user}
    core.clock.advance(timedelta(seconds=1))
    with pytest.raises(BlockedActionAlreadyResolved):
        await core.policy.approve(action.name, who("olga"), "", "")
    assert (await core.policy.get_blocked(action.name)).resolver == who("oscar").user


async def test_a_claim_lost_to_another_executor_is_refused() -> None:
    core = await tenant_core(store := RacingStore())
    action = await approved(core)
    core.clock.advance(timedelta(seconds=1))
    store.rival = {"state": HeldState.EXECUTING, "update_time": core.clock.now, "claim_id": "theirs"}
    with pytest.raises(BlockedActionAlreadyClaimed):
        await core.policy.claim(action.name, "mine")
