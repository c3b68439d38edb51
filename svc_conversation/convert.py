"""Between svc_conversation's domain (model.py) and its wire types: skm.conversation.v1,
skm.type.v1, skm.tools.v1 and skm.profiles.v1. Used by api.py and the adapters that store
or send protobuf; the core never sees a message."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.profiles.v1 import model_profile_pb2
from skm.tools.v1 import execution_pb2
from skm.type.v1 import model_pb2, policy_decision_pb2, principal_pb2
from skm_runtime import values_wire
from skm_runtime.access import Decision, Principal, Verdict
from skm_runtime.errors import FieldViolation
from skm_runtime.principal import principal_message, role_names
from skm_runtime.values import ModelOverride
from skm_runtime.values_wire import (
    failure_reason_of,
    failure_reason_to,
    mode_of,
    mode_to,
    money_of,
    money_to,
    override_to,
    role_of,
    role_to,
)
from svc_conversation.errors import InvalidSession
from svc_conversation.model import (
    Acknowledge,
    Attached,
    CommandKind,
    CommandRejected,
    Configure,
    ConverseCommand,
    ConverseCommandKind,
    ConverseOutput,
    EventPayload,
    FinalResponse,
    Intervention,
    InterventionKind,
    ModelCall,
    ModelUsage,
    NoCommand,
    OutputChunk,
    OutputStream,
    PolicyContext,
    PolicyFact,
    Progress,
    Screening,
    SendMessage,
    Session,
    SessionEvent,
    SessionState,
    TokenDelta,
    ToolCallProgress,
    ToolCallRequested,
    ToolCallResult,
    ToolCallVerdict,
    ToolFailure,
    ToolResult,
    ToolSuccess,
    Turn,
    TurnError,
    TurnIntervention,
    TurnState,
    TurnStateChanged,
    UserMessage,
)

# Metadata set on an intervention another svc_conversation process forwards: the receiver
# acts on the turn itself, or answers TURN_OWNER_CHANGED when it no longer runs it.
ROUTED_KEY = "x-skm-conversation-routed"


# -- scalars -----------------------------------------------------------------------------


def _time_of(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _stamp(at: datetime | None) -> timestamp_pb2.Timestamp | None:
    if at is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _nanos_of(duration: duration_pb2.Duration) -> int:
    return duration.seconds * 1_000_000_000 + duration.nanos


def _duration(nanoseconds: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(nanoseconds)
    return duration


def principal_of(message: principal_pb2.Principal) -> Principal:
    return Principal(message.tenant, message.user, role_names(message))


def principal_to(principal: Principal) -> principal_pb2.Principal:
    return principal_message(principal.tenant, principal.user, principal.roles)


# -- policy facts ----------------------------------------------------------------------


def _plain(value: struct_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        # Always a float, as JSON reads it: 1 and 1.0 are the same fact.
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return json_format.MessageToDict(value)  # a list, a struct or null: the core refuses them


def policy_context_of(message: struct_pb2.Struct) -> dict[str, object]:
    """SendMessageRequest.policy_context as sent (the core checks it: turns.policy_facts)."""
    return {key: _plain(value) for key, value in message.fields.items()}


def _stored_facts(message: struct_pb2.Struct) -> PolicyContext:
    """UserMessage.policy_context as stored (checked before it was)."""
    facts: dict[str, PolicyFact] = {}
    for key, value in policy_context_of(message).items():
        if isinstance(value, bool | str | float):
            facts[key] = value
    return facts


def policy_context_to(context: PolicyContext) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if context:
        message.update(dict(context))
    return message


# -- decisions ---------------------------------------------------------------------------

_VERDICTS = {
    policy_decision_pb2.VERDICT_ALLOW: Verdict.ALLOW,
    policy_decision_pb2.VERDICT_DENY: Verdict.DENY,
    policy_decision_pb2.VERDICT_REQUIRES_APPROVAL: Verdict.REQUIRES_APPROVAL,
}
_VERDICT_NUMBERS = {verdict: number for number, verdict in _VERDICTS.items()}


def decision_of(message: policy_decision_pb2.PolicyDecision) -> Decision:
    # An unspecified verdict allows nothing.
    return Decision(
        verdict=_VERDICTS.get(message.verdict, Verdict.DENY),
        reason=message.reason,
        decision_id=message.decision_id,
        blocked_action=message.blocked_action,
    )


def decision_to(decision: Decision) -> policy_decision_pb2.PolicyDecision:
    return policy_decision_pb2.PolicyDecision(
        verdict=_VERDICT_NUMBERS[decision.verdict],
        reason=decision.reason,
        decision_id=decision.decision_id,
        blocked_action=decision.blocked_action,
    )


# -- sessions ----------------------------------------------------------------------------


E = TypeVar("E", bound=enum.IntEnum)
V = TypeVar("V")


def _known(of: Callable[[int], V | None], number: int, field: str) -> V | None:
    """The value a client sent, as `of` reads it; a number the contract does not define is
    the client's error (a newer client, or garbage), never a crash."""
    value = of(number)
    if number and value is None:
        raise InvalidSession(
            f"{field} has no value {number}", violations=[FieldViolation(field, f"unknown value {number}")]
        )
    return value


def _as_sent(kind: type[E], number: int) -> E:
    """An output-only enum as a client echoed it: ignored by the core, so an unknown number
    reads as UNSPECIFIED."""
    try:
        return kind(number)
    except ValueError:
        return kind(0)


def override_of(message: model_profile_pb2.ModelOverride) -> ModelOverride:
    _known(role_of, message.role, "session.model_overrides.role")
    return values_wire.override_of(message)


def session_of(message: session_pb2.Session) -> Session:
    return Session(
        name=message.name,
        persona=message.persona,
        mode=_known(mode_of, message.mode, "session.mode"),
        display_name=message.display_name,
        persona_bundle_digest=message.persona_bundle_digest,
        persona_revision_id=message.persona_revision_id,
        model_overrides=tuple(override_of(o) for o in message.model_overrides),
        state=_as_sent(SessionState, message.state),
        current_turn=message.current_turn,
        owner=message.owner,
        superior_session=message.superior_session,
        last_sequence=message.last_sequence,
        acknowledged_sequence=message.acknowledged_sequence,
        create_time=_time_of(message.create_time, message.HasField("create_time")),
        update_time=_time_of(message.update_time, message.HasField("update_time")),
        etag=message.etag,
    )


def session_to(session: Session) -> session_pb2.Session:
    return session_pb2.Session(
        name=session.name,
        persona=session.persona,
        mode=mode_to(session.mode),
        display_name=session.display_name,
        persona_bundle_digest=session.persona_bundle_digest,
        persona_revision_id=session.persona_revision_id,
        model_overrides=[override_to(o) for o in session.model_overrides],
        state=session.state.value,  # type: ignore[arg-type]  # the enums share their numbers
        current_turn=session.current_turn,
        owner=session.owner,
        superior_session=session.superior_session,
        last_sequence=session.last_sequence,
        acknowledged_sequence=session.acknowledged_sequence,
        create_time=_stamp(session.create_time),
        update_time=_stamp(session.update_time),
        etag=session.etag,
    )


# -- turns -------------------------------------------------------------------------------


def usage_of(message: model_pb2.ModelUsage) -> ModelUsage:
    return ModelUsage(
        model=message.model,
        role=role_of(message.role),
        tier=message.tier,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        time_to_first_token_ns=(
            _nanos_of(message.time_to_first_token) if message.HasField("time_to_first_token") else None
        ),
        duration_ns=_nanos_of(message.duration),
        tokens_per_second=message.tokens_per_second,
        cost=money_of(message.cost),
        input_tokens_estimated=message.input_tokens_estimated,
    )


def usage_to(usage: ModelUsage) -> model_pb2.ModelUsage:
    message = model_pb2.ModelUsage(
        model=usage.model,
        role=role_to(usage.role),
        tier=usage.tier,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        tokens_per_second=usage.tokens_per_second,
        input_tokens_estimated=usage.input_tokens_estimated,
    )
    if usage.time_to_first_token_ns is not None:
        message.time_to_first_token.CopyFrom(_duration(usage.time_to_first_token_ns))
    message.duration.CopyFrom(_duration(usage.duration_ns))
    message.cost.CopyFrom(money_to(usage.cost))
    return message


_FLAG_PREFIX = "SAFETY_FLAG_"


def screening_of(message: turn_pb2.PreprocessingVerdict) -> Screening:
    return Screening(
        intent=message.intent,
        intent_confidence=message.intent_confidence,
        slots=dict(message.slots),
        flags=tuple(turn_pb2.SafetyFlag.Name(flag).removeprefix(_FLAG_PREFIX) for flag in message.safety_flags),
        refused=message.refused,
        refusal_reason=message.refusal_reason,
    )


def screening_to(screening: Screening) -> turn_pb2.PreprocessingVerdict:
    return turn_pb2.PreprocessingVerdict(
        intent=screening.intent,
        intent_confidence=screening.intent_confidence,
        slots=dict(screening.slots),
        safety_flags=[turn_pb2.SafetyFlag.Value(_FLAG_PREFIX + flag) for flag in screening.flags],
        refused=screening.refused,
        refusal_reason=screening.refusal_reason,
    )


def turn_of(message: turn_pb2.Turn) -> Turn:
    return Turn(
        name=message.name,
        state=TurnState(message.state),
        input_text=message.input_text,
        request_id=message.request_id,
        rerun_of=message.rerun_of,
        start_tier=message.start_tier,
        screening=screening_of(message.preprocessing) if message.HasField("preprocessing") else None,
        response_text=message.response_text,
        model_calls=tuple(usage_of(u) for u in message.model_calls),
        iterations=message.iterations,
        failure_reason=message.failure_reason,
        first_sequence=message.first_sequence,
        last_sequence=message.last_sequence,
        create_time=_time_of(message.create_time, message.HasField("create_time")),
        end_time=_time_of(message.end_time, message.HasField("end_time")),
    )


def turn_to(turn: Turn) -> turn_pb2.Turn:
    return turn_pb2.Turn(
        name=turn.name,
        state=turn.state.value,  # type: ignore[arg-type]  # the enums share their numbers
        input_text=turn.input_text,
        request_id=turn.request_id,
        rerun_of=turn.rerun_of,
        start_tier=turn.start_tier,
        preprocessing=screening_to(turn.screening) if turn.screening is not None else None,
        response_text=turn.response_text,
        model_calls=[usage_to(u) for u in turn.model_calls],
        iterations=turn.iterations,
        failure_reason=turn.failure_reason,
        first_sequence=turn.first_sequence,
        last_sequence=turn.last_sequence,
        create_time=_stamp(turn.create_time),
        end_time=_stamp(turn.end_time),
    )


# -- tool results ------------------------------------------------------------------------


def result_of(message: execution_pb2.ToolResult) -> ToolResult:
    if message.HasField("success"):
        return ToolSuccess(message.success.output_json)
    return ToolFailure(failure_reason_of(message.failure.reason), message.failure.message)


def result_to(result: ToolResult) -> execution_pb2.ToolResult:
    if isinstance(result, ToolSuccess):
        return execution_pb2.ToolResult(success=execution_pb2.ToolSuccess(output_json=result.output_json))
    return execution_pb2.ToolResult(
        failure=execution_pb2.ToolFailure(reason=failure_reason_to(result.reason), message=result.message)
    )


def progress_of(message: execution_pb2.Progress) -> Progress:
    return Progress(message.message, message.fraction if message.HasField("fraction") else None)


def progress_to(progress: Progress) -> execution_pb2.Progress:
    message = execution_pb2.Progress(message=progress.message)
    if progress.fraction is not None:
        message.fraction = progress.fraction
    return message


def output_of(message: execution_pb2.OutputChunk) -> OutputChunk:
    return OutputChunk(OutputStream(message.stream), message.data, message.offset)


def output_to(chunk: OutputChunk) -> execution_pb2.OutputChunk:
    return execution_pb2.OutputChunk(
        stream=execution_pb2.OutputChunk.Stream.ValueType(chunk.stream), data=chunk.data, offset=chunk.offset
    )


# -- events ------------------------------------------------------------------------------


def _payload_of(message: session_event_pb2.SessionEvent) -> EventPayload | None:  # one arm per kind
    kind = message.WhichOneof("event")
    if kind == "turn_state_changed":
        changed = message.turn_state_changed
        return TurnStateChanged(TurnState(changed.state), changed.reason)
    if kind == "user_message":
        user = message.user_message
        return UserMessage(user.text, user.request_id, user.tool_choice, _stored_facts(user.policy_context))
    if kind == "intervention":
        done = message.intervention
        return Intervention(InterventionKind(done.kind), done.request_id, done.text, done.rerun_turn)
    if kind == "preprocessing":
        return screening_of(message.preprocessing)
    if kind == "token_delta":
        return TokenDelta(message.token_delta.iteration, message.token_delta.text)
    if kind == "model_call":
        call = message.model_call
        return ModelCall(call.iteration, usage_of(call.usage), call.failure_reason, call.interrupted)
    if kind == "tool_call_requested":
        asked = message.tool_call_requested
        return ToolCallRequested(asked.tool_call_id, asked.iteration, asked.tool, asked.arguments_json)
    if kind == "tool_call_verdict":
        verdict = message.tool_call_verdict
        return ToolCallVerdict(verdict.tool_call_id, decision_of(verdict.decision))
    if kind == "tool_call_progress":
        update = message.tool_call_progress
        return ToolCallProgress(
            update.tool_call_id,
            update.execution,
            progress=progress_of(update.progress) if update.HasField("progress") else None,
            output=output_of(update.output) if update.HasField("output") else None,
        )
    if kind == "tool_call_result":
        done_call = message.tool_call_result
        return ToolCallResult(done_call.tool_call_id, result_of(done_call.result), done_call.execution)
    if kind == "final_response":
        return FinalResponse(message.final_response.text)
    if kind == "error":
        return TurnError(message.error.reason, message.error.message)
    return None


def event_of(message: session_event_pb2.SessionEvent) -> SessionEvent:
    return SessionEvent(
        sequence=message.sequence,
        turn=message.turn,
        payload=_payload_of(message),
        create_time=_time_of(message.create_time, message.HasField("create_time")),
    )


def _set_payload(message: session_event_pb2.SessionEvent, payload: EventPayload) -> None:  # one arm per kind
    match payload:
        case TurnStateChanged(state, reason):
            message.turn_state_changed.state = state.value  # type: ignore[assignment]  # the enums share their numbers
            message.turn_state_changed.reason = reason
        case UserMessage(text, request_id, tool_choice, policy_context):
            message.user_message.CopyFrom(
                session_event_pb2.UserMessage(
                    text=text,
                    request_id=request_id,
                    tool_choice=tool_choice,
                    policy_context=policy_context_to(policy_context) if policy_context else None,
                )
            )
        case Intervention(kind, request_id, text, rerun_turn):
            message.intervention.CopyFrom(
                session_event_pb2.Intervention(
                    kind=kind.value,  # type: ignore[arg-type]  # the enums share their numbers
                    request_id=request_id,
                    text=text,
                    rerun_turn=rerun_turn,
                )
            )
        case Screening():
            message.preprocessing.CopyFrom(screening_to(payload))
        case TokenDelta(iteration, text):
            message.token_delta.iteration = iteration
            message.token_delta.text = text
        case ModelCall(iteration, usage, failure_reason, interrupted):
            message.model_call.CopyFrom(
                session_event_pb2.ModelCall(
                    iteration=iteration, usage=usage_to(usage), failure_reason=failure_reason, interrupted=interrupted
                )
            )
        case ToolCallRequested(tool_call_id, iteration, tool, arguments_json):
            message.tool_call_requested.CopyFrom(
                session_event_pb2.ToolCallRequested(
                    tool_call_id=tool_call_id, iteration=iteration, tool=tool, arguments_json=arguments_json
                )
            )
        case ToolCallVerdict(tool_call_id, decision):
            message.tool_call_verdict.CopyFrom(
                session_event_pb2.ToolCallVerdict(tool_call_id=tool_call_id, decision=decision_to(decision))
            )
        case ToolCallProgress(tool_call_id, execution, progress, output):
            update = session_event_pb2.ToolCallProgress(tool_call_id=tool_call_id, execution=execution)
            if progress is not None:
                update.progress.CopyFrom(progress_to(progress))
            if output is not None:
                update.output.CopyFrom(output_to(output))
            message.tool_call_progress.CopyFrom(update)
        case ToolCallResult(tool_call_id, result, execution):
            message.tool_call_result.CopyFrom(
                session_event_pb2.ToolCallResult(
                    tool_call_id=tool_call_id, execution=execution, result=result_to(result)
                )
            )
        case FinalResponse(text):
            message.final_response.text = text
        case TurnError(reason, text):
            message.error.CopyFrom(session_event_pb2.TurnError(reason=reason, message=text))


def event_to(event: SessionEvent) -> session_event_pb2.SessionEvent:
    message = session_event_pb2.SessionEvent(
        sequence=event.sequence, turn=event.turn, create_time=_stamp(event.create_time)
    )
    if event.payload is not None:
        _set_payload(message, event.payload)
    return message


# -- the Converse stream -----------------------------------------------------------------

_INTERVENTIONS = {
    "interrupt_turn": CommandKind.INTERRUPT,
    "resume_turn": CommandKind.RESUME,
    "nudge_turn": CommandKind.NUDGE,
    "rerun_turn": CommandKind.RERUN,
}


def converse_command_of(message: pb.ConverseRequest, *, trusted_context: bool = False) -> ConverseCommand:
    """One message of a Converse stream. ``trusted_context``: the stream comes from inside the
    mesh, so a send_message's policy_context is kept (dropped otherwise, as SendMessage's)."""
    kind = message.WhichOneof("request")
    command: ConverseCommandKind
    if kind == "config":
        config = message.config
        command = Configure(config.after_sequence if config.HasField("after_sequence") else None)
    elif kind == "send_message":
        send = message.send_message
        command = SendMessage(
            send.session,
            send.text,
            send.request_id,
            send.tool_choice,
            policy_context_of(send.policy_context) if trusted_context else {},
        )
    elif kind == "ack":
        command = Acknowledge(message.ack.sequence)
    elif kind in _INTERVENTIONS:
        turn_command = getattr(message, kind)
        command = TurnIntervention(
            _INTERVENTIONS[kind], turn_command.name, turn_command.request_id, getattr(turn_command, "text", "")
        )
    else:
        command = NoCommand()
    return ConverseCommand(message.session, command)


def converse_output_to(output: ConverseOutput) -> pb.ConverseResponse:
    if isinstance(output, Attached):
        return pb.ConverseResponse(attached=attached_to(output))
    if isinstance(output, CommandRejected):
        return pb.ConverseResponse(
            rejected=pb.CommandRejected(
                request_id=output.request_id, code=output.code, reason=output.reason, message=output.message
            )
        )
    return pb.ConverseResponse(event=event_to(output))


def attached_to(attached: Attached) -> pb.SessionAttached:
    return pb.SessionAttached(session=session_to(attached.session), after_sequence=attached.after_sequence)
