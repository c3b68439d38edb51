"""The read side of the warehouse (ports.WarehouseReader): one SQL statement per series
query and per audit page, on ClickHouseWarehouse's reader threads.

Every statement filters ``tenant = {tenant}`` and binds every value the client sent as a
server-side parameter; the SQL text is made only of this module's constants.

A metric is a table, a condition and a sample expression (see ``_SOURCES``): each row the
condition keeps is one sample, whose bucket is
``intDiv(toUnixTimestamp64Micro(event_time) - start_us, width_us)`` (aligned to the start
of the range). Per bucket, MEAN is ``avg``, P50/P95/P99 are ``quantileExact`` (the sample
at index floor(n * level) of the n sorted ones, e.g. the upper of the two middle ones for
P50 of an even count), SUM is ``sum`` and COUNT is ``count()``; the point's sample_count is
always the number of samples. Rates are the mean of a 0/1 sample over their denominator's
rows (REFUSAL_RATE: completed turns; POLICY_*_RATE: decisions; MODEL_FAILURE_RATE and
MODEL_FALLBACK_RATE: calls).

MODEL_FALLBACK_RATE needs to know, per call, whether a later tier recovered it: the calls
are LEFT JOINed (``_FALLBACKS``) to the highest tier that succeeded per (turn, role) among
the tenant's calls of the same range, and a call fell back when it failed below that tier.
The joined calls are not narrowed by the model, persona or role filters (the tier that
recovered a call usually runs another model), only by tenant and range; a call without a
turn joins nothing. Unmatched rows read the join's default, tier 0, which no failed call
is below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.model import (
    MODEL_METRICS,
    UNITS,
    Aggregation,
    AuditEvent,
    AuditRead,
    Metric,
    Point,
    Series,
    SeriesRead,
    Spend,
    Table,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a metric's samples are: the rows of `table` that `where` keeps, each one
    sample of value `sample` (SQL over the table's columns, never a client's value)."""

    table: Table
    where: str
    sample: str
    # Whether the table has a persona column; model_scores has none (its rows read as "").
    persona: bool = True
    # SQL joined to the table (after FROM table), never a client's value.
    join: str = ""


# The highest tier that succeeded per (turn, role) of the tenant's calls in the range; its
# columns are named apart from model_calls' so that no name of the outer query is ambiguous.
_FALLBACKS = (
    "LEFT JOIN (SELECT turn AS ok_turn, role AS ok_role, max(tier) AS ok_tier FROM model_calls"
    " WHERE tenant = {tenant:String}"
    " AND event_time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')"
    " AND event_time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')"
    " AND NOT failed AND turn != ''"
    " GROUP BY ok_turn, ok_role) AS recovered ON turn = ok_turn AND role = ok_role"
)


_SOURCES: Mapping[Metric, _Source] = {
    Metric.TURNS: _Source(Table.TURNS, "kind = 'started'", "1"),
    Metric.TURN_LATENCY: _Source(
        Table.TURNS, "kind = 'completed' AND duration_s IS NOT NULL", "assumeNotNull(duration_s)"
    ),
    Metric.TIME_TO_FIRST_TOKEN: _Source(
        Table.MODEL_CALLS, "role = 'PRIMARY' AND ttft_s IS NOT NULL", "assumeNotNull(ttft_s)"
    ),
    Metric.TOKENS_PER_SECOND: _Source(Table.MODEL_CALLS, "tokens_per_second > 0", "tokens_per_second"),
    Metric.TOKENS: _Source(Table.MODEL_CALLS, "1", "input_tokens + output_tokens"),
    # One series per currency (the GROUP BY's unit); unpriced calls ("") are left out.
    Metric.MODEL_COST: _Source(Table.MODEL_CALLS, "currency != ''", "cost"),
    Metric.MODEL_FAILURE_RATE: _Source(Table.MODEL_CALLS, "1", "failed"),
    # ifNull: the unmatched rows' tier is NULL rather than 0 where join_use_nulls is set.
    Metric.MODEL_FALLBACK_RATE: _Source(
        Table.MODEL_CALLS, "1", "failed AND ifNull(ok_tier, 0) > tier", join=_FALLBACKS
    ),
    Metric.REFUSAL_RATE: _Source(Table.TURNS, "kind = 'completed'", "state = 'REFUSED'"),
    Metric.POLICY_DENY_RATE: _Source(Table.POLICY_DECISIONS, "1", "verdict = 'DENY'"),
    Metric.POLICY_APPROVAL_RATE: _Source(Table.POLICY_DECISIONS, "1", "verdict = 'REQUIRES_APPROVAL'"),
    # wait_s is set on the change that takes an action out of PENDING.
    Metric.APPROVAL_WAIT: _Source(Table.BLOCKED_ACTIONS, "wait_s IS NOT NULL", "assumeNotNull(wait_s)"),
    Metric.BLOCKED_ACTIONS_EXPIRED: _Source(Table.BLOCKED_ACTIONS, "expired", "1"),
    Metric.WORD_ERROR_RATE: _Source(
        Table.AUDIO_QUALITY, "word_error_rate IS NOT NULL", "assumeNotNull(word_error_rate)"
    ),
    Metric.MEAN_OPINION_SCORE: _Source(
        Table.AUDIO_QUALITY, "mean_opinion_score IS NOT NULL", "assumeNotNull(mean_opinion_score)"
    ),
    Metric.VOICE_RESPONSE_LATENCY: _Source(
        Table.AUDIO_QUALITY, "response_latency_s IS NOT NULL", "assumeNotNull(response_latency_s)"
    ),
    Metric.MODEL_SCORE: _Source(Table.MODEL_SCORES, "1", "score", persona=False),
}

_AGGREGATES: Mapping[Aggregation, str] = {
    Aggregation.MEAN: "avg({x})",
    Aggregation.P50: "quantileExact(0.5)({x})",
    Aggregation.P95: "quantileExact(0.95)({x})",
    Aggregation.P99: "quantileExact(0.99)({x})",
    Aggregation.SUM: "sum({x})",
    Aggregation.COUNT: "count()",
}


def _series_sql(read: SeriesRead) -> str:
    source = _SOURCES[read.metric]
    # The g_* aliases differ from every column name: ClickHouse lets a SELECT alias shadow
    # a column of the same name in WHERE.
    persona = "persona" if source.persona else "''"
    model = "model" if read.metric in MODEL_METRICS else "''"
    unit = "currency" if read.metric is Metric.MODEL_COST else "''"
    by_persona = persona if read.by_persona else "''"
    by_model = model if read.by_model else "''"
    filters = [source.where]
    if read.personas:
        filters.append(f"{persona} IN {{personas:Array(String)}}")
    if read.models:
        filters.append(f"{model} IN {{models:Array(String)}}")
    if read.roles:
        filters.append("role IN {roles:Array(String)}")
    where = " AND ".join(f"({f})" for f in filters)
    # Grouped only by what varies: a constant key ("" when not split) costs a hash of it per
    # row (a third of a 10M-row series' time).
    keys = [
        alias for expr, alias in ((by_persona, "g_persona"), (by_model, "g_model"), (unit, "g_unit")) if expr != "''"
    ]
    group = ", ".join([*keys, "g_bucket"])
    aggregate = _AGGREGATES[read.aggregation].format(x=f"toFloat64({source.sample})")
    return (
        f"SELECT {by_persona} AS g_persona, {by_model} AS g_model, {unit} AS g_unit,"
        " intDiv(toUnixTimestamp64Micro(event_time) - {start:Int64}, {width:Int64}) AS g_bucket,"
        f" {aggregate}, count()"
        f" FROM {source.table.value}{' ' + source.join if source.join else ''}"
        " WHERE tenant = {tenant:String}"
        " AND event_time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')"
        " AND event_time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')"
        f" AND {where}"
        f" GROUP BY {group} ORDER BY {group}"
    )


def _micros(time: datetime) -> int:
    return (time - _EPOCH) // _MICROSECOND


class ClickHouseReader:
    """Implements ports.WarehouseReader over the warehouse's read-only queries."""

    def __init__(self, warehouse: ClickHouseWarehouse) -> None:
        self._warehouse = warehouse

    async def series(self, read: SeriesRead) -> list[Series]:
        width = read.bucket_width // _MICROSECOND
        parameters: dict[str, Any] = {
            "tenant": read.tenant,
            "start": _micros(read.start),
            "end": _micros(read.end),
            "width": width,
            "personas": list(read.personas),
            "models": list(read.models),
            "roles": list(read.roles),
        }
        rows = await self._warehouse.query(_series_sql(read), parameters)
        groups: dict[tuple[str, str, str], list[Point]] = {}
        for persona, model, unit, bucket, value, samples in rows:
            start = read.start + int(bucket) * read.bucket_width
            groups.setdefault((str(persona), str(model), str(unit)), []).append(
                Point(start, float(value), int(samples))
            )
        return [
            Series(
                metric=read.metric,
                aggregation=read.aggregation,
                unit=unit or UNITS[read.metric],
                persona=persona,
                model=model,
                points=tuple(points),
            )
            for (persona, model, unit), points in groups.items()
        ]

    async def audit_events(self, read: AuditRead) -> list[AuditEvent]:
        filters = ["tenant = {tenant:String}", "event_time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')"]
        parameters: dict[str, Any] = {"tenant": read.tenant, "end": _micros(read.end), "limit": read.limit}
        if read.start is not None:
            filters.append("event_time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')")
            parameters["start"] = _micros(read.start)
        if read.session:
            filters.append("session = {session:String}")
            parameters["session"] = read.session
        if read.event_types:
            filters.append("event_type IN {types:Array(String)}")
            parameters["types"] = sorted(read.event_types)
        if read.after is not None:
            filters.append(
                "(event_time, event_id) > (fromUnixTimestamp64Micro({after_us:Int64}, 'UTC'), {after_id:String})"
            )
            parameters["after_us"] = _micros(read.after[0])
            parameters["after_id"] = read.after[1]
        where = " AND ".join(filters)
        rows = await self._warehouse.query(
            "SELECT toUnixTimestamp64Micro(event_time), event_id, event FROM events"
            f" WHERE {where} ORDER BY event_time, event_id LIMIT {{limit:UInt32}}",
            parameters,
            column_formats={"event": "bytes"},
        )
        return [
            AuditEvent(_EPOCH + int(micros) * _MICROSECOND, str(event_id), bytes(event))
            for micros, event_id, event in rows
        ]

    async def model_spend(self, tenant: str, role: str, since: datetime) -> Spend:
        filters = [
            "tenant = {tenant:String}",
            "currency = 'USD'",
            "event_time >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')",
        ]
        parameters: dict[str, Any] = {"tenant": tenant, "since": _micros(since)}
        if role:
            filters.append("role = {role:String}")
            parameters["role"] = role
        rows = await self._warehouse.query(
            f"SELECT sum(cost), count() FROM model_calls WHERE {' AND '.join(filters)}", parameters
        )
        usd, calls = rows[0] if rows else (0.0, 0)
        return Spend(since, float(usd or 0.0), int(calls))
