"""`skm analytics` and `skm audit` without a server: their arguments, the tenant they ask
about, and how they lay out what the service answers."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from google.protobuf import any_pb2

from skm.analytics.v1 import analytics_service_pb2 as pb
from skm.analytics.v1 import metrics_pb2
from skm.conversation.v1 import turn_pb2
from skm.events.v1 import event_pb2
from skm.policy.v1 import blocked_action_pb2
from skm.type.v1 import principal_pb2
from skm_cli import analytics
from skm_cli.__main__ import main, parser
from skm_cli.errors import CliError

Metric = metrics_pb2.Metric
Aggregation = metrics_pb2.Aggregation
START = datetime(2025, 1, 31, tzinfo=UTC)
HOUR = timedelta(hours=1)
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a test that reaches it fails


def _token(**claims: object) -> str:
    return jwt.encode({"sub": "olga", **claims}, "k" * 64, algorithm="HS256")


def _series(
    metric: metrics_pb2.Metric.ValueType,
    aggregation: metrics_pb2.Aggregation.ValueType,
    unit: str,
    points: list[tuple[int, float, int]],
    *,
    step: timedelta = HOUR,
    start: datetime = START,
    persona: str = "",
    model: str = "",
) -> metrics_pb2.TimeSeries:
    """A series with a point (bucket index, value, samples) per tuple."""
    series = metrics_pb2.TimeSeries(metric=metric, aggregation=aggregation, unit=unit, persona=persona, model=model)
    for index, value, samples in points:
        point = series.points.add(value=value, sample_count=samples)
        point.start_time.FromDatetime(start + index * step)
    return series


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("90s", 90 * HOUR / 3600),
    ],
)
def test_a_duration_is_a_whole_number_of_a_unit(text: str, expected: timedelta) -> None:
    assert analytics.parse_duration(text, "--bucket") == expected


@pytest.mark.parametrize("text", ["24", "h", "0h", "1.5h", "-1h", "24 hours", "1w", ""])
def test_anything_else_is_refused_with_the_shape_expected(text: str) -> None:
    with pytest.raises(CliError, match=r"^--bucket must look like 30m, 24h, 7d"):
        analytics.parse_duration(text, "--bucket")


def test_an_instant_is_now_a_duration_ago_or_an_iso_time_in_utc() -> None:
    now = datetime(2025, 1, 31, 12, 30, tzinfo=UTC)
    assert analytics.parse_instant("now", "--until", now) == (now, True)
    assert analytics.parse_instant("2h", "--since", now) == (now - 2 * HOUR, True)
    assert analytics.parse_instant("2025-01-30T08:00Z", "--since", now) == (datetime(2025, 1, 30, 8, tzinfo=UTC), False)
    assert analytics.parse_instant("2025-01-30T08:00", "--since", now)[0] == datetime(2025, 1, 30, 8, tzinfo=UTC)
    assert analytics.parse_instant("2025-01-30T10:00+02:00", "--since", now)[0] == datetime(2025, 1, 30, 8, tzinfo=UTC)
    with pytest.raises(CliError, match=r"^--since must look like 30m, 24h, 7d \(that long ago\), an ISO 8601 time"):
        analytics.parse_instant("yesterday", "--since", now)


def test_a_range_given_as_a_duration_starts_at_a_whole_bucket_and_stays_within_90_days() -> None:
    now = datetime(2025, 1, 31, 14, 37, 12, tzinfo=UTC)
    buckets = analytics.range_of("24h", "now", "1h", now)
    assert (buckets.start, buckets.end, buckets.count) == (datetime(2025, 1, 30, 14, tzinfo=UTC), now, 25)
    widest = analytics.range_of("90d", "now", "1h", now)
    assert widest.start == datetime(2024, 11, 2, 15, tzinfo=UTC)  # rounded up: down would be past 90 days
    exact = analytics.range_of("2025-01-30T14:37:00Z", "2025-01-31T00:00Z", "1h", now)
    assert exact.start == datetime(2025, 1, 30, 14, 37, tzinfo=UTC)  # an explicit time stays as given
    with pytest.raises(CliError, match="must come before --until"):
        analytics.range_of("1h", "2h", "5m", now)


def test_a_bad_duration_is_a_usage_error_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token(tenant="t1"))
    monkeypatch.setenv("SKM_URL", NOWHERE)
    assert main(["analytics", "--since", "yesterday"]) == 2
    assert "skm: --since must look like 30m, 24h, 7d" in capsys.readouterr().err
    assert main(["audit", "--until", "soon"]) == 2
    assert "skm: --until must look like 30m, 24h, 7d" in capsys.readouterr().err
    assert main(["analytics", "--bucket", "1.5h"]) == 2
    assert "skm: --bucket must look like 30m, 24h, 7d" in capsys.readouterr().err
    assert main(["audit", "--type", "tool_done"]) == 2
    assert "unknown event type(s) tool_done" in capsys.readouterr().err
    assert main(["analytics", "cost", "--days", "91"]) == 2
    assert "--days must be 1 to 90" in capsys.readouterr().err


def test_without_a_token_nothing_is_sent(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKM_TOKEN", raising=False)
    monkeypatch.setenv("SKM_URL", NOWHERE)
    for argv in (["analytics"], ["analytics", "cost", "--tenant", "t1"], ["audit", "--all"]):
        assert main(argv) == 2
        assert "no token: pass --token or set SKM_TOKEN" in capsys.readouterr().err


def test_the_tenant_is_the_tokens_unless_given() -> None:
    token = _token(tenant="t9")
    assert analytics.tenant(argparse.Namespace(tenant=""), token) == "t9"
    assert analytics.tenant(argparse.Namespace(tenant="t2"), token) == "t2"
    assert analytics.tenant(argparse.Namespace(tenant="tenants/t2"), token) == "t2"
    with pytest.raises(CliError, match="the token has no tenant claim: pass --tenant"):
        analytics.tenant(argparse.Namespace(tenant=""), _token())
    with pytest.raises(CliError, match="cannot read the token's tenant"):
        analytics.tenant(argparse.Namespace(tenant=""), "not.a.token")


def test_a_tenant_given_before_cost_stays_and_cost_has_its_own_days() -> None:
    args = parser().parse_args(["analytics", "--tenant", "t1", "cost", "--days", "7", "--json"])
    assert (args.view, args.tenant, args.days, args.json) == ("cost", "t1", 7, True)
    args = parser().parse_args(["analytics", "--since", "7d", "--persona", "a", "--persona", "b", "--by", "model"])
    assert (args.view, args.since, args.persona, args.by) == (None, "7d", ["a", "b"], "model")


# -- sparklines and the dashboard ---------------------------------------------------------


def test_a_sparkline_scales_to_the_highest_value_and_leaves_empty_buckets_blank() -> None:
    assert analytics.sparkline([0.0, None, 5.0, 10.0, None]) == "▁ ▅█ "
    assert analytics.sparkline([0.0, 0.01, 100.0]) == "▁▂█"  # above zero stands above the zero mark
    assert analytics.sparkline([None, None]) == "  "
    assert analytics.sparkline([0.0, 0.0]) == "▁▁"
    assert analytics.sparkline([]) == ""


def test_a_long_sparkline_folds_buckets_into_their_highest_value() -> None:
    values: list[float | None] = [1.0, 8.0, None, None, 4.0, None, 2.0]
    assert analytics.sparkline(values, max_marks=4) == "█ ▅▃"
    assert len(analytics.sparkline([1.0] * 1000)) == 59  # 17 buckets a mark: at most 60 marks


def test_points_fill_their_buckets_by_start_time_and_missing_buckets_are_gaps() -> None:
    buckets = analytics.Buckets(START, START + 5 * HOUR + timedelta(minutes=30), HOUR)
    assert buckets.count == 6  # the last one cut short by the end
    series = _series(Metric.METRIC_TURNS, Aggregation.AGGREGATION_COUNT, "1", [(0, 2, 2), (3, 8, 8), (5, 1, 1)])
    assert buckets.fill(series) == [2.0, None, None, 8.0, None, 1.0]
    outside = _series(Metric.METRIC_TURNS, Aggregation.AGGREGATION_COUNT, "1", [(-1, 3, 3), (6, 4, 4)])
    assert buckets.fill(outside) == [None] * 6


def test_the_dashboard_has_a_row_per_series_with_units_and_one_per_panel_without_any() -> None:
    buckets = analytics.Buckets(START, START + 5 * HOUR + timedelta(minutes=30), HOUR)
    response = pb.QueryMetricsResponse(
        series=[
            _series(
                Metric.METRIC_TURNS, Aggregation.AGGREGATION_COUNT, "1", [(0, 2, 2), (1, 4, 4), (3, 8, 8), (5, 1, 1)]
            ),
            _series(Metric.METRIC_TURN_LATENCY, Aggregation.AGGREGATION_P50, "s", [(0, 0.5, 2), (1, 2.5, 4)]),
            _series(Metric.METRIC_TOKENS, Aggregation.AGGREGATION_SUM, "tokens", []),  # no samples at all
            _series(Metric.METRIC_MODEL_COST, Aggregation.AGGREGATION_SUM, "EUR", [(2, 0.25, 3)]),
            _series(Metric.METRIC_MODEL_COST, Aggregation.AGGREGATION_SUM, "USD", [(0, 0.0012, 1), (4, 1.5, 9)]),
            _series(Metric.METRIC_REFUSAL_RATE, Aggregation.AGGREGATION_MEAN, "1", [(0, 0.0, 2), (3, 0.25, 8)]),
        ]
    )
    panels = [p for p in analytics.DASHBOARD if p.metric != Metric.METRIC_TIME_TO_FIRST_TOKEN]
    assert analytics.dashboard(response, buckets, panels) == [
        "series                   trend         last         min         max  samples",
        "turns                    ▃▅ █ ▂           1           1           8       15",
        "turn latency p50         ▂█          2.50 s      500 ms      2.50 s        6",
        "turn latency p95                          -           -           -        0",
        "tokens/s mean                             -           -           -        0",
        "tokens                                    -           -           -        0",
        "model cost · EUR           █     0.2500 EUR  0.2500 EUR  0.2500 EUR        3",
        "model cost · USD         ▂   █   1.5000 USD  0.0012 USD  1.5000 USD       10",
        "model failure rate                        -           -           -        0",
        "model fallback rate                       -           -           -        0",
        "refusal rate             ▁  █        25.0 %       0.0 %      25.0 %       10",
        "policy deny rate                          -           -           -        0",
        "policy approval rate                      -           -           -        0",
        "approval wait p50                         -           -           -        0",
        "blocked actions expired                   -           -           -        0",
    ]


def test_grouped_series_are_told_apart_by_persona_or_model() -> None:
    buckets = analytics.Buckets(START, START + 2 * HOUR, HOUR)
    tps = Metric.METRIC_TOKENS_PER_SECOND, Aggregation.AGGREGATION_MEAN, "tokens/s"
    response = pb.QueryMetricsResponse(
        series=[
            _series(*tps, [(0, 40.0, 3), (1, 20.0, 1)], model="models/qwen2.5-coder-0.5b-instruct"),
            _series(*tps, [(1, 12.25, 2)], model="models/skm-tiny-untrained"),
            _series(
                Metric.METRIC_TURNS, Aggregation.AGGREGATION_COUNT, "1", [(0, 3, 3)], persona="tenants/t1/personas/a"
            ),
        ]
    )
    panels = [p for p in analytics.DASHBOARD if p.metric in (Metric.METRIC_TURNS, Metric.METRIC_TOKENS_PER_SECOND)]
    assert analytics.dashboard(response, buckets, panels) == [
        "series                                       trend        last         min         max  samples",
        "turns · a                                    █               3           3           3        3",
        "tokens/s mean · qwen2.5-coder-0.5b-instruct  █▅     20.0 tok/s  20.0 tok/s  40.0 tok/s        4",
        "tokens/s mean · skm-tiny-untrained            █     12.2 tok/s  12.2 tok/s  12.2 tok/s        2",
    ]


def test_a_series_as_json_keeps_the_points_the_service_returned() -> None:
    series = _series(Metric.METRIC_TURN_LATENCY, Aggregation.AGGREGATION_P95, "s", [(2, 1.5, 7)], persona="p")
    assert analytics.series_json(series) == {
        "metric": "METRIC_TURN_LATENCY",
        "aggregation": "AGGREGATION_P95",
        "unit": "s",
        "persona": "p",
        "model": "",
        "points": [{"start_time": "2025-01-31T02:00:00Z", "value": 1.5, "sample_count": 7}],
    }


# -- the cost table ---------------------------------------------------------------------


def test_the_cost_view_is_whole_utc_days_ending_with_today() -> None:
    days = analytics.cost_days(datetime(2025, 1, 31, 15, 4, tzinfo=UTC), 3)
    assert (days.start, days.end, days.count) == (
        datetime(2025, 1, 29, tzinfo=UTC),
        datetime(2025, 2, 1, tzinfo=UTC),
        3,
    )
    with pytest.raises(CliError, match="--days must be 1 to 90"):
        analytics.cost_days(START, 0)


def test_the_cost_table_is_days_by_model_with_totals_per_model_and_currency() -> None:
    days = analytics.cost_days(datetime(2025, 1, 31, 15, tzinfo=UTC), 3)
    cost = Metric.METRIC_MODEL_COST, Aggregation.AGGREGATION_SUM
    day = timedelta(days=1)
    response = pb.QueryMetricsResponse(
        series=[
            _series(*cost, "USD", [(0, 0.5, 1), (2, 1.25, 4)], step=day, start=days.start, model="models/small"),
            _series(*cost, "USD", [(1, 10.0, 2)], step=day, start=days.start, model="models/large"),
            _series(*cost, "EUR", [(2, 3.0, 1)], step=day, start=days.start, model="models/large"),
        ]
    )
    assert analytics.cost_table(response, days) == [
        "day          large    large   small   total    total",
        "               EUR      USD     USD     EUR      USD",
        "────────────────────────────────────────────────────",
        "2025-01-29       -        -  0.5000       -   0.5000",
        "2025-01-30       -  10.0000       -       -  10.0000",
        "2025-01-31  3.0000        -  1.2500  3.0000   1.2500",
        "────────────────────────────────────────────────────",
        "total       3.0000  10.0000  1.7500  3.0000  11.7500",
    ]
    assert analytics.cost_table(pb.QueryMetricsResponse(), days) == ["no model cost from 2025-01-29 to 2025-01-31"]


# -- the audit trail ----------------------------------------------------------------------


def _event(**payload: object) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id="e1",
        tenant="tenants/t1",
        session="tenants/t1/sessions/s1",
        source="conversation",
        principal=principal_pb2.Principal(tenant="tenants/t1", user="tenants/t1/users/alice"),
        **payload,  # type: ignore[arg-type]  # one payload field, by name
    )
    event.event_time.FromDatetime(datetime(2025, 1, 31, 12, 0, 3, 250000, tzinfo=UTC))
    return event


def test_an_event_line_says_what_happened_without_any_free_text() -> None:
    asked = _event(
        tool_requested=event_pb2.ToolRequested(
            turn="tenants/t1/sessions/s1/turns/3",
            tool_call_id="c1",
            tool="tenants/t1/tools/code_execution",
            arguments_json='{"code": "print(\'secret-argument\')"}',
        )
    )
    assert analytics.event_line(asked, "tenants/t1") == (
        "2025-01-31T12:00:03.250Z  tool_requested          s1            alice       code_execution (call c1) in turn 3"
    )
    turn = turn_pb2.Turn(
        name="tenants/t1/sessions/s1/turns/3",
        state=turn_pb2.Turn.STATE_REFUSED,
        input_text="my secret-message",
        response_text="secret-response",
        failure_reason="PROMPT_INJECTION",
    )
    ended = _event(turn_completed=event_pb2.TurnCompleted(turn=turn, persona="tenants/t1/personas/default"))
    ended.turn_completed.duration.FromTimedelta(timedelta(seconds=1.5))
    line = analytics.event_line(ended, "tenants/t1")
    assert line.endswith("turn 3 REFUSED in 1.50 s, 0 iteration(s), 0 model call(s), PROMPT_INJECTION")
    held = blocked_action_pb2.BlockedAction(
        name="tenants/t1/blockedActions/b1",
        state=blocked_action_pb2.BlockedAction.STATE_APPROVED,
        summary="code_execution for secret-summary",
        note="secret-note",
        resolver="tenants/t1/users/olga",
    )
    held.check.relation, held.check.object = "can_execute", "tool:tenants/t1/tools/code_execution"
    resolved = _event(
        action_resolved=event_pb2.ActionResolved(
            blocked_action=held, previous_state=blocked_action_pb2.BlockedAction.STATE_PENDING
        )
    )
    assert analytics.event_line(resolved, "tenants/t1").endswith(
        "blocked action b1 PENDING → APPROVED: can_execute tool:tools/code_execution, by olga"
    )
    for event in (asked, ended, resolved):
        assert "secret" not in analytics.event_line(event, "tenants/t1")
    platform = _event(kamachiq_progress=event_pb2.KamachiqProgress(project="p", task="t", progress=0.4))
    platform.ClearField("principal")
    platform.session = ""
    assert "  -             -           project p task t UNSPECIFIED 40%" in analytics.event_line(platform)


def test_an_event_as_json_shows_a_held_request_of_an_unknown_type_as_its_bytes() -> None:
    held = blocked_action_pb2.BlockedAction(
        name="tenants/t1/blockedActions/b1",
        payload=any_pb2.Any(type_url="type.googleapis.com/acme.v1.Unknown", value=b"\x01\x02"),
    )
    data = analytics.event_json(_event(action_blocked=event_pb2.ActionBlocked(blocked_action=held)))
    assert data["actionBlocked"]["blockedAction"] == {
        "name": "tenants/t1/blockedActions/b1",
        "payload": {"@type": "type.googleapis.com/acme.v1.Unknown", "valueBase64": "AQI="},
    }
    assert data["eventTime"] == "2025-01-31T12:00:03.250Z"


def test_the_next_page_command_asks_for_the_same_filter() -> None:
    token = _token(tenant="t1")
    now = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
    argv = ["audit", "--session", "s1", "--type", "tool_completed", "policy_decided", "--since", "2h", "--limit", "5"]
    first = analytics.audit_filter(parser().parse_args(argv), token, now)
    command = first.command("TOKEN")
    assert command == (
        "skm audit --tenant t1 --session s1 --type tool_completed --type policy_decided"
        " --since 2025-01-31T10:00:00Z --limit 5 --page-token TOKEN"
    )
    again = parser().parse_args(command.split()[1:])
    later = analytics.audit_filter(again, token, now + HOUR)  # times given absolute: the same filter
    assert later == first
    assert later.request(again.page_token) == first.request("TOKEN")
    assert first.request("").session == "tenants/t1/sessions/s1"
    assert not first.request("").HasField("end_time")  # unset: the service freezes "now" in its token
