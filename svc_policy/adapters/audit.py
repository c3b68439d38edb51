"""Decisions as audit events: built off the hot path and written to the outbox in batches."""

from __future__ import annotations

from opentelemetry import trace

from skm_runtime.outbox import BufferedOutbox
from svc_policy.adapters.postgres import event_record
from svc_policy.convert import decision_event
from svc_policy.model import AccessCheck, Decision, Principal

TOPIC_AUDIT = "audit"


class OutboxAuditTrail:
    def __init__(self, outbox: BufferedOutbox) -> None:
        self._outbox = outbox

    def decided(self, check: AccessCheck, decision: Decision, tenant: str, principal: Principal | None) -> None:
        span = trace.get_current_span().get_span_context()
        trace_id = format(span.trace_id, "032x") if span.is_valid else ""
        event = decision_event(check, decision, tenant, principal, cached=decision.cached, trace_id=trace_id)
        self._outbox.add(event_record(event, TOPIC_AUDIT))
