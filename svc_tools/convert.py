"""Between svc_tools's domain and its wire types (skm.tools.v1, skm.type.v1, skm.events.v1)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from skm.events.v1 import event_pb2
from skm.tools.v1 import execution_pb2, knowledge_pb2, tool_pb2, tool_service_pb2
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.access import Decision, Principal, Verdict
from skm_runtime.principal import principal_message, role_names
from skm_runtime.values import FailureReason
from svc_tools.model import (
    Accepted,
    Decided,
    Document,
    ExecuteRequest,
    Execution,
    ExecutionState,
    Failure,
    Finished,
    JsonObject,
    MemoryOperation,
    NewDocument,
    Output,
    Progressed,
    Result,
    Stream,
    Success,
    Tool,
    Update,
)

SOURCE = "tools"
_STREAMS = {
    Stream.STDOUT: execution_pb2.OutputChunk.STREAM_STDOUT,
    Stream.STDERR: execution_pb2.OutputChunk.STREAM_STDERR,
}


def principal_of(message: principal_pb2.Principal) -> Principal:
    return Principal(message.tenant, message.user, role_names(message))


def principal_to(principal: Principal) -> principal_pb2.Principal:
    return principal_message(principal.tenant, principal.user, principal.roles)


def context_of(message: struct_pb2.Struct) -> JsonObject:
    return json_format.MessageToDict(message) if message.fields else {}


def struct_of(context: JsonObject) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if context:
        message.update(dict(context))
    return message


def tool_to(tool: Tool, tenant: str) -> tool_pb2.Tool:
    return tool_pb2.Tool(
        name=f"{tenant}/tools/{tool.id}",
        description=tool.description,
        arguments_schema_json=json.dumps(tool.arguments_schema, separators=(",", ":")),
        risk_level=tool_pb2.RiskLevel.Value(f"RISK_LEVEL_{tool.risk_level.value}"),
        execution_side=tool_pb2.ExecutionSide.Value(f"EXECUTION_SIDE_{tool.side.value}"),
    )


def request_of(message: tool_service_pb2.ExecuteToolRequest) -> ExecuteRequest:
    timeout = message.timeout.ToTimedelta().total_seconds() if message.HasField("timeout") else None
    return ExecuteRequest(
        tool=message.tool,
        arguments_json=message.arguments_json,
        request_id=message.request_id,
        persona=message.persona,
        turn=message.turn,
        tool_call_id=message.tool_call_id,
        timeout_seconds=timeout,
        policy_context=context_of(message.policy_context),
    )


def request_to(execution: Execution) -> tool_service_pb2.ExecuteToolRequest:
    """The request an execution runs, as accepted (timeout resolved, context as honoured):
    the payload of its blocked action, and what a process taking it over reads."""
    message = tool_service_pb2.ExecuteToolRequest(
        tool=execution.tool,
        arguments_json=execution.arguments_json,
        request_id=execution.request_id,
        persona=execution.persona,
        turn=execution.turn,
        tool_call_id=execution.tool_call_id,
        policy_context=struct_of(execution.policy_context),
    )
    message.timeout.FromTimedelta(timedelta(seconds=execution.timeout_seconds))
    return message


def decision_to(decision: Decision) -> policy_decision_pb2.PolicyDecision:
    return policy_decision_pb2.PolicyDecision(
        verdict=policy_decision_pb2.Verdict.Value(f"VERDICT_{decision.verdict.value}"),
        reason=decision.reason,
        decision_id=decision.decision_id,
        blocked_action=decision.blocked_action,
    )


def decision_of(message: policy_decision_pb2.PolicyDecision) -> Decision:
    name = policy_decision_pb2.Verdict.Name(message.verdict).removeprefix("VERDICT_")
    # An unset or unknown verdict is no permission: fail closed.
    verdict = Verdict(name) if name in Verdict.__members__ else Verdict.DENY
    return Decision(verdict, message.reason, message.decision_id, message.blocked_action)


def result_to(result: Result) -> execution_pb2.ToolResult:
    if isinstance(result, Success):
        return execution_pb2.ToolResult(success=execution_pb2.ToolSuccess(output_json=result.output_json))
    return execution_pb2.ToolResult(
        failure=execution_pb2.ToolFailure(
            reason=execution_pb2.FailureReason.Value(f"FAILURE_REASON_{result.reason.value}"),
            message=result.message,
        )
    )


def result_of(message: execution_pb2.ToolResult) -> Result | None:
    which = message.WhichOneof("outcome")
    if which == "success":
        return Success(message.success.output_json)
    if which == "failure":
        name = execution_pb2.FailureReason.Name(message.failure.reason).removeprefix("FAILURE_REASON_")
        return Failure(FailureReason(name), message.failure.message)
    return None


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def execution_to(execution: Execution) -> execution_pb2.Execution:
    message = execution_pb2.Execution(
        name=execution.name,
        tool=execution.tool,
        arguments_json=execution.arguments_json,
        principal=principal_to(execution.principal),
        persona=execution.persona,
        turn=execution.turn,
        tool_call_id=execution.tool_call_id,
        state=execution_pb2.Execution.State.Value(f"STATE_{execution.state.value}"),
        create_time=_timestamp(execution.create_time),
        start_time=_timestamp(execution.start_time),
        end_time=_timestamp(execution.end_time),
    )
    if execution.decision is not None:
        message.decision.CopyFrom(decision_to(execution.decision))
    if execution.result is not None:
        message.result.CopyFrom(result_to(execution.result))
    return message


def execution_of(
    message: execution_pb2.Execution,
    request: tool_service_pb2.ExecuteToolRequest,
    *,
    fingerprint: str,
    claimed: bool,
    completion_reported: bool,
    cancel_requested: bool,
    trace_id: str,
) -> Execution:
    """An execution as stored: its wire form, the request it runs, and the bookkeeping."""
    state = execution_pb2.Execution.State.Name(message.state).removeprefix("STATE_")
    return Execution(
        name=message.name,
        tool=message.tool,
        arguments_json=message.arguments_json,
        principal=principal_of(message.principal),
        request_id=request.request_id,
        fingerprint=fingerprint,
        state=ExecutionState(state),
        create_time=_datetime(message.create_time),
        persona=message.persona,
        turn=message.turn,
        tool_call_id=message.tool_call_id,
        timeout_seconds=request.timeout.ToTimedelta().total_seconds(),
        policy_context=context_of(request.policy_context),
        decision=decision_of(message.decision) if message.HasField("decision") else None,
        result=result_of(message.result) if message.HasField("result") else None,
        start_time=_datetime(message.start_time) if message.HasField("start_time") else None,
        end_time=_datetime(message.end_time) if message.HasField("end_time") else None,
        claimed=claimed,
        completion_reported=completion_reported,
        cancel_requested=cancel_requested,
        trace_id=trace_id,
    )


def update_to(update: Update) -> tool_service_pb2.ExecuteToolResponse:
    if isinstance(update, Accepted):
        return tool_service_pb2.ExecuteToolResponse(
            accepted=tool_service_pb2.ExecutionAccepted(execution=update.execution)
        )
    if isinstance(update, Decided):
        return tool_service_pb2.ExecuteToolResponse(decision=decision_to(update.decision))
    if isinstance(update, Progressed):
        progress = execution_pb2.Progress(message=update.message)
        if update.fraction is not None:
            progress.fraction = update.fraction
        return tool_service_pb2.ExecuteToolResponse(progress=progress)
    if isinstance(update, Output):
        return tool_service_pb2.ExecuteToolResponse(
            output=execution_pb2.OutputChunk(stream=_STREAMS[update.stream], data=update.data, offset=update.offset)
        )
    assert isinstance(update, Finished)
    return tool_service_pb2.ExecuteToolResponse(result=result_to(update.result))


def _envelope(execution: Execution) -> event_pb2.Event:
    session = "/".join(execution.turn.split("/")[:4]) if execution.turn else ""
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        tenant=execution.tenant,
        session=session,
        trace_id=execution.trace_id,
        source=SOURCE,
        principal=principal_to(execution.principal),
    )
    event.event_time.GetCurrentTime()
    return event


def tool_requested_event(execution: Execution) -> event_pb2.Event:
    event = _envelope(execution)
    event.tool_requested.turn = execution.turn
    event.tool_requested.tool_call_id = execution.tool_call_id
    event.tool_requested.tool = execution.tool
    event.tool_requested.arguments_json = execution.arguments_json
    event.tool_requested.persona = execution.persona
    return event


def tool_completed_event(execution: Execution) -> event_pb2.Event:
    event = _envelope(execution)
    event.tool_completed.execution.CopyFrom(execution_to(execution))
    return event


def memory_operation_event(operation: MemoryOperation) -> event_pb2.Event:
    execution = operation.execution
    event = _envelope(execution)
    event.memory_operation.kind = event_pb2.MemoryOperation.Kind.Value(f"KIND_{operation.kind.value}")
    event.memory_operation.namespace = operation.namespace
    event.memory_operation.memory_ids.extend(operation.memory_ids)
    event.memory_operation.execution = execution.name
    event.memory_operation.turn = execution.turn
    return event


def new_document_of(message: knowledge_pb2.Document) -> NewDocument:
    return NewDocument(title=message.title, mime_type=message.mime_type, content=message.content)


def document_to(document: Document) -> knowledge_pb2.Document:
    return knowledge_pb2.Document(
        name=document.name,
        title=document.title,
        mime_type=document.mime_type,
        sha256=document.sha256,
        chunk_count=document.chunk_count,
        create_time=_timestamp(document.create_time),
    )
