"""svc_policy's audit trail: a decision is noted on the hot path and its PolicyDecided event
built once the event loop moves on; every noted decision becomes exactly one event."""

from __future__ import annotations

import asyncio
import time

from skm.events.v1 import event_pb2
from skm_runtime.access import AccessCheck, Decision, Principal, Verdict
from skm_runtime.records import OutboxRecord
from svc_policy.adapters.audit import TOPIC_AUDIT, OutboxAuditTrail

CHECK = AccessCheck("user:tenants/t1/users/u1", "can_execute", "tool:tenants/t1/tools/search", {"cost": 2})
PRINCIPAL = Principal("tenants/t1", "tenants/t1/users/u1", ("member",))


class _Outbox:
    def __init__(self) -> None:
        self.records: list[OutboxRecord] = []

    def add(self, record: OutboxRecord) -> None:
        self.records.append(record)


async def test_events_are_built_after_the_current_step_one_per_decision() -> None:
    outbox = _Outbox()
    trail = OutboxAuditTrail(outbox)
    before = time.time_ns()
    trail.decided(CHECK, Decision(Verdict.ALLOW, "ROLE_ALLOWS", "d1", cached=True), "tenants/t1", PRINCIPAL, 0.00025)
    trail.decided(CHECK, Decision(Verdict.DENY, "NOT_PERMITTED", "d2"), "tenants/t1", None, 1.5)
    after = time.time_ns()
    assert outbox.records == []  # nothing built on the caller's path
    await asyncio.sleep(0)
    assert [r.topic for r in outbox.records] == [TOPIC_AUDIT, TOPIC_AUDIT]
    events = [event_pb2.Event.FromString(r.value) for r in outbox.records]
    assert [e.policy_decided.decision.decision_id for e in events] == ["d1", "d2"]
    first, second = events
    assert first.tenant == "tenants/t1"
    assert first.source == "policy"
    assert first.principal.user == PRINCIPAL.user
    assert not second.HasField("principal")
    assert first.policy_decided.cached
    assert not second.policy_decided.cached
    assert first.policy_decided.check.object == CHECK.object
    assert dict(first.policy_decided.check.context) == {"cost": 2}
    assert second.policy_decided.decision.reason == "NOT_PERMITTED"
    assert (first.policy_decided.latency.seconds, first.policy_decided.latency.nanos) == (0, 250_000)
    assert (second.policy_decided.latency.seconds, second.policy_decided.latency.nanos) == (1, 500_000_000)
    # The time the decision was made, not the time its event was built.
    assert before <= first.event_time.ToNanoseconds() <= after
    assert len({r.event_id for r in outbox.records}) == 2
    assert outbox.records[0].key == b"tenants/t1"


def test_without_a_running_loop_the_event_is_built_at_once() -> None:
    outbox = _Outbox()
    OutboxAuditTrail(outbox).decided(CHECK, Decision(Verdict.ALLOW, "ROLE_ALLOWS", "d1"), "tenants/t1", None, 0.001)
    assert len(outbox.records) == 1


async def test_flush_builds_whatever_is_still_noted() -> None:
    outbox = _Outbox()
    trail = OutboxAuditTrail(outbox)
    trail.decided(CHECK, Decision(Verdict.ALLOW, "ROLE_ALLOWS", "d1"), "tenants/t1", None, 0.001)
    trail.flush()
    assert len(outbox.records) == 1
    await asyncio.sleep(0)  # the scheduled build finds nothing left to do
    assert len(outbox.records) == 1
