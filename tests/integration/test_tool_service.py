"""svc_tools through its gRPC API, with a real svc_policy, PostgreSQL, Kafka and bubblewrap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs

from skm.events.v1 import event_pb2
from skm.tools.v1 import execution_pb2, tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.principal import principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import details_of
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from tests.support.ports import free_port
from tests.support.runtime import Served, serving
from tests.support.tools import (
    BlockedState,
    Failure,
    Tenant,
    ToolsServer,
    expect_error,
    new_tenant,
    policy_settings,
    processes_of_uids,
    read_rest,
    read_until,
    sandbox_uids,
    serving_at,
    serving_tools,
    tools_settings,
)

ALLOW = policy_decision_pb2.VERDICT_ALLOW
DENY = policy_decision_pb2.VERDICT_DENY
APPROVAL = policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
State = execution_pb2.Execution


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


@pytest.fixture(scope="module")
async def tools(stack: RunningStack, policy: Served) -> AsyncIterator[ToolsServer]:
    async with serving_tools(tools_settings(stack, policy.target)) as served:
        yield served


@pytest.fixture
async def tenant(policy: Served, tools: ToolsServer) -> AsyncIterator[Tenant]:
    async for t in new_tenant(policy, tools.target):
        yield t


def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


async def stored_executions(stack: RunningStack, tenant: str) -> int:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tools.executions WHERE tenant = $1", tenant))
    finally:
        await conn.close()


async def test_the_catalogue_lists_every_tool_by_name_with_schema_and_risk(tenant: Tenant) -> None:
    reply = await tenant.stub.ListTools(tool_service_pb2.ListToolsRequest(parent=tenant.name), timeout=10)
    by_id = {tool.name.rsplit("/", 1)[1]: tool for tool in reply.tools}
    assert list(by_id) == sorted(by_id)
    assert list(by_id) == [
        "call_subordinate",
        "code_execution",
        "knowledge_query",
        "memory_delete",
        "memory_forget",
        "memory_load",
        "memory_save",
        "response",
    ]
    assert reply.next_page_token == ""
    code = by_id["code_execution"]
    assert code.name == tenant.tool
    assert code.risk_level == tool_pb2.RISK_LEVEL_HIGH
    assert code.execution_side == tool_pb2.EXECUTION_SIDE_TOOL_SERVICE
    schema = json.loads(code.arguments_schema_json)
    assert schema["properties"]["runtime"]["enum"] == ["python", "terminal"]
    assert schema["required"] == ["runtime", "code"]
    assert "sandbox" in code.description
    for conversation_side in ("response", "call_subordinate"):
        assert by_id[conversation_side].execution_side == tool_pb2.EXECUTION_SIDE_CONVERSATION
        json.loads(by_id[conversation_side].arguments_schema_json)

    first = await tenant.stub.ListTools(tool_service_pb2.ListToolsRequest(parent=tenant.name, page_size=3), timeout=10)
    paged, token = list(first.tools), first.next_page_token
    while token:
        page = await tenant.stub.ListTools(
            tool_service_pb2.ListToolsRequest(parent=tenant.name, page_size=3, page_token=token), timeout=10
        )
        paged += page.tools
        token = page.next_page_token
    assert [t.name for t in paged] == [t.name for t in reply.tools]
    await expect_error(
        tenant.stub.ListTools(
            tool_service_pb2.ListToolsRequest(parent="tenants/other", page_token=first.next_page_token), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        tenant.stub.ListTools(tool_service_pb2.ListToolsRequest(parent="tools"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RESOURCE_NAME",
    )


async def test_python_runs_and_streams_its_output_then_one_result(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    code = f"import sys\nprint('{tag}', 6 * 7)\nprint('oops', file=sys.stderr)"
    run = await tenant.run(tenant.request(code))
    run.check_order()
    assert run.execution.startswith(f"{tenant.name}/executions/")
    assert (run.decision.verdict, run.decision.reason) == (ALLOW, "ROLE_ALLOWS")
    assert run.output() == f"{tag} 42\n".encode()
    assert run.output(execution_pb2.OutputChunk.STREAM_STDERR) == b"oops\n"
    assert run.payload() == {"exit_code": 0, "stdout": f"{tag} 42\n", "stderr": "oops\n"}
    assert tools.sandbox.ran(tag) == 1

    execution = await tenant.execution(run.execution)
    assert execution.state == State.STATE_SUCCEEDED
    assert execution.decision.decision_id == run.decision.decision_id
    assert execution.result == run.result
    assert execution.principal.user == f"{tenant.name}/users/olga"
    assert execution.create_time.ToDatetime() <= execution.start_time.ToDatetime() <= execution.end_time.ToDatetime()


async def test_terminal_runs_bash(tenant: Tenant) -> None:
    run = await tenant.run(tenant.request("cd /work && echo hi > f && cat f && id -un && pwd", "terminal"))
    run.check_order()
    assert run.payload()["stdout"] == "hi\nsandbox\n/work\n"


async def test_a_failing_program_fails_the_call_and_quotes_its_stderr(tenant: Tenant) -> None:
    run = await tenant.run(tenant.request("raise ValueError('bad input 7')"))
    reason, message = run.failure()
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "exited with status 1" in message
    assert "ValueError: bad input 7" in message


async def test_a_denied_run_never_reaches_the_sandbox(tenant: Tenant, tools: ToolsServer, stack: RunningStack) -> None:
    tag = marker()
    nobody = tenant.who("nobody")
    run = await tenant.run(tenant.request(f"print('{tag}')"), nobody)
    assert run.kinds() == ["accepted", "decision", "result"]
    assert (run.decision.verdict, run.decision.reason) == (DENY, "NOT_PERMITTED")
    reason, message = run.failure()
    assert reason == Failure.FAILURE_REASON_DENIED
    assert "NOT_PERMITTED" in message
    assert tools.sandbox.ran(tag) == 0
    assert (await tenant.execution(run.execution)).state == State.STATE_FAILED


async def test_the_most_restrictive_of_user_and_persona_wins(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    # The operator may run it, the persona she acts as may not: denied.
    run = await tenant.run(tenant.request(f"print('{tag}')", persona=tenant.persona("plain")))
    assert run.decision.verdict == DENY
    assert run.failure()[0] == Failure.FAILURE_REASON_DENIED
    # The operator and a persona that may: allowed.
    run = await tenant.run(tenant.request(f"print('{tag}')", persona=tenant.persona("helper")))
    assert run.decision.verdict == ALLOW
    assert run.payload()["exit_code"] == 0
    assert tools.sandbox.ran(tag) == 1
    # A member (needs approval) with a persona that may: held.
    call = tenant.stub.ExecuteTool(
        tenant.request(f"print('{tag}')", persona=tenant.persona("helper")), metadata=tenant.mike
    )
    assert (await call.read()).WhichOneof("update") == "accepted"
    decision = (await call.read()).decision
    assert decision.verdict == APPROVAL
    call.cancel()


async def test_an_approved_run_waits_then_runs_exactly_once(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    request = tenant.request(f"print('{tag}')")
    call = tenant.stub.ExecuteTool(request, metadata=tenant.mike, timeout=60)
    accepted = (await call.read()).accepted.execution
    decision = (await call.read()).decision
    assert (decision.verdict, decision.reason) == (APPROVAL, "HIGH_RISK_TOOL_NEEDS_APPROVAL")
    blocked = decision.blocked_action
    assert blocked.startswith(f"{tenant.name}/blockedActions/")
    # Held: the stream stays silent, nothing runs.
    read = asyncio.ensure_future(call.read())
    await asyncio.sleep(0.5)
    assert not read.done()
    assert tools.sandbox.ran(tag) == 0
    assert (await tenant.execution(accepted)).state == State.STATE_AWAITING_APPROVAL
    held = await tenant.blocked_action(blocked)
    assert held.state == BlockedState.STATE_PENDING
    assert held.principal.user == f"{tenant.name}/users/mike"
    assert "code_execution (python, 1 line)" in held.summary
    payload = tool_service_pb2.ExecuteToolRequest()
    assert held.payload.Unpack(payload)
    assert (payload.tool, payload.arguments_json) == (request.tool, request.arguments_json)

    await tenant.approve(blocked, note="fine")
    rest = [await read, *await read_rest(call)]
    kinds = [r.WhichOneof("update") for r in rest]
    assert kinds[-1] == "result"
    assert "decision" not in kinds
    assert rest[-1].result.success.output_json
    assert json.loads(rest[-1].result.success.output_json)["stdout"] == f"{tag}\n"
    assert tools.sandbox.ran(tag) == 1

    done = await tenant.blocked_action(blocked)
    for _ in range(50):
        if done.state == BlockedState.STATE_EXECUTED:
            break
        await asyncio.sleep(0.1)
        done = await tenant.blocked_action(blocked)
    assert done.state == BlockedState.STATE_EXECUTED
    assert done.claim_id == accepted
    assert done.outcome.succeeded

    # Asking again with the same request_id attaches: the same result, no second run.
    again = await tenant.run(request, tenant.mike)
    assert again.kinds() == ["accepted", "decision", "result"]
    assert again.execution == accepted
    assert again.decision.blocked_action == blocked
    assert again.result == rest[-1].result
    assert tools.sandbox.ran(tag) == 1


async def test_a_rejected_run_fails_and_never_runs(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    call = tenant.stub.ExecuteTool(tenant.request(f"print('{tag}')"), metadata=tenant.mike, timeout=60)
    await call.read()
    blocked = (await call.read()).decision.blocked_action
    await tenant.approve(blocked, reject=True, note="not today")
    rest = await read_rest(call)
    assert [r.WhichOneof("update") for r in rest] == ["result"]
    failure = rest[0].result.failure
    assert failure.reason == Failure.FAILURE_REASON_REJECTED
    assert "not today" in failure.message
    assert tools.sandbox.ran(tag) == 0
    assert (await tenant.blocked_action(blocked)).state == BlockedState.STATE_REJECTED


async def test_cancel_stops_a_running_sandbox_at_once(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    call = tenant.stub.ExecuteTool(
        tenant.request(f"import time\nprint('{tag}', flush=True)\ntime.sleep(60)", timeout=120),
        metadata=tenant.olga,
        timeout=60,
    )
    name = (await call.read()).accepted.execution
    await read_until(call, "output")  # it runs
    assert processes_of_uids(sandbox_uids(tools.settings))
    started = time.monotonic()
    cancelled = await tenant.stub.CancelExecution(
        tool_service_pb2.CancelExecutionRequest(name=name), timeout=10, metadata=tenant.olga
    )
    assert time.monotonic() - started < 3
    assert cancelled.execution.state == State.STATE_FAILED
    assert cancelled.execution.result.failure.reason == Failure.FAILURE_REASON_CANCELLED
    rest = await read_rest(call)
    assert rest[-1].result.failure.reason == Failure.FAILURE_REASON_CANCELLED
    assert [p for p in processes_of_uids(sandbox_uids(tools.settings)) if tag in p[1]] == []
    await expect_error(
        tenant.stub.CancelExecution(tool_service_pb2.CancelExecutionRequest(name=name), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "EXECUTION_FINISHED",
    )


async def test_cancel_withdraws_a_held_run(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    call = tenant.stub.ExecuteTool(tenant.request(f"print('{tag}')"), metadata=tenant.mike, timeout=60)
    name = (await call.read()).accepted.execution
    blocked = (await call.read()).decision.blocked_action
    cancelled = await tenant.stub.CancelExecution(
        tool_service_pb2.CancelExecutionRequest(name=name), timeout=10, metadata=tenant.mike
    )
    assert cancelled.execution.result.failure.reason == Failure.FAILURE_REASON_CANCELLED
    assert [r.result.failure.reason for r in await read_rest(call)] == [Failure.FAILURE_REASON_CANCELLED]
    assert (await tenant.blocked_action(blocked)).state == BlockedState.STATE_CANCELLED
    assert tools.sandbox.ran(tag) == 0


async def test_the_same_request_id_attaches_to_the_running_execution(tenant: Tenant, tools: ToolsServer) -> None:
    tag = marker()
    request = tenant.request(f"import time\nprint('{tag}', flush=True)\ntime.sleep(1)\nprint('end')")
    first = tenant.stub.ExecuteTool(request, metadata=tenant.olga, timeout=60)
    name = (await first.read()).accepted.execution
    await read_until(first, "output")
    second = await tenant.run(request, tenant.olga)
    assert second.execution == name
    assert second.kinds()[:2] == ["accepted", "decision"]
    # Output sent before it attached is not repeated; offsets say where its chunks start.
    assert tag.encode() not in second.output()
    assert second.output().endswith(b"end\n")
    assert next(r.output.offset for r in second.replies if r.WhichOneof("update") == "output") > 0
    assert second.payload()["stdout"] == f"{tag}\nend\n"
    rest = await read_rest(first)
    assert rest[-1].result == second.result
    assert tools.sandbox.ran(tag) == 1
    changed = tenant.request("print('something else')", request_id=request.request_id)
    await expect_error(
        tenant.stub.ExecuteTool(changed, metadata=tenant.olga, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    # Another user of the tenant with the same request id is another request too.
    await expect_error(
        tenant.stub.ExecuteTool(request, metadata=tenant.mike, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


async def test_bad_requests_get_clear_codes_and_run_nothing(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    tag = marker()
    code = json.dumps({"runtime": "python", "code": f"print('{tag}')"})
    execute = tenant.stub.ExecuteTool
    request = tenant.request

    unknown_tool = tool_service_pb2.ExecuteToolRequest(
        tool=f"{tenant.name}/tools/nope", arguments_json=code, request_id=str(uuid.uuid4())
    )
    await expect_error(execute(unknown_tool, metadata=tenant.olga), grpc.StatusCode.NOT_FOUND, "TOOL_NOT_FOUND")
    other_tenant = tool_service_pb2.ExecuteToolRequest(
        tool="tenants/someoneelse/tools/code_execution", arguments_json=code, request_id=str(uuid.uuid4())
    )
    await expect_error(execute(other_tenant, metadata=tenant.olga), grpc.StatusCode.NOT_FOUND, "TOOL_NOT_FOUND")
    response_tool = tool_service_pb2.ExecuteToolRequest(
        tool=f"{tenant.name}/tools/response", arguments_json='{"text": "hi"}', request_id=str(uuid.uuid4())
    )
    await expect_error(
        execute(response_tool, metadata=tenant.olga), grpc.StatusCode.FAILED_PRECONDITION, "TOOL_NOT_EXECUTABLE"
    )
    await expect_error(
        execute(tool_service_pb2.ExecuteToolRequest(tool="code_execution", arguments_json=code), metadata=tenant.olga),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RESOURCE_NAME",
    )
    for arguments, field in [
        ("not json", "arguments_json"),
        ("[1, 2]", "arguments_json"),
        (json.dumps({"runtime": "python"}), "arguments_json"),
        (json.dumps({"runtime": "cobol", "code": f"print('{tag}')"}), "arguments_json.runtime"),
        (json.dumps({"runtime": "python", "code": 7}), "arguments_json.code"),
        (json.dumps({"runtime": "python", "code": f"print('{tag}')", "sudo": True}), "arguments_json"),
    ]:
        error = await expect_error(
            execute(request("", arguments=arguments), metadata=tenant.olga),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ARGUMENTS_INVALID",
        )
        status = details_of(error.trailing_metadata())
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
        assert bad.field_violations[0].field == field
    huge = json.dumps({"runtime": "python", "code": "#" * (256 * 1024)})
    error = await expect_error(
        execute(request("", arguments=huge), metadata=tenant.olga),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ARGUMENTS_TOO_LARGE",
    )
    await expect_error(
        execute(request(f"print('{tag}')", request_id="not-a-uuid"), metadata=tenant.olga),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        execute(request(f"print('{tag}')", timeout=-1), metadata=tenant.olga),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        execute(request(f"print('{tag}')", persona="tenants/other/personas/helper"), metadata=tenant.olga),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect_error(
        execute(request(f"print('{tag}')"), metadata=()), grpc.StatusCode.UNAUTHENTICATED, "PRINCIPAL_MISSING"
    )
    assert tools.sandbox.ran(tag) == 0
    assert await stored_executions(stack, tenant.name) == 0


async def test_unknown_finished_and_other_tenants_executions(tenant: Tenant) -> None:
    run = await tenant.run(tenant.request("print(1)"))
    name = run.execution
    cancel = tenant.stub.CancelExecution
    get = tenant.stub.GetExecution
    unknown = f"{tenant.name}/executions/{uuid.uuid4()}"
    await expect_error(
        cancel(tool_service_pb2.CancelExecutionRequest(name=unknown), timeout=10, metadata=tenant.olga),
        grpc.StatusCode.NOT_FOUND,
        "EXECUTION_NOT_FOUND",
    )
    await expect_error(
        get(tool_service_pb2.GetExecutionRequest(name=unknown), timeout=10, metadata=tenant.olga),
        grpc.StatusCode.NOT_FOUND,
        "EXECUTION_NOT_FOUND",
    )
    await expect_error(
        cancel(tool_service_pb2.CancelExecutionRequest(name=name), timeout=10, metadata=tenant.olga),
        grpc.StatusCode.FAILED_PRECONDITION,
        "EXECUTION_FINISHED",
    )
    stranger = principal_metadata(
        principal_pb2.Principal(tenant="tenants/someoneelse", user="tenants/someoneelse/users/x")
    )
    for call in (
        get(tool_service_pb2.GetExecutionRequest(name=name), timeout=10, metadata=stranger),
        cancel(tool_service_pb2.CancelExecutionRequest(name=name), timeout=10, metadata=stranger),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND")
    await expect_error(
        get(tool_service_pb2.GetExecutionRequest(name="executions/1"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RESOURCE_NAME",
    )


async def test_runs_and_results_are_audit_events(tenant: Tenant, stack: RunningStack) -> None:
    tag = marker()
    run = await tenant.run(tenant.request(f"print('{tag}')"))
    consumer = AIOKafkaConsumer(
        "audit", bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    requested: list[event_pb2.Event] = []
    completed: list[event_pb2.Event] = []
    try:
        async with asyncio.timeout(30):
            while not (requested and completed):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = event_pb2.Event.FromString(record.value)
                        kind = event.WhichOneof("payload")
                        if kind == "tool_requested" and tag in event.tool_requested.arguments_json:
                            requested.append(event)
                        elif kind == "tool_completed" and event.tool_completed.execution.name == run.execution:
                            completed.append(event)
    finally:
        await consumer.stop()
    assert requested[0].source == completed[0].source == "tools"
    assert requested[0].tenant == tenant.name
    assert requested[0].tool_requested.tool == tenant.tool
    finished = completed[0].tool_completed.execution
    assert finished.state == State.STATE_SUCCEEDED
    assert finished.result == run.result
    assert finished.decision.verdict == ALLOW
    assert completed[0].principal.user == f"{tenant.name}/users/olga"


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_policy_unreachable_fails_closed_and_a_retry_checks_again(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    tag = marker()
    settings = tools_settings(stack, _dead_address(), slot_group=1)
    async with serving_tools(settings) as blind, signed_channel(blind.target) as channel:
        request = tenant.request(f"print('{tag}')")
        call = tool_service_pb2_grpc.ToolServiceStub(channel).ExecuteTool(request, metadata=tenant.olga, timeout=30)
        name = (await call.read()).accepted.execution
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert blind.sandbox.ran(tag) == 0
    assert (await tenant.execution(name)).state == State.STATE_CHECKING
    # The same request, to a copy of svc_tools that reaches svc_policy: checked, then run.
    retried = await tenant.run(request)
    assert retried.execution == name
    assert retried.decision.verdict == ALLOW
    assert retried.payload()["stdout"] == f"{tag}\n"
    assert tools.sandbox.ran(tag) == 1


async def test_a_held_run_survives_its_process_and_runs_once_elsewhere(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack, policy: Served
) -> None:
    tag = marker()
    settings = tools_settings(stack, policy.target, slot_group=2)
    async with serving_tools(settings) as first, signed_channel(first.target) as channel:
        call = tool_service_pb2_grpc.ToolServiceStub(channel).ExecuteTool(
            tenant.request(f"print('{tag}')"), metadata=tenant.mike, timeout=30
        )
        name = (await call.read()).accepted.execution
        blocked = (await call.read()).decision.blocked_action
        call.cancel()
    # That process is gone; approval comes now, and another process picks the run up.
    await tenant.approve(blocked)
    for _ in range(100):
        execution = await tenant.execution(name)
        if execution.state == State.STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.1)
    assert execution.state == State.STATE_SUCCEEDED
    assert json.loads(execution.result.success.output_json)["stdout"] == f"{tag}\n"
    assert first.sandbox.ran(tag) + tools.sandbox.ran(tag) == 1
    action = await tenant.blocked_action(blocked)
    for _ in range(50):
        if action.state == BlockedState.STATE_EXECUTED:
            break
        await asyncio.sleep(0.1)
        action = await tenant.blocked_action(blocked)
    assert action.state == BlockedState.STATE_EXECUTED
    assert action.claim_id == name


async def test_a_run_cut_short_by_a_stop_is_interrupted_never_rerun(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack, policy: Served
) -> None:
    tag = marker()
    settings = tools_settings(stack, policy.target, slot_group=3)
    async with serving_tools(settings) as first, signed_channel(first.target) as channel:
        request = tenant.request(f"import time\nprint('{tag}', flush=True)\ntime.sleep(30)", timeout=60)
        call = tool_service_pb2_grpc.ToolServiceStub(channel).ExecuteTool(request, metadata=tenant.olga, timeout=30)
        name = (await call.read()).accepted.execution
        await read_until(call, "output")
    assert processes_of_uids(sandbox_uids(settings)) == []
    execution = await tenant.execution(name)
    assert execution.state == State.STATE_FAILED
    assert execution.result.failure.reason == Failure.FAILURE_REASON_INTERRUPTED
    # Attaching again reports the interruption; nothing starts a second time.
    again = await tenant.run(request)
    assert again.result.failure.reason == Failure.FAILURE_REASON_INTERRUPTED
    assert first.sandbox.ran(tag) + tools.sandbox.ran(tag) == 1


async def test_svc_policy_restarts_while_a_run_is_held_and_the_approved_run_runs_once(stack: RunningStack) -> None:
    tag = marker()
    port = free_port()
    settings = policy_settings(stack)
    async with contextlib.AsyncExitStack() as running:
        first = contextlib.AsyncExitStack()
        running.push_async_callback(first.aclose)
        first_policy = await first.enter_async_context(
            serving_at(await build_policy(settings, RuntimeSettings()), port)
        )
        # A copy of svc_tools of its own, pointed at the address that will be restarted.
        tools = await running.enter_async_context(
            serving_tools(tools_settings(stack, first_policy.target, slot_group=6))
        )
        async for tenant in new_tenant(first_policy, tools.target):
            call = tenant.stub.ExecuteTool(tenant.request(f"print('{tag}')"), metadata=tenant.mike, timeout=60)
            name = (await call.read()).accepted.execution
            blocked = (await call.read()).decision.blocked_action
            read = asyncio.ensure_future(call.read())
            # svc_policy goes away while the run is held ...
            await first.aclose()
            await asyncio.sleep(1.0)
            assert not read.done()
            assert tools.sandbox.ran(tag) == 0
            # ... and comes back on the same address, where an operator approves.
            await running.enter_async_context(serving_at(await build_policy(settings, RuntimeSettings()), port))
            await tenant.approve(blocked, note="after the restart")
            rest = [await read, *await read_rest(call)]
            assert rest[-1].WhichOneof("update") == "result"
            assert json.loads(rest[-1].result.success.output_json)["stdout"] == f"{tag}\n"
            assert tools.sandbox.ran(tag) == 1
            action = await tenant.blocked_action(blocked)
            for _ in range(50):
                if action.state == BlockedState.STATE_EXECUTED:
                    break
                await asyncio.sleep(0.1)
                action = await tenant.blocked_action(blocked)
            assert action.state == BlockedState.STATE_EXECUTED
            assert action.claim_id == name
            assert (await tenant.execution(name)).state == State.STATE_SUCCEEDED
            assert tools.sandbox.ran(tag) == 1
