"""svc_policy through its gRPC API, on the real OpenFGA, PostgreSQL, Redis and Kafka."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf import any_pb2, wrappers_pb2

from skm.events.v1 import event_pb2
from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    constitution_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.principal import principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from svc_policy.__main__ import build
from svc_policy.settings import PolicySettings
from tests.support.runtime import Served, serving

ALLOW = policy_decision_pb2.VERDICT_ALLOW
DENY = policy_decision_pb2.VERDICT_DENY
APPROVAL = policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
State = blocked_action_pb2.BlockedAction


@pytest.fixture(scope="module")
def settings(stack: RunningStack) -> PolicySettings:
    return PolicySettings(
        postgres_dsn=stack.postgres_dsn,
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        openfga_api_url=stack.openfga_api_url,
        openfga_api_token_file=str(stack.openfga_token_file),
        openfga_store=f"skm-test-{uuid.uuid4().hex[:8]}",
        expiry_interval_seconds=0.2,
    )


@pytest.fixture
async def policy(settings: PolicySettings) -> AsyncIterator[Served]:
    async with serving(await build(settings, RuntimeSettings())) as served:
        yield served


@dataclass
class Tenant:
    """A fresh tenant per test: admin alice, operator olga, member mike, two tools."""

    name: str
    channel: grpc.aio.Channel

    def user(self, who: str) -> str:
        return f"user:{self.name}/users/{who}"

    def tool(self, which: str) -> str:
        return f"tool:{self.name}/tools/{which}"

    def principal(self, who: str, *roles: int) -> tuple[tuple[str, bytes], ...]:
        return principal_metadata(
            principal_pb2.Principal(tenant=self.name, user=f"{self.name}/users/{who}", roles=list(roles))
        )

    @property
    def policy(self) -> policy_service_pb2_grpc.PolicyServiceStub:
        return policy_service_pb2_grpc.PolicyServiceStub(self.channel)

    @property
    def blocked(self) -> blocked_action_service_pb2_grpc.BlockedActionServiceStub:
        return blocked_action_service_pb2_grpc.BlockedActionServiceStub(self.channel)


def rel(subject: str, relation: str, object_: str) -> access_pb2.Relationship:
    return access_pb2.Relationship(subject=subject, relation=relation, object=object_)


@pytest.fixture
async def tenant(policy: Served) -> AsyncIterator[Tenant]:
    name = f"tenants/t{uuid.uuid4().hex[:10]}"
    async with signed_channel(policy.target) as channel:
        t = Tenant(name, channel)
        tenant_object = f"tenant:{name}"
        await t.policy.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=name,
                relationships=[
                    rel(t.user("alice"), "admin", tenant_object),
                    rel(t.user("olga"), "operator", tenant_object),
                    rel(t.user("mike"), "member", tenant_object),
                    rel(tenant_object, "tenant", t.tool("code_execution")),
                    rel(tenant_object, "high_risk", t.tool("code_execution")),
                    rel(tenant_object, "tenant", t.tool("search")),
                    rel(tenant_object, "low_risk", t.tool("search")),
                ],
            ),
            timeout=10,
        )
        yield t


async def check(
    t: Tenant, subject: str, relation: str, object_: str, *, hold: policy_service_pb2.Hold | None = None, who: str = ""
) -> policy_decision_pb2.PolicyDecision:
    request = policy_service_pb2.CheckRequest(
        check=access_pb2.AccessCheck(subject=subject, relation=relation, object=object_)
    )
    if hold is not None:
        request.hold.CopyFrom(hold)
    metadata = t.principal(who, principal_pb2.ROLE_MEMBER) if who else None
    reply = await t.policy.Check(request, timeout=10, metadata=metadata)
    return reply.decision


def a_hold(summary: str = "run code for mike") -> policy_service_pb2.Hold:
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="print('hello')"))
    return policy_service_pb2.Hold(request_id=str(uuid.uuid4()), payload=payload, summary=summary)


async def held_action(t: Tenant) -> str:
    decision = await check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=a_hold(), who="mike")
    assert decision.verdict == APPROVAL
    assert decision.blocked_action.startswith(f"{t.name}/blockedActions/")
    return decision.blocked_action


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == reason


async def test_verdicts_follow_roles_and_tool_risk(tenant: Tenant) -> None:
    t = tenant
    assert (await check(t, t.user("olga"), "can_execute", t.tool("code_execution"))).verdict == ALLOW
    assert (await check(t, t.user("mike"), "can_execute", t.tool("code_execution"))).verdict == APPROVAL
    assert (await check(t, t.user("mike"), "can_execute", t.tool("search"))).verdict == ALLOW
    assert (await check(t, t.user("nobody"), "can_execute", t.tool("search"))).verdict == DENY
    assert (await check(t, t.user("olga"), "can_operate", f"tenant:{t.name}")).verdict == ALLOW
    assert (await check(t, t.user("mike"), "can_operate", f"tenant:{t.name}")).verdict == DENY
    decision = await check(t, t.user("olga"), "can_execute", "tool:tenants/other/tools/search")
    assert (decision.verdict, decision.reason) == (DENY, "CROSS_TENANT")
    assert decision.decision_id


async def test_batch_check_answers_in_order(tenant: Tenant) -> None:
    t = tenant
    checks = [
        access_pb2.AccessCheck(subject=t.user(who), relation="can_execute", object=t.tool(tool))
        for who, tool in [("olga", "code_execution"), ("mike", "code_execution"), ("nobody", "search")]
    ]
    reply = await t.policy.BatchCheck(policy_service_pb2.BatchCheckRequest(checks=checks), timeout=10)
    assert [d.verdict for d in reply.decisions] == [ALLOW, APPROVAL, DENY]
    await expect_error(
        t.policy.BatchCheck(policy_service_pb2.BatchCheckRequest(checks=checks * 34), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_CHECKS",
    )


async def test_a_relationship_write_is_seen_at_once(tenant: Tenant) -> None:
    t = tenant
    assert (await check(t, t.user("newbie"), "can_converse", f"tenant:{t.name}")).verdict == DENY  # now cached
    await t.policy.WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(
            parent=t.name, relationships=[rel(t.user("newbie"), "member", f"tenant:{t.name}")]
        ),
        timeout=10,
    )
    assert (await check(t, t.user("newbie"), "can_converse", f"tenant:{t.name}")).verdict == ALLOW
    await t.policy.DeleteRelationships(
        policy_service_pb2.DeleteRelationshipsRequest(
            parent=t.name, relationships=[rel(t.user("newbie"), "member", f"tenant:{t.name}")]
        ),
        timeout=10,
    )
    assert (await check(t, t.user("newbie"), "can_converse", f"tenant:{t.name}")).verdict == DENY


async def test_bad_checks_and_relationships_are_refused_and_change_nothing(tenant: Tenant) -> None:
    t = tenant
    for subject, relation, object_ in [
        ("alice", "can_execute", t.tool("search")),  # no type
        (t.user("mike"), "can_execute", "tool:"),  # no id
        (t.user("mike"), "can_fly", t.tool("search")),  # no such relation
        (t.user("mike"), "can_execute", "spaceship:tenants/x/ships/1"),  # no such type
        (t.user("mike"), "can_execute", "tool:nowhere/tools/x"),  # not a resource of a tenant
    ]:
        await expect_error(check(t, subject, relation, object_), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHECK")
    write = t.policy.WriteRelationships
    await expect_error(
        write(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=t.name, relationships=[rel("user:*", "member", f"tenant:{t.name}")]
            ),
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "WILDCARD_NOT_ALLOWED",
    )
    await expect_error(
        write(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=t.name,
                relationships=[
                    rel(t.user("eve"), "member", f"tenant:{t.name}"),
                    rel("user:tenants/other/users/eve", "admin", f"tenant:{t.name}"),
                ],
            ),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CROSS_TENANT_RELATIONSHIP",
    )
    # All or none: the valid first relationship of the refused batch was not written.
    assert (await check(t, t.user("eve"), "can_converse", f"tenant:{t.name}")).verdict == DENY


async def test_hold_approve_claim_complete_runs_once(tenant: Tenant, stack: RunningStack) -> None:
    t = tenant
    name = await held_action(t)
    listed = await t.blocked.ListBlockedActions(
        blocked_action_service_pb2.ListBlockedActionsRequest(parent=t.name, states=[State.STATE_PENDING]),
        timeout=10,
    )
    assert [a.name for a in listed.blocked_actions] == [name]
    action = listed.blocked_actions[0]
    assert action.summary == "run code for mike"
    assert action.principal.user == f"{t.name}/users/mike"
    assert action.payload.type_url.endswith("google.protobuf.StringValue")

    watch = t.blocked.WatchBlockedActionResolutions(
        blocked_action_service_pb2.WatchBlockedActionResolutionsRequest(parent=t.name, names=[name])
    )
    approved = await t.blocked.ApproveBlockedAction(
        blocked_action_service_pb2.ApproveBlockedActionRequest(name=name, note="looks safe", etag=action.etag),
        timeout=10,
        metadata=t.principal("olga", principal_pb2.ROLE_OPERATOR),
    )
    assert approved.blocked_action.state == State.STATE_APPROVED
    assert approved.blocked_action.resolver == f"{t.name}/users/olga"
    resolution = await asyncio.wait_for(watch.read(), 10)
    assert resolution.blocked_action.name == name
    assert resolution.blocked_action.state == State.STATE_APPROVED
    watch.cancel()

    claim = blocked_action_service_pb2.ClaimApprovedActionRequest
    claims = await asyncio.gather(
        t.blocked.ClaimApprovedAction(claim(name=name, claim_id="executor-a"), timeout=10),
        t.blocked.ClaimApprovedAction(claim(name=name, claim_id="executor-b"), timeout=10),
        return_exceptions=True,
    )
    winners = [c for c in claims if not isinstance(c, BaseException)]
    losers = [c for c in claims if isinstance(c, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert error_info_of(losers[0]) is not None
    winner = winners[0].blocked_action.claim_id
    assert winners[0].blocked_action.state == State.STATE_EXECUTING
    # Retrying the claim with the same id is safe; completing twice too.
    again = await t.blocked.ClaimApprovedAction(claim(name=name, claim_id=winner), timeout=10)
    assert again.blocked_action.state == State.STATE_EXECUTING
    complete = blocked_action_service_pb2.CompleteBlockedActionRequest(
        name=name, claim_id=winner, outcome=blocked_action_pb2.ActionOutcome(succeeded=True)
    )
    done = await t.blocked.CompleteBlockedAction(complete, timeout=10)
    assert done.blocked_action.state == State.STATE_EXECUTED
    assert (await t.blocked.CompleteBlockedAction(complete, timeout=10)).blocked_action.state == State.STATE_EXECUTED
    await expect_error(
        t.blocked.ClaimApprovedAction(claim(name=name, claim_id="executor-c"), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BLOCKED_ACTION_ALREADY_CLAIMED",
    )

    # Every step reached Kafka's policy.blocked topic, in order, once each.
    states = await _blocked_events(stack.kafka_bootstrap, name, expect=4)
    assert states == ["blocked", "APPROVED", "EXECUTING", "EXECUTED"]


async def _blocked_events(bootstrap: str, name: str, *, expect: int) -> list[str]:
    consumer = AIOKafkaConsumer(
        "policy.blocked", bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[str] = []
    ids: set[str] = set()
    try:
        async with asyncio.timeout(30):
            while len(seen) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = event_pb2.Event.FromString(record.value)
                        kind = event.WhichOneof("payload")
                        action = getattr(event, kind).blocked_action
                        if action.name != name:
                            continue
                        assert event.event_id not in ids
                        ids.add(event.event_id)
                        seen.append(
                            "blocked"
                            if kind == "action_blocked"
                            else blocked_action_pb2.BlockedAction.State.Name(action.state).removeprefix("STATE_")
                        )
    finally:
        await consumer.stop()
    return seen


async def test_only_operators_decide_and_resolved_entries_stay_resolved(tenant: Tenant) -> None:
    t = tenant
    name = await held_action(t)
    approve = blocked_action_service_pb2.ApproveBlockedActionRequest
    for who, role in [("mike", principal_pb2.ROLE_MEMBER), ("mallory", principal_pb2.ROLE_OPERATOR)]:
        # A role claimed in a token is a hint; OpenFGA's relationships decide.
        await expect_error(
            t.blocked.ApproveBlockedAction(approve(name=name), timeout=10, metadata=t.principal(who, role)),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_AN_OPERATOR",
        )
    await expect_error(
        t.blocked.ApproveBlockedAction(approve(name=name), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "PRINCIPAL_MISSING",
    )
    get = blocked_action_service_pb2.GetBlockedActionRequest(name=name)
    assert (await t.blocked.GetBlockedAction(get, timeout=10)).blocked_action.state == State.STATE_PENDING

    operator = t.principal("olga", principal_pb2.ROLE_OPERATOR)
    await expect_error(
        t.blocked.ApproveBlockedAction(approve(name=name, etag='W/"0"'), timeout=10, metadata=operator),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    rejected = await t.blocked.RejectBlockedAction(
        blocked_action_service_pb2.RejectBlockedActionRequest(name=name, note="no"), timeout=10, metadata=operator
    )
    assert rejected.blocked_action.state == State.STATE_REJECTED
    await expect_error(
        t.blocked.ApproveBlockedAction(approve(name=name), timeout=10, metadata=operator),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BLOCKED_ACTION_ALREADY_RESOLVED",
    )
    await expect_error(
        t.blocked.ClaimApprovedAction(
            blocked_action_service_pb2.ClaimApprovedActionRequest(name=name, claim_id="x"), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BLOCKED_ACTION_NOT_APPROVED",
    )


async def test_unknown_and_other_tenants_entries_are_not_found(tenant: Tenant) -> None:
    t = tenant
    name = await held_action(t)
    other = name.replace(t.name, "tenants/someoneelse")
    get = blocked_action_service_pb2.GetBlockedActionRequest
    await expect_error(
        t.blocked.GetBlockedAction(get(name=other), timeout=10), grpc.StatusCode.NOT_FOUND, "BLOCKED_ACTION_NOT_FOUND"
    )
    # Asked by a principal of another tenant, an existing entry does not exist either.
    stranger = principal_metadata(
        principal_pb2.Principal(tenant="tenants/someoneelse", user="tenants/someoneelse/users/x")
    )
    await expect_error(
        t.blocked.GetBlockedAction(get(name=name), timeout=10, metadata=stranger),
        grpc.StatusCode.NOT_FOUND,
        "BLOCKED_ACTION_NOT_FOUND",
    )
    await expect_error(
        t.blocked.GetBlockedAction(get(name="blockedActions/x"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RESOURCE_NAME",
    )
    await expect_error(
        t.blocked.ListBlockedActions(
            blocked_action_service_pb2.ListBlockedActionsRequest(parent=t.name, page_token="garbage!"), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        t.blocked.CancelBlockedAction(blocked_action_service_pb2.CancelBlockedActionRequest(name=other), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "BLOCKED_ACTION_NOT_FOUND",
    )


async def test_a_retried_hold_returns_the_same_entry(tenant: Tenant) -> None:
    t = tenant
    hold = a_hold()
    first = await check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=hold, who="mike")
    second = await check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=hold, who="mike")
    assert first.blocked_action == second.blocked_action
    other = replace_payload(hold, "rm -rf /")
    await expect_error(
        check(t, t.user("mike"), "can_execute", t.tool("code_execution"), hold=other, who="mike"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


def replace_payload(hold: policy_service_pb2.Hold, text: str) -> policy_service_pb2.Hold:
    changed = policy_service_pb2.Hold()
    changed.CopyFrom(hold)
    changed.payload.Pack(wrappers_pb2.StringValue(value=text))
    return changed


async def test_entries_expire_and_cannot_be_approved_then(settings: PolicySettings) -> None:
    quick = replace(settings, hold_ttl_seconds=1.0)
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
        name = await held_action(t)
        get = blocked_action_service_pb2.GetBlockedActionRequest(name=name)
        for _ in range(50):
            state = (await t.blocked.GetBlockedAction(get, timeout=10)).blocked_action.state
            if state == State.STATE_EXPIRED:
                break
            await asyncio.sleep(0.1)
        assert state == State.STATE_EXPIRED
        await expect_error(
            t.blocked.ApproveBlockedAction(
                blocked_action_service_pb2.ApproveBlockedActionRequest(name=name),
                timeout=10,
                metadata=t.principal("olga", principal_pb2.ROLE_OPERATOR),
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "BLOCKED_ACTION_EXPIRED",
        )


async def _approved_action(t: Tenant) -> str:
    """A held run of a high-risk tool for member mike, approved by operator olga."""
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
    name = await held_action(t)
    await t.blocked.ApproveBlockedAction(
        blocked_action_service_pb2.ApproveBlockedActionRequest(name=name),
        timeout=10,
        metadata=t.principal("olga", principal_pb2.ROLE_OPERATOR),
    )
    return name


async def test_an_approval_survives_a_restart_and_still_runs_once(settings: PolicySettings) -> None:
    """Approve, restart svc_policy, then claim: one claim wins, exactly as without a restart."""
    name = ""
    tenant_name = f"tenants/t{uuid.uuid4().hex[:10]}"
    async with (
        serving(await build(settings, RuntimeSettings())) as first,
        signed_channel(first.target) as ch,
    ):
        t = Tenant(tenant_name, ch)
        name = await _approved_action(t)
    async with (
        serving(await build(settings, RuntimeSettings())) as second,
        signed_channel(second.target) as ch,
    ):
        t = Tenant(tenant_name, ch)
        got = await t.blocked.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=name), timeout=10
        )
        assert got.blocked_action.state == State.STATE_APPROVED
        claim = blocked_action_service_pb2.ClaimApprovedActionRequest
        results = await asyncio.gather(
            *(t.blocked.ClaimApprovedAction(claim(name=name, claim_id=f"c{i}"), timeout=10) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1


async def test_constitution_round_trip_with_etags(tenant: Tenant) -> None:
    stub = constitution_service_pb2_grpc.ConstitutionServiceStub(tenant.channel)
    name = f"{tenant.name}/constitution"
    empty = (
        await stub.GetConstitution(constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10)
    ).constitution
    assert empty.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert empty.etag == ""
    update = constitution_service_pb2.UpdateConstitutionRequest
    stored = (
        await stub.UpdateConstitution(
            update(constitution=constitution_pb2.Constitution(name=name, content="Be kind.", etag="")), timeout=10
        )
    ).constitution
    assert stored.sha256 == hashlib.sha256(b"Be kind.").hexdigest()
    await expect_error(
        stub.UpdateConstitution(
            update(constitution=constitution_pb2.Constitution(name=name, content="Be mean.", etag="")), timeout=10
        ),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    again = (
        await stub.GetConstitution(constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10)
    ).constitution
    assert again.content == "Be kind."
    await expect_error(
        stub.UpdateConstitution(
            update(
                constitution=constitution_pb2.Constitution(name=name, content="x" * (256 * 1024 + 1), etag=again.etag)
            ),
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONSTITUTION_TOO_LARGE",
    )


async def test_checks_fail_closed_when_openfga_is_gone(
    settings: PolicySettings, stack_factory: Callable[..., RunningStack]
) -> None:
    own = stack_factory(components=("openfga",))
    mine = replace(
        settings,
        openfga_api_url=own.openfga_api_url,
        openfga_api_token_file=str(own.openfga_token_file),
        cache_ttl_seconds=0.0,
    )
    async with serving(await build(mine, RuntimeSettings())) as served, signed_channel(served.target) as ch:
        t = Tenant(f"tenants/t{uuid.uuid4().hex[:10]}", ch)
        await t.policy.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=t.name, relationships=[rel(t.user("olga"), "operator", f"tenant:{t.name}")]
            ),
            timeout=10,
        )
        assert (await check(t, t.user("olga"), "can_operate", f"tenant:{t.name}")).verdict == ALLOW
        assert own.openfga is not None
        own.openfga.stop()
        await expect_error(
            check(t, t.user("olga"), "can_operate", f"tenant:{t.name}"),
            grpc.StatusCode.UNAVAILABLE,
            "POLICY_BACKEND_UNAVAILABLE",
        )
        await expect_error(
            t.policy.WriteRelationships(
                policy_service_pb2.WriteRelationshipsRequest(
                    parent=t.name, relationships=[rel(t.user("mike"), "member", f"tenant:{t.name}")]
                ),
                timeout=10,
            ),
            grpc.StatusCode.UNAVAILABLE,
            "POLICY_BACKEND_UNAVAILABLE",
        )


async def test_every_decision_becomes_an_audit_event(tenant: Tenant, stack: RunningStack) -> None:
    t = tenant
    decisions = [
        await check(t, t.user("olga"), "can_execute", t.tool("code_execution")),
        await check(t, t.user("nobody"), "can_execute", t.tool("search")),
    ]
    wanted = {d.decision_id: d for d in decisions}
    consumer = AIOKafkaConsumer(
        "audit", bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[str, event_pb2.Event] = {}
    try:
        async with asyncio.timeout(30):
            while len(found) < len(wanted):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = event_pb2.Event.FromString(record.value)
                        if event.WhichOneof("payload") == "policy_decided":
                            decision_id = event.policy_decided.decision.decision_id
                            if decision_id in wanted:
                                found[decision_id] = event
    finally:
        await consumer.stop()
    for decision_id, event in found.items():
        assert event.tenant == t.name
        assert event.source == "policy"
        assert event.policy_decided.decision.verdict == wanted[decision_id].verdict
        assert event.policy_decided.check.object.startswith("tool:")
        latency = event.policy_decided.latency
        assert 0 < latency.seconds * 1e9 + latency.nanos < 10e9  # svc_policy's own time to decide


async def _claim_retrying(t: Tenant, name: str, claim_id: str) -> bool:
    """Claims until svc_policy answers for real (it may be UNAVAILABLE while its database
    comes back); True if this claim won."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await t.blocked.ClaimApprovedAction(
                blocked_action_service_pb2.ClaimApprovedActionRequest(name=name, claim_id=claim_id), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
                continue
            return False
        return True


async def _check_retrying(t: Tenant, subject: str, relation: str, object_: str) -> policy_decision_pb2.PolicyDecision:
    async with asyncio.timeout(60):
        while True:
            try:
                return await check(t, subject, relation, object_)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.5)


async def test_an_approval_survives_a_postgres_restart_and_still_runs_once(stack_factory: Any) -> None:
    """Approve, restart PostgreSQL under a running svc_policy, then claim from five callers
    at once: exactly one claim wins, and the entry stays approved through the restart."""
    # Durable: a restart must keep every commit, as a production database does.
    own = stack_factory(components=("postgres", "redis", "kafka", "openfga"), durable=True)
    settings = PolicySettings(
        postgres_dsn=own.postgres_dsn,
        redis_url=own.redis_url,
        kafka_bootstrap=own.kafka_bootstrap,
        openfga_api_url=own.openfga_api_url,
        openfga_api_token_file=str(own.openfga_token_file),
        openfga_store=f"skm-test-{uuid.uuid4().hex[:8]}",
    )
    tenant_name = f"tenants/t{uuid.uuid4().hex[:10]}"
    async with (
        serving(await build(settings, RuntimeSettings())) as served,
        signed_channel(served.target) as ch,
    ):
        t = Tenant(tenant_name, ch)
        name = await _approved_action(t)
        assert own.postgres is not None
        own.postgres.stop()
        await asyncio.to_thread(own.start_server, "postgres")

        wins = await asyncio.gather(*(_claim_retrying(t, name, f"c{i}") for i in range(5)))
        assert sum(wins) == 1
        got = await t.blocked.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=name), timeout=10
        )
        assert got.blocked_action.state == State.STATE_EXECUTING
        # OpenFGA, on the same database, answers UNAVAILABLE until it has reconnected.
        after = await _check_retrying(t, t.user("olga"), "can_execute", t.tool("code_execution"))
        # The decision's audit record is written and relayed although the database went
        # away under the outbox's writer and relay.
        conn = await asyncpg.connect(own.postgres_dsn)
        try:
            async with asyncio.timeout(60):
                while True:
                    rows = await conn.fetch("SELECT value, published_at FROM policy.outbox WHERE topic = 'audit'")
                    events = [(event_pb2.Event.FromString(r["value"]), r["published_at"]) for r in rows]
                    mine = [p for e, p in events if e.policy_decided.decision.decision_id == after.decision_id]
                    if mine and mine[0] is not None:
                        break
                    await asyncio.sleep(0.2)
        finally:
            await conn.close()
