"""svc_policy for tests that need it as a process of its own, and the tenant they hold actions in."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import any_pb2, wrappers_pb2

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.type.v1 import policy_decision_pb2
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from skm_stack.services import ServiceProcess, ServiceSpec, start_service
from tests.support.ports import free_port

Metadata = tuple[tuple[str, str | bytes], ...]


@contextlib.contextmanager
def policy_process(stack: RunningStack, prefix: str) -> Iterator[ServiceProcess]:
    """`python -m svc_policy` on the stack's servers (its own OpenFGA store), stopped after."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    spec = ServiceSpec(
        name="policy",
        module="svc_policy",
        port=port,
        health_services=("", "skm.policy.v1.PolicyService"),
        extra_env={
            "SKM_POLICY_ADDR": f"127.0.0.1:{port}",
            "SKM_POLICY_OPENFGA_STORE": f"skm-test-{uuid.uuid4().hex[:8]}",
            "SKM_LOG_LEVEL": "WARNING",
        },
    )
    service = start_service(spec, state, stack.service_env())
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(state, ignore_errors=True)


def signed(tenant: str, user: str) -> Metadata:
    """A member's principal as the mesh sends it (signed with the test process's mesh key)."""
    return principal_metadata(principal_message(tenant, f"{tenant}/users/{user}", ["member"]))


async def approval_tenant(channel: grpc.aio.Channel, letter: str) -> str:
    """A fresh tenant: olga its operator, mike a member, a high-risk tool `code` that needs
    approval for mike."""
    tenant = f"tenants/{letter}{uuid.uuid4().hex[:10]}"
    t = f"tenant:{tenant}"
    relationships = [
        access_pb2.Relationship(subject=f"user:{tenant}/users/olga", relation="operator", object=t),
        access_pb2.Relationship(subject=f"user:{tenant}/users/mike", relation="member", object=t),
        access_pb2.Relationship(subject=t, relation="tenant", object=f"tool:{tenant}/tools/code"),
        access_pb2.Relationship(subject=t, relation="high_risk", object=f"tool:{tenant}/tools/code"),
    ]
    await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=relationships), timeout=10
    )
    return tenant


def hold_check(tenant: str) -> policy_service_pb2.CheckRequest:
    """mike's run of the tenant's high-risk tool `code`, to be held for an operator."""
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="run it"))
    return policy_service_pb2.CheckRequest(
        check=access_pb2.AccessCheck(
            subject=f"user:{tenant}/users/mike", relation="can_execute", object=f"tool:{tenant}/tools/code"
        ),
        hold=policy_service_pb2.Hold(request_id=str(uuid.uuid4()), payload=payload),
    )


async def hold(channel: grpc.aio.Channel, tenant: str) -> str:
    """mike's run of the high-risk tool, held for an operator: the blocked action's name."""
    reply = await policy_service_pb2_grpc.PolicyServiceStub(channel).Check(
        hold_check(tenant), metadata=signed(tenant, "mike"), timeout=10
    )
    assert reply.decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
    return reply.decision.blocked_action


async def held_approved_claimed(addr: str) -> tuple[str, str]:
    """A tenant and an action of mike's held, approved by olga and claimed as `claim-1`
    (svc_policy at `addr`)."""
    async with signed_channel(addr) as channel:
        tenant = await approval_tenant(channel, "c")
        name = await hold(channel, tenant)
        blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        await blocked.ApproveBlockedAction(
            blocked_action_service_pb2.ApproveBlockedActionRequest(name=name),
            metadata=signed(tenant, "olga"),
            timeout=10,
        )
        await blocked.ClaimApprovedAction(
            blocked_action_service_pb2.ClaimApprovedActionRequest(name=name, claim_id="claim-1"),
            metadata=signed(tenant, "mike"),
            timeout=10,
        )
    return tenant, name


async def held_state(addr: str, tenant: str, name: str) -> blocked_action_pb2.BlockedAction:
    """The entry as olga, the tenant's operator, reads it."""
    async with signed_channel(addr) as channel:
        reply = await blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel).GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=name),
            metadata=signed(tenant, "olga"),
            timeout=10,
            wait_for_ready=True,  # (gRPC shares the connection of a channel still backing off from the restart)
        )
    return reply.blocked_action
