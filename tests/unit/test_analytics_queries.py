"""svc_analytics's queries core over an in-memory warehouse reader: every rule of
skm.analytics.v1 (names, ranges, buckets, aggregations, pages), with the reason and
metadata of each refusal, and what the core asks the warehouse once a request is valid."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from skm.events.v1 import event_pb2
from skm.type.v1 import model_pb2
from skm_runtime.errors import InvalidArgument, SkmError
from skm_runtime.values import ModelRole
from svc_analytics.adapters.events import decode
from svc_analytics.core.queries import Queries
from svc_analytics.errors import (
    AggregationNotSupported,
    InvalidBucket,
    InvalidPageToken,
    InvalidResourceName,
    InvalidTimeRange,
    TooManyBuckets,
    TooManyQueries,
    UnknownEventType,
)
from svc_analytics.model import (
    EVENT_TYPES,
    Aggregation,
    AuditEvent,
    AuditQuery,
    AuditRead,
    Delivery,
    Dimension,
    Metric,
    MetricQuery,
    MetricsQuery,
    Point,
    Position,
    Series,
    SeriesRead,
    Table,
)
from tests.support import analytics_events
from tests.support.analytics_memory import MemoryWarehouse

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TENANT = "tenants/t1"
MINUTE = timedelta(minutes=1)


@dataclass
class _Stored:
    tenant: str
    session: str
    event_type: str
    event: AuditEvent


@dataclass
class MemoryReader:
    """ports.WarehouseReader in memory: the audit trail is filtered and paged for real; a
    series read is recorded and answered with the series set for its metric."""

    answers: dict[Metric, list[Series]] = field(default_factory=dict)
    series_reads: list[SeriesRead] = field(default_factory=list)
    audit_reads: list[AuditRead] = field(default_factory=list)
    events: list[_Stored] = field(default_factory=list)

    async def series(self, read: SeriesRead) -> list[Series]:
        self.series_reads.append(read)
        return list(self.answers.get(read.metric, []))

    async def audit_events(self, read: AuditRead) -> list[AuditEvent]:
        self.audit_reads.append(read)
        kept = [
            s.event
            for s in self.events
            if s.tenant == read.tenant
            and (not read.session or s.session == read.session)
            and (not read.event_types or s.event_type in read.event_types)
            and (read.start is None or s.event.event_time >= read.start)
            and s.event.event_time < read.end
            and (read.after is None or (s.event.event_time, s.event.event_id) > read.after)
        ]
        return sorted(kept, key=lambda e: (e.event_time, e.event_id))[: read.limit]

    def add(self, offset_s: float, event_id: str, *, tenant: str = TENANT, session: str = "", type_: str = "") -> bytes:
        body = f"{tenant}|{event_id}".encode()
        at = T0 + timedelta(seconds=offset_s)
        self.events.append(_Stored(tenant, session, type_ or "turn_started", AuditEvent(at, event_id, body)))
        return body


@dataclass
class Clock:
    now: datetime = T0 + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def reader() -> MemoryReader:
    return MemoryReader()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queries(reader: MemoryReader, clock: Clock) -> Queries:
    return Queries(reader, now=clock)


def metrics_query(**fields: object) -> MetricsQuery:
    values: dict[str, object] = {
        "parent": TENANT,
        "queries": (MetricQuery(Metric.TURNS, Aggregation.COUNT),),
        "start_time": T0,
        "end_time": T0 + timedelta(hours=1),
        "bucket_width": 5 * MINUTE,
    }
    values.update(fields)
    return MetricsQuery(**values)  # type: ignore[arg-type]  # the test's keyword overrides


async def refusal(call: Awaitable[object], kind: type[SkmError]) -> SkmError:
    with pytest.raises(kind) as raised:
        await call
    return raised.value


# -- QueryMetrics: names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"parent": ""}, "parent"),
        ({"parent": "tenants/"}, "parent"),
        ({"parent": "tenants/t1/personas/p"}, "parent"),
        ({"parent": "tenant/t1"}, "parent"),
        ({"parent": "tenants/t 1"}, "parent"),
        ({"personas": ("tenants/t1/personas/",)}, "personas"),
        ({"personas": ("personas/p",)}, "personas"),
        ({"personas": ("tenants/t1/sessions/p",)}, "personas"),
        # Well formed, but another tenant's: never a match, and a mistake worth telling.
        ({"personas": ("tenants/t2/personas/p",)}, "personas"),
        ({"models": ("qwen",)}, "models"),
        ({"models": ("models/",)}, "models"),
        ({"models": ("models/a/b",)}, "models"),
    ],
)
async def test_malformed_names_are_invalid_resource_name(
    queries: Queries, reader: MemoryReader, fields: dict[str, object], field_name: str
) -> None:
    error = await refusal(queries.query_metrics(metrics_query(**fields)), InvalidResourceName)
    assert (error.reason, error.domain, error.code.name) == (
        "INVALID_RESOURCE_NAME",
        "analytics.skm",
        "INVALID_ARGUMENT",
    )
    assert error.metadata["field"] == field_name
    assert reader.series_reads == []


# -- QueryMetrics: queries and aggregations -------------------------------------------------------


@pytest.mark.parametrize("count", [0, 21])
async def test_none_or_more_than_twenty_queries_is_too_many_queries(queries: Queries, count: int) -> None:
    asked = tuple(MetricQuery(Metric.TURNS, Aggregation.COUNT) for _ in range(count))
    error = await refusal(queries.query_metrics(metrics_query(queries=asked)), TooManyQueries)
    assert error.reason == "TOO_MANY_QUERIES"
    assert error.metadata == {"limit": "20"}


async def test_twenty_queries_are_served_in_their_order(queries: Queries, reader: MemoryReader) -> None:
    metrics = [Metric.TURNS, Metric.BLOCKED_ACTIONS_EXPIRED] * 10
    asked = tuple(MetricQuery(m, Aggregation.COUNT) for m in metrics)
    await queries.query_metrics(metrics_query(queries=asked))
    assert [r.metric for r in reader.series_reads] == metrics


@pytest.mark.parametrize(
    ("metric", "aggregation", "metadata"),
    [
        (Metric.TURNS, Aggregation.MEAN, ("METRIC_TURNS", "AGGREGATION_MEAN")),
        (Metric.TURN_LATENCY, Aggregation.SUM, ("METRIC_TURN_LATENCY", "AGGREGATION_SUM")),
        (Metric.WORD_ERROR_RATE, Aggregation.P99, ("METRIC_WORD_ERROR_RATE", "AGGREGATION_P99")),
        (Metric.MEAN_OPINION_SCORE, Aggregation.P95, ("METRIC_MEAN_OPINION_SCORE", "AGGREGATION_P95")),
        (Metric.MODEL_COST, Aggregation.MEAN, ("METRIC_MODEL_COST", "AGGREGATION_MEAN")),
        (Metric.MODEL_SCORE, Aggregation.P50, ("METRIC_MODEL_SCORE", "AGGREGATION_P50")),
        (Metric.REFUSAL_RATE, Aggregation.COUNT, ("METRIC_REFUSAL_RATE", "AGGREGATION_COUNT")),
        (None, Aggregation.MEAN, ("METRIC_UNSPECIFIED", "AGGREGATION_MEAN")),
        (Metric.TURNS, None, ("METRIC_TURNS", "AGGREGATION_UNSPECIFIED")),
    ],
)
async def test_an_aggregation_the_metric_does_not_accept_is_refused_with_both_names(
    queries: Queries,
    metric: Metric | None,
    aggregation: Aggregation | None,
    metadata: tuple[str, str],
) -> None:
    asked = (MetricQuery(Metric.TURNS, Aggregation.COUNT), MetricQuery(metric, aggregation))
    error = await refusal(queries.query_metrics(metrics_query(queries=asked)), AggregationNotSupported)
    assert error.reason == "AGGREGATION_NOT_SUPPORTED"
    assert error.metadata == {"metric": metadata[0], "aggregation": metadata[1]}


async def test_every_aggregation_metrics_proto_lists_is_accepted(queries: Queries, reader: MemoryReader) -> None:
    accepted = {
        Metric.TURNS: "COUNT",
        Metric.TURN_LATENCY: "MEAN P50 P95 P99",
        Metric.TIME_TO_FIRST_TOKEN: "MEAN P50 P95 P99",
        Metric.TOKENS_PER_SECOND: "MEAN P50 P95 P99",
        Metric.TOKENS: "SUM",
        Metric.MODEL_COST: "SUM",
        Metric.MODEL_FAILURE_RATE: "MEAN",
        Metric.REFUSAL_RATE: "MEAN",
        Metric.POLICY_DENY_RATE: "MEAN",
        Metric.POLICY_APPROVAL_RATE: "MEAN",
        Metric.APPROVAL_WAIT: "MEAN P50 P95 P99",
        Metric.BLOCKED_ACTIONS_EXPIRED: "COUNT",
        Metric.WORD_ERROR_RATE: "MEAN P50 P95",
        Metric.MEAN_OPINION_SCORE: "MEAN P50",
        Metric.VOICE_RESPONSE_LATENCY: "MEAN P50 P95 P99",
        Metric.MODEL_SCORE: "MEAN",
        Metric.MODEL_FALLBACK_RATE: "MEAN",
    }
    assert set(accepted) == set(Metric)
    for metric, names in accepted.items():
        for aggregation in Aggregation:
            query = metrics_query(queries=(MetricQuery(metric, aggregation),))
            if aggregation.value in names.split():
                await queries.query_metrics(query)
            else:
                await refusal(queries.query_metrics(query), AggregationNotSupported)
    assert len(reader.series_reads) == sum(len(n.split()) for n in accepted.values())


# -- QueryMetrics: time range and buckets ---------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"start_time": None},
        {"end_time": T0 - timedelta(microseconds=1)},
        {"end_time": T0},
        {"end_time": T0 + timedelta(days=90, microseconds=1)},
        # Unset end is now (T0 + 1 h): a start after it leaves an empty range.
        {"start_time": T0 + timedelta(hours=2), "end_time": None},
    ],
)
async def test_a_missing_empty_reversed_or_too_long_range_is_invalid_time_range(
    queries: Queries, fields: dict[str, object]
) -> None:
    error = await refusal(queries.query_metrics(metrics_query(**fields)), InvalidTimeRange)
    assert (error.reason, error.code.name) == ("INVALID_TIME_RANGE", "INVALID_ARGUMENT")


async def test_ninety_days_is_the_longest_range(queries: Queries, reader: MemoryReader) -> None:
    await queries.query_metrics(metrics_query(end_time=T0 + timedelta(days=90), bucket_width=timedelta(days=1)))
    assert reader.series_reads[0].end - reader.series_reads[0].start == timedelta(days=90)


async def test_an_unset_end_is_now(queries: Queries, reader: MemoryReader, clock: Clock) -> None:
    clock.now = T0 + timedelta(minutes=42, microseconds=7)
    await queries.query_metrics(metrics_query(end_time=None))
    assert (reader.series_reads[0].start, reader.series_reads[0].end) == (T0, clock.now)


@pytest.mark.parametrize(
    "width",
    [
        None,
        timedelta(seconds=59),
        timedelta(0),
        -5 * MINUTE,
        timedelta(seconds=60, microseconds=1),
        timedelta(seconds=90.5),
        timedelta(hours=1, seconds=1),
    ],
)
async def test_a_missing_short_fractional_or_too_wide_bucket_is_invalid_bucket(
    queries: Queries, width: timedelta | None
) -> None:
    error = await refusal(queries.query_metrics(metrics_query(bucket_width=width)), InvalidBucket)
    assert (error.reason, error.code.name) == ("INVALID_BUCKET", "INVALID_ARGUMENT")


async def test_a_bucket_as_wide_as_the_range_is_one_bucket(queries: Queries, reader: MemoryReader) -> None:
    await queries.query_metrics(metrics_query(bucket_width=timedelta(hours=1)))
    assert reader.series_reads[0].bucket_width == timedelta(hours=1)


async def test_more_than_a_thousand_buckets_is_too_many_buckets(queries: Queries, reader: MemoryReader) -> None:
    # 1000 buckets, the last one cut short by the end of the range: allowed.
    await queries.query_metrics(metrics_query(end_time=T0 + 1000 * MINUTE - timedelta(seconds=1), bucket_width=MINUTE))
    await queries.query_metrics(metrics_query(end_time=T0 + 1000 * MINUTE, bucket_width=MINUTE))
    assert len(reader.series_reads) == 2
    # One microsecond more opens a 1001st bucket.
    over = metrics_query(end_time=T0 + 1000 * MINUTE + timedelta(microseconds=1), bucket_width=MINUTE)
    error = await refusal(queries.query_metrics(over), TooManyBuckets)
    assert (error.reason, error.metadata) == ("TOO_MANY_BUCKETS", {"limit": "1000"})
    longest = metrics_query(end_time=T0 + timedelta(days=90), bucket_width=MINUTE)
    assert (await refusal(queries.query_metrics(longest), TooManyBuckets)).metadata == {"limit": "1000"}


# -- QueryMetrics: what the warehouse is asked ----------------------------------------------------


async def test_filters_and_grouping_reach_the_warehouse_normalised(queries: Queries, reader: MemoryReader) -> None:
    personas = (f"{TENANT}/personas/b", f"{TENANT}/personas/a", f"{TENANT}/personas/b")
    asked = (
        MetricQuery(Metric.TOKENS, Aggregation.SUM),
        MetricQuery(Metric.TURNS, Aggregation.COUNT),
        MetricQuery(Metric.MODEL_SCORE, Aggregation.MEAN),
    )
    await queries.query_metrics(
        metrics_query(
            queries=asked,
            personas=personas,
            models=("models/m2", "models/m1"),
            group_by=(Dimension.MODEL, Dimension.PERSONA, Dimension.MODEL),
        )
    )
    tokens, turns, scores = reader.series_reads
    assert tokens == SeriesRead(
        tenant=TENANT,
        metric=Metric.TOKENS,
        aggregation=Aggregation.SUM,
        start=T0,
        end=T0 + timedelta(hours=1),
        bucket_width=5 * MINUTE,
        personas=(f"{TENANT}/personas/a", f"{TENANT}/personas/b"),
        models=("models/m1", "models/m2"),
        by_persona=True,
        by_model=True,
    )
    # A metric not tied to a model ignores the model filter, as the contract says.
    assert turns == replace(tokens, metric=Metric.TURNS, aggregation=Aggregation.COUNT, models=())
    assert scores.models == ("models/m1", "models/m2")
    assert scores.personas == tokens.personas


async def test_the_role_filter_reaches_only_the_metrics_of_model_calls(queries: Queries, reader: MemoryReader) -> None:
    asked = (
        MetricQuery(Metric.MODEL_FALLBACK_RATE, Aggregation.MEAN),
        MetricQuery(Metric.MODEL_FAILURE_RATE, Aggregation.MEAN),
        MetricQuery(Metric.TURNS, Aggregation.COUNT),
        MetricQuery(Metric.MODEL_SCORE, Aggregation.MEAN),
    )
    roles = (ModelRole.UTILITY, ModelRole.PRIMARY, ModelRole.UTILITY)
    await queries.query_metrics(metrics_query(queries=asked, roles=roles))
    # Names as the warehouse's role column holds them, sorted and once each; a model score
    # is of one role already, and a turn of none.
    assert [r.roles for r in reader.series_reads] == [("PRIMARY", "UTILITY"), ("PRIMARY", "UTILITY"), (), ()]
    await queries.query_metrics(metrics_query(queries=asked[:1]))
    assert reader.series_reads[-1].roles == ()


async def test_an_unspecified_or_unknown_role_is_an_invalid_argument(queries: Queries, reader: MemoryReader) -> None:
    query = metrics_query(queries=(MetricQuery(Metric.TOKENS, Aggregation.SUM),), roles=(ModelRole.PRIMARY, None))
    error = await refusal(queries.query_metrics(query), InvalidArgument)
    assert (error.reason, [v.field for v in error.violations]) == ("INVALID_ARGUMENT", ["roles"])
    # Refused even where no query would use it: the request is wrong either way.
    error = await refusal(queries.query_metrics(metrics_query(roles=(None,))), InvalidArgument)
    assert [v.field for v in error.violations] == ["roles"]
    assert reader.series_reads == []


async def test_an_unspecified_dimension_is_an_invalid_argument(queries: Queries) -> None:
    error = await refusal(queries.query_metrics(metrics_query(group_by=(Dimension.PERSONA, None))), InvalidArgument)
    assert [v.field for v in error.violations] == ["group_by"]


async def test_series_come_in_the_order_of_the_queries_then_of_their_groups(
    queries: Queries, reader: MemoryReader
) -> None:
    point = (Point(T0, 1.0, 1),)
    usd = Series(Metric.MODEL_COST, Aggregation.SUM, "USD", "p", "models/b", point)
    eur = Series(Metric.MODEL_COST, Aggregation.SUM, "EUR", "p", "models/b", point)
    early = Series(Metric.MODEL_COST, Aggregation.SUM, "USD", "p", "models/a", point)
    turns = Series(Metric.TURNS, Aggregation.COUNT, "1", "", "", point)
    reader.answers = {Metric.MODEL_COST: [usd, eur, early], Metric.TURNS: [turns]}
    asked = (MetricQuery(Metric.TURNS, Aggregation.COUNT), MetricQuery(Metric.MODEL_COST, Aggregation.SUM))
    assert await queries.query_metrics(metrics_query(queries=asked)) == [turns, early, eur, usd]


# -- QueryAuditEvents -------------------------------------------------------------------------------


def test_the_event_types_are_the_fields_of_the_events_payload() -> None:
    assert {f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields} == EVENT_TYPES


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        (AuditQuery(parent="tenants"), InvalidResourceName),
        (AuditQuery(parent=TENANT, session="tenants/t2/sessions/s"), InvalidResourceName),
        (AuditQuery(parent=TENANT, session="sessions/s"), InvalidResourceName),
        (AuditQuery(parent=TENANT, session=f"{TENANT}/sessions/s/turns/1"), InvalidResourceName),
        (AuditQuery(parent=TENANT, event_types=("turn_started", "TurnStarted")), UnknownEventType),
        (AuditQuery(parent=TENANT, event_types=("",)), UnknownEventType),
        (AuditQuery(parent=TENANT, start_time=T0, end_time=T0), InvalidTimeRange),
        (AuditQuery(parent=TENANT, start_time=T0, end_time=T0 - MINUTE), InvalidTimeRange),
        # Unset end is now (T0 + 1 h).
        (AuditQuery(parent=TENANT, start_time=T0 + timedelta(hours=2)), InvalidTimeRange),
        (AuditQuery(parent=TENANT, page_token="not a token"), InvalidPageToken),
        (AuditQuery(parent=TENANT, page_token=base64.urlsafe_b64encode(b'{"a": 1}').decode()), InvalidPageToken),
        (
            AuditQuery(parent=TENANT, page_token=base64.urlsafe_b64encode(b'["x", 1, 2, null]').decode()),
            InvalidPageToken,
        ),
    ],
)
async def test_audit_requests_the_contract_refuses(
    queries: Queries, reader: MemoryReader, query: AuditQuery, kind: type[SkmError]
) -> None:
    error = await refusal(queries.query_audit_events(query), kind)
    assert error.domain == "analytics.skm"
    assert error.code.name == "INVALID_ARGUMENT"
    assert reader.audit_reads == []


async def test_an_unknown_event_type_is_named_in_the_metadata(queries: Queries) -> None:
    query = AuditQuery(parent=TENANT, event_types=("tool_completed", "tool_done"))
    error = await refusal(queries.query_audit_events(query), UnknownEventType)
    assert (error.reason, error.metadata) == ("UNKNOWN_EVENT_TYPE", {"event_type": "tool_done"})


@pytest.mark.parametrize(("asked", "limit"), [(0, 101), (-3, 101), (1, 2), (1000, 1001), (5000, 1001)])
async def test_page_size_defaults_to_100_and_stops_at_1000(
    queries: Queries, reader: MemoryReader, asked: int, limit: int
) -> None:
    await queries.query_audit_events(AuditQuery(parent=TENANT, page_size=asked))
    # One more than the page is read, to know whether there is a next page.
    assert reader.audit_reads[0].limit == limit


async def test_pages_follow_each_other_without_gaps_or_repeats(queries: Queries, reader: MemoryReader) -> None:
    # Two events share a time: (time, id) orders them.
    wanted = [reader.add(t, i) for t, i in [(1, "a"), (2, "c"), (2, "d"), (3, "b"), (4, "a")]]
    reader.add(2, "b", tenant="tenants/t2")
    got: list[bytes] = []
    token = ""
    for _ in range(5):
        page = await queries.query_audit_events(AuditQuery(parent=TENANT, page_size=2, page_token=token))
        got += page.events
        token = page.next_page_token
        if not token:
            break
    assert got == wanted
    assert len(reader.audit_reads) == 3


async def test_a_token_serves_only_the_filter_it_was_issued_for(queries: Queries, reader: MemoryReader) -> None:
    for n in range(3):
        reader.add(n, f"e{n}", session=f"{TENANT}/sessions/s", type_="turn_started")
    issued_for = AuditQuery(
        parent=TENANT,
        session=f"{TENANT}/sessions/s",
        event_types=("turn_started", "turn_completed"),
        start_time=T0,
        end_time=T0 + MINUTE,
        page_size=1,
    )
    token = (await queries.query_audit_events(issued_for)).next_page_token
    assert token
    # The same filter (event types in another order, another page size) takes it.
    same = replace(issued_for, event_types=("turn_completed", "turn_started"), page_size=5, page_token=token)
    assert len((await queries.query_audit_events(same)).events) == 2
    for other in (
        replace(issued_for, parent="tenants/t2", session="tenants/t2/sessions/s"),
        replace(issued_for, session=f"{TENANT}/sessions/s2"),
        replace(issued_for, session=""),
        replace(issued_for, event_types=("turn_started",)),
        replace(issued_for, event_types=()),
        replace(issued_for, start_time=T0 - timedelta(microseconds=1)),
        replace(issued_for, start_time=None),
        replace(issued_for, end_time=T0 + 2 * MINUTE),
        replace(issued_for, end_time=None),
    ):
        error = await refusal(queries.query_audit_events(replace(other, page_token=token)), InvalidPageToken)
        assert error.reason == "INVALID_PAGE_TOKEN"


async def test_a_forged_token_is_refused(queries: Queries, reader: MemoryReader) -> None:
    reader.add(1, "a")
    reader.add(2, "b")
    token = (await queries.query_audit_events(AuditQuery(parent=TENANT, page_size=1))).next_page_token
    scope, micros, event_id, end = json.loads(base64.urlsafe_b64decode(token))
    forged = base64.urlsafe_b64encode(json.dumps([scope, str(micros), event_id, end]).encode()).decode()
    await refusal(queries.query_audit_events(AuditQuery(parent=TENANT, page_token=forged)), InvalidPageToken)
    huge = base64.urlsafe_b64encode(json.dumps([scope, 10**30, event_id, end]).encode()).decode()
    await refusal(queries.query_audit_events(AuditQuery(parent=TENANT, page_token=huge)), InvalidPageToken)


async def test_an_unset_end_stays_the_first_pages_now(queries: Queries, reader: MemoryReader, clock: Clock) -> None:
    clock.now = T0 + timedelta(seconds=10)
    first, second = reader.add(1, "a"), reader.add(2, "b")
    page = await queries.query_audit_events(AuditQuery(parent=TENANT, page_size=1))
    assert page.events == (first,)
    # Time passes and a newer event arrives: paging still ends where it began.
    clock.now = T0 + timedelta(minutes=5)
    reader.add(60, "c")
    page = await queries.query_audit_events(AuditQuery(parent=TENANT, page_size=1, page_token=page.next_page_token))
    assert (page.events, page.next_page_token) == ((second,), "")
    assert reader.audit_reads[-1].end == T0 + timedelta(seconds=10)
    # A new listing sees it.
    assert len((await queries.query_audit_events(AuditQuery(parent=TENANT))).events) == 3


async def test_the_fallback_rate_over_the_memory_warehouse_counts_only_recovered_failures() -> None:
    # Turn 1: PRIMARY tier 0 failed and tier 1 answered; turn 2: a PRIMARY failure nothing
    # recovered and a UTILITY call that answered at a later tier (another role: no recovery).
    warehouse = MemoryWarehouse()
    calls = [
        ("t1", 0, "TIMEOUT", model_pb2.MODEL_ROLE_PRIMARY),
        ("t1", 1, "", model_pb2.MODEL_ROLE_PRIMARY),
        ("t2", 0, "TIMEOUT", model_pb2.MODEL_ROLE_PRIMARY),
        ("t2", 1, "", model_pb2.MODEL_ROLE_UTILITY),
    ]
    for offset, (turn, tier, failure, role) in enumerate(calls):
        at = T0 + timedelta(seconds=offset)
        value = analytics_events.model_call(TENANT, at=at, turn=turn, tier=tier, failure=failure, role=role)
        delivery = decode(Position("audit", 0, offset), None, value)
        assert isinstance(delivery, Delivery)
        await warehouse.write(Table.MODEL_CALLS, [(delivery.position, r) for r in delivery.rows[Table.MODEL_CALLS]])
    queries = Queries(warehouse, now=Clock())
    asked = (MetricQuery(Metric.MODEL_FALLBACK_RATE, Aggregation.MEAN),)
    (every,) = await queries.query_metrics(metrics_query(queries=asked, bucket_width=timedelta(hours=1)))
    assert [(p.value, p.sample_count) for p in every.points] == [(0.25, 4)]
    (primary,) = await queries.query_metrics(
        metrics_query(queries=asked, bucket_width=timedelta(hours=1), roles=(ModelRole.PRIMARY,))
    )
    assert [(round(p.value, 9), p.sample_count) for p in primary.points] == [(round(1 / 3, 9), 3)]
