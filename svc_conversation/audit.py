"""Audit events (skm.events.v1.Event) for the steps of a turn.

Event ids are derived from the session and the event's sequence number, so a step that is
written again after a crash produces the same ids and a consumer can drop the copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from google.protobuf import duration_pb2

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.events.v1 import event_pb2
from skm_runtime.outbox import OutboxRecord
from skm_runtime.principal import principal_message
from svc_conversation.adapters.postgres import TOPIC_AUDIT
from svc_conversation.model import Principal

_NAMESPACE = uuid.UUID("7d0b4d56-5a4c-4e0e-9a8e-2f3c1b6e9d11")
SOURCE = "conversation"


def event_id(session: str, sequence: int, part: str = "") -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{session}#{sequence}{part}"))


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
    trace_id: str = "",
) -> list[OutboxRecord]:
    """The audit records of ``events`` (token deltas, verdicts and tool results have none
    here: svc_policy and svc_tools audit those themselves)."""
    out = []
    for event in events:
        envelope = _envelope(session, principal, event, trace_id)
        kind = event.WhichOneof("event")
        if kind == "turn_state_changed":
            state = event.turn_state_changed.state
            if state == turn_pb2.Turn.STATE_RUNNING and event.sequence == turn.first_sequence:
                envelope.turn_started.turn.CopyFrom(turn)
                envelope.turn_started.persona = session.persona
                envelope.turn_started.mode = session.mode
            elif state in (turn_pb2.Turn.STATE_COMPLETED, turn_pb2.Turn.STATE_FAILED, turn_pb2.Turn.STATE_REFUSED):
                envelope.turn_completed.turn.CopyFrom(turn)
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
        elif kind == "tool_call_requested":
            requested = event.tool_call_requested
            envelope.tool_requested.turn = turn.name
            envelope.tool_requested.tool_call_id = requested.tool_call_id
            envelope.tool_requested.tool = requested.tool
            envelope.tool_requested.arguments_json = requested.arguments_json
            envelope.tool_requested.persona = session.persona
        elif kind == "intervention":
            envelope.intervention_applied.turn = turn.name
            envelope.intervention_applied.intervention.CopyFrom(event.intervention)
        else:
            continue
        key = session.name.encode()
        out.append(OutboxRecord(envelope.event_id, TOPIC_AUDIT, key, envelope.SerializeToString()))
    return out
