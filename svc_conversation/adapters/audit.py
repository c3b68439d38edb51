"""Audit events (skm.events.v1.Event) for the steps of a turn.

Event ids are derived from the session and the event's sequence number, so a step that is
written again after a crash produces the same ids and a consumer can drop the copy.

Each event carries the trace id of the request being served when it is built: the turn's
runner is started inside the RPC that started (or resumed, or nudged) the turn and keeps
that RPC's trace context, and an intervention's events are built inside its own RPC.

The texts an event copies (the message, the response, the slots, a nudge's guidance, tool
arguments) have the personal data the pre-processing heuristics detect replaced by
placeholders (:func:`svc_conversation.preprocess.redact`, as for logs): the audit topic is
read more widely than the session, which keeps the originals for the model and the user.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2
from opentelemetry import trace

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.events.v1 import event_pb2
from skm_runtime.access import Principal
from skm_runtime.principal import principal_message
from skm_runtime.records import OutboxRecord
from svc_conversation.preprocess import redact

TOPIC_AUDIT = "audit"
_NAMESPACE = uuid.UUID("7d0b4d56-5a4c-4e0e-9a8e-2f3c1b6e9d11")
SOURCE = "conversation"


def event_id(session: str, sequence: int, part: str = "") -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{session}#{sequence}{part}"))


def current_trace_id() -> str:
    """The W3C trace id of the current span context, 32 lowercase hex; "" when there is none."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def _redacted_json(text: str) -> str:
    """JSON text with personal data redacted inside its values, still JSON (a number that
    is personal data becomes its placeholder string); text that is not JSON is redacted as is."""
    try:
        value = json.loads(text)
    except ValueError:
        return redact(text)

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return redact(item)
        if isinstance(item, dict):
            return {clean(key): clean(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [clean(inner) for inner in item]
        if isinstance(item, int | float) and not isinstance(item, bool):
            shown = json.dumps(item)
            return item if redact(shown) == shown else redact(shown)
        return item

    return json.dumps(clean(value), ensure_ascii=False)


def _redacted_turn(turn: turn_pb2.Turn) -> turn_pb2.Turn:
    copy = turn_pb2.Turn()
    copy.CopyFrom(turn)
    copy.input_text = redact(copy.input_text)
    copy.response_text = redact(copy.response_text)
    for key, value in list(copy.preprocessing.slots.items()):
        copy.preprocessing.slots[key] = redact(value)
    return copy


def _envelope(
    session: session_pb2.Session, principal: Principal, event: session_event_pb2.SessionEvent, trace_id: str
) -> event_pb2.Event:
    envelope = event_pb2.Event(
        event_id=event_id(session.name, event.sequence),
        tenant=session.name.partition("/sessions/")[0],
        session=session.name,
        trace_id=trace_id,
        source=SOURCE,
        principal=principal_message(principal.tenant, principal.user, principal.roles),
    )
    envelope.event_time.CopyFrom(event.create_time)
    return envelope


def records_for(
    session: session_pb2.Session,
    principal: Principal,
    turn: turn_pb2.Turn,
    events: Sequence[session_event_pb2.SessionEvent],
    *,
    trace_id: str | None = None,
) -> list[OutboxRecord]:
    """The audit records of ``events`` (token deltas, verdicts and tool results have none
    here: svc_policy and svc_tools audit those themselves). ``trace_id``: the current trace's
    unless given."""
    if trace_id is None:
        trace_id = current_trace_id()
    out = []
    for event in events:
        envelope = _envelope(session, principal, event, trace_id)
        kind = event.WhichOneof("event")
        if kind == "turn_state_changed":
            state = event.turn_state_changed.state
            if state == turn_pb2.Turn.STATE_RUNNING and event.sequence == turn.first_sequence:
                envelope.turn_started.turn.CopyFrom(_redacted_turn(turn))
                envelope.turn_started.persona = session.persona
                envelope.turn_started.mode = session.mode
            elif state in (turn_pb2.Turn.STATE_COMPLETED, turn_pb2.Turn.STATE_FAILED, turn_pb2.Turn.STATE_REFUSED):
                envelope.turn_completed.turn.CopyFrom(_redacted_turn(turn))
                envelope.turn_completed.persona = session.persona
                duration = duration_pb2.Duration()
                duration.FromTimedelta(turn.end_time.ToDatetime() - turn.create_time.ToDatetime())
                envelope.turn_completed.duration.CopyFrom(duration)
            else:
                continue
        elif kind == "model_call":
            envelope.model_call_completed.turn = turn.name
            envelope.model_call_completed.persona = session.persona
            envelope.model_call_completed.usage.CopyFrom(event.model_call.usage)
            envelope.model_call_completed.failure_reason = event.model_call.failure_reason
            envelope.model_call_completed.interrupted = event.model_call.interrupted
        elif kind == "tool_call_requested":
            requested = event.tool_call_requested
            envelope.tool_requested.turn = turn.name
            envelope.tool_requested.tool_call_id = requested.tool_call_id
            envelope.tool_requested.tool = requested.tool
            envelope.tool_requested.arguments_json = _redacted_json(requested.arguments_json)
            envelope.tool_requested.persona = session.persona
        elif kind == "intervention":
            envelope.intervention_applied.turn = turn.name
            envelope.intervention_applied.intervention.CopyFrom(event.intervention)
            envelope.intervention_applied.intervention.text = redact(event.intervention.text)
        else:
            continue
        key = session.name.encode()
        out.append(OutboxRecord(envelope.event_id, TOPIC_AUDIT, key, envelope.SerializeToString()))
    return out
