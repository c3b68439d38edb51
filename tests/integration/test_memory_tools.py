"""The memory tools through ExecuteTool on the real stack: svc_policy on OpenFGA, PostgreSQL,
Kafka, Qdrant in local mode and the all-MiniLM-L6-v2 encoder (real semantic embeddings).

What a test expects to be stored it checks in both stores: the rows of tools.memories and
the points of the server's Qdrant collections.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs

from skm.events.v1 import event_pb2
from skm.tools.v1 import tool_pb2, tool_service_pb2
from skm.type.v1 import policy_decision_pb2
from skm_runtime.server import RuntimeSettings
from skm_runtime.status import details_of
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from svc_tools.model import Space
from tests.support.runtime import Served, serving
from tests.support.tools import (
    BlockedState,
    Failure,
    Run,
    Tenant,
    ToolsServer,
    expect_error,
    new_tenant,
    policy_settings,
    read_rest,
    serving_tools,
    tools_settings,
)

ALLOW = policy_decision_pb2.VERDICT_ALLOW
DENY = policy_decision_pb2.VERDICT_DENY
APPROVAL = policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PARAPHRASES = Path(__file__).resolve().parents[2] / "bench" / "data" / "paraphrases.json"


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


@pytest.fixture(scope="module")
async def tools(stack: RunningStack, policy: Served) -> AsyncIterator[ToolsServer]:
    async with serving_tools(tools_settings(stack, policy.target, slot_group=5)) as served:
        yield served


@pytest.fixture
async def tenant(policy: Served, tools: ToolsServer) -> AsyncIterator[Tenant]:
    async for t in new_tenant(policy, tools.target):
        yield t


@pytest.fixture
async def other(policy: Served, tools: ToolsServer) -> AsyncIterator[Tenant]:
    async for t in new_tenant(policy, tools.target):
        yield t


async def use(t: Tenant, tool: str, arguments: dict[str, Any], who: Any = None, *, persona: str = "") -> Run:
    return await t.run(t.call(tool, arguments, persona=persona), who if who is not None else t.mike)


async def ok(t: Tenant, tool: str, arguments: dict[str, Any], who: Any = None, *, persona: str = "") -> Any:
    run = await use(t, tool, arguments, who, persona=persona)
    run.check_order()
    return run.payload()


async def rows(stack: RunningStack, tenant: Tenant) -> dict[str, str]:
    """The tenant's stored memories: id -> namespace."""
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        found = await conn.fetch("SELECT id, namespace FROM tools.memories WHERE tenant = $1", tenant.name)
    finally:
        await conn.close()
    return {row["id"]: row["namespace"] for row in found}


async def points(tools: ToolsServer, tenant: Tenant, *namespaces: str) -> int:
    return sum([await tools.index.count(Space(tenant.name, namespace, MODEL)) for namespace in namespaces])


async def test_the_catalogue_shows_the_memory_tools_with_schemas(tenant: Tenant) -> None:
    reply = await tenant.stub.ListTools(tool_service_pb2.ListToolsRequest(parent=tenant.name), timeout=10)
    by_id = {tool.name.rsplit("/", 1)[1]: tool for tool in reply.tools}
    for name in ("memory_save", "memory_load", "memory_delete", "memory_forget", "knowledge_query"):
        tool = by_id[name]
        assert tool.execution_side == tool_pb2.EXECUTION_SIDE_TOOL_SERVICE
        assert json.loads(tool.arguments_schema_json)["type"] == "object"
        assert "Result:" in tool.description
    assert by_id["memory_load"].risk_level == tool_pb2.RISK_LEVEL_LOW
    assert by_id["memory_save"].risk_level == tool_pb2.RISK_LEVEL_MEDIUM
    load = json.loads(by_id["memory_load"].arguments_schema_json)
    assert load["properties"]["threshold"]["default"] == 0.3
    assert load["required"] == ["query"]


async def test_a_paraphrased_query_recalls_the_right_fact(tenant: Tenant, tools: ToolsServer) -> None:
    pairs = json.loads(PARAPHRASES.read_text())["pairs"][:10]
    ids = []
    for pair in pairs:
        saved = await ok(tenant, "memory_save", {"text": pair["fact"]})
        assert saved["area"] == "main"
        ids.append(saved["id"])
    assert await points(tools, tenant, tenant.namespace("main", "mike")) == len(pairs)
    for pair, saved_id in zip(pairs, ids, strict=True):
        found = await ok(tenant, "memory_load", {"query": pair["query"], "limit": 1})
        assert [m["id"] for m in found["memories"]] == [saved_id], pair["query"]
        assert found["memories"][0]["text"] == pair["fact"]
        assert found["memories"][0]["score"] >= 0.3


async def test_the_threshold_decides_what_counts_as_a_match(tenant: Tenant) -> None:
    saved = await ok(
        tenant, "memory_save", {"text": "The office coffee machine is descaled on the first Monday of each month."}
    )
    query = "When does the espresso maker get cleaned of limescale?"
    found = (await ok(tenant, "memory_load", {"query": query}))["memories"]
    assert [m["id"] for m in found] == [saved["id"]]
    score = found[0]["score"]
    assert 0.3 < score < 0.95
    assert (await ok(tenant, "memory_load", {"query": query, "threshold": round(score + 0.01, 4)}))["memories"] == []
    assert (
        len((await ok(tenant, "memory_load", {"query": query, "threshold": round(score - 0.01, 4)}))["memories"]) == 1
    )
    # An unrelated query does not reach the default threshold.
    assert (await ok(tenant, "memory_load", {"query": "Which football team won the league?"}))["memories"] == []


async def test_delete_and_forget_remove_from_both_stores(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    main = tenant.namespace("main", "mike")
    keep = await ok(tenant, "memory_save", {"text": "Invoices are paid within fourteen days of receipt."})
    gone = await ok(
        tenant, "memory_save", {"text": "The wifi password for guests is printed on the card at reception."}
    )
    stale = await ok(
        tenant, "memory_save", {"text": "The elevator in building B is out of service until the end of the month."}
    )

    deleted = await ok(tenant, "memory_delete", {"ids": [gone["id"]]})
    assert deleted == {"deleted": [gone["id"]]}
    assert gone["id"] not in await rows(stack, tenant)
    assert await points(tools, tenant, main) == 2
    found = await ok(
        tenant, "memory_load", {"query": "Where can visitors find the wireless network key?", "threshold": -1}
    )
    assert gone["id"] not in [m["id"] for m in found["memories"]]

    # All or nothing: one unknown id and nothing is deleted.
    run = await use(tenant, "memory_delete", {"ids": [keep["id"], str(uuid.uuid4())]})
    reason, message = run.failure()
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "not found" in message
    assert keep["id"] in await rows(stack, tenant)

    # Forgetting from mike's own area only (the shared ones would wait for approval).
    query = "The elevator in building B is out of service"
    forgotten = await ok(tenant, "memory_forget", {"query": query, "areas": ["main"]})
    assert forgotten == {"deleted": [stale["id"]]}
    assert set(await rows(stack, tenant)) == {keep["id"]}
    assert await points(tools, tenant, main) == 1


async def test_main_is_private_and_shared_areas_are_shared(tenant: Tenant) -> None:
    private = await ok(tenant, "memory_save", {"text": "My locker code is in the blue notebook."})
    shared = await ok(tenant, "memory_save", {"text": "Team lunches avoid peanuts.", "area": "solutions"}, tenant.olga)
    olga = await ok(tenant, "memory_load", {"query": "locker code notebook", "threshold": -1}, tenant.olga)
    assert private["id"] not in [m["id"] for m in olga["memories"]]
    mike = await ok(tenant, "memory_load", {"query": "peanuts at team lunch"})
    assert [m["id"] for m in mike["memories"]][:1] == [shared["id"]]
    assert mike["memories"][0]["area"] == "solutions"


async def test_another_tenant_never_sees_nor_deletes_the_memories(
    tenant: Tenant, other: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    secret = await ok(
        tenant,
        "memory_save",
        {"text": "The vault combination is kept by the notary.", "area": "solutions"},
        tenant.olga,
    )
    found = await ok(other, "memory_load", {"query": "The vault combination is kept by the notary.", "threshold": -1})
    assert found == {"memories": []}
    run = await use(other, "memory_delete", {"ids": [secret["id"]]})
    reason, message = run.failure()
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert message.startswith("not found")
    # The other tenant's operator may forget in every area of her tenant: none of this one's.
    assert await ok(other, "memory_forget", {"query": "The vault combination", "threshold": -1}, other.olga) == {
        "deleted": []
    }
    assert secret["id"] in await rows(stack, tenant)
    assert await points(tools, tenant, tenant.namespace("solutions")) == 1
    # Nor can the other tenant's caller name this tenant's tools.
    foreign = tenant.call("memory_load", {"query": "vault"})
    await expect_error(
        other.stub.ExecuteTool(foreign, metadata=other.mike, timeout=10), grpc.StatusCode.NOT_FOUND, "TOOL_NOT_FOUND"
    )


async def test_a_denied_memory_tool_changes_nothing(tenant: Tenant, tools: ToolsServer, stack: RunningStack) -> None:
    saved = await ok(tenant, "memory_save", {"text": "Deployments are frozen during the last week of December."})
    nobody = tenant.who("nobody")
    runs = [
        await use(tenant, "memory_save", {"text": "written by a stranger"}, nobody),
        await use(tenant, "memory_delete", {"ids": [saved["id"]]}, nobody),
        await use(tenant, "memory_forget", {"query": "Deployments are frozen", "threshold": -1}, nobody),
        await use(tenant, "memory_load", {"query": "Deployments are frozen"}, nobody),
        # mike may write his own main, but not as a persona that may not.
        await use(tenant, "memory_save", {"text": "via the plain persona"}, persona=tenant.persona("plain")),
        # Another user's private namespace: olga may not delete mike's memory.
        await use(tenant, "memory_delete", {"ids": [saved["id"]]}, tenant.olga),
    ]
    for run in runs:
        assert run.kinds() == ["accepted", "decision", "result"]
        assert run.decision.verdict == DENY
        assert run.failure()[0] == Failure.FAILURE_REASON_DENIED
    assert await rows(stack, tenant) == {saved["id"]: tenant.namespace("main", "mike")}
    assert await points(tools, tenant, tenant.namespace("main", "mike"), tenant.namespace("main", "nobody")) == 1
    # The persona that may write mike's main does so.
    helped = await ok(tenant, "memory_save", {"text": "via the helper persona"}, persona=tenant.persona("helper"))
    assert helped["id"] in await rows(stack, tenant)


async def test_a_shared_write_waits_for_approval_then_happens_once(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    request = tenant.call(
        "memory_save", {"text": "Use the blue theme for slides shown to customers.", "area": "solutions"}
    )
    call = tenant.stub.ExecuteTool(request, metadata=tenant.mike, timeout=60)
    accepted = (await call.read()).accepted.execution
    decision = (await call.read()).decision
    assert (decision.verdict, decision.reason) == (APPROVAL, "SHARED_MEMORY_WRITE_NEEDS_APPROVAL")
    held = await tenant.blocked_action(decision.blocked_action)
    assert "memory_save (area solutions)" in held.summary
    await asyncio.sleep(0.3)
    assert await rows(stack, tenant) == {}
    assert await points(tools, tenant, tenant.namespace("solutions")) == 0

    await tenant.approve(decision.blocked_action)
    rest = await read_rest(call)
    saved = json.loads(rest[-1].result.success.output_json)
    assert await rows(stack, tenant) == {saved["id"]: tenant.namespace("solutions")}
    assert await points(tools, tenant, tenant.namespace("solutions")) == 1
    again = await tenant.run(request, tenant.mike)
    assert again.execution == accepted
    assert again.payload() == saved
    assert len(await rows(stack, tenant)) == 1

    # Rejected: nothing is written. An operator writes shared memory without approval.
    call = tenant.stub.ExecuteTool(
        tenant.call("memory_save", {"text": "rejected text", "area": "fragments"}), metadata=tenant.mike, timeout=60
    )
    await call.read()
    blocked = (await call.read()).decision.blocked_action
    await tenant.approve(blocked, reject=True)
    assert [r.result.failure.reason for r in await read_rest(call)] == [Failure.FAILURE_REASON_REJECTED]
    assert (await tenant.blocked_action(blocked)).state == BlockedState.STATE_REJECTED
    assert len(await rows(stack, tenant)) == 1
    run = await use(tenant, "memory_save", {"text": "operator note", "area": "fragments"}, tenant.olga)
    assert run.decision.verdict == ALLOW
    assert len(await rows(stack, tenant)) == 2

    # Forgetting touches every area named (by default all three): a member waits too.
    call = tenant.stub.ExecuteTool(tenant.call("memory_forget", {"query": "operator note"}), metadata=tenant.mike)
    name = (await call.read()).accepted.execution
    assert (await call.read()).decision.reason == "SHARED_MEMORY_WRITE_NEEDS_APPROVAL"
    await tenant.stub.CancelExecution(tool_service_pb2.CancelExecutionRequest(name=name), metadata=tenant.mike)
    assert [r.result.failure.reason for r in await read_rest(call)] == [Failure.FAILURE_REASON_CANCELLED]
    assert len(await rows(stack, tenant)) == 2


async def test_bad_input_gets_clear_codes_and_stores_nothing(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    execute = tenant.stub.ExecuteTool
    await expect_error(
        execute(tenant.call("memory_nope", {"text": "x"}), metadata=tenant.mike, timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "TOOL_NOT_FOUND",
    )
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("memory_save", {}, "arguments_json"),
        ("memory_save", {"text": ""}, "arguments_json.text"),
        ("memory_save", {"text": "x" * 10_001}, "arguments_json.text"),
        ("memory_save", {"text": "x", "area": "Main Area"}, "arguments_json.area"),
        ("memory_save", {"text": "x", "namespace": "main"}, "arguments_json"),
        ("memory_load", {"query": "x", "threshold": 2}, "arguments_json.threshold"),
        ("memory_load", {"query": "x", "limit": 0}, "arguments_json.limit"),
        ("memory_load", {"query": "x", "areas": []}, "arguments_json.areas"),
        ("memory_delete", {"ids": ["not-a-uuid"]}, "arguments_json.ids[0]"),
        ("memory_delete", {"ids": []}, "arguments_json.ids"),
        ("memory_forget", {"query": 7}, "arguments_json.query"),
        ("knowledge_query", {"query": "x", "knowledge_base": "No Such/Base"}, "arguments_json.knowledge_base"),
    ]
    for tool, arguments, field in cases:
        error = await expect_error(
            execute(tenant.call(tool, arguments), metadata=tenant.mike, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ARGUMENTS_INVALID",
        )
        bad = error_details_pb2.BadRequest()
        status = details_of(error.trailing_metadata())
        assert status is not None
        assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
        assert bad.field_violations[0].field == field, (tool, arguments)
    await expect_error(
        execute(tenant.call("memory_save", {"text": "x" * (300 * 1024)}), metadata=tenant.mike, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ARGUMENTS_TOO_LARGE",
    )
    assert await rows(stack, tenant) == {}
    assert await points(tools, tenant, tenant.namespace("main", "mike")) == 0


async def test_memory_operations_are_audit_events(tenant: Tenant, stack: RunningStack) -> None:
    saved = await ok(tenant, "memory_save", {"text": "The annual team party is held at the lake house."})
    await ok(tenant, "memory_delete", {"ids": [saved["id"]]})
    consumer = AIOKafkaConsumer(
        "audit", bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: dict[int, event_pb2.Event] = {}
    try:
        async with asyncio.timeout(30):
            while len(seen) < 2:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = event_pb2.Event.FromString(record.value)
                        if (
                            event.WhichOneof("payload") == "memory_operation"
                            and saved["id"] in event.memory_operation.memory_ids
                        ):
                            seen[event.memory_operation.kind] = event
    finally:
        await consumer.stop()
    kinds = event_pb2.MemoryOperation.Kind
    save, delete = seen[kinds.KIND_SAVE], seen[kinds.KIND_DELETE]
    assert save.tenant == tenant.name
    assert save.source == "tools"
    assert save.memory_operation.namespace == tenant.namespace("main", "mike")
    assert save.memory_operation.execution.startswith(f"{tenant.name}/executions/")
    assert save.principal.user == f"{tenant.name}/users/mike"
    assert delete.memory_operation.execution != save.memory_operation.execution
