"""The platform as a client meets it: through Envoy's public listener only."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm_runtime.contract import service_owners
from skm_runtime.server import signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.devkeys import dev_keys_dir

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "web" / "node_modules" / ".bin" / "buf"
OWNERS = {"conversation", "audio", "tools", "policy", "profiles", "analytics"}


def _buf_curl(*args: str) -> str:
    done = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_contract_names_an_owner_for_every_service() -> None:
    owners = service_owners()
    assert set(owners.values()) == OWNERS
    assert "skm.conversation.v1.ConversationService" in owners


def test_buf_curl_lists_every_skm_service_through_envoy(mesh: RunningStack) -> None:
    listed = set(_buf_curl("--list-services", mesh.envoy_url).split())
    assert set(service_owners()) <= listed
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed


def test_buf_curl_lists_methods_and_calls_health_through_envoy(mesh: RunningStack) -> None:
    methods = set(_buf_curl("--list-methods", mesh.envoy_url).split())
    assert "skm.conversation.v1.ConversationService/Converse" in methods
    assert "skm.audio.v1.AudioService/StreamingRecognize" in methods
    reply = _buf_curl(
        "-d",
        json.dumps({"service": "skm.policy.v1.PolicyService"}),
        f"{mesh.envoy_url}/grpc.health.v1.Health/Check",
    )
    assert json.loads(reply) == {"status": "SERVING"}


async def test_every_service_is_serving_through_envoy(mesh: RunningStack) -> None:
    target = mesh.envoy_url.removeprefix("http://")
    async with signed_channel(target) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        for name in ["", *sorted(service_owners())]:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="skm.nope.v1.Nope"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_each_service_answers_on_its_own_port(mesh: RunningStack) -> None:
    """Behind the gateway, every service serves its contract on its own port."""
    for name, service in mesh.services.items():
        async with signed_channel(service.addr) as chan:
            health = health_pb2_grpc.HealthStub(chan)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    audio = mesh.services["audio"].addr
    async with signed_channel(audio) as chan:
        call = chan.unary_unary("/skm.audio.v1.AudioService/PushAudio")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"", timeout=5)
    # A signed caller with no principal owns no voice stream: svc_audio's own answer.
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info_of(raised.value)
    assert info is not None
    assert (info.reason, info.domain) == ("VOICE_STREAM_NOT_FOUND", "audio.skm")


def test_grpc_web_from_a_browser_origin_reaches_health(mesh: RunningStack) -> None:
    """A browser's grpc-web call (HTTP/1.1, CORS) through Envoy to the mesh."""
    request = health_pb2.HealthCheckRequest(service="skm.audio.v1.AudioService").SerializeToString()
    frame = b"\x00" + struct.pack(">I", len(request)) + request
    response = httpx.post(
        f"{mesh.envoy_url}/grpc.health.v1.Health/Check",
        content=frame,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "origin": "http://localhost:5173",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    body = response.content
    assert body[0] == 0  # a data frame first
    length = struct.unpack(">I", body[1:5])[0]
    reply = health_pb2.HealthCheckResponse.FromString(body[5 : 5 + length])
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    trailer = body[5 + length :]
    assert trailer[0] == 0x80  # then the trailers frame
    assert b"grpc-status:0" in trailer.replace(b" ", b"")


def _skm(mesh: RunningStack, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "skm_cli", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


async def test_a_user_gets_a_token_and_works_through_envoy_with_the_cli(mesh: RunningStack) -> None:
    """`skm token` signs with the stack's dev key; the gateway verifies it; policy decides."""
    tenant = f"e{uuid.uuid4().hex[:8]}"
    async with signed_channel(mesh.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[
                    access_pb2.Relationship(
                        subject=f"user:tenants/{tenant}/users/{who}", relation=role, object=f"tenant:tenants/{tenant}"
                    )
                    for who, role in (("olga", "operator"), ("mike", "member"))
                ],
            ),
            timeout=10,
        )
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    minted = _skm(mesh, "token", "--tenant", tenant, "--user", "olga", "--role", "operator", "--key", key)
    assert minted.returncode == 0, minted.stderr
    listed = _skm(mesh, "--json", "blocked", "list", "--tenant", tenant, token=minted.stdout.strip())
    assert listed.returncode == 0, listed.stderr
    member = _skm(mesh, "token", "--tenant", tenant, "--user", "mike", "--key", key).stdout.strip()
    refused = _skm(mesh, "blocked", "list", "--tenant", tenant, token=member)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    anonymous = _skm(mesh, "blocked", "list", "--tenant", tenant)
    assert anonymous.returncode == 2
    assert "no token" in anonymous.stderr


async def test_an_operator_runs_code_in_the_sandbox_through_envoy(mesh: RunningStack) -> None:
    """The whole path: Envoy -> gateway (token, policy) -> svc_tools (policy again) -> bubblewrap."""
    tenant = f"e{uuid.uuid4().hex[:8]}"
    t, tool = f"tenant:tenants/{tenant}", f"tool:tenants/{tenant}/tools/code_execution"
    async with signed_channel(mesh.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[
                    access_pb2.Relationship(subject=f"user:tenants/{tenant}/users/olga", relation="operator", object=t),
                    access_pb2.Relationship(subject=t, relation="tenant", object=tool),
                    access_pb2.Relationship(subject=t, relation="high_risk", object=tool),
                ],
            ),
            timeout=10,
        )
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    operator = _skm(mesh, "token", "--tenant", tenant, "--user", "olga", "--role", "operator", "--key", key)
    listed = _skm(mesh, "tool", "list", "--tenant", tenant, token=operator.stdout.strip())
    assert listed.returncode == 0, listed.stderr
    assert "code_execution" in listed.stdout
    code = json.dumps({"runtime": "python", "code": "print(6 * 7)"})
    ran = _skm(mesh, "tool", "run", "code_execution", "--tenant", tenant, "--args", code, token=operator.stdout.strip())
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "42"
    assert "[policy: ALLOW" in ran.stderr
    # eve is no member: she may not read the constitution, so her token is minted for the
    # new tenant's empty one without asking.
    stranger = _skm(mesh, "token", "--offline", "--tenant", tenant, "--user", "eve", "--key", key).stdout.strip()
    refused = _skm(mesh, "tool", "run", "code_execution", "--tenant", tenant, "--args", code, token=stranger)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr


def test_a_members_run_of_a_high_risk_tool_waits_for_an_operator_and_runs_once_approved(
    mesh: RunningStack,
) -> None:
    """REQUIRES_APPROVAL at the gateway goes on to svc_tools (the contract's
    forward_requires_approval), which holds the run until an operator approves it."""
    tenant = f"e{uuid.uuid4().hex[:8]}"
    t, tool = f"tenant:tenants/{tenant}", f"tool:tenants/{tenant}/tools/code_execution"
    # As the mesh's operator would: straight to svc_policy, signed with the mesh key.
    written = _skm(
        mesh,
        *("relationships", "write", "--mesh", "--tenant", tenant),
        *("--mesh-key", str(mesh.mesh_key_file), "--policy-addr", mesh.services["policy"].addr),
        *(f"user:tenants/{tenant}/users/olga", "operator", t),
        *(f"user:tenants/{tenant}/users/mike", "member", t),
        *(t, "tenant", tool),
        *(t, "high_risk", tool),
    )
    assert written.returncode == 0, written.stderr
    assert "4 relationship(s) written" in written.stderr
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    member = _skm(mesh, "token", "--tenant", tenant, "--user", "mike", "--key", key).stdout.strip()
    operator = _skm(mesh, "token", "--tenant", tenant, "--user", "olga", "--role", "operator", "--key", key)
    code = json.dumps({"runtime": "python", "code": "print(6 * 7)"})
    env = {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": member}
    argv = [sys.executable, "-m", "skm_cli", "tool", "run", "code_execution", "--tenant", tenant, "--args", code]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as run:
        assert run.stderr is not None
        held = run.stderr.readline()
        assert held.startswith("[policy: REQUIRES_APPROVAL HIGH_RISK_TOOL_NEEDS_APPROVAL, waiting for an operator: ")
        name = held.rsplit(" ", 1)[-1].rstrip("]\n")
        assert name.startswith(f"tenants/{tenant}/blockedActions/")
        approved = _skm(mesh, "blocked", "approve", name, "--note", "ok", token=operator.stdout.strip())
        assert approved.returncode == 0, approved.stderr
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, held + stderr
    assert stdout.strip() == "42"
    assert '[result: {"exit_code": 0' in stderr


def test_relationships_from_the_cli_the_mesh_operator_names_an_admin_who_then_grants_through_envoy(
    mesh: RunningStack,
) -> None:
    """`skm relationships --mesh` (the mesh key, straight to svc_policy) names a tenant's first
    admin; that admin writes, reads and deletes through Envoy with a token; a member may not;
    without the mesh key, --mesh says what is missing."""
    tenant = f"r{uuid.uuid4().hex[:8]}"
    t = f"tenant:tenants/{tenant}"
    ada, mike = f"user:tenants/{tenant}/users/ada", f"user:tenants/{tenant}/users/mike"
    direct = ("--mesh", "--mesh-key", str(mesh.mesh_key_file), "--policy-addr", mesh.services["policy"].addr)
    named = _skm(mesh, "relationships", "write", "--tenant", tenant, *direct, ada, "admin", t)
    assert named.returncode == 0, named.stderr

    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    admin = _skm(mesh, "token", "--tenant", tenant, "--user", "ada", "--role", "admin", "--key", key)
    assert admin.returncode == 0, admin.stderr
    granted = _skm(mesh, "relationships", "write", "--tenant", tenant, mike, "member", t, token=admin.stdout.strip())
    assert granted.returncode == 0, granted.stderr
    read = _skm(mesh, "relationships", "read", "--tenant", tenant, "--object", t, token=admin.stdout.strip())
    assert read.returncode == 0, read.stderr
    assert sorted(read.stdout.splitlines()) == sorted([f"{ada} admin {t}", f"{mike} member {t}"])

    member = _skm(mesh, "token", "--tenant", tenant, "--user", "mike", "--key", key)
    refused = _skm(mesh, "relationships", "write", "--tenant", tenant, mike, "admin", t, token=member.stdout.strip())
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr, refused.stderr

    revoked = _skm(mesh, "relationships", "delete", "--tenant", tenant, mike, "member", t, token=admin.stdout.strip())
    assert revoked.returncode == 0, revoked.stderr
    read = _skm(mesh, "relationships", "read", "--tenant", tenant, "--object", t, "--json", *direct)
    assert read.returncode == 0, read.stderr
    assert [json.loads(line)["subject"] for line in read.stdout.splitlines()] == [ada]

    odd = _skm(mesh, "relationships", "write", "--tenant", tenant, mike, "member", token=admin.stdout.strip())
    assert odd.returncode == 2
    assert "SUBJECT RELATION OBJECT" in odd.stderr
    nowhere = ("--mesh", "--mesh-key", "/nonexistent/mesh.key")
    keyless = _skm(mesh, "relationships", "write", "--tenant", tenant, *nowhere, mike, "admin", t)
    assert keyless.returncode == 2
    assert "cannot read the mesh key file" in keyless.stderr, keyless.stderr
    assert "--mesh-key" in keyless.stderr, keyless.stderr
