"""The policy client (skm_runtime/policy_client.py) against svc_policy running as a process of its own,
on the real OpenFGA, PostgreSQL, Kafka and Redis: verdicts it reuses, and what ends the reuse.

Reuse is observed through decision ids: svc_policy gives every decision a new one, and a
reused verdict keeps the id of the decision it came from.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.type.v1 import policy_decision_pb2
from skm_runtime.interceptors import mesh_caller_interceptors
from skm_runtime.policy_client import PolicyClient
from skm_runtime.server import signed_channel
from skm_stack import RunningStack, Toolchain
from skm_stack.redis_server import start_redis
from skm_stack.services import ServiceProcess
from tests.support.policy import policy_process as start_policy
from tests.support.ports import free_port

ALLOW = policy_decision_pb2.VERDICT_ALLOW
DENY = policy_decision_pb2.VERDICT_DENY
Decision = policy_decision_pb2.PolicyDecision
# Long enough that only an announcement, never the TTL, can end a reuse within a test.
LONG_TTL = 600.0


@pytest.fixture(scope="module")
def policy_process(stack: RunningStack) -> Iterator[ServiceProcess]:
    """svc_policy as `python -m svc_policy`: another process than the clients under test."""
    with start_policy(stack, "skm-test-policy-client-") as service:
        yield service


@pytest.fixture
async def channel(policy_process: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with signed_channel(policy_process.addr) as opened:
        yield opened


@pytest.fixture
def tenant() -> str:
    return f"tenants/c{uuid.uuid4().hex[:10]}"


def rel(subject: str, relation: str, object_: str) -> access_pb2.Relationship:
    return access_pb2.Relationship(subject=subject, relation=relation, object=object_)


def question(
    subject: str, relation: str, object_: str, *, context: dict[str, object] | None = None, fresh: bool = False
) -> policy_service_pb2.CheckRequest:
    check = access_pb2.AccessCheck(subject=subject, relation=relation, object=object_)
    if context is not None:
        check.context.update(context)
    consistency = access_pb2.CONSISTENCY_HIGHER_CONSISTENCY if fresh else access_pb2.CONSISTENCY_UNSPECIFIED
    return policy_service_pb2.CheckRequest(check=check, consistency=consistency)


async def write(channel: grpc.aio.Channel, tenant: str, *relationships: access_pb2.Relationship) -> None:
    await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=relationships), timeout=10
    )


async def delete(channel: grpc.aio.Channel, tenant: str, *relationships: access_pb2.Relationship) -> None:
    await policy_service_pb2_grpc.PolicyServiceStub(channel).DeleteRelationships(
        policy_service_pb2.DeleteRelationshipsRequest(parent=tenant, relationships=relationships), timeout=10
    )


async def eventually(holds: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Wait until `holds()` is true; fail after `seconds` (a bound on a hang, not a measurement)."""
    async with asyncio.timeout(seconds):
        for _ in itertools.count():
            if await holds():
                return
            await asyncio.sleep(0.01)


async def caching(client: PolicyClient, *, wanted: bool = True) -> None:
    """Wait until the client follows svc_policy's changes (Redis confirmed its subscription),
    or with `wanted=False` until it knows it does not."""

    async def now() -> bool:
        client.start()
        return client.caching is wanted

    await eventually(now)


async def reuse_ended(client: PolicyClient, ask: policy_service_pb2.CheckRequest, decision_id: str) -> Decision:
    """The first decision that is not the one with `decision_id` reused."""
    found: list[Decision] = []

    async def other() -> bool:
        found.append(await client.check(ask, rpc_timeout=10))
        return found[-1].decision_id != decision_id

    await eventually(other, 10.0)
    return found[-1]


@pytest.fixture
async def client(channel: grpc.aio.Channel, stack: RunningStack) -> AsyncIterator[PolicyClient]:
    opened = PolicyClient(channel, redis_url=stack.redis_url, ttl=LONG_TTL, heartbeat=0.2)
    await caching(opened)
    yield opened
    await opened.close()


async def test_a_revocation_through_svc_policy_ends_a_remembered_allow_in_another_process(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    grant = rel(f"user:{tenant}/users/olga", "operator", f"tenant:{tenant}")
    await write(channel, tenant, grant)
    ask = question(f"user:{tenant}/users/olga", "can_operate", f"tenant:{tenant}")
    first = await client.check(ask, rpc_timeout=10)
    assert first.verdict == ALLOW
    again = await client.check(ask, rpc_timeout=10)
    assert again.verdict == ALLOW
    assert again.decision_id == first.decision_id, "an ALLOW within the TTL is reused with its decision id"

    await delete(channel, tenant, grant)  # svc_policy, in its own process, announces it on Redis
    decision = await reuse_ended(client, ask, first.decision_id)  # the TTL is 600 s: only the announcement can
    assert decision.verdict == DENY
    assert decision.reason == "NOT_A_TENANT_MEMBER"


async def test_what_check_would_reuse_is_remembered_without_a_request_and_nothing_else(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    """`remembered`, admission's fast path, says exactly what `check` would reuse."""
    subject, relation, object_ = f"user:{tenant}/users/olga", "can_operate", f"tenant:{tenant}"
    grant = rel(subject, "operator", object_)
    await write(channel, tenant, grant)
    assert client.remembered(subject, relation, object_) is None, "nothing asked yet"
    first = await client.check(question(subject, relation, object_), rpc_timeout=10)
    remembered = client.remembered(subject, relation, object_)
    assert remembered is not None
    assert (remembered.verdict, remembered.decision_id) == (ALLOW, first.decision_id)
    assert client.remembered(subject, "can_administer", object_) is None, "another relation was not asked"

    await delete(channel, tenant, grant)

    async def forgotten() -> bool:
        return client.remembered(subject, relation, object_) is None

    await eventually(forgotten, 10.0)  # the TTL is 600 s: only the announcement ends it


async def test_a_grant_through_svc_policy_ends_a_remembered_deny(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    await write(channel, tenant, rel(f"user:{tenant}/users/mike", "member", f"tenant:{tenant}"))
    ask = question(f"user:{tenant}/users/mike", "can_operate", f"tenant:{tenant}")
    first = await client.check(ask, rpc_timeout=10)
    assert first.verdict == DENY
    assert first.reason == "ROLE_INSUFFICIENT"
    assert (await client.check(ask, rpc_timeout=10)).decision_id == first.decision_id
    await write(channel, tenant, rel(f"user:{tenant}/users/mike", "operator", f"tenant:{tenant}"))
    decision = await reuse_ended(client, ask, first.decision_id)
    assert decision.verdict == ALLOW


async def test_requires_approval_and_fresh_checks_are_always_asked(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    tool = f"tool:{tenant}/tools/code_execution"
    await write(
        channel,
        tenant,
        rel(f"user:{tenant}/users/mike", "member", f"tenant:{tenant}"),
        rel(f"tenant:{tenant}", "tenant", tool),
        rel(f"tenant:{tenant}", "high_risk", tool),
    )
    held = question(f"user:{tenant}/users/mike", "can_execute", tool)
    ids = {(await client.check(held, rpc_timeout=10)).decision_id for _ in range(3)}
    assert len(ids) == 3, "REQUIRES_APPROVAL is never reused"

    member = question(f"user:{tenant}/users/mike", "can_converse", f"tenant:{tenant}")
    remembered = await client.check(member, rpc_timeout=10)
    fresh = await client.check(
        question(f"user:{tenant}/users/mike", "can_converse", f"tenant:{tenant}", fresh=True), rpc_timeout=10
    )
    assert fresh.verdict == ALLOW
    assert fresh.decision_id != remembered.decision_id, "HIGHER_CONSISTENCY never reads the cache"


async def test_contexts_are_one_question_whatever_their_key_order(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    budget = f"model_budget:{tenant}/budgets/gpu"
    await write(channel, tenant, rel(f"user:{tenant}/users/mike", "member", f"tenant:{tenant}"))
    subject = f"user:{tenant}/users/mike"
    first = await client.check(question(subject, "can_spend", budget, context={"a": 1, "b": "x"}), rpc_timeout=10)
    same = await client.check(question(subject, "can_spend", budget, context={"b": "x", "a": 1}), rpc_timeout=10)
    other = await client.check(question(subject, "can_spend", budget, context={"a": 2, "b": "x"}), rpc_timeout=10)
    bare = await client.check(question(subject, "can_spend", budget), rpc_timeout=10)
    assert same.decision_id == first.decision_id
    assert len({first.decision_id, other.decision_id, bare.decision_id}) == 3


async def test_without_redis_nothing_is_reused(channel: grpc.aio.Channel, tenant: str) -> None:
    client = PolicyClient(channel, redis_url=f"redis://127.0.0.1:{free_port()}/0", ttl=LONG_TTL, heartbeat=0.2)
    try:
        ask = question(f"user:{tenant}/users/nobody", "can_converse", f"tenant:{tenant}")
        ids = {(await client.check(ask, rpc_timeout=10)).decision_id for _ in range(3)}
        assert len(ids) == 3
        assert not client.caching
    finally:
        await client.close()


@pytest.fixture
def redis_state() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="skm-test-policy-redis-"))
    state.chmod(0o755)
    yield state
    shutil.rmtree(state, ignore_errors=True)


async def test_a_lost_subscription_stops_reuse_until_redis_is_back(
    channel: grpc.aio.Channel, tenant: str, toolchain: Toolchain, redis_state: Path
) -> None:
    """A Redis of the test's own, stopped and started again on the same port."""
    port = free_port()
    redis = await asyncio.to_thread(start_redis, toolchain, redis_state, port)
    client = PolicyClient(channel, redis_url=redis.url, ttl=LONG_TTL, heartbeat=0.2)
    try:
        await caching(client)
        ask = question(f"user:{tenant}/users/nobody", "can_converse", f"tenant:{tenant}")
        first = await client.check(ask, rpc_timeout=10)
        assert (await client.check(ask, rpc_timeout=10)).decision_id == first.decision_id

        await asyncio.to_thread(redis.stop)
        await caching(client, wanted=False)
        ids = {(await client.check(ask, rpc_timeout=10)).decision_id for _ in range(2)}
        assert first.decision_id not in ids
        assert len(ids) == 2, "nothing is reused while the subscription is lost"

        redis = await asyncio.to_thread(start_redis, toolchain, redis_state, port)
        await caching(client)  # resubscribed in the background
        again = await client.check(ask, rpc_timeout=10)
        assert again.decision_id not in ids | {first.decision_id}, "the cache starts empty after resubscribing"
        assert (await client.check(ask, rpc_timeout=10)).decision_id == again.decision_id
    finally:
        await client.close()
        await asyncio.to_thread(redis.stop)


async def test_a_change_in_another_tenant_leaves_remembered_verdicts_alone(
    client: PolicyClient, channel: grpc.aio.Channel, tenant: str
) -> None:
    other = f"tenants/c{uuid.uuid4().hex[:10]}"
    await write(channel, tenant, rel(f"user:{tenant}/users/olga", "member", f"tenant:{tenant}"))
    await write(channel, other, rel(f"user:{other}/users/ivan", "member", f"tenant:{other}"))
    mine = question(f"user:{tenant}/users/olga", "can_converse", f"tenant:{tenant}")
    theirs = question(f"user:{other}/users/ivan", "can_converse", f"tenant:{other}")
    remembered = await client.check(mine, rpc_timeout=10)
    theirs_first = await client.check(theirs, rpc_timeout=10)
    assert remembered.verdict == theirs_first.verdict == ALLOW

    await write(channel, other, rel(f"user:{other}/users/sam", "member", f"tenant:{other}"))
    await reuse_ended(client, theirs, theirs_first.decision_id)  # the other tenant's change has arrived
    kept = await client.check(mine, rpc_timeout=10)
    assert kept.decision_id == remembered.decision_id, "another tenant's change does not end this tenant's reuse"

    await write(channel, tenant, rel(f"user:{tenant}/users/sam", "member", f"tenant:{tenant}"))
    await reuse_ended(client, mine, remembered.decision_id)


class _Counting(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the calls that leave the client, by method."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append(details.method.decode() if isinstance(details.method, bytes) else details.method)
        return await continuation(details, request)


async def test_relations_asked_along_are_decided_in_the_same_round_trip_and_reused(
    policy_process: ServiceProcess, channel: grpc.aio.Channel, stack: RunningStack, tenant: str
) -> None:
    session = f"session:{tenant}/sessions/s1"
    olga = f"user:{tenant}/users/olga"
    await write(
        channel,
        tenant,
        rel(olga, "member", f"tenant:{tenant}"),
        rel(f"tenant:{tenant}", "tenant", session),
        rel(olga, "owner", session),
    )
    counter = _Counting()
    async with grpc.aio.insecure_channel(
        policy_process.addr, interceptors=[counter, *mesh_caller_interceptors()]
    ) as counted:
        client = PolicyClient(counted, redis_url=stack.redis_url, ttl=LONG_TTL, heartbeat=0.2)
        try:
            await caching(client)
            read = await client.check(
                question(olga, "can_read", session), rpc_timeout=10, also=["can_write", "can_delete"]
            )
            assert read.verdict == ALLOW
            assert counter.calls == ["/skm.policy.v1.PolicyService/BatchCheck"]
            written = await client.check(question(olga, "can_write", session), rpc_timeout=10)
            deleted = await client.check(question(olga, "can_delete", session), rpc_timeout=10)
            assert (written.verdict, deleted.verdict) == (ALLOW, ALLOW)
            assert len({read.decision_id, written.decision_id, deleted.decision_id}) == 3, "three decisions"
            assert counter.calls == ["/skm.policy.v1.PolicyService/BatchCheck"], (
                "both were decided along with the first"
            )
            # Known relations are not asked again along with another.
            await client.check(question(olga, "can_delete", session), rpc_timeout=10, also=["can_read", "can_write"])
            assert len(counter.calls) == 1
        finally:
            await client.close()
