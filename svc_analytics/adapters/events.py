"""From a Kafka record to what ingestion writes: skm.events.v1.Event bytes cut into the rows
of each warehouse table (adapters.schema gives their columns, in the same order), or the
reason the record cannot be ingested.

Enum values are stored by their name without the enum's prefix ("COMPLETED", "DENY",
"PRIMARY"); durations as seconds; money as units + nanos / 1e9 in its currency.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from skm.events.v1 import event_pb2
from skm.policy.v1 import blocked_action_pb2
from skm.tools.v1 import execution_pb2
from skm.type.v1 import model_pb2, money_pb2
from svc_analytics.model import BudgetCrossed, Delivery, Poison, PoisonReason, Position, Row, Table

# The columns every event table starts with: event_id, tenant, event_time (µs), session.
Head = tuple[str, str, int, str]

# Event ids are UUIDs; anything longer, or with a comma (the separator of the warehouse's
# lookup of known ids), is not an id this service can key on.
_MAX_ID = 128

_SANDBOX_LIMITS = frozenset({"RESOURCE_LIMIT", "TIMEOUT", "SANDBOX_VIOLATION"})


@functools.cache
def _names(enum_descriptor: object) -> dict[int, str]:
    values = enum_descriptor.values  # type: ignore[attr-defined]  # an EnumDescriptor
    prefix = f"{_upper_snake(enum_descriptor.name)}_"  # type: ignore[attr-defined]
    return {v.number: v.name.removeprefix(prefix) if v.number else "" for v in values}


def _upper_snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


@functools.cache
def _field_names(message_descriptor: object, field: str) -> dict[int, str]:
    return _names(message_descriptor.fields_by_name[field].enum_type)  # type: ignore[attr-defined]


def _enum(message: object, field: str) -> str:
    number = getattr(message, field)
    name = _field_names(message.DESCRIPTOR, field).get(number)  # type: ignore[attr-defined]
    return str(number) if name is None else name


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _maybe_seconds(parent: object, field: str) -> float | None:
    return _seconds(getattr(parent, field)) if parent.HasField(field) else None  # type: ignore[attr-defined]


def _time(ts: Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


def _micros(ts: Timestamp) -> int:
    """A timestamp as the warehouse's DateTime64(6) ticks."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _persona_of(subject: str) -> str:
    return subject.removeprefix("persona:") if subject.startswith("persona:") else ""


def _model_call(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.model_call_completed
    u = p.usage
    row = (
        *head,
        e.source,
        p.turn,
        p.persona,
        u.model,
        _enum(u, "role"),
        u.tier,
        u.input_tokens,
        u.output_tokens,
        u.input_tokens_estimated,
        _maybe_seconds(u, "time_to_first_token"),
        _seconds(u.duration),
        u.tokens_per_second,
        u.cost.units + u.cost.nanos / 1e9,
        u.cost.currency_code,
        p.failure_reason,
        bool(p.failure_reason),
        p.interrupted,
    )
    return {Table.MODEL_CALLS: (row,)}


def _turn(e: event_pb2.Event, head: Head, kind: str) -> dict[Table, tuple[Row, ...]]:
    started = kind == "started"
    p = e.turn_started if started else e.turn_completed
    t = p.turn
    row = (
        *head,
        kind,
        t.name,
        p.persona,
        _enum(e.turn_started, "mode") if started else "",
        _enum(t, "state"),
        None if started else _seconds(e.turn_completed.duration),
        t.failure_reason,
        t.preprocessing.refused,
        t.preprocessing.refusal_reason,
        t.iterations,
        bool(t.rerun_of),
        len(t.model_calls),
    )
    return {Table.TURNS: (row,)}


def _intervention(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.intervention_applied
    return {Table.INTERVENTIONS: ((*head, p.turn, _enum(p.intervention, "kind")),)}


def _policy(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.policy_decided
    c = p.check
    object_type, _, object_id = c.object.partition(":")
    row = (
        *head,
        c.subject,
        _persona_of(c.subject),
        c.relation,
        object_type,
        object_id,
        _enum(p.decision, "verdict"),
        p.decision.reason,
        p.cached,
        _maybe_seconds(p, "latency"),
    )
    return {Table.POLICY_DECISIONS: (row,)}


def _tool(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    x = e.tool_completed.execution
    failure = _enum(x.result.failure, "reason") if x.result.HasField("failure") else ""
    started, ended = x.HasField("start_time"), x.HasField("end_time")
    duration = (_time(x.end_time) - _time(x.start_time)).total_seconds() if started and ended else None
    created = x.HasField("create_time")
    wait = (_time(x.start_time) - _time(x.create_time)).total_seconds() if started and created else None
    row = (
        *head,
        x.name,
        x.tool,
        x.persona,
        x.turn,
        _enum(x, "state"),
        _enum(x.decision, "verdict"),
        x.decision.reason,
        x.state == execution_pb2.Execution.STATE_SUCCEEDED,
        failure,
        duration,
        wait,
        failure in _SANDBOX_LIMITS,
    )
    return {Table.TOOL_EXECUTIONS: (row,)}


def _memory(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.memory_operation
    row = (*head, _enum(p, "kind"), p.namespace, len(p.memory_ids), p.execution, p.turn)
    return {Table.MEMORY_OPERATIONS: (row,)}


def _blocked(e: event_pb2.Event, head: Head, kind: str) -> dict[Table, tuple[Row, ...]]:
    resolved = kind == "resolved"
    p = e.action_resolved if resolved else e.action_blocked
    a = p.blocked_action
    previous = _enum(e.action_resolved, "previous_state") if resolved else ""
    pending = blocked_action_pb2.BlockedAction.STATE_PENDING
    left_pending = resolved and e.action_resolved.previous_state == pending and a.state != pending
    wait = None
    if left_pending and a.HasField("create_time"):
        until = a.resolve_time if a.HasField("resolve_time") else e.event_time
        wait = (_time(until) - _time(a.create_time)).total_seconds()
    row = (
        *head,
        kind,
        a.name,
        _enum(a, "state"),
        previous,
        a.check.relation,
        a.check.object,
        _persona_of(a.check.subject),
        wait,
        left_pending and a.state == blocked_action_pb2.BlockedAction.STATE_EXPIRED,
    )
    return {Table.BLOCKED_ACTIONS: (row,)}


def _audio(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.audio_quality_measured
    m = p.metrics
    row = (
        *head,
        p.voice_stream,
        p.turn,
        p.persona,
        p.recognizer,
        p.voice,
        m.word_error_rate if m.HasField("word_error_rate") else None,
        m.mean_opinion_score if m.HasField("mean_opinion_score") else None,
        _maybe_seconds(m, "recognition_latency"),
        _maybe_seconds(m, "response_latency"),
        _maybe_seconds(m, "synthesis_latency"),
    )
    return {Table.AUDIO_QUALITY: (row,)}


def _scores(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    p = e.model_profile_scored
    rows = tuple(
        (
            *head,
            _enum(p, "role"),
            s.model,
            s.score,
            s.quality,
            s.reliability,
            _maybe_seconds(s, "latency"),
            s.cost_per_million_tokens.units + s.cost_per_million_tokens.nanos / 1e9,
            s.cost_per_million_tokens.currency_code,
            s.sample_count,
            s.model == p.recommended_model,
            p.applied,
        )
        for s in p.scores
    )
    return {Table.MODEL_SCORES: rows}


def _none(e: event_pb2.Event, head: Head) -> dict[Table, tuple[Row, ...]]:
    return {}


_TYPED: dict[str, Callable[[event_pb2.Event, Head], dict[Table, tuple[Row, ...]]]] = {
    "turn_started": lambda e, head: _turn(e, head, "started"),
    "turn_completed": lambda e, head: _turn(e, head, "completed"),
    "model_call_completed": _model_call,
    "tool_requested": _none,
    "tool_completed": _tool,
    "policy_decided": _policy,
    "action_blocked": lambda e, head: _blocked(e, head, "blocked"),
    "action_resolved": lambda e, head: _blocked(e, head, "resolved"),
    "intervention_applied": _intervention,
    "memory_operation": _memory,
    "audio_quality_measured": _audio,
    "model_profile_scored": _scores,
    "kamachiq_progress": _none,
    "model_budget_exceeded": _none,
    # svc_profiles' life-cycle events: the audit log (the events table) is where they are read.
    "tenant_onboarded": _none,
    "persona_bundle_installed": _none,
    "persona_bundle_refused": _none,
    "model_profile_auto_selected": _none,
}

# The payload types, named by their field in Event.payload (QueryAuditEvents' event_types).
EVENT_TYPES = frozenset(f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)


def decode(position: Position, key: bytes | None, value: bytes | None) -> Delivery | Poison:
    """The record as a Delivery, or as a Poison saying why it cannot be one."""

    def poison(reason: PoisonReason, detail: str) -> Poison:
        return Poison(position, reason, detail, key, value)

    if not value:
        return poison(PoisonReason.NOT_AN_EVENT, "the record has no value")
    event = event_pb2.Event()
    try:
        event.ParseFromString(value)
    except DecodeError as exc:
        return poison(PoisonReason.NOT_AN_EVENT, f"not a skm.events.v1.Event: {exc}")
    kind = event.WhichOneof("payload")
    if kind is None or kind not in _TYPED:
        return poison(PoisonReason.UNKNOWN_PAYLOAD, "no payload this service knows (none, or a newer one)")
    if not event.event_id or not event.tenant.startswith("tenants/") or not event.HasField("event_time"):
        return poison(PoisonReason.INCOMPLETE_ENVELOPE, "event_id, tenant and event_time are required")
    if len(event.event_id) > _MAX_ID or "," in event.event_id:
        return poison(
            PoisonReason.INCOMPLETE_ENVELOPE, f"event_id must be a UUID (at most {_MAX_ID} characters, no comma)"
        )
    event_id, tenant, event_us = event.event_id, event.tenant, _micros(event.event_time)
    head = (event_id, tenant, event_us, event.session)
    rows = _TYPED[kind](event, head)
    principal = event.principal.user if event.HasField("principal") else ""
    rows[Table.EVENTS] = ((*head, event.source, kind, principal, event.trace_id, value),)
    return Delivery(position, event_id, tenant, event_us, rows)


def _money(usd: float) -> money_pb2.Money:
    nanos = round(usd * 1_000_000_000)
    units, nanos = divmod(nanos, 1_000_000_000)
    return money_pb2.Money(currency_code="USD", units=units, nanos=nanos)


def budget_exceeded_event(crossing: BudgetCrossed) -> event_pb2.Event:
    """The ModelBudgetExceeded event of a crossing (source analytics, no session, no principal)."""
    b = crossing.budget
    event = event_pb2.Event(event_id=crossing.event_id, tenant=b.tenant, source="analytics")
    event.event_time.FromDatetime(crossing.seen)
    exceeded = event.model_budget_exceeded
    exceeded.budget = f"model_budget:{b.tenant}/modelBudgets/{b.role.lower()}"
    exceeded.role = model_pb2.ModelRole.Value(f"MODEL_ROLE_{b.role}")
    exceeded.limit.CopyFrom(_money(b.limit_usd))
    exceeded.spent.CopyFrom(_money(crossing.spent_usd))
    exceeded.period_start_time.FromDatetime(crossing.since)
    return event
