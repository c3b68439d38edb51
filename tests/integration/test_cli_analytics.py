"""`skm analytics` and `skm audit` against the real svc_analytics: its servicer and queries
over ClickHouse (chdb, in this process), served with a gate over in-memory fakes (tokens
signed here, a fixed constitution hash, no rate limit, a policy that allows unless a test
says otherwise), and called through the CLI's own `main` as a user runs it, with a bearer
token and nothing signed with the mesh key.

Each test writes real skm.events.v1.Event messages for a tenant of its own, as ingestion
writes them (decoded into the rows of every table), at times aligned to whole hours so that
the buckets they fall in are known.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from skm.conversation.v1 import turn_pb2
from skm.events.v1 import event_pb2
from skm.policy.v1 import blocked_action_pb2
from skm.type.v1 import deployment_mode_pb2, model_pb2, policy_decision_pb2
from skm_cli.__main__ import main
from skm_runtime.admission import Admission, PolicyAnswer
from skm_runtime.contract import services_of
from skm_runtime.gate import Gate, public_rules
from skm_runtime.server import ServiceSpec
from svc_analytics import api
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.events import decode
from svc_analytics.adapters.queries import ClickHouseReader
from svc_analytics.core.queries import Queries
from svc_analytics.model import Delivery, Position, Table
from tests.support.runtime import serving
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Limiter, _Policy, _verifier

HOUR = timedelta(hours=1)
ALLOW = PolicyAnswer(True, "ROLE_ALLOWS", "d1")
SECRETS = ("hunter2", "4111 1111", "secret-note")  # free text the human views must never show


@dataclass
class Analytics:
    """svc_analytics served through its gate, and what a test needs to call it."""

    target: str
    warehouse: ClickHouseWarehouse
    policy: _Policy
    pem: bytes

    def token(self, tenant: str) -> str:
        claims = {
            "iss": "skm-dev",
            "aud": "skm",
            "sub": "olga",
            "tenant": tenant,
            "roles": ["admin"],
            "constitution_sha256": DIGEST,
            "exp": int(time.time()) + 600,
        }
        return jwt.encode(claims, self.pem, algorithm="EdDSA", headers={"kid": "k"})


@pytest.fixture(scope="module")
async def service(chdb_warehouse_url: str) -> AsyncIterator[Analytics]:
    pem, jwks = _keys()
    warehouse = await ClickHouseWarehouse.open(chdb_warehouse_url)
    queries = Queries(ClickHouseReader(warehouse), now=lambda: datetime.now(UTC))
    policy = _Policy(ALLOW)
    gate = Gate(
        Admission(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), policy),
        public_rules(),
        max_message_bytes=4 * 1024 * 1024,
        max_receive_bytes=8 * 1024 * 1024,
    )
    spec = ServiceSpec(
        name="analytics",
        service_names=services_of("analytics"),
        register=lambda server: api.register(server, queries),
        stop=warehouse.close,
    )
    async with serving(spec, gate=gate, record_spans=False) as served:
        yield Analytics(served.target, warehouse, policy, pem)
    await gate.close()


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def _skm(service: Analytics, capsys: pytest.CaptureFixture[str], tenant: str, *argv: str) -> Ran:
    """`skm --url ... --token ... ARGV`, run on a thread (the CLI blocks; the server runs on this loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--url", f"http://{service.target}", "--token", service.token(tenant), *argv])
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


# -- the tenant's events ----------------------------------------------------------------


def _tenant() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


def _event(tenant: str, at: datetime, session: str = "s1") -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        tenant=f"tenants/{tenant}",
        session=f"tenants/{tenant}/sessions/{session}" if session else "",
        source="conversation",
    )
    event.event_time.FromDatetime(at)
    if session:
        event.principal.tenant = f"tenants/{tenant}"
        event.principal.user = f"tenants/{tenant}/users/alice"
    return event


def _events(tenant: str, base: datetime) -> list[event_pb2.Event]:
    """A morning of one tenant, in time order: turns 3 h and 1 h before `base`, model calls,
    a tool call, policy decisions 2 h before, and a blocked action that expired."""
    t = f"tenants/{tenant}"
    three, two, one = base - 3 * HOUR, base - 2 * HOUR, base - HOUR
    events: list[event_pb2.Event] = []
    for k, at in enumerate((three + timedelta(minutes=5), three + timedelta(minutes=6), one + timedelta(minutes=5))):
        started = _event(tenant, at)
        started.turn_started.turn.name = f"{t}/sessions/s1/turns/{k + 1}"
        started.turn_started.turn.input_text = "my card is 4111 1111 1111 1111"
        started.turn_started.persona = f"{t}/personas/default"
        started.turn_started.mode = deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER
        events.append(started)

        call = _event(tenant, at + timedelta(seconds=20))
        call.model_call_completed.turn = started.turn_started.turn.name
        call.model_call_completed.persona = f"{t}/personas/default"
        usage = call.model_call_completed.usage
        usage.model, usage.role = ("models/large", model_pb2.MODEL_ROLE_PRIMARY)
        usage.input_tokens, usage.output_tokens = 100, 20
        usage.time_to_first_token.FromMilliseconds(300 * (k + 1))
        usage.duration.FromSeconds(2)
        usage.tokens_per_second = 10.0 * (k + 1)
        usage.cost.currency_code, usage.cost.units, usage.cost.nanos = "USD", 1, 250_000_000  # 1.25
        if k == 2:
            usage.model = "models/small"
            usage.cost.units, usage.cost.nanos = 0, 500_000_000  # 0.50
            call.model_call_completed.failure_reason = "UNAVAILABLE"
        events.append(call)

        ended = _event(tenant, at + timedelta(seconds=30))
        ended.turn_completed.turn.CopyFrom(started.turn_started.turn)
        ended.turn_completed.turn.state = turn_pb2.Turn.STATE_REFUSED if k == 2 else turn_pb2.Turn.STATE_COMPLETED
        ended.turn_completed.turn.response_text = "here is your card 4111 1111 1111 1111"
        ended.turn_completed.persona = f"{t}/personas/default"
        ended.turn_completed.duration.FromSeconds(30)
        events.append(ended)

    asked = _event(tenant, one + timedelta(minutes=10))
    asked.tool_requested.turn = f"{t}/sessions/s1/turns/3"
    asked.tool_requested.tool_call_id = "c1"
    asked.tool_requested.tool = f"{t}/tools/code_execution"
    asked.tool_requested.arguments_json = json.dumps({"code": "print('hunter2')"})
    events.append(asked)

    for verdict, minute in ((policy_decision_pb2.VERDICT_ALLOW, 1), (policy_decision_pb2.VERDICT_DENY, 2)):
        decided = _event(tenant, two + timedelta(minutes=minute), session="s2")
        decided.source = "policy"
        decided.policy_decided.check.subject = f"user:{t}/users/alice"
        decided.policy_decided.check.relation = "can_execute"
        decided.policy_decided.check.object = f"tool:{t}/tools/code_execution"
        decided.policy_decided.decision.verdict = verdict
        decided.policy_decided.decision.reason = "ROLE_ALLOWS" if minute == 1 else "HIGH_RISK_TOOL"
        events.append(decided)

    held = blocked_action_pb2.BlockedAction(
        name=f"{t}/blockedActions/b1",
        session=f"{t}/sessions/s2",
        summary="code_execution for alice",
        note="secret-note",
        state=blocked_action_pb2.BlockedAction.STATE_PENDING,
    )
    held.check.relation, held.check.object = "can_execute", f"tool:{t}/tools/code_execution"
    held.create_time.FromDatetime(two + timedelta(minutes=3))
    blocked = _event(tenant, two + timedelta(minutes=3), session="s2")
    blocked.source = "policy"
    blocked.action_blocked.blocked_action.CopyFrom(held)
    events.append(blocked)
    held.state = blocked_action_pb2.BlockedAction.STATE_EXPIRED
    held.resolve_time.FromDatetime(two + timedelta(minutes=33))
    expired = _event(tenant, two + timedelta(minutes=33), session="")
    expired.source = "policy"
    expired.action_resolved.blocked_action.CopyFrom(held)
    expired.action_resolved.previous_state = blocked_action_pb2.BlockedAction.STATE_PENDING
    events.append(expired)
    return sorted(events, key=lambda e: e.event_time.ToDatetime())


async def _write(warehouse: ClickHouseWarehouse, events: list[event_pb2.Event]) -> None:
    """As ingestion writes a batch: each event's rows in every table it feeds, events last."""
    topic = f"t{uuid.uuid4().hex[:10]}"  # the chdb folder is the whole process's: a topic of our own
    deliveries = []
    for offset, event in enumerate(events):
        record = decode(Position(topic, 0, offset, int(time.time() * 1000)), b"k", event.SerializeToString())
        assert isinstance(record, Delivery), record
        deliveries.append(record)
    for table in Table:
        rows = [(d.position, row) for d in deliveries for row in d.rows.get(table, ())]
        if rows:
            await warehouse.write(table, rows)


@pytest.fixture
async def tenant(service: Analytics) -> tuple[str, datetime, list[event_pb2.Event]]:
    """A fresh tenant with its events; `base` is the whole hour they lead up to."""
    name = _tenant()
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    events = _events(name, base)
    await _write(service.warehouse, events)
    return name, base, events


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(out: str, label: str) -> list[str]:
    """The words of the dashboard row of `label` (its label's words first)."""
    rows = [line for line in out.splitlines() if line.startswith(f"{label}  ")]
    assert len(rows) == 1, (label, out)
    return rows[0].split()


# -- skm analytics ----------------------------------------------------------------------


async def test_the_dashboard_shows_every_series_with_gaps_where_no_bucket_has_samples(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, base, _ = tenant
    ran = await _skm(service, capsys, name, "analytics", "--since", _iso(base - 6 * HOUR), "--until", _iso(base))
    assert (ran.code, ran.err) == (0, ""), ran
    print(ran.out)  # shown with -s: what a user sees
    lines = ran.out.splitlines()
    assert lines[0] == (
        f"tenants/{name}, {base - 6 * HOUR:%Y-%m-%d %H:%M} → {base:%Y-%m-%d %H:%M} UTC, 6 buckets of 1h"
    )
    # Six buckets: samples 3 h and 1 h before the end (2 and 1 turns); the others are gaps.
    at = next(line for line in lines if line.startswith("series  ")).index("trend")
    assert next(line for line in lines if line.startswith("turns  "))[at : at + 6] == "   █ ▅"
    assert next(line for line in lines if line.startswith("policy deny rate  "))[at : at + 6] == "    █ "
    assert _row(ran.out, "turns")[-4:] == ["1", "1", "2", "3"]  # last, min, max, samples
    assert _row(ran.out, "turn latency p50")[-7:] == ["30.00", "s", "30.00", "s", "30.00", "s", "3"]
    assert _row(ran.out, "TTFT p95")[-7:-1] == ["900", "ms", "600", "ms", "900", "ms"]
    assert _row(ran.out, "tokens")[-7:] == ["120", "tok", "120", "tok", "240", "tok", "3"]
    assert _row(ran.out, "model cost · USD")[-7:] == ["0.5000", "USD", "0.5000", "USD", "2.5000", "USD", "3"]
    assert _row(ran.out, "model failure rate")[-7:] == ["100.0", "%", "0.0", "%", "100.0", "%", "3"]
    assert _row(ran.out, "refusal rate")[-4:-1] == ["%", "100.0", "%"]
    assert _row(ran.out, "policy deny rate")[-7:] == ["50.0", "%", "50.0", "%", "50.0", "%", "2"]
    assert _row(ran.out, "policy approval rate")[-3:] == ["0.0", "%", "2"]
    assert _row(ran.out, "approval wait p50")[-7:] == ["30.0", "min", "30.0", "min", "30.0", "min", "1"]
    assert _row(ran.out, "blocked actions expired")[-4:] == ["1", "1", "1", "1"]


async def test_the_dashboard_as_json_is_the_series_as_returned_and_can_split_by_model(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, base, _ = tenant
    since, until = _iso(base - 6 * HOUR), _iso(base)
    ran = await _skm(service, capsys, name, "analytics", "--since", since, "--until", until, "--by", "model", "--json")
    assert ran.code == 0, ran
    series = [json.loads(line) for line in ran.out.splitlines()]
    turns = [s for s in series if s["metric"] == "METRIC_TURNS"]
    assert turns == [
        {
            "metric": "METRIC_TURNS",
            "aggregation": "AGGREGATION_COUNT",
            "unit": "1",
            "persona": "",
            "model": "",
            "points": [
                {"start_time": _iso(base - 3 * HOUR), "value": 2.0, "sample_count": 2},
                {"start_time": _iso(base - HOUR), "value": 1.0, "sample_count": 1},
            ],
        }
    ]
    tokens = {s["model"]: s["points"] for s in series if s["metric"] == "METRIC_TOKENS"}
    assert tokens == {
        "models/large": [{"start_time": _iso(base - 3 * HOUR), "value": 240.0, "sample_count": 2}],
        "models/small": [{"start_time": _iso(base - HOUR), "value": 120.0, "sample_count": 1}],
    }
    ran = await _skm(
        service, capsys, name, "analytics", "--since", since, "--until", until, "--model", "small", "--json"
    )
    costs = [json.loads(line) for line in ran.out.splitlines() if "METRIC_MODEL_COST" in line]
    assert [(p["value"], p["sample_count"]) for s in costs for p in s["points"]] == [(0.5, 1)]


async def test_the_default_range_is_the_last_day_and_a_persona_filter_narrows_it(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, _ = tenant
    ran = await _skm(service, capsys, name, "analytics")
    assert ran.code == 0, ran
    assert ", 2" in ran.out.splitlines()[0]
    assert "buckets of 1h" in ran.out.splitlines()[0]
    assert _row(ran.out, "turns")[-1] == "3"
    ran = await _skm(service, capsys, name, "analytics", "--persona", "nobody")
    assert ran.code == 0, ran
    assert _row(ran.out, "turns") == ["turns", "-", "-", "-", "0"]
    assert "only nobody" in ran.out


async def test_the_cost_view_is_days_by_model_with_totals(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, _ = tenant
    ran = await _skm(service, capsys, name, "analytics", "cost", "--days", "2")
    assert (ran.code, ran.err) == (0, ""), ran
    print(ran.out)
    lines = ran.out.splitlines()
    assert lines[0] == f"model cost of tenants/{name} per UTC day, the last 2 day(s)"
    assert lines[2].split() == ["day", "large", "small", "total"]
    assert lines[3].split() == ["USD", "USD", "USD"]
    assert lines[-1].split() == ["total", "2.5000", "0.5000", "3.0000"]
    assert len(lines) == 2 + 2 + 1 + 2 + 1 + 1  # title, blank, headers, rule, two days, rule, total
    ran = await _skm(service, capsys, name, "analytics", "cost", "--days", "2", "--json")
    assert sorted(json.loads(line)["model"] for line in ran.out.splitlines()) == ["models/large", "models/small"]


async def test_service_errors_are_shown_with_their_reason(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, _ = tenant
    ran = await _skm(service, capsys, name, "analytics", "--bucket", "30s")
    assert ran.code == 1
    assert ran.err.startswith("skm: INVALID_ARGUMENT [INVALID_BUCKET]: "), ran.err
    ran = await _skm(service, capsys, name, "analytics", "--since", "91d", "--bucket", "1d")
    assert ran.err.startswith("skm: INVALID_ARGUMENT [INVALID_TIME_RANGE]: "), ran.err
    ran = await _skm(service, capsys, name, "audit", "--tenant", _tenant())  # another tenant than the token's
    assert ran.code == 1
    assert ran.err.startswith("skm: PERMISSION_DENIED [CROSS_TENANT_RESOURCE]: "), ran.err


async def test_a_caller_policy_refuses_is_told_so_before_the_service_is_asked(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, _ = tenant
    service.policy.verdict = PolicyAnswer(False, "ROLE_INSUFFICIENT", "d2")
    try:
        ran = await _skm(service, capsys, name, "audit")
    finally:
        service.policy.verdict = ALLOW
    assert ran.code == 1
    # With policy's own reason, from the ErrorInfo's metadata.
    assert ran.err == (
        "skm: PERMISSION_DENIED [PERMISSION_DENIED]: policy does not allow this call"
        " (decision_id=d2, decision_reason=ROLE_INSUFFICIENT, permission=can_administer)\n"
    )


# -- skm audit --------------------------------------------------------------------------


async def test_the_audit_trail_pages_with_the_command_for_the_next_page(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, events = tenant
    first = await _skm(service, capsys, name, "audit", "--since", "1d", "--limit", "5")
    assert first.code == 0, first
    print(first.out, first.err)
    lines = first.out.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "type", "session", "principal", "summary"]
    assert [line.split()[1] for line in lines[1:]] == [e.WhichOneof("payload") for e in events[:5]]
    assert first.err.startswith(f"more: skm audit --tenant {name} --since ")
    command = shlex.split(first.err.removeprefix("more: "))
    assert command[:2] == ["skm", "audit"]
    assert "--page-token" in command
    shown = lines[1:]
    while command:
        page = await _skm(service, capsys, name, *command[1:])
        assert page.code == 0, page
        shown += page.out.splitlines()[1:]
        command = shlex.split(page.err.removeprefix("more: ")) if page.err else []
    assert len(shown) == len(events)
    everything = await _skm(service, capsys, name, "audit", "--limit", "4", "--all")
    assert everything.out.splitlines()[1:] == shown
    assert everything.err == ""
    for secret in SECRETS:
        assert secret not in everything.out
    by_type = {line.split()[1]: line for line in reversed(shown)}  # the first of each type
    assert by_type["tool_requested"].endswith("s1            alice       code_execution (call c1) in turn 3")
    assert by_type["action_resolved"].endswith(
        "-             -           blocked action b1 PENDING → EXPIRED: can_execute tool:tools/code_execution"
    )
    assert by_type["turn_started"].endswith("  turn 1, persona default, DEVELOPER")
    assert by_type["model_call_completed"].endswith("  large PRIMARY tier 0: 100 + 20 tokens in 2.00 s, 1.2500 USD")


async def test_the_audit_trail_filters_by_session_type_and_time(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, base, events = tenant
    ran = await _skm(service, capsys, name, "audit", "--type", "policy_decided", "action_blocked")
    assert [line.split()[1] for line in ran.out.splitlines()[1:]] == [
        "policy_decided",
        "policy_decided",
        "action_blocked",
    ]
    ran = await _skm(service, capsys, name, "audit", "--session", "s2", "--type", "action_blocked")
    assert len(ran.out.splitlines()) == 2
    since, until = _iso(base - 2 * HOUR), _iso(base - HOUR)
    ran = await _skm(service, capsys, name, "audit", "--since", since, "--until", until)
    assert len(ran.out.splitlines()) - 1 == sum(
        base - 2 * HOUR <= e.event_time.ToDatetime(tzinfo=UTC) < base - HOUR for e in events
    )
    ran = await _skm(service, capsys, name, "audit", "--session", "s404")
    assert (ran.code, ran.out, ran.err) == (0, "", "no event matches\n")


async def test_the_audit_trail_as_json_is_every_event_whole_then_the_next_page_token(
    service: Analytics, tenant: tuple[str, datetime, list[event_pb2.Event]], capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, events = tenant
    ran = await _skm(service, capsys, name, "audit", "--json", "--limit", "3")
    lines = [json.loads(line) for line in ran.out.splitlines()]
    assert [line["eventId"] for line in lines[:-1]] == [e.event_id for e in events[:3]]
    assert set(lines[-1]) == {"next_page_token"}
    assert lines[-1]["next_page_token"]
    ran = await _skm(service, capsys, name, "audit", "--json", "--limit", "3", "--all", "--since", "1d")
    lines = [json.loads(line) for line in ran.out.splitlines()]
    assert [line.get("eventId") for line in lines[:-1]] == [e.event_id for e in events]
    assert lines[-1]["next_page_token"] == ""
    assert set(lines[-1]) == {"next_page_token", "since"}
    asked = next(line for line in lines if "toolRequested" in line)
    assert "hunter2" in asked["toolRequested"]["argumentsJson"]  # --json shows the events whole
