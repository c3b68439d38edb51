"""svc_analytics's AnalyticsService through its generated stub, over the real warehouse
(chdb, in this process): rows are written as ingestion writes them, decoded from real
serialized skm.events.v1 events, and every number asserted is worked out by hand from the
events written.

Percentiles are ClickHouse's quantileExact: of the n sorted samples, the one at index
floor(n * level) (P50 of [1, 2, 3, 4] is 3).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from skm.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, metrics_pb2
from skm.audio.v1 import audio_metrics_pb2
from skm.conversation.v1 import turn_pb2
from skm.events.v1 import event_pb2
from skm.policy.v1 import access_pb2, blocked_action_pb2
from skm.profiles.v1 import model_score_pb2
from skm.type.v1 import model_pb2, money_pb2, policy_decision_pb2
from skm_runtime.contract import services_of
from skm_runtime.server import ServiceSpec, signed_channel
from skm_runtime.status import error_info_of
from svc_analytics import api
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.events import decode
from svc_analytics.adapters.queries import ClickHouseReader
from svc_analytics.core.queries import Queries
from svc_analytics.model import Delivery, Position, Row, Table
from tests.support.runtime import serving

M = metrics_pb2
if TYPE_CHECKING:
    Stub = analytics_service_pb2_grpc.AnalyticsServiceAsyncStub

# The events' clock, and the service's: "now" is an hour after T0.
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
HOUR = 3600
PRIMARY = model_pb2.MODEL_ROLE_PRIMARY
TurnState = turn_pb2.Turn.State
ActionState = blocked_action_pb2.BlockedAction.State
Verdict = policy_decision_pb2.Verdict

_offsets = itertools.count()


# -- events -----------------------------------------------------------------------------------------


def _stamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def event(tenant: str, offset_s: float, *, session: str = "", **payload: Any) -> event_pb2.Event:
    """An event of `tenant` at T0 + offset_s, with one payload field set."""
    message = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        tenant=tenant,
        session=session,
        source="conversation",
        event_time=_stamp(T0 + timedelta(seconds=offset_s)),
    )
    ((name, value),) = payload.items()
    getattr(message, name).CopyFrom(value)
    return message


def turn_started(persona: str) -> dict[str, Any]:
    return {
        "turn_started": event_pb2.TurnStarted(
            turn=turn_pb2.Turn(name="t", state=TurnState.STATE_RUNNING), persona=persona
        )
    }


def turn_completed(persona: str, seconds: float, state: TurnState.ValueType) -> dict[str, Any]:
    turn = turn_pb2.Turn(name="t", state=state)
    return {"turn_completed": event_pb2.TurnCompleted(turn=turn, persona=persona, duration=_seconds(seconds))}


def model_call(
    persona: str,
    model: str,
    *,
    role: model_pb2.ModelRole.ValueType = PRIMARY,
    tokens: tuple[int, int] = (0, 0),
    ttft: float | None = None,
    tps: float = 0.0,
    cost: tuple[str, int, int] = ("", 0, 0),
    failure: str = "",
    turn: str = "",
    tier: int = 0,
) -> dict[str, Any]:
    currency, units, nanos = cost
    usage = model_pb2.ModelUsage(
        model=model,
        role=role,
        tier=tier,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        duration=_seconds(2.0),
        tokens_per_second=tps,
        cost=money_pb2.Money(currency_code=currency, units=units, nanos=nanos),
    )
    if ttft is not None:
        usage.time_to_first_token.CopyFrom(_seconds(ttft))
    return {
        "model_call_completed": event_pb2.ModelCallCompleted(
            turn=turn, persona=persona, usage=usage, failure_reason=failure
        )
    }


def policy_decided(subject: str, verdict: Verdict.ValueType) -> dict[str, Any]:
    check = access_pb2.AccessCheck(subject=subject, relation="can_execute", object="tool:tenants/x/tools/y")
    return {
        "policy_decided": event_pb2.PolicyDecided(
            check=check, decision=policy_decision_pb2.PolicyDecision(verdict=verdict)
        )
    }


def action_resolved(
    persona: str,
    waited_s: float,
    state: ActionState.ValueType,
    previous: ActionState.ValueType = ActionState.STATE_PENDING,
) -> dict[str, Any]:
    action = blocked_action_pb2.BlockedAction(
        name="tenants/x/blockedActions/a",
        check=access_pb2.AccessCheck(subject=f"persona:{persona}", relation="can_execute", object="tool:x"),
        state=state,
        create_time=_stamp(T0),
        resolve_time=_stamp(T0 + timedelta(seconds=waited_s)),
    )
    return {"action_resolved": event_pb2.ActionResolved(blocked_action=action, previous_state=previous)}


def action_blocked(persona: str) -> dict[str, Any]:
    action = blocked_action_pb2.BlockedAction(
        check=access_pb2.AccessCheck(subject=f"persona:{persona}"),
        state=ActionState.STATE_PENDING,
        create_time=_stamp(T0),
    )
    return {"action_blocked": event_pb2.ActionBlocked(blocked_action=action)}


def audio_measured(
    persona: str, *, wer: float | None = None, mos: float | None = None, response_s: float | None = None
) -> dict[str, Any]:
    metrics = audio_metrics_pb2.QualityMetrics()
    if wer is not None:
        metrics.word_error_rate = wer
    if mos is not None:
        metrics.mean_opinion_score = mos
    if response_s is not None:
        metrics.response_latency.CopyFrom(_seconds(response_s))
    return {"audio_quality_measured": event_pb2.AudioQualityMeasured(persona=persona, metrics=metrics)}


def models_scored(**scores: float) -> dict[str, Any]:
    listed = [model_score_pb2.ModelScore(model=f"models/{m}", role=PRIMARY, score=s) for m, s in scores.items()]
    return {"model_profile_scored": event_pb2.ModelProfileScored(role=PRIMARY, scores=listed)}


async def ingest(warehouse: ClickHouseWarehouse, *events: event_pb2.Event) -> None:
    """Write the events' rows as ingestion does: decoded from the serialized events, the
    typed tables first and the events table last."""
    rows: dict[Table, list[tuple[Position, Row]]] = {}
    for message in events:
        delivery = decode(Position("audit", 0, next(_offsets)), message.tenant.encode(), message.SerializeToString())
        assert isinstance(delivery, Delivery), delivery
        for table, table_rows in delivery.rows.items():
            rows.setdefault(table, []).extend((delivery.position, row) for row in table_rows)
    for table in Table:
        if rows.get(table):
            await warehouse.write(table, rows[table])


# -- the service ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def warehouse(chdb_warehouse_url: str) -> AsyncIterator[ClickHouseWarehouse]:
    opened = await ClickHouseWarehouse.open(chdb_warehouse_url)
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
async def stub(warehouse: ClickHouseWarehouse) -> AsyncIterator[Stub]:
    queries = Queries(ClickHouseReader(warehouse), now=lambda: NOW)
    spec = ServiceSpec(
        name="analytics",
        service_names=services_of("analytics"),
        register=lambda server: api.register(server, queries),
    )
    async with serving(spec, record_spans=False) as served, signed_channel(served.target) as channel:
        yield analytics_service_pb2_grpc.AnalyticsServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    return f"tenants/q{uuid.uuid4().hex[:8]}"


def persona(tenant: str, name: str) -> str:
    return f"{tenant}/personas/{name}"


Query = tuple[M.Metric.ValueType, M.Aggregation.ValueType]


async def query_metrics(
    stub: Stub,
    tenant: str,
    *queries: Query,
    start_s: float = 0,
    end_s: float | None = HOUR,
    width_s: int = HOUR,
    **fields: Any,
) -> list[M.TimeSeries]:
    request = analytics_service_pb2.QueryMetricsRequest(
        parent=tenant,
        queries=[analytics_service_pb2.MetricQuery(metric=m, aggregation=a) for m, a in queries],
        start_time=_stamp(T0 + timedelta(seconds=start_s)),
        bucket_width=duration_pb2.Duration(seconds=width_s),
        **fields,
    )
    if end_s is not None:
        request.end_time.CopyFrom(_stamp(T0 + timedelta(seconds=end_s)))
    reply = await stub.QueryMetrics(request, timeout=30)
    return list(reply.series)


def points(series: M.TimeSeries) -> list[tuple[datetime, float, int]]:
    """(start, value, sample count) of each point; values to 9 decimals, so that a mean
    compares equal to the number worked out by hand."""
    return [(p.start_time.ToDatetime(tzinfo=UTC), round(p.value, 9), p.sample_count) for p in series.points]


def value(series: M.TimeSeries) -> float:
    """The value of a series of one point (to 9 decimals)."""
    (point,) = series.points
    return round(point.value, 9)


def groups(series: Sequence[M.TimeSeries]) -> list[tuple[str, str, str]]:
    return [(s.persona, s.model, s.unit) for s in series]


# -- QueryMetrics -----------------------------------------------------------------------------------


async def test_turn_metrics_in_buckets_aligned_to_the_start(
    stub: Stub, warehouse: ClickHouseWarehouse, tenant: str
) -> None:
    p1, p2 = persona(tenant, "p1"), persona(tenant, "p2")
    start = 17.0  # buckets start at T0 + 17 s, not on a round minute
    end = start + 1200
    await ingest(
        warehouse,
        event(tenant, start - 0.000001, **turn_started(p1)),  # before the range
        event(tenant, start, **turn_started(p1)),  # bucket 0
        event(tenant, start + 299.999999, **turn_started(p1)),  # bucket 0
        event(tenant, start + 300, **turn_started(p2)),  # bucket 1
        event(tenant, start + 1000, **turn_started(p1)),  # bucket 3 (bucket 2 has none)
        event(tenant, end, **turn_started(p1)),  # the end is exclusive
        event(tenant, start + 10, **turn_completed(p1, 1.0, TurnState.STATE_COMPLETED)),
        event(tenant, start + 20, **turn_completed(p1, 2.0, TurnState.STATE_REFUSED)),
        event(tenant, start + 30, **turn_completed(p2, 3.0, TurnState.STATE_COMPLETED)),
        event(tenant, start + 40, **turn_completed(p2, 4.0, TurnState.STATE_FAILED)),
        event(tenant, start + 50, **turn_completed(p1, 10.0, TurnState.STATE_REFUSED)),
        event(tenant, start + 400, **turn_completed(p1, 0.5, TurnState.STATE_COMPLETED)),
    )
    series = await query_metrics(
        stub,
        tenant,
        (M.METRIC_TURNS, M.AGGREGATION_COUNT),
        (M.METRIC_TURN_LATENCY, M.AGGREGATION_MEAN),
        (M.METRIC_TURN_LATENCY, M.AGGREGATION_P50),
        (M.METRIC_TURN_LATENCY, M.AGGREGATION_P95),
        (M.METRIC_TURN_LATENCY, M.AGGREGATION_P99),
        (M.METRIC_REFUSAL_RATE, M.AGGREGATION_MEAN),
        start_s=start,
        end_s=end,
        width_s=300,
    )
    b0, b1, b3 = (T0 + timedelta(seconds=start + n * 300) for n in (0, 1, 3))
    turns, mean, p50, p95, p99, refusals = series
    assert (turns.metric, turns.aggregation, turns.unit, turns.persona, turns.model) == (
        M.METRIC_TURNS,
        M.AGGREGATION_COUNT,
        "1",
        "",
        "",
    )
    assert points(turns) == [(b0, 2.0, 2), (b1, 1.0, 1), (b3, 1.0, 1)]
    # Bucket 0's latencies: 1, 2, 3, 4, 10 (s); bucket 1's: 0.5.
    assert [(s.aggregation, s.unit) for s in (mean, p50, p95, p99)] == [
        (M.AGGREGATION_MEAN, "s"),
        (M.AGGREGATION_P50, "s"),
        (M.AGGREGATION_P95, "s"),
        (M.AGGREGATION_P99, "s"),
    ]
    assert points(mean) == [(b0, 4.0, 5), (b1, 0.5, 1)]
    assert points(p50) == [(b0, 3.0, 5), (b1, 0.5, 1)]
    assert points(p95) == [(b0, 10.0, 5), (b1, 0.5, 1)]
    assert points(p99) == [(b0, 10.0, 5), (b1, 0.5, 1)]
    # Two of bucket 0's five ended turns were refused; bucket 1's one was not.
    assert (refusals.unit, points(refusals)) == ("1", [(b0, 0.4, 5), (b1, 0.0, 1)])


async def test_persona_filter_and_grouping(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    p1, p2, p3 = persona(tenant, "p1"), persona(tenant, "p2"), persona(tenant, "p3")
    await ingest(
        warehouse,
        event(tenant, 10, **turn_started(p1)),
        event(tenant, 20, **turn_started(p1)),
        event(tenant, 30, **turn_started(p2)),
        event(tenant, 40, **turn_started(p3)),
        event(tenant, 50, **turn_started("")),
    )
    turns = (M.METRIC_TURNS, M.AGGREGATION_COUNT)
    assert [value(s) for s in await query_metrics(stub, tenant, turns)] == [5.0]
    by_persona = await query_metrics(stub, tenant, turns, group_by=[M.DIMENSION_PERSONA])
    assert [(s.persona, s.model, value(s)) for s in by_persona] == [
        ("", "", 1.0),
        (p1, "", 2.0),
        (p2, "", 1.0),
        (p3, "", 1.0),
    ]
    only = await query_metrics(stub, tenant, turns, personas=[p2, p1])
    assert [(s.persona, value(s)) for s in only] == [("", 3.0)]
    split = await query_metrics(stub, tenant, turns, personas=[p2, p1], group_by=[M.DIMENSION_PERSONA])
    assert [(s.persona, value(s)) for s in split] == [(p1, 2.0), (p2, 1.0)]
    # Turns are tied to no model: the model filter is ignored, grouping by model gives one series.
    by_model = await query_metrics(stub, tenant, turns, models=["models/m1"], group_by=[M.DIMENSION_MODEL])
    assert [(s.persona, s.model, value(s)) for s in by_model] == [("", "", 5.0)]
    assert await query_metrics(stub, tenant, turns, personas=[persona(tenant, "nobody")]) == []


async def test_model_call_metrics(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    p1, p2 = persona(tenant, "p1"), persona(tenant, "p2")
    utility, embedding = model_pb2.MODEL_ROLE_UTILITY, model_pb2.MODEL_ROLE_EMBEDDING
    await ingest(
        warehouse,
        event(
            tenant, 10, **model_call(p1, "models/m1", tokens=(100, 50), ttft=0.2, tps=40, cost=("USD", 0, 500_000_000))
        ),
        event(
            tenant,
            20,
            **model_call(
                p1, "models/m1", tokens=(200, 100), ttft=0.4, tps=60, cost=("USD", 1, 250_000_000), failure="TIMEOUT"
            ),
        ),
        # Not streamed: no time to first token; no speed.
        event(tenant, 30, **model_call(p1, "models/m2", tokens=(10, 0), cost=("EUR", 2, 0), failure="UNAVAILABLE")),
        # Not PRIMARY: no time to first token counted; unpriced: no cost counted.
        event(tenant, 40, **model_call(p1, "models/m2", role=utility, tokens=(30, 20), ttft=0.9, tps=100)),
        event(tenant, 50, **model_call(p2, "models/m1", role=embedding, tokens=(40, 0), cost=("USD", 0, 250_000_000))),
        event(tenant, 60, **turn_started(p1)),
    )
    ttft, tps_mean, tps_p50, tokens, eur, usd, failures = await query_metrics(
        stub,
        tenant,
        (M.METRIC_TIME_TO_FIRST_TOKEN, M.AGGREGATION_MEAN),
        (M.METRIC_TOKENS_PER_SECOND, M.AGGREGATION_MEAN),
        (M.METRIC_TOKENS_PER_SECOND, M.AGGREGATION_P50),
        (M.METRIC_TOKENS, M.AGGREGATION_SUM),
        (M.METRIC_MODEL_COST, M.AGGREGATION_SUM),
        (M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN),
    )
    # PRIMARY calls that streamed: 0.2 and 0.4 s.
    assert (ttft.unit, points(ttft)) == ("s", [(T0, 0.3, 2)])
    # Calls with a speed: 40, 60 and 100 tokens/s.
    assert (tps_mean.unit, points(tps_mean)) == ("tokens/s", [(T0, round(200 / 3, 9), 3)])
    assert points(tps_p50) == [(T0, 60.0, 3)]
    assert (tokens.unit, points(tokens)) == ("tokens", [(T0, 550.0, 5)])
    # One series per currency: EUR 2.00 (one call), USD 0.50 + 1.25 + 0.25 (three calls).
    assert (eur.metric, eur.unit, points(eur)) == (M.METRIC_MODEL_COST, "EUR", [(T0, 2.0, 1)])
    assert (usd.metric, usd.unit, points(usd)) == (M.METRIC_MODEL_COST, "USD", [(T0, 2.0, 3)])
    # Two of five calls failed.
    assert (failures.unit, points(failures)) == ("1", [(T0, 0.4, 5)])

    by_model = await query_metrics(stub, tenant, (M.METRIC_TOKENS, M.AGGREGATION_SUM), group_by=[M.DIMENSION_MODEL])
    assert [(s.model, s.persona, points(s)) for s in by_model] == [
        ("models/m1", "", [(T0, 490.0, 3)]),
        ("models/m2", "", [(T0, 60.0, 2)]),
    ]
    # The model filter narrows the metrics of model calls, and only those.
    narrowed = await query_metrics(
        stub,
        tenant,
        (M.METRIC_TOKENS, M.AGGREGATION_SUM),
        (M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_TURNS, M.AGGREGATION_COUNT),
        models=["models/m2"],
    )
    assert [(s.metric, points(s)) for s in narrowed] == [
        (M.METRIC_TOKENS, [(T0, 60.0, 2)]),
        (M.METRIC_MODEL_FAILURE_RATE, [(T0, 0.5, 2)]),
        (M.METRIC_TURNS, [(T0, 1.0, 1)]),
    ]
    assert [
        value(s) for s in await query_metrics(stub, tenant, (M.METRIC_TOKENS, M.AGGREGATION_SUM), personas=[p2])
    ] == [40.0]
    split = await query_metrics(
        stub, tenant, (M.METRIC_MODEL_COST, M.AGGREGATION_SUM), group_by=[M.DIMENSION_PERSONA, M.DIMENSION_MODEL]
    )
    assert [(*g, value(s)) for g, s in zip(groups(split), split, strict=True)] == [
        (p1, "models/m1", "USD", 1.75),
        (p1, "models/m2", "EUR", 2.0),
        (p2, "models/m1", "USD", 0.25),
    ]


async def test_model_fallback_rate_and_the_role_filter(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    p = persona(tenant, "p")
    utility, failed = model_pb2.MODEL_ROLE_UTILITY, "TIMEOUT"
    other = f"{tenant}b"
    await ingest(
        warehouse,
        # Turn a: tier 0 failed, tier 1 (another model) succeeded: m1's call fell back.
        event(tenant, 10, **model_call(p, "models/m1", turn="a", failure=failed)),
        event(tenant, 11, **model_call(p, "models/m2", turn="a", tier=1)),
        # Turn b: a failure nothing recovered (here; another tenant's turn b, and a call of
        # this tenant after the range, never count).
        event(tenant, 20, **model_call(p, "models/m1", turn="b", failure=failed)),
        event(other, 21, **model_call(p, "models/m2", turn="b", tier=1)),
        event(tenant, HOUR + 1, **model_call(p, "models/m2", turn="b", tier=1)),
        # Turn c: a later tier of another role succeeded: no fallback of the PRIMARY call.
        event(tenant, 30, **model_call(p, "models/m1", turn="c", failure=failed)),
        event(tenant, 31, **model_call(p, "models/m2", turn="c", tier=1, role=utility)),
        # Turn d: a UTILITY call fell back.
        event(tenant, 40, **model_call(p, "models/m1", turn="d", role=utility, failure=failed)),
        event(tenant, 41, **model_call(p, "models/m2", turn="d", role=utility, tier=1)),
        # Outside any turn: no call recovers another.
        event(tenant, 50, **model_call(p, "models/m1", failure=failed)),
        event(tenant, 51, **model_call(p, "models/m2", tier=1)),
        event(tenant, 60, **turn_started(p)),
    )
    fallbacks, failures = await query_metrics(
        stub,
        tenant,
        (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN),
    )
    # Nine calls, two fell back (a's and d's first), five failed.
    assert (fallbacks.unit, points(fallbacks)) == ("1", [(T0, round(2 / 9, 9), 9)])
    assert points(failures) == [(T0, round(5 / 9, 9), 9)]

    # The role filter keeps the PRIMARY calls (a, b, c's first, the two outside turns) and
    # leaves the turns alone.
    primary = await query_metrics(
        stub,
        tenant,
        (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_TOKENS, M.AGGREGATION_SUM),
        (M.METRIC_TURNS, M.AGGREGATION_COUNT),
        roles=[PRIMARY],
    )
    assert [(s.metric, points(s)) for s in primary] == [
        (M.METRIC_MODEL_FALLBACK_RATE, [(T0, round(1 / 6, 9), 6)]),
        (M.METRIC_MODEL_FAILURE_RATE, [(T0, round(4 / 6, 9), 6)]),
        (M.METRIC_TOKENS, [(T0, 0.0, 6)]),
        (M.METRIC_TURNS, [(T0, 1.0, 1)]),
    ]
    by_model = await query_metrics(
        stub,
        tenant,
        (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN),
        roles=[PRIMARY],
        group_by=[M.DIMENSION_MODEL],
    )
    assert [(s.model, points(s)) for s in by_model] == [
        ("models/m1", [(T0, 0.25, 4)]),
        ("models/m2", [(T0, 0.0, 2)]),
    ]
    utility_only = await query_metrics(
        stub, tenant, (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN), roles=[utility]
    )
    assert [points(s) for s in utility_only] == [[(T0, round(1 / 3, 9), 3)]]
    # The model filter narrows the calls that fell back, not the tiers that recovered them.
    m1 = await query_metrics(stub, tenant, (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN), models=["models/m1"])
    assert [points(s) for s in m1] == [[(T0, 0.4, 5)]]


async def test_policy_and_blocked_action_metrics(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    p1, p2 = persona(tenant, "p1"), persona(tenant, "p2")
    await ingest(
        warehouse,
        event(tenant, 1, **policy_decided(f"persona:{p1}", Verdict.VERDICT_ALLOW)),
        event(tenant, 2, **policy_decided(f"persona:{p1}", Verdict.VERDICT_DENY)),
        event(tenant, 3, **policy_decided(f"persona:{p1}", Verdict.VERDICT_REQUIRES_APPROVAL)),
        event(tenant, 4, **policy_decided(f"persona:{p2}", Verdict.VERDICT_DENY)),
        event(tenant, 5, **policy_decided(f"user:{tenant}/users/u", Verdict.VERDICT_ALLOW)),
        # Held, then out of PENDING after 30 s, 90 s and 600 s (the last one expired).
        event(tenant, 6, **action_blocked(p1)),
        event(tenant, 7, **action_resolved(p1, 30, ActionState.STATE_APPROVED)),
        event(tenant, 8, **action_resolved(p2, 90, ActionState.STATE_REJECTED)),
        event(tenant, 9, **action_resolved(p1, 600, ActionState.STATE_EXPIRED)),
        # Changes after leaving PENDING wait for nobody, and this expiry was no undecided one.
        event(tenant, 10, **action_resolved(p1, 700, ActionState.STATE_EXECUTING, ActionState.STATE_APPROVED)),
        event(tenant, 11, **action_resolved(p1, 800, ActionState.STATE_EXPIRED, ActionState.STATE_APPROVED)),
    )
    deny, approval, wait_mean, wait_p50, wait_p95, wait_p99, expired = await query_metrics(
        stub,
        tenant,
        (M.METRIC_POLICY_DENY_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_POLICY_APPROVAL_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_APPROVAL_WAIT, M.AGGREGATION_MEAN),
        (M.METRIC_APPROVAL_WAIT, M.AGGREGATION_P50),
        (M.METRIC_APPROVAL_WAIT, M.AGGREGATION_P95),
        (M.METRIC_APPROVAL_WAIT, M.AGGREGATION_P99),
        (M.METRIC_BLOCKED_ACTIONS_EXPIRED, M.AGGREGATION_COUNT),
    )
    assert (deny.unit, points(deny)) == ("1", [(T0, 0.4, 5)])
    assert (approval.unit, points(approval)) == ("1", [(T0, 0.2, 5)])
    assert (wait_mean.unit, points(wait_mean)) == ("s", [(T0, 240.0, 3)])
    assert [value(s) for s in (wait_p50, wait_p95, wait_p99)] == [90.0, 600.0, 600.0]
    assert (expired.unit, points(expired)) == ("1", [(T0, 1.0, 1)])
    by_persona = await query_metrics(
        stub, tenant, (M.METRIC_POLICY_DENY_RATE, M.AGGREGATION_MEAN), group_by=[M.DIMENSION_PERSONA]
    )
    # The user's decision has no persona.
    assert [(s.persona, value(s)) for s in by_persona] == [("", 0.0), (p1, round(1 / 3, 9)), (p2, 1.0)]
    waits = await query_metrics(stub, tenant, (M.METRIC_APPROVAL_WAIT, M.AGGREGATION_MEAN), personas=[p2])
    assert [points(s) for s in waits] == [[(T0, 90.0, 1)]]


async def test_audio_metrics(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    p1 = persona(tenant, "p1")
    # Response latencies of 1 to 25 s; WER and MOS measured on a few exchanges only.
    wers = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}
    mos = {4: 3.0, 5: 4.5, 6: 4.0, 7: 2.0}
    await ingest(
        warehouse,
        *(
            event(tenant, n, **audio_measured(p1, wer=wers.get(n), mos=mos.get(n), response_s=float(n + 1)))
            for n in range(25)
        ),
        event(tenant, 30, **audio_measured(p1)),  # nothing measured
    )
    latency = [
        value(s)
        for s in await query_metrics(
            stub,
            tenant,
            (M.METRIC_VOICE_RESPONSE_LATENCY, M.AGGREGATION_MEAN),
            (M.METRIC_VOICE_RESPONSE_LATENCY, M.AGGREGATION_P50),
            (M.METRIC_VOICE_RESPONSE_LATENCY, M.AGGREGATION_P95),
            (M.METRIC_VOICE_RESPONSE_LATENCY, M.AGGREGATION_P99),
        )
    ]
    # 25 samples: P50 is the 13th (index 12), P95 the 24th (index 23), P99 the 25th.
    assert latency == [13.0, 13.0, 24.0, 25.0]
    wer_mean, wer_p50, wer_p95, mos_mean, mos_p50 = await query_metrics(
        stub,
        tenant,
        (M.METRIC_WORD_ERROR_RATE, M.AGGREGATION_MEAN),
        (M.METRIC_WORD_ERROR_RATE, M.AGGREGATION_P50),
        (M.METRIC_WORD_ERROR_RATE, M.AGGREGATION_P95),
        (M.METRIC_MEAN_OPINION_SCORE, M.AGGREGATION_MEAN),
        (M.METRIC_MEAN_OPINION_SCORE, M.AGGREGATION_P50),
    )
    assert (wer_mean.unit, points(wer_mean)) == ("1", [(T0, 0.25, 4)])
    assert [value(wer_p50), value(wer_p95)] == [0.3, 0.4]
    assert (mos_mean.unit, points(mos_mean)) == ("MOS", [(T0, 3.375, 4)])
    assert value(mos_p50) == 4.0


async def test_model_scores_have_no_persona(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    await ingest(
        warehouse,
        event(tenant, 10, **models_scored(m1=0.8, m2=0.6)),
        event(tenant, 20, **models_scored(m1=0.6)),
        event(tenant, HOUR + 10, **models_scored(m1=0.1)),  # next bucket
    )
    score = (M.METRIC_MODEL_SCORE, M.AGGREGATION_MEAN)
    (overall,) = await query_metrics(stub, tenant, score, end_s=2 * HOUR)
    assert (overall.unit, points(overall)) == (
        "1",
        [(T0, round(2 / 3, 9), 3), (T0 + timedelta(hours=1), 0.1, 1)],
    )
    by_model = await query_metrics(stub, tenant, score, group_by=[M.DIMENSION_MODEL])
    assert [(s.model, value(s)) for s in by_model] == [("models/m1", 0.7), ("models/m2", 0.6)]
    (m2,) = await query_metrics(stub, tenant, score, models=["models/m2"])
    assert value(m2) == 0.6
    # Scores are the tenant's, of no persona: a persona filter leaves none, and grouping by
    # persona gives them one series whose persona is "".
    assert await query_metrics(stub, tenant, score, personas=[persona(tenant, "p1")]) == []
    (grouped,) = await query_metrics(stub, tenant, score, group_by=[M.DIMENSION_PERSONA])
    assert (grouped.persona, value(grouped)) == ("", round(2 / 3, 9))


async def test_an_unset_end_is_now(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    await ingest(
        warehouse,
        event(tenant, HOUR - 1, **turn_started("")),
        event(tenant, HOUR, **turn_started("")),  # at the service's "now": not yet
    )
    (turns,) = await query_metrics(stub, tenant, (M.METRIC_TURNS, M.AGGREGATION_COUNT), end_s=None, width_s=600)
    assert points(turns) == [(T0 + timedelta(seconds=3000), 1.0, 1)]


# Every metric with one aggregation it accepts, and one sample's value (for tenant A) or two
# samples' (for tenant B).
EVERY_METRIC: list[tuple[Query, float, float]] = [
    ((M.METRIC_TURNS, M.AGGREGATION_COUNT), 1.0, 2.0),
    ((M.METRIC_TURN_LATENCY, M.AGGREGATION_MEAN), 2.0, 7.0),
    ((M.METRIC_TIME_TO_FIRST_TOKEN, M.AGGREGATION_MEAN), 0.25, 0.75),
    ((M.METRIC_TOKENS_PER_SECOND, M.AGGREGATION_P50), 10.0, 99.0),
    ((M.METRIC_TOKENS, M.AGGREGATION_SUM), 3.0, 600.0),
    ((M.METRIC_MODEL_COST, M.AGGREGATION_SUM), 1.0, 18.0),
    ((M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN), 0.0, 1.0),
    ((M.METRIC_REFUSAL_RATE, M.AGGREGATION_MEAN), 1.0, 0.0),
    ((M.METRIC_POLICY_DENY_RATE, M.AGGREGATION_MEAN), 1.0, 0.0),
    ((M.METRIC_POLICY_APPROVAL_RATE, M.AGGREGATION_MEAN), 0.0, 1.0),
    ((M.METRIC_APPROVAL_WAIT, M.AGGREGATION_P99), 5.0, 50.0),
    ((M.METRIC_BLOCKED_ACTIONS_EXPIRED, M.AGGREGATION_COUNT), 1.0, 2.0),
    ((M.METRIC_WORD_ERROR_RATE, M.AGGREGATION_P95), 0.125, 0.875),
    ((M.METRIC_MEAN_OPINION_SCORE, M.AGGREGATION_P50), 4.0, 1.0),
    ((M.METRIC_VOICE_RESPONSE_LATENCY, M.AGGREGATION_MEAN), 0.25, 3.0),
    ((M.METRIC_MODEL_SCORE, M.AGGREGATION_MEAN), 0.875, 0.125),
    # A's call of turn "t" succeeded at tier 1 and B's of the same turn failed at tier 0:
    # B's would read as a fallback if A's calls recovered B's.
    ((M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN), 0.0, 0.0),
]


def _every_source(tenant: str, p: str, a: bool) -> list[event_pb2.Event]:
    """One event of each kind the metrics read, with tenant A's values or tenant B's."""
    done = TurnState.STATE_REFUSED if a else TurnState.STATE_COMPLETED
    verdict = Verdict.VERDICT_DENY if a else Verdict.VERDICT_REQUIRES_APPROVAL
    call = model_call(
        p,
        "models/m",
        tokens=(1, 2) if a else (100, 200),
        ttft=0.25 if a else 0.75,
        tps=10 if a else 99,
        cost=("USD", 1, 0) if a else ("USD", 9, 0),
        failure="" if a else "TIMEOUT",
        turn="t",
        tier=1 if a else 0,
    )
    return [
        event(tenant, 1, **turn_started(p)),
        event(tenant, 2, **turn_completed(p, 2.0 if a else 7.0, done)),
        event(tenant, 3, **call),
        event(tenant, 4, **policy_decided(f"persona:{p}", verdict)),
        event(tenant, 5, **action_resolved(p, 5 if a else 50, ActionState.STATE_EXPIRED)),
        event(
            tenant,
            6,
            **audio_measured(p, wer=0.125 if a else 0.875, mos=4.0 if a else 1.0, response_s=0.25 if a else 3.0),
        ),
        event(tenant, 7, **models_scored(m=0.875 if a else 0.125)),
    ]


async def test_no_metric_ever_reads_another_tenants_rows(
    stub: Stub, warehouse: ClickHouseWarehouse, tenant: str
) -> None:
    # B's name starts with A's: the tenant is matched whole.
    a, b = tenant, f"{tenant}b"
    await ingest(warehouse, *_every_source(a, persona(a, "p"), True))
    await ingest(warehouse, *_every_source(b, persona(b, "p"), False), *_every_source(b, persona(b, "p"), False))
    queries = [q for q, _, _ in EVERY_METRIC]
    assert {q[0] for q in queries} == set(M.Metric.values()) - {M.METRIC_UNSPECIFIED}
    for name, pick, samples in ((a, 0, 1), (b, 1, 2)):
        series = await query_metrics(stub, name, *queries)
        assert [s.metric for s in series] == [q[0] for q in queries]
        for s, (_, *values) in zip(series, EVERY_METRIC, strict=True):
            assert points(s) == [(T0, values[pick], samples)], (name, s.metric)
    assert await query_metrics(stub, f"tenants/q{uuid.uuid4().hex[:8]}", *queries) == []


# -- errors -----------------------------------------------------------------------------------------


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]


async def refused(call: Awaitable[Any]) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info_of(raised.value)
    assert info is not None, raised.value.details()
    return Refusal(raised.value.code(), info.reason, info.domain, dict(info.metadata))


def _metrics_request(tenant: str, **fields: Any) -> analytics_service_pb2.QueryMetricsRequest:
    values: dict[str, Any] = {
        "parent": tenant,
        "queries": [analytics_service_pb2.MetricQuery(metric=M.METRIC_TURNS, aggregation=M.AGGREGATION_COUNT)],
        "start_time": _stamp(T0),
        "end_time": _stamp(T0 + timedelta(hours=1)),
        "bucket_width": duration_pb2.Duration(seconds=300),
    }
    values.update(fields)
    return analytics_service_pb2.QueryMetricsRequest(**values)


@pytest.mark.parametrize(
    ("fields", "reason", "metadata"),
    [
        ({"parent": "tenants/a/b"}, "INVALID_RESOURCE_NAME", {"field": "parent", "name": "tenants/a/b"}),
        ({"personas": ["tenants/other/personas/p"]}, "INVALID_RESOURCE_NAME", {"field": "personas"}),
        ({"models": ["m1"]}, "INVALID_RESOURCE_NAME", {"field": "models", "name": "m1"}),
        ({"start_time": None}, "INVALID_TIME_RANGE", {}),
        ({"end_time": _stamp(T0 - timedelta(seconds=1))}, "INVALID_TIME_RANGE", {}),
        ({"end_time": _stamp(T0 + timedelta(days=90, seconds=1))}, "INVALID_TIME_RANGE", {}),
        ({"bucket_width": None}, "INVALID_BUCKET", {}),
        ({"bucket_width": duration_pb2.Duration(seconds=59)}, "INVALID_BUCKET", {}),
        ({"bucket_width": duration_pb2.Duration(seconds=60, nanos=1)}, "INVALID_BUCKET", {}),
        ({"bucket_width": duration_pb2.Duration(seconds=HOUR + 60)}, "INVALID_BUCKET", {}),
        (
            {"end_time": _stamp(T0 + timedelta(days=2)), "bucket_width": duration_pb2.Duration(seconds=60)},
            "TOO_MANY_BUCKETS",
            {"limit": "1000"},
        ),
        (
            {
                "queries": [
                    analytics_service_pb2.MetricQuery(metric=M.METRIC_WORD_ERROR_RATE, aggregation=M.AGGREGATION_P99)
                ]
            },
            "AGGREGATION_NOT_SUPPORTED",
            {"metric": "METRIC_WORD_ERROR_RATE", "aggregation": "AGGREGATION_P99"},
        ),
        (
            {"queries": [analytics_service_pb2.MetricQuery(metric=M.METRIC_TURNS)]},
            "AGGREGATION_NOT_SUPPORTED",
            {"metric": "METRIC_TURNS", "aggregation": "AGGREGATION_UNSPECIFIED"},
        ),
        ({"queries": []}, "TOO_MANY_QUERIES", {"limit": "20"}),
        (
            {
                "queries": [analytics_service_pb2.MetricQuery(metric=M.METRIC_TURNS, aggregation=M.AGGREGATION_COUNT)]
                * 21
            },
            "TOO_MANY_QUERIES",
            {"limit": "20"},
        ),
    ],
)
async def test_query_metrics_refusals(
    stub: Stub, tenant: str, fields: dict[str, Any], reason: str, metadata: dict[str, str]
) -> None:
    got = await refused(stub.QueryMetrics(_metrics_request(tenant, **fields), timeout=10))
    assert (got.code, got.reason, got.domain) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "analytics.skm")
    assert metadata.items() <= got.metadata.items()


@pytest.mark.parametrize("role", [model_pb2.MODEL_ROLE_UNSPECIFIED, 99])
async def test_an_unspecified_or_unknown_role_is_refused(stub: Stub, tenant: str, role: int) -> None:
    got = await refused(stub.QueryMetrics(_metrics_request(tenant, roles=[PRIMARY, role]), timeout=10))
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_an_unspecified_dimension_is_refused(stub: Stub, tenant: str) -> None:
    got = await refused(stub.QueryMetrics(_metrics_request(tenant, group_by=[M.DIMENSION_UNSPECIFIED]), timeout=10))
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


# -- QueryAuditEvents -------------------------------------------------------------------------------


async def _audit(stub: Stub, tenant: str, **fields: Any) -> analytics_service_pb2.QueryAuditEventsResponse:
    request = analytics_service_pb2.QueryAuditEventsRequest(parent=tenant, **fields)
    return await stub.QueryAuditEvents(request, timeout=30)


async def test_the_audit_trail_pages_oldest_first(stub: Stub, warehouse: ClickHouseWarehouse, tenant: str) -> None:
    s1, s2 = f"{tenant}/sessions/s1", f"{tenant}/sessions/s2"
    p = persona(tenant, "p")
    tool_requested = {
        "tool_requested": event_pb2.ToolRequested(turn="t", tool=f"{tenant}/tools/x", arguments_json="{}")
    }
    progress: dict[str, Any] = {"kamachiq_progress": event_pb2.KamachiqProgress(project="p", task="t", progress=0.5)}
    written = [
        event(tenant, 1, session=s1, **turn_started(p)),
        event(tenant, 2, session=s1, **model_call(p, "models/m", tokens=(1, 1))),
        event(tenant, 2, session=s2, **policy_decided(f"persona:{p}", Verdict.VERDICT_ALLOW)),  # same time
        event(tenant, 3, session=s1, **turn_completed(p, 2.0, TurnState.STATE_COMPLETED)),
        event(tenant, 4, session=s2, **tool_requested),
        event(tenant, 5, **progress),
        event(tenant, 6, session=s2, **turn_started(p)),
        event(tenant, HOUR, session=s1, **turn_started(p)),  # at "now": not yet
    ]
    other = f"{tenant}x"
    await ingest(warehouse, *written, event(other, 2, session=f"{other}/sessions/s1", **turn_started(p)))
    expected = sorted(written[:-1], key=lambda e: (e.event_time.ToMicroseconds(), e.event_id))

    got: list[event_pb2.Event] = []
    token = ""
    sizes = []
    for _ in range(5):
        page = await _audit(stub, tenant, page_size=3, page_token=token)
        got += page.events
        sizes.append(len(page.events))
        token = page.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert got == expected  # the very events written, in order, none twice, none missing
    assert [e.event_id for e in (await _audit(stub, tenant)).events] == [e.event_id for e in expected]

    both = await _audit(stub, tenant, session=s1, event_types=["turn_started", "turn_completed"])
    assert list(both.events) == [written[0], written[3]]
    window = await _audit(
        stub, tenant, start_time=_stamp(T0 + timedelta(seconds=2)), end_time=_stamp(T0 + timedelta(seconds=4))
    )
    assert {e.event_id for e in window.events} == {e.event_id for e in written[1:4]}
    assert [
        e.event_id for e in (await _audit(stub, tenant, event_types=["tool_requested", "kamachiq_progress"])).events
    ] == [
        written[4].event_id,
        written[5].event_id,
    ]

    first = await _audit(stub, tenant, session=s2, page_size=1)
    assert list(first.events) == [written[2]]
    # The token goes on with its own filter, whatever the page size...
    rest = await _audit(stub, tenant, session=s2, page_size=10, page_token=first.next_page_token)
    assert list(rest.events) == [written[4], written[6]]
    assert rest.next_page_token == ""
    # ...and with no other.
    for fields in ({"session": s1}, {}, {"session": s2, "event_types": ["turn_started"]}):
        got_refused = await refused(_audit(stub, tenant, page_token=first.next_page_token, **fields))
        assert (got_refused.code, got_refused.reason, got_refused.domain) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
            "analytics.skm",
        )
    # Another tenant's request with a token of this one's.
    stolen = await refused(_audit(stub, other, session=f"{other}/sessions/s2", page_token=first.next_page_token))
    assert stolen.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("fields", "reason", "metadata"),
    [
        ({"event_types": ["turn_started", "turnStarted"]}, "UNKNOWN_EVENT_TYPE", {"event_type": "turnStarted"}),
        ({"session": "tenants/other/sessions/s"}, "INVALID_RESOURCE_NAME", {"field": "session"}),
        ({"start_time": _stamp(T0), "end_time": _stamp(T0)}, "INVALID_TIME_RANGE", {}),
        ({"page_token": "garbage"}, "INVALID_PAGE_TOKEN", {}),
    ],
)
async def test_query_audit_events_refusals(
    stub: Stub, tenant: str, fields: dict[str, Any], reason: str, metadata: dict[str, str]
) -> None:
    got = await refused(_audit(stub, tenant, **fields))
    assert (got.code, got.reason, got.domain) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "analytics.skm")
    assert metadata.items() <= got.metadata.items()
    assert (await refused(_audit(stub, "tenants/"))).reason == "INVALID_RESOURCE_NAME"


# -- GetModelSpend ------------------------------------------------------------------------------------


async def test_model_spend_sums_this_months_usd_calls_of_the_role(
    stub: Stub, warehouse: ClickHouseWarehouse, tenant: str
) -> None:
    helper = persona(tenant, "helper")
    before_the_month = -(T0 - datetime(2026, 2, 28, 23, 0, tzinfo=UTC)).total_seconds()
    await ingest(
        warehouse,
        event(tenant, 10, **model_call(helper, "models/a", cost=("USD", 0, 250_000_000))),
        event(tenant, 20, **model_call(helper, "models/a", cost=("USD", 1, 500_000_000))),
        event(tenant, 30, **model_call(helper, "models/b", role=model_pb2.MODEL_ROLE_UTILITY, cost=("USD", 0, 100))),
        event(tenant, 40, **model_call(helper, "models/c", cost=("EUR", 5, 0))),
        event(tenant, before_the_month, **model_call(helper, "models/a", cost=("USD", 9, 0))),
        event(f"{tenant}x", 50, **model_call(helper, "models/a", cost=("USD", 7, 0))),
    )
    primary = await stub.GetModelSpend(analytics_service_pb2.GetModelSpendRequest(tenant=tenant, role=PRIMARY))
    assert (primary.spent.currency_code, primary.spent.units, primary.spent.nanos) == ("USD", 1, 750_000_000)
    assert primary.model_calls == 2
    assert primary.period_start_time.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, tzinfo=UTC)
    every = await stub.GetModelSpend(analytics_service_pb2.GetModelSpendRequest(tenant=tenant))
    assert (every.spent.units, every.spent.nanos, every.model_calls) == (1, 750_000_100, 3)
    nothing = await stub.GetModelSpend(analytics_service_pb2.GetModelSpendRequest(tenant=f"{tenant}none"))
    assert (nothing.spent.units, nothing.spent.nanos, nothing.model_calls) == (0, 0, 0)


async def test_model_spend_of_a_malformed_tenant_is_invalid(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetModelSpend(analytics_service_pb2.GetModelSpendRequest(tenant="t1"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(raised.value)
    assert info is not None
    assert (info.domain, info.reason) == ("analytics.skm", "INVALID_RESOURCE_NAME")
