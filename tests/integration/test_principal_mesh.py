"""A service admits only callers of the mesh, and trusts a principal only when it is
signed with the mesh key.

svc_policy runs as a process of its own (`python -m svc_policy`, as the stack starts it,
with the suite's mesh key in SKM_MESH_KEY_FILE) on the real OpenFGA, PostgreSQL, Kafka and
Redis.
- A caller that reaches its port directly with neither a signed principal nor a signed
  caller is refused UNAUTHENTICATED (MESH_CALLER_UNVERIFIED) before the service reads its
  request, whatever the method (WriteRelationships included, which writes nothing), and so
  is a caller signed for another method, too long ago, or under another key. Health answers
  anyone.
- A signed caller (a process of the mesh) with a principal of its own making, unsigned,
  with a forged MAC or signed under another key, is a caller without a principal: holding
  an action or approving one is refused UNAUTHENTICATED (PRINCIPAL_MISSING). The same calls,
  signed with the mesh key, go through.
- The service does not start without a key.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.type.v1 import policy_decision_pb2
from skm_runtime.principal import (
    CALLER_MAX_AGE_SECONDS,
    PRINCIPAL_MAC_KEY,
    caller_metadata,
    configure_mesh_key,
    principal_message,
    principal_metadata,
    use_mesh_keys,
)
from skm_runtime.server import signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.paths import REPO_ROOT
from skm_stack.services import ServiceProcess
from tests.support.policy import Metadata, approval_tenant, hold_check, signed
from tests.support.policy import policy_process as start_policy
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def policy_process(stack: RunningStack) -> Iterator[ServiceProcess]:
    with start_policy(stack, "skm-test-principal-") as service:
        yield service


@pytest.fixture
async def channel(policy_process: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    """Calls signed as a caller of the mesh (the test process holds the suite's key)."""
    async with signed_channel(policy_process.addr) as opened:
        yield opened


@pytest.fixture
async def outside(policy_process: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    """Calls that carry only what each call is given: a caller from outside the mesh."""
    async with grpc.aio.insecure_channel(policy_process.addr) as opened:
        yield opened


@pytest.fixture
async def tenant(channel: grpc.aio.Channel) -> str:
    return await approval_tenant(channel, "p")


def _made_up(tenant: str, user: str, mesh_key_file: Path) -> dict[str, Metadata]:
    """The principal as a caller without the mesh key could send it."""
    principal = signed(tenant, user)[0]
    use_mesh_keys([secrets.token_bytes(32)])
    try:
        other_key = principal_metadata(principal_message(tenant, f"{tenant}/users/{user}", ["member"]))
    finally:
        configure_mesh_key(mesh_key_file)
    return {
        "no principal": (),
        "no MAC": (principal,),
        "a forged MAC": (principal, (PRINCIPAL_MAC_KEY, secrets.token_bytes(32))),
        "another key's MAC": other_key,
        "another principal's MAC": (principal, signed(tenant, f"{user}2")[1]),
    }


async def _unauthenticated(
    call: Awaitable[object], what: str, reason: tuple[str, str] = ("PRINCIPAL_MISSING", "policy.skm")
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (what, error.code(), error.details())
    info = error_info_of(error)
    assert info is not None, what
    assert (info.reason, info.domain) == reason, what


_OUTSIDER = ("MESH_CALLER_UNVERIFIED", "runtime.skm")
# A public method's call with no credentials at all: the service admits public calls itself,
# by their bearer token (skm_runtime.gate), and there is none.
_NO_TOKEN = ("TOKEN_MISSING", "gateway.skm")
_WRITE = "/skm.policy.v1.PolicyService/WriteRelationships"


def _callers_from_outside(mesh_key_file: Path) -> dict[str, Metadata]:
    """Signed callers as a caller without the mesh key, or with an old copy, could send them."""
    now = time.time()
    use_mesh_keys([secrets.token_bytes(32)])
    try:
        other_key = caller_metadata(_WRITE)
    finally:
        configure_mesh_key(mesh_key_file)
    ((key, value),) = caller_metadata(_WRITE)
    stamp, name = value[:8], value[40:]
    return {
        "nothing": (),
        "a time and a name, no MAC": ((key, stamp + name),),
        "a forged MAC": ((key, stamp + secrets.token_bytes(32) + name),),
        "another key's MAC": other_key,
        "a MAC for another method": caller_metadata("/skm.policy.v1.PolicyService/Check"),
        "signed too long ago": caller_metadata(_WRITE, now=now - CALLER_MAX_AGE_SECONDS - 5),
        "signed for later": caller_metadata(_WRITE, now=now + CALLER_MAX_AGE_SECONDS + 5),
        "two callers": ((key, value), *caller_metadata(_WRITE)),
    }


async def test_a_caller_from_outside_the_mesh_is_refused_whatever_it_asks_and_nothing_is_written(
    channel: grpc.aio.Channel, outside: grpc.aio.Channel, mesh_key_file: Path
) -> None:
    tenant = f"tenants/o{uuid.uuid4().hex[:10]}"
    grant = access_pb2.Relationship(subject=f"user:{tenant}/users/eve", relation="admin", object=f"tenant:{tenant}")
    write = policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=[grant])
    policy = policy_service_pb2_grpc.PolicyServiceStub(outside)
    for what, metadata in _callers_from_outside(mesh_key_file).items():
        # WriteRelationships is public too (tenant admins, by token): a call with no
        # credentials at all is judged by its token, which it lacks; mesh credentials that
        # do not verify are refused as such, never judged by a token instead.
        expected = _NO_TOKEN if what == "nothing" else _OUTSIDER
        await _unauthenticated(policy.WriteRelationships(write, metadata=metadata, timeout=10), what, expected)
    # Not even a malformed request gets further (no MALFORMED_REQUEST: nothing is read).
    raw = outside.unary_unary(_WRITE)
    await _unauthenticated(raw(b"\xff\xff", timeout=10), "malformed bytes", _NO_TOKEN)
    forged = _callers_from_outside(mesh_key_file)["a forged MAC"]
    await _unauthenticated(raw(b"\xff\xff", metadata=forged, timeout=10), "malformed bytes, forged", _OUTSIDER)
    # Every other kind of method: an internal check, a listing, the server stream of resolutions.
    await _unauthenticated(policy.Check(hold_check(tenant), timeout=10), "a check", _OUTSIDER)
    blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(outside)
    await _unauthenticated(
        blocked.ListBlockedActions(blocked_action_service_pb2.ListBlockedActionsRequest(parent=tenant), timeout=10),
        "a listing",
        _NO_TOKEN,
    )
    watch = blocked.WatchBlockedActionResolutions(
        blocked_action_service_pb2.WatchBlockedActionResolutionsRequest(parent=tenant),
        timeout=10,
    )
    await _unauthenticated(watch.read(), "a server stream", _NO_TOKEN)
    # Health answers anyone.
    reply = await health_pb2_grpc.HealthStub(outside).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    read = await policy_service_pb2_grpc.PolicyServiceStub(channel).ReadRelationships(
        policy_service_pb2.ReadRelationshipsRequest(parent=tenant, object=f"tenant:{tenant}"), timeout=10
    )
    assert list(read.relationships) == [], "an outsider's write wrote nothing"
    # The same write, signed by a caller of the mesh, or carrying a principal the mesh
    # signed (as the gateway forwards it), goes through.
    await policy.WriteRelationships(write, metadata=caller_metadata(_WRITE), timeout=10)
    await policy.WriteRelationships(write, metadata=signed(tenant, "olga"), timeout=10)
    read = await policy_service_pb2_grpc.PolicyServiceStub(channel).ReadRelationships(
        policy_service_pb2.ReadRelationshipsRequest(parent=tenant, object=f"tenant:{tenant}"), timeout=10
    )
    assert [(r.subject, r.relation, r.object) for r in read.relationships] == [
        (grant.subject, grant.relation, grant.object)
    ]


async def test_only_a_signed_principal_may_hold_an_action(
    channel: grpc.aio.Channel, tenant: str, mesh_key_file: Path
) -> None:
    policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
    for what, metadata in _made_up(tenant, "mike", mesh_key_file).items():
        await _unauthenticated(policy.Check(hold_check(tenant), metadata=metadata, timeout=10), what)

    held = await policy.Check(hold_check(tenant), metadata=signed(tenant, "mike"), timeout=10)
    assert held.decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
    assert held.decision.blocked_action.startswith(f"{tenant}/blockedActions/")


async def test_only_a_signed_operator_may_approve(channel: grpc.aio.Channel, tenant: str, mesh_key_file: Path) -> None:
    held = await policy_service_pb2_grpc.PolicyServiceStub(channel).Check(
        hold_check(tenant), metadata=signed(tenant, "mike"), timeout=10
    )
    name = held.decision.blocked_action
    blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
    approve = blocked_action_service_pb2.ApproveBlockedActionRequest(name=name)
    for what, metadata in _made_up(tenant, "olga", mesh_key_file).items():
        await _unauthenticated(blocked.ApproveBlockedAction(approve, metadata=metadata, timeout=10), what)
    still = await blocked.GetBlockedAction(
        blocked_action_service_pb2.GetBlockedActionRequest(name=name), metadata=signed(tenant, "olga"), timeout=10
    )
    assert still.blocked_action.state == blocked_action_pb2.BlockedAction.STATE_PENDING

    approved = await blocked.ApproveBlockedAction(approve, metadata=signed(tenant, "olga"), timeout=10)
    assert approved.blocked_action.state == blocked_action_pb2.BlockedAction.STATE_APPROVED
    assert approved.blocked_action.resolver == f"{tenant}/users/olga"


def _service(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svc_policy", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _problems(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.startswith("  SKM_")]


def test_a_service_without_the_mesh_key_refuses_to_start_and_says_why(stack: RunningStack, tmp_path: Path) -> None:
    """Everything else it needs is there: the key is what it refuses to start without."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SKM_")}
    env |= {key: value for key, value in stack.service_env().items() if key != "SKM_MESH_KEY_FILE"}
    env["SKM_POLICY_ADDR"] = f"127.0.0.1:{free_port()}"
    missing = _service(env)
    assert missing.returncode == 2, missing.stderr
    problems = _problems(missing.stderr)
    assert len(problems) == 1, missing.stderr
    assert problems[0].startswith("SKM_MESH_KEY_FILE: required, not set"), missing.stderr

    key = tmp_path / "mesh.key"
    key.write_text("ef" * 20 + "\n")  # 20 bytes: too short
    env["SKM_MESH_KEY_FILE"] = str(key)
    short = _service(env)
    assert short.returncode == 2, short.stderr
    problems = _problems(short.stderr)
    assert len(problems) == 1, short.stderr
    assert problems[0].startswith("SKM_MESH_KEY_FILE:"), short.stderr
    assert "at least 32 bytes" in problems[0], short.stderr
    assert "efef" not in short.stderr, "the key never appears in a message"

    shown = _service(env, "--help")
    assert shown.returncode == 0, shown.stderr
    [listed] = [line for line in shown.stdout.splitlines() if "SKM_MESH_KEY_FILE" in line]
    assert "(required)" in listed
