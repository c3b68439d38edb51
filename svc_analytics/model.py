"""svc_analytics's domain: what ingestion moves from Kafka into the warehouse, and what the
dashboards and the audit log ask of it.

Ingestion sees a Kafka record as a :class:`Delivery` (an event, already cut into the rows of
each warehouse table it feeds) or a :class:`Poison` (anything that is not an event). The
rows themselves are opaque here: their columns are the warehouse adapter's business.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from skm_runtime.values import ModelRole

# One row of a warehouse table, its values in the table's column order (adapters.schema).
Row = tuple[object, ...]


class Table(enum.StrEnum):
    """The warehouse tables ingestion writes, in the order it writes a batch's rows.

    The typed tables come first and ``EVENTS`` (every event, the audit trail) last: an
    event id found in ``EVENTS`` is an event whose every row is durable.
    """

    MODEL_CALLS = "model_calls"
    TURNS = "turns"
    INTERVENTIONS = "interventions"
    POLICY_DECISIONS = "policy_decisions"
    TOOL_EXECUTIONS = "tool_executions"
    MEMORY_OPERATIONS = "memory_operations"
    BLOCKED_ACTIONS = "blocked_actions"
    AUDIO_QUALITY = "audio_quality"
    MODEL_SCORES = "model_scores"
    EVENTS = "events"
    DEAD_LETTERS = "dead_letters"


class Partition(NamedTuple):
    """One partition of one Kafka topic. (Named tuples, as Position: ingestion makes and
    hashes one per record, and a tuple is what costs least.)"""

    topic: str
    partition: int


class Position(NamedTuple):
    """Where a record sits in Kafka, and when it was published (the record's timestamp)."""

    topic: str
    partition: int
    offset: int
    published_ms: int = 0

    @property
    def of(self) -> Partition:
        return Partition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A record that is an event, with the rows it adds to each table."""

    position: Position
    event_id: str
    tenant: str
    # When the event happened, microseconds since the Unix epoch (UTC).
    event_us: int
    rows: Mapping[Table, tuple[Row, ...]]


class PoisonReason(enum.StrEnum):
    """Why a record cannot be ingested; it goes to the dead-letter topic with it."""

    # The value does not parse as skm.events.v1.Event (or there is no value).
    NOT_AN_EVENT = "NOT_AN_EVENT"
    # An Event whose payload is none this service knows (a newer writer, or none at all).
    UNKNOWN_PAYLOAD = "UNKNOWN_PAYLOAD"
    # An Event without the envelope fields every row needs (event_id, tenant, event_time), or
    # with an event_id that is no id (over 128 characters, or holding a comma).
    INCOMPLETE_ENVELOPE = "INCOMPLETE_ENVELOPE"


@dataclass(frozen=True, slots=True)
class Poison:
    """A record that is not an event this service can ingest."""

    position: Position
    reason: PoisonReason
    detail: str
    key: bytes | None
    value: bytes | None


Record = Delivery | Poison


@dataclass(slots=True)
class Written:
    """What one batch did, for logs and metrics."""

    records: int = 0
    events: int = 0
    # Events already in the warehouse (a redelivery, a relay's second copy), or twice in
    # the batch; and rows of events not yet in `events` that a table already held (a batch
    # cut short between two tables, read again).
    duplicates: int = 0
    rows_held: int = 0
    dead_letters: int = 0
    rows: dict[Table, int] = field(default_factory=dict)
    # Tenants with model calls among the events written.
    charged: set[str] = field(default_factory=set)


# -- queries: the dashboards' metrics and the audit log ----------------------------------------


# What QueryMetrics and QueryAuditEvents ask of the warehouse, as the core sees it. Enum
# values are the names of skm.analytics.v1's enums without their prefix; the wire's
# UNSPECIFIED (and any number this build does not know) is None.

# Rules of the contract (skm.analytics.v1), enforced by core.queries.
MAX_RANGE = timedelta(days=90)
MIN_BUCKET = timedelta(seconds=60)
MAX_BUCKETS = 1000
MAX_QUERIES = 20
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Metric(enum.StrEnum):
    """A measurable quantity of the dashboards (skm.analytics.v1.Metric)."""

    TURNS = "TURNS"
    TURN_LATENCY = "TURN_LATENCY"
    TIME_TO_FIRST_TOKEN = "TIME_TO_FIRST_TOKEN"
    TOKENS_PER_SECOND = "TOKENS_PER_SECOND"
    TOKENS = "TOKENS"
    MODEL_COST = "MODEL_COST"
    MODEL_FAILURE_RATE = "MODEL_FAILURE_RATE"
    REFUSAL_RATE = "REFUSAL_RATE"
    POLICY_DENY_RATE = "POLICY_DENY_RATE"
    POLICY_APPROVAL_RATE = "POLICY_APPROVAL_RATE"
    APPROVAL_WAIT = "APPROVAL_WAIT"
    BLOCKED_ACTIONS_EXPIRED = "BLOCKED_ACTIONS_EXPIRED"
    WORD_ERROR_RATE = "WORD_ERROR_RATE"
    MEAN_OPINION_SCORE = "MEAN_OPINION_SCORE"
    VOICE_RESPONSE_LATENCY = "VOICE_RESPONSE_LATENCY"
    MODEL_SCORE = "MODEL_SCORE"
    MODEL_FALLBACK_RATE = "MODEL_FALLBACK_RATE"


class Aggregation(enum.StrEnum):
    """How the samples of a bucket become one value (skm.analytics.v1.Aggregation)."""

    MEAN = "MEAN"
    P50 = "P50"
    P95 = "P95"
    P99 = "P99"
    SUM = "SUM"
    COUNT = "COUNT"


class Dimension(enum.StrEnum):
    """What splits a metric into several series (skm.analytics.v1.Dimension)."""

    PERSONA = "PERSONA"
    MODEL = "MODEL"


_LATENCY = frozenset({Aggregation.MEAN, Aggregation.P50, Aggregation.P95, Aggregation.P99})
_MEAN = frozenset({Aggregation.MEAN})

# The aggregations each metric accepts, as metrics.proto lists them.
AGGREGATIONS: Mapping[Metric, frozenset[Aggregation]] = {
    Metric.TURNS: frozenset({Aggregation.COUNT}),
    Metric.TURN_LATENCY: _LATENCY,
    Metric.TIME_TO_FIRST_TOKEN: _LATENCY,
    Metric.TOKENS_PER_SECOND: _LATENCY,
    Metric.TOKENS: frozenset({Aggregation.SUM}),
    Metric.MODEL_COST: frozenset({Aggregation.SUM}),
    Metric.MODEL_FAILURE_RATE: _MEAN,
    Metric.REFUSAL_RATE: _MEAN,
    Metric.POLICY_DENY_RATE: _MEAN,
    Metric.POLICY_APPROVAL_RATE: _MEAN,
    Metric.APPROVAL_WAIT: _LATENCY,
    Metric.BLOCKED_ACTIONS_EXPIRED: frozenset({Aggregation.COUNT}),
    Metric.WORD_ERROR_RATE: frozenset({Aggregation.MEAN, Aggregation.P50, Aggregation.P95}),
    Metric.MEAN_OPINION_SCORE: frozenset({Aggregation.MEAN, Aggregation.P50}),
    Metric.VOICE_RESPONSE_LATENCY: _LATENCY,
    Metric.MODEL_SCORE: _MEAN,
    Metric.MODEL_FALLBACK_RATE: _MEAN,
}

# The unit of each metric's values; MODEL_COST has none of its own: each of its series is in
# one currency, and that ISO 4217 code is the series' unit.
UNITS: Mapping[Metric, str] = {
    Metric.TURNS: "1",
    Metric.TURN_LATENCY: "s",
    Metric.TIME_TO_FIRST_TOKEN: "s",
    Metric.TOKENS_PER_SECOND: "tokens/s",
    Metric.TOKENS: "tokens",
    Metric.MODEL_FAILURE_RATE: "1",
    Metric.REFUSAL_RATE: "1",
    Metric.POLICY_DENY_RATE: "1",
    Metric.POLICY_APPROVAL_RATE: "1",
    Metric.APPROVAL_WAIT: "s",
    Metric.BLOCKED_ACTIONS_EXPIRED: "1",
    Metric.WORD_ERROR_RATE: "1",
    Metric.MEAN_OPINION_SCORE: "MOS",
    Metric.VOICE_RESPONSE_LATENCY: "s",
    Metric.MODEL_SCORE: "1",
    Metric.MODEL_FALLBACK_RATE: "1",
}

# The metrics of model calls: the only ones a role filter narrows (a model score is of one
# role already, and the scoring job asks for it by model).
MODEL_CALL_METRICS = frozenset(
    {
        Metric.TIME_TO_FIRST_TOKEN,
        Metric.TOKENS_PER_SECOND,
        Metric.TOKENS,
        Metric.MODEL_COST,
        Metric.MODEL_FAILURE_RATE,
        Metric.MODEL_FALLBACK_RATE,
    }
)

# The metrics tied to a model (model calls and model scores): the only ones a model filter
# narrows and grouping by model splits.
MODEL_METRICS = MODEL_CALL_METRICS | {Metric.MODEL_SCORE}


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """One series asked for; None: UNSPECIFIED, or a value this build does not know."""

    metric: Metric | None
    aggregation: Aggregation | None


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """QueryMetrics as the client sent it, not yet validated.

    Times are UTC; `bucket_width` is None when unset (a width that is not whole seconds is
    never rounded to one: it stays a fraction of a second off).
    """

    parent: str
    queries: tuple[MetricQuery, ...]
    start_time: datetime | None
    end_time: datetime | None
    bucket_width: timedelta | None
    personas: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    group_by: tuple[Dimension | None, ...] = ()
    # None: MODEL_ROLE_UNSPECIFIED, or a value this build does not know.
    roles: tuple[ModelRole | None, ...] = ()


@dataclass(frozen=True, slots=True)
class SeriesRead:
    """One validated series query, as the warehouse computes it: the samples of `metric` of
    one tenant with start <= event time < end, in buckets of `bucket_width` (whole seconds)
    counted from `start`.

    `personas` / `models` (full resource names; empty: all) keep only rows of those; a row
    without a persona or model reads as "". `roles` (ModelRole names, "PRIMARY"; empty: all)
    keep only model calls of those roles; the core sets it for model-call metrics alone.
    `by_persona` / `by_model` split the series.
    """

    tenant: str
    metric: Metric
    aggregation: Aggregation
    start: datetime
    end: datetime
    bucket_width: timedelta
    personas: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    by_persona: bool = False
    by_model: bool = False


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket with samples: its start, the aggregated value and how many samples it has."""

    start_time: datetime
    value: float
    sample_count: int


@dataclass(frozen=True, slots=True)
class Series:
    """One metric over time for one combination of the grouping dimensions; `persona` and
    `model` are "" unless grouped by them. Points are in time order, empty buckets left out."""

    metric: Metric
    aggregation: Aggregation
    unit: str
    persona: str = ""
    model: str = ""
    points: tuple[Point, ...] = ()


# The payload types of skm.events.v1.Event, named by their field in its `payload` oneof
# (QueryAuditEvents' event_types). Kept here because the core may not read the generated
# descriptor; a unit test holds it equal to the descriptor's.
EVENT_TYPES = frozenset(
    {
        "turn_started",
        "turn_completed",
        "model_call_completed",
        "tool_requested",
        "tool_completed",
        "policy_decided",
        "action_blocked",
        "action_resolved",
        "intervention_applied",
        "memory_operation",
        "audio_quality_measured",
        "model_profile_scored",
        "kamachiq_progress",
        "model_budget_exceeded",
        "tenant_onboarded",
        "persona_bundle_installed",
        "persona_bundle_refused",
        "model_profile_auto_selected",
    }
)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """QueryAuditEvents as the client sent it, not yet validated (times UTC; None: unset)."""

    parent: str
    session: str = ""
    event_types: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class AuditRead:
    """One validated page read of the audit trail: the tenant's events with start <= event
    time < end (no lower bound when start is None), after the (event time, event id) of
    `after` when set, oldest first by (event time, event id), at most `limit`."""

    tenant: str
    end: datetime
    limit: int
    start: datetime | None = None
    session: str = ""
    event_types: frozenset[str] = frozenset()
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event of the audit trail: its key and the skm.events.v1.Event, as protobuf bytes."""

    event_time: datetime
    event_id: str
    event: bytes


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of events (Event protobuf bytes, oldest first) and the token of the next one
    ("" on the last page)."""

    events: tuple[bytes, ...]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class Spend:
    """What a tenant spent on model calls (of one role, or of all) since `since`: the sum
    of their costs in USD (calls priced in other currencies are not in it) and how many
    calls that is."""

    since: datetime
    usd: float
    model_calls: int


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's monthly model budget for one role ("PRIMARY", ...), in USD."""

    tenant: str
    role: str
    limit_usd: float


@dataclass(frozen=True, slots=True)
class BudgetCrossed:
    """A budget's limit passed this month: what to announce, under a stable event id."""

    event_id: str
    budget: Budget
    spent_usd: float
    since: datetime
    seen: datetime
