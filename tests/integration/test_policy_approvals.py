"""Who may decide on a blocked action, what a hold must carry, and a listing index that
survives Redis losing writes: svc_policy on the real OpenFGA, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.protobuf import any_pb2, wrappers_pb2

from skm.policy.v1 import access_pb2, blocked_action_service_pb2, policy_service_pb2
from skm.type.v1 import principal_pb2
from skm_runtime.access import AccessCheck, Decision, Payload, Principal, Verdict
from skm_runtime.access import HeldState as BlockedState
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_stack import RunningStack
from svc_policy.__main__ import build
from svc_policy.adapters.postgres import PostgresPolicyStore
from svc_policy.adapters.redis import RedisBlockedIndex
from svc_policy.model import BlockedAction
from svc_policy.settings import PolicySettings
from tests.integration.test_policy_service import (  # the same served svc_policy and tenant setup
    ALLOW,
    APPROVAL,
    State,
    Tenant,
    a_hold,
    check,
    expect_error,
    policy,
    rel,
    settings,
    tenant,
)
from tests.support.runtime import serving

__all__ = ["policy", "settings", "tenant"]  # fixtures, used by name

Approve = blocked_action_service_pb2.ApproveBlockedActionRequest
Reject = blocked_action_service_pb2.RejectBlockedActionRequest
OPERATOR = principal_pb2.ROLE_OPERATOR


async def _privileged_request(t: Tenant, who: str) -> str:
    """`who` (an operator) asks for a privileged provisioning action: held for an admin."""
    action = f"provisioning_action:{t.name}/provisioningActions/install_package"
    tenant_object = f"tenant:{t.name}"
    await t.policy.WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(
            parent=t.name,
            relationships=[rel(tenant_object, "tenant", action), rel(tenant_object, "privileged", action)],
        ),
        timeout=10,
    )
    decision = await check(t, t.user(who), "can_provision", action, hold=a_hold("install a package"), who=who)
    assert (decision.verdict, decision.reason) == (APPROVAL, "PRIVILEGED_ACTION_NEEDS_APPROVAL")
    return decision.blocked_action


async def _state(t: Tenant, name: str) -> int:
    got = await t.blocked.GetBlockedAction(blocked_action_service_pb2.GetBlockedActionRequest(name=name), timeout=10)
    return got.blocked_action.state


async def test_privileged_requests_need_an_admin_and_nobody_approves_their_own(tenant: Tenant) -> None:
    t = tenant
    tenant_object = f"tenant:{t.name}"
    watch = rel(f"{tenant_object}#member", "agitation_watch", tenant_object)
    watch.condition.name = "caller_agitated"
    watch.condition.context.update({"agitation_threshold": 0.7})
    await t.policy.WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(
            parent=t.name, relationships=[rel(t.user("oscar"), "operator", tenant_object), watch]
        ),
        timeout=10,
    )
    # An operator asks for a privileged action: for an admin to decide, approving or rejecting.
    name = await _privileged_request(t, "olga")
    for who in ("olga", "oscar"):
        for call in (
            t.blocked.ApproveBlockedAction(Approve(name=name), timeout=10, metadata=t.principal(who, OPERATOR)),
            t.blocked.RejectBlockedAction(Reject(name=name), timeout=10, metadata=t.principal(who, OPERATOR)),
        ):
            await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_ADMIN")
    assert await _state(t, name) == State.STATE_PENDING
    approved = await t.blocked.ApproveBlockedAction(
        Approve(name=name, note="fine"), timeout=10, metadata=t.principal("alice", principal_pb2.ROLE_ADMIN)
    )
    assert approved.blocked_action.state == State.STATE_APPROVED
    assert approved.blocked_action.resolver == f"{t.name}/users/alice"

    # An agitated operator's tool call waits for an operator: another one, not themself.
    request = policy_service_pb2.CheckRequest(
        check=access_pb2.AccessCheck(subject=t.user("olga"), relation="can_execute", object=t.tool("search")),
        hold=a_hold("search for olga"),
    )
    request.check.context.update({"agitation_score": 0.9})
    reply = await t.policy.Check(request, timeout=10, metadata=t.principal("olga", OPERATOR))
    assert (reply.decision.verdict, reply.decision.reason) == (APPROVAL, "CALLER_AGITATED")
    held = reply.decision.blocked_action
    await expect_error(
        t.blocked.ApproveBlockedAction(Approve(name=held), timeout=10, metadata=t.principal("olga", OPERATOR)),
        grpc.StatusCode.PERMISSION_DENIED,
        "SELF_APPROVAL",
    )
    assert await _state(t, held) == State.STATE_PENDING
    approved = await t.blocked.ApproveBlockedAction(
        Approve(name=held), timeout=10, metadata=t.principal("oscar", OPERATOR)
    )
    assert approved.blocked_action.state == State.STATE_APPROVED


async def test_a_state_filter_naming_no_state_and_a_hold_without_payload_are_refused(tenant: Tenant) -> None:
    t = tenant
    for states in ([0], [99]):
        await expect_error(
            t.blocked.ListBlockedActions(
                blocked_action_service_pb2.ListBlockedActionsRequest(parent=t.name, states=states), timeout=10
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
    empty = policy_service_pb2.Hold(request_id=str(uuid.uuid4()))
    await expect_error(
        check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=empty, who="mike"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    listed = await t.blocked.ListBlockedActions(
        blocked_action_service_pb2.ListBlockedActionsRequest(parent=t.name), timeout=10
    )
    assert list(listed.blocked_actions) == []


def _held(tenant: str) -> BlockedAction:
    now = datetime.now(UTC)
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="print(1)"))
    name = f"{tenant}/blockedActions/{uuid.uuid4()}"
    return BlockedAction(
        name=name,
        request_id=str(uuid.uuid4()),
        principal=Principal(tenant, f"{tenant}/users/mike", ("member",)),
        check=AccessCheck(f"user:{tenant}/users/mike", "can_execute", f"tool:{tenant}/tools/code_execution"),
        decision=Decision(Verdict.REQUIRES_APPROVAL, "HIGH_RISK_TOOL_NEEDS_APPROVAL", blocked_action=name),
        payload=Payload(payload.type_url, payload.value),
        summary="",
        session="",
        state=BlockedState.PENDING,
        create_time=now,
        update_time=now,
        expire_time=now + timedelta(hours=1),
    )


async def _names(store: PostgresPolicyStore, tenant: str, state: BlockedState) -> list[str]:
    page, _ = await store.list_page(tenant, [state.value], "", 50, "")
    return [action.name for action in page]


async def _until_whole(index: RedisBlockedIndex) -> None:
    for _ in range(300):
        if not index.stale:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the index was not rebuilt within 30 s")


async def test_the_listing_index_survives_a_missed_write_and_a_redis_that_lost_its_data(
    stack: RunningStack, stack_factory: Any
) -> None:
    own = stack_factory(components=("redis",))
    index = RedisBlockedIndex.connect(own.redis_url)
    store = await PostgresPolicyStore.open(stack.postgres_dsn, index)
    raw = aioredis.from_url(own.redis_url, decode_responses=True)
    tenant = f"tenants/t{uuid.uuid4().hex[:10]}"
    try:
        await store.rebuild_index()
        assert not index.stale
        held = _held(tenant)
        await store.hold(held)
        assert await _names(store, tenant, BlockedState.PENDING) == [held.name]

        # Approved while Redis is down: Postgres commits, the index misses the write; Redis
        # then comes back empty (no persistence), as after a restart.
        assert own.redis is not None
        own.redis.stop()
        approved = dataclasses.replace(
            held, state=BlockedState.APPROVED, update_time=held.update_time + timedelta(milliseconds=5)
        )
        assert await store.save_transition(held, approved)
        assert index.stale
        await asyncio.to_thread(own.start_server, "redis")

        # Listing is right at once (from Postgres), and the index is whole again soon.
        assert await _names(store, tenant, BlockedState.PENDING) == []
        assert await _names(store, tenant, BlockedState.APPROVED) == [held.name]
        await _until_whole(index)
        assert await raw.zrange(f"skm:policy:blocked:{tenant}:APPROVED", 0, -1) == [held.name]
        assert await raw.zrange(f"skm:policy:blocked:{tenant}:PENDING", 0, -1) == []
        # A late write of the older state (a rebuild racing the decision) changes nothing.
        await index.put(held, 1)  # version 1: the row as held, before its approval (2)
        assert await raw.zrange(f"skm:policy:blocked:{tenant}:PENDING", 0, -1) == []

        # Redis loses everything while this process keeps running: no ready marker, so
        # listing reads Postgres and the index is rebuilt.
        await raw.flushall()
        assert await _names(store, tenant, BlockedState.APPROVED) == [held.name]
        assert index.stale
        await _until_whole(index)
        assert await raw.exists("skm:policy:blocked:ready") == 1
        assert await _names(store, tenant, BlockedState.APPROVED) == [held.name]

        # An entry the index still holds under an older state is not listed under it.
        await raw.zadd(f"skm:policy:blocked:{tenant}:PENDING", {held.name: 1})
        assert await _names(store, tenant, BlockedState.PENDING) == []
    finally:
        await raw.aclose()
        await store.close()
        await index.close()


async def test_cached_decisions_fail_closed_too_when_openfga_is_gone(
    settings: PolicySettings, stack_factory: Any
) -> None:
    own = stack_factory(components=("openfga",))
    mine = replace(
        settings,
        openfga_api_url=own.openfga_api_url,
        openfga_api_token_file=str(own.openfga_token_file),
        cache_ttl_seconds=300.0,
        engine_probe_seconds=0.2,
    )
    async with serving(await build(mine, RuntimeSettings())) as served, signed_channel(served.target) as ch:
        t = Tenant(f"tenants/t{uuid.uuid4().hex[:10]}", ch)
        await t.policy.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=t.name, relationships=[rel(t.user("olga"), "operator", f"tenant:{t.name}")]
            ),
            timeout=10,
        )
        operate = (t, t.user("olga"), "can_operate", f"tenant:{t.name}")
        assert (await check(*operate)).verdict == ALLOW
        assert (await check(*operate)).verdict == ALLOW  # now in svc_policy's decision cache (300 s)
        assert own.openfga is not None
        own.openfga.stop()
        await asyncio.sleep(1.5)  # the probe runs every 0.2 s, each waits at most 1 s
        await expect_error(check(*operate), grpc.StatusCode.UNAVAILABLE, "POLICY_BACKEND_UNAVAILABLE")

        await asyncio.to_thread(own.start_server, "openfga")
        for _ in range(100):  # until the probe has seen it back
            try:
                reply = await t.policy.Check(_request(*operate[1:]), timeout=10)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
                continue
            assert reply.decision.verdict == ALLOW
            break
        else:
            raise AssertionError("svc_policy did not answer again after OpenFGA came back")


def _request(subject: str, relation: str, object_: str) -> policy_service_pb2.CheckRequest:
    return policy_service_pb2.CheckRequest(
        check=access_pb2.AccessCheck(subject=subject, relation=relation, object=object_)
    )


async def test_an_approval_waits_for_its_claim_as_long_as_the_entry_waited_for_it(settings: PolicySettings) -> None:
    """Approved just before the entry's own time is up, it can still be claimed: the approval
    gets the hold TTL again."""
    quick = replace(settings, hold_ttl_seconds=2.0)
    async with serving(await build(quick, RuntimeSettings())) as served, signed_channel(served.target) as ch:
        t = Tenant(f"tenants/t{uuid.uuid4().hex[:10]}", ch)
        await t.policy.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=t.name,
                relationships=[
                    rel(t.user("olga"), "operator", f"tenant:{t.name}"),
                    rel(t.user("mike"), "member", f"tenant:{t.name}"),
                    rel(f"tenant:{t.name}", "tenant", t.tool("code_execution")),
                    rel(f"tenant:{t.name}", "high_risk", t.tool("code_execution")),
                ],
            ),
            timeout=10,
        )
        decision = await check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=a_hold(), who="mike")
        name = decision.blocked_action
        await asyncio.sleep(1.5)
        await t.blocked.ApproveBlockedAction(Approve(name=name), timeout=10, metadata=t.principal("olga", OPERATOR))
        await asyncio.sleep(1.0)  # past the entry's own expiry (created + 2 s), and the sweep's 0.2 s
        assert await _state(t, name) == State.STATE_APPROVED
        claimed = await t.blocked.ClaimApprovedAction(
            blocked_action_service_pb2.ClaimApprovedActionRequest(name=name, claim_id="runner"), timeout=10
        )
        assert claimed.blocked_action.state == State.STATE_EXECUTING
