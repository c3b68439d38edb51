"""`skm analytics` and `skm audit`: svc_analytics's dashboards and audit trail in a terminal.

`skm analytics` draws the main series of one QueryMetrics call as sparklines, one row per
series; `skm analytics cost` is the billing view (model cost per UTC day and model); `skm
audit` pages through QueryAuditEvents. Times are UTC.

The service leaves out the buckets that have no samples: the sparklines put each point in its
bucket by its start time, so such buckets show as gaps, not as zeros.

The audit's human view shows what happened and to what, never the free text of an event
(messages, responses, tool arguments, notes, summaries): those may carry personal data. Its
--json view prints the events whole, for whoever may read them.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from skm.analytics.v1 import analytics_service_pb2 as pb
from skm.analytics.v1 import analytics_service_pb2_grpc, metrics_pb2
from skm.events.v1 import event_pb2

# Blocked actions in events hold an ExecuteToolRequest: --json renders it by its type.
from skm.tools.v1 import tool_service_pb2  # noqa: F401  # registers the type for json_format
from skm_cli.chat import tenant_of
from skm_cli.errors import CliError

Metric = metrics_pb2.Metric
Aggregation = metrics_pb2.Aggregation
TimeSeries = metrics_pb2.TimeSeries
Metadata = tuple[tuple[str, str], ...]

BARS = "▁▂▃▄▅▆▇█"
# A sparkline wider than this many marks folds neighbouring buckets into one mark.
MAX_MARKS = 60
# Events per QueryAuditEvents page: the service's own bounds.
MAX_PAGE = 1000
# The longest range the service accepts.
MAX_DAYS = 90
_TIMEOUT = 30.0
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_HINT = "30m, 24h, 7d"

DASHBOARD_DESCRIPTION = """\
The tenant's main series over a time range, from one QueryMetrics call: one row per
series with a sparkline over the buckets (oldest on the left; ▁ is zero, a space is
a bucket without samples), the last value, the lowest and highest, and the samples.
Needs the operator role.

--since and --until take a duration ago (30m, 24h, 7d), an ISO 8601 time
(2025-01-31T12:00Z; without a zone: UTC) or `now`; a range given as a duration
starts at a whole bucket."""
DASHBOARD_EPILOG = """\
--json: one JSON object per series and line: {"metric", "aggregation", "unit",
"persona", "model", "points": [{"start_time", "value", "sample_count"}]}, the points
as the service returns them (buckets without samples left out).

e.g. skm analytics --since 7d --bucket 6h --by model"""
COST_DESCRIPTION = """\
Model cost per UTC day and model over the last N days, today included (MODEL_COST,
SUM, grouped by model, in buckets of one day): a table of days by models, with each
day's total and each model's, per currency. Needs the operator role."""
AUDIT_DESCRIPTION = """\
The tenant's audit trail, oldest first: one line per event with its time (UTC), type,
session, principal and a short summary. The summary never shows message texts, tool
arguments, notes or other free text (personal data): --json shows the events whole.
Needs the admin role.

One page of --limit events per call; the command for the next page goes to stderr
(with --since/--until made absolute: a page token belongs to its filter). --all
follows every page."""
AUDIT_EPILOG = """\
--json: one JSON object per event and line (the skm.events.v1.Event in protobuf's JSON
mapping), then one last line {"next_page_token": TOKEN} ("" on the last page), with
"since"/"until" as sent when they were given.

e.g. skm audit --since 1h --type tool_completed --type policy_decided --all"""


@dataclass(frozen=True, slots=True)
class Panel:
    """One series of the dashboard, as asked for."""

    label: str
    metric: metrics_pb2.Metric.ValueType
    aggregation: metrics_pb2.Aggregation.ValueType


DASHBOARD = (
    Panel("turns", Metric.METRIC_TURNS, Aggregation.AGGREGATION_COUNT),
    Panel("turn latency p50", Metric.METRIC_TURN_LATENCY, Aggregation.AGGREGATION_P50),
    Panel("turn latency p95", Metric.METRIC_TURN_LATENCY, Aggregation.AGGREGATION_P95),
    Panel("TTFT p50", Metric.METRIC_TIME_TO_FIRST_TOKEN, Aggregation.AGGREGATION_P50),
    Panel("TTFT p95", Metric.METRIC_TIME_TO_FIRST_TOKEN, Aggregation.AGGREGATION_P95),
    Panel("tokens/s mean", Metric.METRIC_TOKENS_PER_SECOND, Aggregation.AGGREGATION_MEAN),
    Panel("tokens", Metric.METRIC_TOKENS, Aggregation.AGGREGATION_SUM),
    Panel("model cost", Metric.METRIC_MODEL_COST, Aggregation.AGGREGATION_SUM),
    Panel("model failure rate", Metric.METRIC_MODEL_FAILURE_RATE, Aggregation.AGGREGATION_MEAN),
    Panel("model fallback rate", Metric.METRIC_MODEL_FALLBACK_RATE, Aggregation.AGGREGATION_MEAN),
    Panel("refusal rate", Metric.METRIC_REFUSAL_RATE, Aggregation.AGGREGATION_MEAN),
    Panel("policy deny rate", Metric.METRIC_POLICY_DENY_RATE, Aggregation.AGGREGATION_MEAN),
    Panel("policy approval rate", Metric.METRIC_POLICY_APPROVAL_RATE, Aggregation.AGGREGATION_MEAN),
    Panel("approval wait p50", Metric.METRIC_APPROVAL_WAIT, Aggregation.AGGREGATION_P50),
    Panel("blocked actions expired", Metric.METRIC_BLOCKED_ACTIONS_EXPIRED, Aggregation.AGGREGATION_COUNT),
)
DIMENSIONS = {"persona": metrics_pb2.DIMENSION_PERSONA, "model": metrics_pb2.DIMENSION_MODEL}
# The payload types QueryAuditEvents filters on, named by their field in Event.payload.
EVENT_TYPES = tuple(f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)


# -- arguments ---------------------------------------------------------------------------


def parse_duration(text: str, option: str) -> timedelta:
    """`30m`, `24h`, `7d` (also `90s`): a positive whole number of a unit."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise CliError(f"{option} must look like {_DURATION_HINT}, not {text!r}")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def parse_instant(text: str, option: str, now: datetime) -> tuple[datetime, bool]:
    """A point in time, and whether it was given relative to `now` (`now` or a duration ago)."""
    text = text.strip()
    if text == "now":
        return now, True
    if _DURATION.fullmatch(text):
        return now - parse_duration(text, option), True
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{option} must look like {_DURATION_HINT} (that long ago), an ISO 8601 time"
            f" such as 2025-01-31T12:00Z, or now; not {text!r}"
        ) from None
    return (when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)), False


def tenant(args: argparse.Namespace, token: str) -> str:
    """--tenant (`t1` or `tenants/t1`), else the token's tenant claim."""
    given = str(getattr(args, "tenant", "") or "")
    return given.removeprefix("tenants/") if given else tenant_of(token)


def _named(value: str, collection: str, parent: str = "") -> str:
    """`p1` as `{parent}/{collection}/p1`; a full name as it is."""
    if value.startswith(("tenants/", "models/")):
        return value
    return f"{parent}/{collection}/{value}" if parent else f"{collection}/{value}"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _span(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _utc(when: datetime) -> str:
    """RFC 3339 in UTC, to the microsecond given (a page token holds its filter's exact times)."""
    when = when.astimezone(UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}{f'.{when.microsecond:06d}' if when.microsecond else ''}Z"


# -- buckets and sparklines --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Buckets:
    """The requested range cut into buckets of equal width from its start (the last one may
    be cut short by the end), as the service cuts it."""

    start: datetime
    end: datetime
    width: timedelta

    @property
    def count(self) -> int:
        return max(0, math.ceil((self.end - self.start) / self.width))

    def index(self, start: datetime) -> int | None:
        """The bucket a point starting at `start` belongs to; None outside the range."""
        position = (start - self.start) // self.width
        return position if 0 <= position < self.count else None

    def fill(self, series: TimeSeries) -> list[float | None]:
        """The series' value in every bucket; None where the service left the bucket out."""
        values: list[float | None] = [None] * self.count
        for point in series.points:
            at = self.index(point.start_time.ToDatetime(tzinfo=UTC))
            if at is not None:
                values[at] = point.value
        return values


def folded(count: int, max_marks: int = MAX_MARKS) -> int:
    """How many buckets one mark of a sparkline stands for."""
    return max(1, math.ceil(count / max_marks))


def sparkline(values: Sequence[float | None], max_marks: int = MAX_MARKS) -> str:
    """One mark per bucket, or per `folded(len(values))` buckets (their highest value) when
    there are more than `max_marks`: ▁ for zero, █ for the highest value shown, heights in
    proportion between them, and a space for a bucket without samples."""
    per = folded(len(values), max_marks)
    marks: list[float | None] = []
    for i in range(0, len(values), per):
        present = [v for v in values[i : i + per] if v is not None]
        marks.append(max(present) if present else None)
    top = max((v for v in marks if v is not None), default=0.0)
    return "".join(" " if v is None else BARS[_height(v, top)] for v in marks)


def _height(value: float, top: float) -> int:
    if value <= 0 or top <= 0:
        return 0
    # Anything above zero stands above the zero mark.
    return max(1, math.floor(value / top * (len(BARS) - 1) + 0.5))  # half up, not to even


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def format_value(value: float, unit: str, aggregation: metrics_pb2.Aggregation.ValueType) -> str:
    """A value in its series' unit, for people: counts whole, ratios in percent, seconds
    in ms/s/min/h, costs with their currency."""
    if aggregation == Aggregation.AGGREGATION_COUNT:
        return f"{value:,.0f}"
    if unit == "s":
        return _seconds(value)
    if unit == "1":
        return f"{value * 100:.1f} %"
    if unit == "tokens":
        return f"{value:,.0f} tok"
    if unit == "tokens/s":
        return f"{value:,.1f} tok/s"
    if unit == "MOS":
        return f"{value:.2f} MOS"
    return f"{value:,.4f} {unit}".rstrip()


def columns(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as lines of aligned columns, two spaces apart; the columns in `right` aligned right."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows), default=0))]
    return [
        "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]


def _label(panel: Panel, series: TimeSeries) -> str:
    """The panel's label, then what tells its series apart: persona or model, and for costs
    the currency (one series per currency)."""
    group = [_short(name) for name in (series.persona, series.model) if name]
    if series.metric == Metric.METRIC_MODEL_COST and series.unit:
        group.append(series.unit)
    return " · ".join([panel.label, *group])


def dashboard(
    response: pb.QueryMetricsResponse,
    buckets: Buckets,
    panels: Sequence[Panel] = DASHBOARD,
    max_marks: int = MAX_MARKS,
) -> list[str]:
    """The table of the dashboard: a row per series the service returned, in the order of
    `panels`; a panel without any series says so."""
    by_query: dict[tuple[int, int], list[TimeSeries]] = {}
    for series in response.series:
        by_query.setdefault((series.metric, series.aggregation), []).append(series)
    rows = [["series", "trend", "last", "min", "max", "samples"]]
    for panel in panels:
        found = [series for series in by_query.get((panel.metric, panel.aggregation), []) if series.points]
        if not found:
            rows.append([panel.label, "", "-", "-", "-", "0"])
            continue
        for series in found:
            values = [point.value for point in series.points]
            shown = [format_value(v, series.unit, panel.aggregation) for v in (values[-1], min(values), max(values))]
            samples = sum(point.sample_count for point in series.points)
            spark = sparkline(buckets.fill(series), max_marks)
            rows.append([_label(panel, series), spark, *shown, f"{samples:,}"])
    return columns(rows, right=frozenset({2, 3, 4, 5}))


def series_json(series: TimeSeries) -> dict[str, Any]:
    """A series for --json: the proto's field names, enum value names, points as returned."""
    return {
        "metric": Metric.Name(series.metric),
        "aggregation": Aggregation.Name(series.aggregation),
        "unit": series.unit,
        "persona": series.persona,
        "model": series.model,
        "points": [
            {"start_time": p.start_time.ToJsonString(), "value": p.value, "sample_count": p.sample_count}
            for p in series.points
        ],
    }


# -- skm analytics -----------------------------------------------------------------------


def _stub(channel: grpc.Channel) -> analytics_service_pb2_grpc.AnalyticsServiceStub:
    return analytics_service_pb2_grpc.AnalyticsServiceStub(channel)


def _metrics_request(parent: str, buckets: Buckets, queries: Sequence[Panel]) -> pb.QueryMetricsRequest:
    request = pb.QueryMetricsRequest(
        parent=parent, queries=[pb.MetricQuery(metric=q.metric, aggregation=q.aggregation) for q in queries]
    )
    request.start_time.FromDatetime(buckets.start)
    request.end_time.FromDatetime(buckets.end)
    request.bucket_width.FromTimedelta(buckets.width)
    return request


def range_of(since: str, until: str, bucket: str, now: datetime) -> Buckets:
    """The dashboard's buckets: a range given relative to now starts at a whole bucket (UTC)."""
    width = parse_duration(bucket, "--bucket")
    start, relative = parse_instant(since, "--since", now)
    end, _ = parse_instant(until, "--until", now)
    if relative:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        start = epoch + (start - epoch) // width * width
        if end - start > timedelta(days=MAX_DAYS):  # --since 90d: round up, not past the limit
            start += width
    if end <= start:
        raise CliError(f"--since ({_utc(start)}) must come before --until ({_utc(end)})")
    return Buckets(start, end, width)


def run(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    """`skm analytics` (and `skm analytics cost`); returns the exit status."""
    if getattr(args, "view", None) == "cost":
        return _run_cost(args, channel, token, metadata)
    buckets = range_of(args.since, args.until, args.bucket, datetime.now(UTC))
    parent = f"tenants/{tenant(args, token)}"
    request = _metrics_request(parent, buckets, DASHBOARD)
    request.personas.extend(_named(p, "personas", parent) for p in args.persona or ())
    request.models.extend(_named(m, "models") for m in args.model or ())
    if args.by:
        request.group_by.append(DIMENSIONS[args.by])
    response = _stub(channel).QueryMetrics(request, timeout=_TIMEOUT, metadata=metadata)
    if args.json:
        for series in response.series:
            print(json.dumps(series_json(series)))
        return 0
    per = folded(buckets.count)
    mark = "one mark per bucket" if per == 1 else f"one mark per {per} buckets, their highest value"
    print(
        f"{parent}, {buckets.start:%Y-%m-%d %H:%M} → {buckets.end:%Y-%m-%d %H:%M} UTC,"
        f" {buckets.count} buckets of {_span(buckets.width)}"
    )
    filters = [*request.personas, *request.models]
    if filters:
        print(f"only {', '.join(_short(name) for name in filters)}")
    print(f"({mark}; ▁ zero, a space: no samples)\n")
    for line in dashboard(response, buckets):
        print(line)
    return 0


def cost_days(now: datetime, days: int) -> Buckets:
    """`days` whole UTC days ending with today's."""
    if not 1 <= days <= MAX_DAYS:
        raise CliError(f"--days must be 1 to {MAX_DAYS}, not {days}")
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - timedelta(days=days - 1)
    return Buckets(start, midnight + timedelta(days=1), timedelta(days=1))


def _total(values: Iterable[float | None]) -> str:
    """The sum of the values present, or a dash when there is none."""
    present = [v for v in values if v is not None]
    return f"{sum(present):,.4f}" if present else "-"


def cost_table(response: pb.QueryMetricsResponse, buckets: Buckets) -> list[str]:
    """Days by models: a column per model and currency, a total column per currency, a row
    per day of `buckets` (a dash where a model cost nothing that day) and a total row."""
    series = sorted(
        (s for s in response.series if s.metric == Metric.METRIC_MODEL_COST and s.points),
        key=lambda s: (s.unit, _short(s.model)),
    )
    if not series:
        return [f"no model cost from {buckets.start:%Y-%m-%d} to {buckets.end - buckets.width:%Y-%m-%d}"]
    currencies = sorted({s.unit for s in series})
    filled = [buckets.fill(s) for s in series]
    rows = [
        ["day", *(_short(s.model) or "(no model)" for s in series), *("total" for _ in currencies)],
        ["", *(s.unit for s in series), *currencies],
    ]
    for day in range(buckets.count):
        cells = [column[day] for column in filled]
        rows.append(
            [
                f"{buckets.start + day * buckets.width:%Y-%m-%d}",
                *(_total([cell]) for cell in cells),
                *(_total(c for s, c in zip(series, cells, strict=True) if s.unit == cur) for cur in currencies),
            ]
        )
    rows.append(
        [
            "total",
            *(_total(column) for column in filled),
            *(
                _total(v for s, col in zip(series, filled, strict=True) if s.unit == cur for v in col)
                for cur in currencies
            ),
        ]
    )
    lines = columns(rows, right=frozenset(range(1, len(rows[0]))))
    rule = "─" * max(len(line) for line in lines)
    return [*lines[:2], rule, *lines[2:-1], rule, lines[-1]]


def _run_cost(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    buckets = cost_days(datetime.now(UTC), args.days)
    parent = f"tenants/{tenant(args, token)}"
    request = _metrics_request(
        parent, buckets, [Panel("model cost", Metric.METRIC_MODEL_COST, Aggregation.AGGREGATION_SUM)]
    )
    request.group_by.append(metrics_pb2.DIMENSION_MODEL)
    response = _stub(channel).QueryMetrics(request, timeout=_TIMEOUT, metadata=metadata)
    if args.json:
        for series in response.series:
            print(json.dumps(series_json(series)))
        return 0
    print(f"model cost of {parent} per UTC day, the last {args.days} day(s)\n")
    for line in cost_table(response, buckets):
        print(line)
    return 0


# -- skm audit ---------------------------------------------------------------------------


def _enum(message: Message, field: str) -> str:
    """An enum field's value name without its enum's prefix ("COMPLETED", "ALLOW", "PRIMARY")."""
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None, field  # asked of enum fields only
    number = getattr(message, field)
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(descriptor.name)).upper() + "_"
    return str(value.name).removeprefix(prefix)


def _summary(event: event_pb2.Event) -> str:
    """What the event says, without its free text (see the module's docstring)."""
    kind = event.WhichOneof("payload")
    if kind == "turn_started":
        started = event.turn_started
        rerun = f", rerun of turn {_short(started.turn.rerun_of)}" if started.turn.rerun_of else ""
        mode = f", {_enum(started, 'mode')}" if started.mode else ""
        return f"turn {_short(started.turn.name)}, persona {_short(started.persona)}{mode}{rerun}"
    if kind == "turn_completed":
        ended = event.turn_completed
        text = f"turn {_short(ended.turn.name)} {_enum(ended.turn, 'state')}"
        if ended.HasField("duration"):
            text += f" in {_seconds(ended.duration.ToTimedelta().total_seconds())}"
        text += f", {ended.turn.iterations} iteration(s), {len(ended.turn.model_calls)} model call(s)"
        return text + (f", {ended.turn.failure_reason}" if ended.turn.failure_reason else "")
    if kind == "model_call_completed":
        call = event.model_call_completed
        usage = call.usage
        text = f"{_short(usage.model)} {_enum(usage, 'role')} tier {usage.tier}:"
        text += f" {usage.input_tokens:,} + {usage.output_tokens:,} tokens"
        if usage.HasField("duration"):
            text += f" in {_seconds(usage.duration.ToTimedelta().total_seconds())}"
        if usage.cost.units or usage.cost.nanos:
            text += f", {usage.cost.units + usage.cost.nanos / 1e9:.4f} {usage.cost.currency_code}"
        if call.failure_reason:
            text += f", failed: {call.failure_reason}"
        return text + (", interrupted" if call.interrupted else "")
    if kind == "tool_requested":
        asked = event.tool_requested
        return f"{_short(asked.tool)} (call {asked.tool_call_id}) in turn {_short(asked.turn)}"
    if kind == "tool_completed":
        run = event.tool_completed.execution
        text = f"{_short(run.tool)} {_enum(run, 'state')}, policy {_enum(run.decision, 'verdict')}"
        text += f" ({run.decision.reason})" if run.decision.reason else ""
        if run.HasField("start_time") and run.HasField("end_time"):
            took = run.end_time.ToDatetime() - run.start_time.ToDatetime()
            text += f" in {_seconds(took.total_seconds())}"
        return text + (f", {_enum(run.result.failure, 'reason')}" if run.result.HasField("failure") else "")
    if kind == "policy_decided":
        decided = event.policy_decided
        check, decision = decided.check, decided.decision
        text = f"{check.subject} {check.relation} {check.object}: {_enum(decision, 'verdict')}"
        text += f" ({decision.reason})" if decision.reason else ""
        return text + (", cached" if decided.cached else "")
    if kind in ("action_blocked", "action_resolved"):
        held = event.action_blocked.blocked_action if kind == "action_blocked" else event.action_resolved.blocked_action
        state = _enum(held, "state")
        if kind == "action_resolved":
            state = f"{_enum(event.action_resolved, 'previous_state')} → {state}"
        text = f"blocked action {_short(held.name)} {state}: {held.check.relation} {held.check.object}"
        return text + (f", by {_short(held.resolver)}" if held.resolver else "")
    if kind == "intervention_applied":
        applied = event.intervention_applied
        return f"{_enum(applied.intervention, 'kind')} in turn {_short(applied.turn)}"
    if kind == "memory_operation":
        memory = event.memory_operation
        return f"{_enum(memory, 'kind')} {len(memory.memory_ids)} memory id(s) in {memory.namespace or '-'}"
    if kind == "audio_quality_measured":
        measured = event.audio_quality_measured.metrics
        parts = []
        if measured.HasField("word_error_rate"):
            parts.append(f"WER {measured.word_error_rate * 100:.1f} %")
        if measured.HasField("mean_opinion_score"):
            parts.append(f"MOS {measured.mean_opinion_score:.2f}")
        for field in ("recognition_latency", "response_latency", "synthesis_latency"):
            if measured.HasField(field):
                parts.append(
                    f"{field.split('_')[0]} {_seconds(getattr(measured, field).ToTimedelta().total_seconds())}"
                )
        return ", ".join(parts) or "nothing measured"
    if kind == "model_profile_scored":
        scored = event.model_profile_scored
        text = f"{_enum(scored, 'role')}: {len(scored.scores)} model(s) scored"
        text += f", recommends {_short(scored.recommended_model)}" if scored.recommended_model else ""
        return text + (", applied" if scored.applied else "")
    if kind == "kamachiq_progress":
        progress = event.kamachiq_progress
        return f"project {progress.project} task {progress.task} {_enum(progress, 'state')} {progress.progress:.0%}"
    return ""


def event_line(event: event_pb2.Event, parent: str = "") -> str:
    """One event for people: time, type, session, principal and summary; names within the
    tenant lose its `tenants/{tenant}/` prefix."""
    when = event.event_time.ToDatetime(tzinfo=UTC)
    stamp = f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"
    kind = event.WhichOneof("payload") or "?"
    session = _short(event.session) if event.session else "-"
    principal = _short(event.principal.user) if event.principal.user else "-"
    summary = _summary(event).replace(f"{parent}/", "") if parent else _summary(event)
    return f"{stamp}  {kind:<22}  {session:<12}  {principal:<10}  {summary}".rstrip()


def event_json(event: event_pb2.Event) -> dict[str, Any]:
    """The event in protobuf's JSON mapping; a held request of a type this client does not
    know shows as its type and bytes (as `skm blocked` prints it)."""
    try:
        data: dict[str, Any] = json_format.MessageToDict(event)
        return data
    except TypeError:
        kind = event.WhichOneof("payload")
        if kind not in ("action_blocked", "action_resolved"):
            raise
    rest = event_pb2.Event()
    rest.CopyFrom(event)
    held = getattr(rest, kind).blocked_action
    payload = getattr(event, kind).blocked_action.payload
    held.ClearField("payload")
    data = json_format.MessageToDict(rest)
    data[event.DESCRIPTOR.fields_by_name[kind].json_name]["blockedAction"]["payload"] = {
        "@type": payload.type_url,
        "valueBase64": base64.b64encode(payload.value).decode(),
    }
    return data


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What one `skm audit` asks for, its times absolute (a page token belongs to its filter)."""

    parent: str
    session: str
    types: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    limit: int

    def request(self, page_token: str) -> pb.QueryAuditEventsRequest:
        request = pb.QueryAuditEventsRequest(
            parent=self.parent,
            session=self.session,
            event_types=self.types,
            page_size=self.limit,
            page_token=page_token,
        )
        if self.since is not None:
            request.start_time.FromDatetime(self.since)
        if self.until is not None:
            request.end_time.FromDatetime(self.until)
        return request

    def command(self, page_token: str) -> str:
        """The `skm audit` that reads the page after this one."""
        words = ["skm", "audit", "--tenant", self.parent.removeprefix("tenants/")]
        if self.session:
            words += ["--session", _short(self.session)]
        for kind in self.types:
            words += ["--type", kind]
        if self.since is not None:
            words += ["--since", _utc(self.since)]
        if self.until is not None:
            words += ["--until", _utc(self.until)]
        words += ["--limit", str(self.limit), "--page-token", page_token]
        return shlex.join(words)

    def times(self) -> Mapping[str, str]:
        given = {"since": self.since, "until": self.until}
        return {key: _utc(when) for key, when in given.items() if when is not None}


def audit_filter(args: argparse.Namespace, token: str, now: datetime) -> AuditFilter:
    if not 1 <= args.limit <= MAX_PAGE:
        raise CliError(f"--limit must be 1 to {MAX_PAGE}, not {args.limit}")
    unknown = sorted(set(args.type or ()) - set(EVENT_TYPES))
    if unknown:
        raise CliError(f"unknown event type(s) {', '.join(unknown)}: one of {', '.join(EVENT_TYPES)}")
    parent = f"tenants/{tenant(args, token)}"
    since = parse_instant(args.since, "--since", now)[0] if args.since else None
    until = parse_instant(args.until, "--until", now)[0] if args.until else None
    if since is not None and until is not None and until <= since:
        raise CliError(f"--since ({_utc(since)}) must come before --until ({_utc(until)})")
    session = _named(args.session, "sessions", parent) if args.session else ""
    return AuditFilter(parent, session, tuple(dict.fromkeys(args.type or ())), since, until, args.limit)


def pages(
    stub: analytics_service_pb2_grpc.AnalyticsServiceStub,
    wanted: AuditFilter,
    page_token: str,
    follow: bool,
    metadata: Metadata,
) -> Iterator[pb.QueryAuditEventsResponse]:
    """The page at `page_token`, and with `follow` every one after it."""
    while True:
        page = stub.QueryAuditEvents(wanted.request(page_token), timeout=_TIMEOUT, metadata=metadata)
        yield page
        page_token = page.next_page_token
        if not follow or not page_token:
            return


def run_audit(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    """`skm audit`; returns the exit status."""
    # Whole seconds: `now` and durations ago read back the same from the next-page command.
    wanted = audit_filter(args, token, datetime.now(UTC).replace(microsecond=0))
    shown, next_token = 0, ""
    for page in pages(_stub(channel), wanted, args.page_token, args.all, metadata):
        for event in page.events:
            if args.json:
                print(json.dumps(event_json(event)))
            else:
                if not shown:
                    print(f"{'time (UTC)':<24}  {'type':<22}  {'session':<12}  {'principal':<10}  summary")
                print(event_line(event, wanted.parent))
            shown += 1
        next_token = page.next_page_token
    if args.json:
        print(json.dumps({"next_page_token": next_token, **wanted.times()}))
        return 0
    if not shown:
        print("no event matches", file=sys.stderr)
    if next_token:
        print(f"more: {wanted.command(next_token)}", file=sys.stderr)
    return 0
