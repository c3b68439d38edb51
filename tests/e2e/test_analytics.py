"""Analytics and billing end to end: the events of real conversations (the tiny UNTRAINED
engine: the loop is real, its words mean nothing) ingested by svc_analytics, read back
through Envoy with QueryAuditEvents and QueryMetrics and checked against the events
themselves; a tenant's model budget spent past its limit refuses the next model call."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skm.analytics.v1 import (
    analytics_service_pb2 as apb,
)
from skm.analytics.v1 import (
    analytics_service_pb2_grpc,
    metrics_pb2,
)
from skm.conversation.v1 import turn_pb2
from skm.events.v1 import event_pb2
from skm.profiles.v1 import model_pb2 as profiles_model_pb2
from skm.type.v1 import model_pb2, policy_decision_pb2
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from tests.e2e.profiles import CHAT, register_model, set_profile, tenant_admin
from tests.e2e.test_conversation import TERMINAL, Client, _read_turn, _tenant

PRIMARY = model_pb2.MODEL_ROLE_PRIMARY
M = metrics_pb2


def _analytics(client: Client) -> analytics_service_pb2_grpc.AnalyticsServiceStub:
    return analytics_service_pb2_grpc.AnalyticsServiceStub(client.channel)


async def _audit_trail(admin: Client, session: str, *, at_least: int, seconds: float = 60) -> list[event_pb2.Event]:
    """The session's events as svc_analytics serves them, once ``at_least`` are in and no
    more came for 2 s (the last ones of a turn follow its end by a relay's round)."""
    deadline = time.monotonic() + seconds
    seen, still_since = -1, time.monotonic()
    while True:
        events: list[event_pb2.Event] = []
        token = ""
        while True:
            reply = await _analytics(admin).QueryAuditEvents(
                apb.QueryAuditEventsRequest(parent=admin.tenant, session=session, page_size=50, page_token=token),
                metadata=admin.metadata,
                timeout=30,
            )
            events.extend(reply.events)
            token = reply.next_page_token
            if not token:
                break
        now = time.monotonic()
        if len(events) != seen:
            seen, still_since = len(events), now
        elif len(events) >= at_least and now - still_since >= 2.0:
            return events
        assert now < deadline, f"the audit trail has {len(events)} of at least {at_least} events"
        await asyncio.sleep(0.5)


async def _one_turn(client: Client, session: str, text: str) -> list[Any]:
    """The events of the turn this message starts, to its end."""
    stream = client.events(session)
    turn = await client.send(session, text)
    return [e for e in await _read_turn(stream, turn.name) if e.turn == turn.name]


async def test_the_events_of_real_conversations_are_in_the_audit_trail_and_the_metrics(mesh: RunningStack) -> None:
    tenant, client = await _tenant(mesh)
    admin = await tenant_admin(mesh, tenant)
    started = datetime.now(UTC) - timedelta(minutes=5)
    session = await client.session()
    for text in ("hello", "what is two plus two?"):
        await _one_turn(client, session.name, text)

    turns_started = 2
    events = await _audit_trail(admin, session.name, at_least=turns_started * 2 + 2)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds.count("turn_started") == turns_started
    assert kinds.count("turn_completed") == turns_started
    assert len({e.event_id for e in events}) == len(events), "an event is in the audit trail twice"
    assert [e.event_time.ToDatetime() for e in events] == sorted(e.event_time.ToDatetime() for e in events)
    calls = [e.model_call_completed for e in events if e.WhichOneof("payload") == "model_call_completed"]
    assert calls, "the turns made model calls"

    # Nothing of this tenant may come from another tenant, and the numbers are the events'.
    request = apb.QueryMetricsRequest(
        parent=admin.tenant,
        queries=[
            apb.MetricQuery(metric=M.METRIC_TURNS, aggregation=M.AGGREGATION_COUNT),
            apb.MetricQuery(metric=M.METRIC_TOKENS, aggregation=M.AGGREGATION_SUM),
            apb.MetricQuery(metric=M.METRIC_TIME_TO_FIRST_TOKEN, aggregation=M.AGGREGATION_MEAN),
            apb.MetricQuery(metric=M.METRIC_MODEL_FAILURE_RATE, aggregation=M.AGGREGATION_MEAN),
        ],
    )
    request.start_time.FromDatetime(started)
    request.end_time.FromDatetime(started + timedelta(minutes=30))
    request.bucket_width.FromSeconds(1800)  # one bucket
    reply = await _analytics(admin).QueryMetrics(request, metadata=admin.metadata, timeout=30)
    series = {s.metric: s for s in reply.series}

    def total(metric: int) -> float:
        return sum(p.value for p in series[metric].points)

    def samples(metric: int) -> int:
        return sum(p.sample_count for p in series[metric].points)

    assert total(M.METRIC_TURNS) == turns_started
    assert total(M.METRIC_TOKENS) == sum(c.usage.input_tokens + c.usage.output_tokens for c in calls)
    primary_ttft = [
        c.usage.time_to_first_token.seconds + c.usage.time_to_first_token.nanos / 1e9
        for c in calls
        if c.usage.role == PRIMARY and c.usage.HasField("time_to_first_token")
    ]
    assert samples(M.METRIC_TIME_TO_FIRST_TOKEN) == len(primary_ttft)
    assert len(series[M.METRIC_TIME_TO_FIRST_TOKEN].points) == 1
    assert series[M.METRIC_TIME_TO_FIRST_TOKEN].points[0].value == pytest.approx(statistics.fmean(primary_ttft))
    failed = sum(1 for c in calls if c.failure_reason)
    assert samples(M.METRIC_MODEL_FAILURE_RATE) == len(calls)
    assert sum(p.value * p.sample_count for p in series[M.METRIC_MODEL_FAILURE_RATE].points) == pytest.approx(failed)


def _skm(mesh: RunningStack, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "skm_cli", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return done


def _bearer(client: Client) -> str:
    (_, value), *_ = client.metadata
    return value.removeprefix("Bearer ")


def _set_budget(mesh: RunningStack, tenant: str, limit_usd: float) -> str:
    """As the mesh's operator would: `skm budget set --mesh`."""
    _skm(
        mesh,
        "budget",
        "set",
        "--mesh",
        "--mesh-key",
        str(mesh.mesh_key_file),
        "--policy-addr",
        mesh.services["policy"].addr,
        "--tenant",
        tenant,
        "--limit-usd",
        str(limit_usd),
    )
    return f"model_budget:tenants/{tenant}/modelBudgets/primary"


async def _spent(mesh: RunningStack, tenant: str) -> float:
    async with signed_channel(mesh.services["analytics"].addr) as channel:
        reply = await analytics_service_pb2_grpc.AnalyticsServiceStub(channel).GetModelSpend(
            apb.GetModelSpendRequest(tenant=f"tenants/{tenant}", role=PRIMARY), timeout=10
        )
    assert reply.spent.currency_code == "USD"
    return reply.spent.units + reply.spent.nanos / 1e9


async def test_spending_past_the_budget_refuses_the_next_model_call_and_the_audit_says_why(
    mesh: RunningStack,
) -> None:
    tenant, client = await _tenant(mesh)
    admin = await tenant_admin(mesh, tenant)
    assert mesh.llm is not None
    # Dear on purpose: any call costs more than the budget's limit.
    priced = f"models/priced-{uuid.uuid4().hex[:8]}"
    await register_model(
        mesh,
        name=priced,
        display_name="the tiny engine, priced",
        endpoint_uri=mesh.llm_url,
        served_model=mesh.llm.aliases[0],
        capabilities=[CHAT, profiles_model_pb2.MODEL_CAPABILITY_STRUCTURED_OUTPUT],
        usd_per_million_tokens=50_000.0,
    )
    await set_profile(admin, PRIMARY, [priced])
    budget = _set_budget(mesh, tenant, limit_usd=0.01)

    session = await client.session()
    first = await _one_turn(client, session.name, "hello")
    spent_in_turn = [
        e.model_call.usage
        for e in first
        if e.WhichOneof("event") == "model_call" and e.model_call.usage.role == PRIMARY
    ]
    assert spent_in_turn
    assert spent_in_turn[0].model == priced
    deadline = time.monotonic() + 60
    while (spent := await _spent(mesh, tenant)) <= 0.01:
        assert time.monotonic() < deadline, f"svc_analytics never saw the spend (has {spent})"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.5)  # svc_conversation reuses a spend it read for 2 s

    second = await _one_turn(client, session.name, "and again")
    calls = [e for e in second if e.WhichOneof("event") == "model_call" and e.model_call.usage.role == PRIMARY]
    assert calls == [], "no PRIMARY model was called"
    states = [e.turn_state_changed for e in second if e.WhichOneof("event") == "turn_state_changed"]
    assert states[-1].state in TERMINAL
    assert states[-1].reason == "BUDGET_EXCEEDED"

    denial = await _audit_event(
        admin,
        "policy_decided",
        lambda e: e.policy_decided.check.object == budget and e.policy_decided.decision.reason == "BUDGET_EXCEEDED",
    )
    assert denial.policy_decided.decision.verdict == policy_decision_pb2.VERDICT_DENY
    assert denial.policy_decided.check.relation == "can_spend"
    ended = await _audit_event(
        admin,
        "turn_completed",
        lambda e: e.session == session.name and e.turn_completed.turn.failure_reason == "BUDGET_EXCEEDED",
    )
    assert ended.turn_completed.turn.state == turn_pb2.Turn.STATE_FAILED

    # svc_analytics announced the crossing itself, once, with the budget's numbers.
    exceeded = await _audit_event(admin, "model_budget_exceeded", lambda e: True)
    crossing = exceeded.model_budget_exceeded
    assert (exceeded.source, crossing.budget, crossing.role) == ("analytics", budget, PRIMARY)
    assert (crossing.limit.currency_code, crossing.limit.units, crossing.limit.nanos) == ("USD", 0, 10_000_000)
    assert crossing.spent.units + crossing.spent.nanos / 1e9 > 0.01
    every = await _analytics(admin).QueryAuditEvents(
        apb.QueryAuditEventsRequest(parent=admin.tenant, event_types=["model_budget_exceeded"]),
        metadata=admin.metadata,
        timeout=30,
    )
    assert [e.event_id for e in every.events] == [exceeded.event_id]

    # What the tenant's admin sees, through Envoy.
    shown = json.loads(_skm(mesh, "budget", "show", "--tenant", tenant, "--json", token=_bearer(admin)).stdout)
    assert shown["limit_usd"] == 0.01
    assert shown["spent_usd"] > 0.01
    assert shown["spenders"] == [f"tenant:tenants/{tenant}#member"]


async def _audit_event(
    admin: Client, event_type: str, wanted: Callable[[event_pb2.Event], bool], seconds: float = 60
) -> event_pb2.Event:
    """The first event of the tenant's audit trail of that type that is ``wanted``."""
    deadline = time.monotonic() + seconds
    while True:
        token = ""
        while True:
            reply = await _analytics(admin).QueryAuditEvents(
                apb.QueryAuditEventsRequest(
                    parent=admin.tenant, event_types=[event_type], page_size=1000, page_token=token
                ),
                metadata=admin.metadata,
                timeout=30,
            )
            for event in reply.events:
                if wanted(event):
                    return event
            token = reply.next_page_token
            if not token:
                break
        assert time.monotonic() < deadline, f"no such {event_type} event in the audit trail"
        await asyncio.sleep(0.5)
