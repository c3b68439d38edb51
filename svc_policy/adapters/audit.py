"""Decisions as audit events: noted on the hot path, built and written off it.

A decision is noted as the few values its event needs (the check, the decision, the tenant,
the principal, the trace id, the time). The protobuf `PolicyDecided` events are built for every noted
decision at once, in a callback the event loop runs after the current step (so after the
reply to the caller is on its way), and handed to the buffered outbox, which writes them in
batches. Nothing is dropped: `flush()` builds whatever is still noted (at shutdown, before
the outbox's own last flush).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from opentelemetry import trace

from skm_runtime.access import AccessCheck, Decision, Principal
from skm_runtime.records import OutboxRecord
from svc_policy.adapters.postgres import event_record
from svc_policy.convert import decision_event

TOPIC_AUDIT = "audit"
log = logging.getLogger("skm.policy.audit")

# check, decision, tenant, principal, trace id (0: none), time decided (ns since the epoch),
# how long deciding took (s)
_Noted = tuple[AccessCheck, Decision, str, Principal | None, int, int, float]


class Outbox(Protocol):
    """Where records go to be written in batches (`skm_runtime.outbox.BufferedOutbox`)."""

    def add(self, record: OutboxRecord) -> None: ...


class OutboxAuditTrail:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._noted: list[_Noted] = []

    def decided(
        self, check: AccessCheck, decision: Decision, tenant: str, principal: Principal | None, latency_s: float
    ) -> None:
        span = trace.get_current_span().get_span_context()
        trace_id = span.trace_id if span.is_valid else 0
        self._noted.append((check, decision, tenant, principal, trace_id, time.time_ns(), latency_s))
        if len(self._noted) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no running loop (a synchronous caller): build it now
                self.flush()

    def flush(self) -> None:
        """Build the events of every noted decision and hand them to the outbox."""
        noted, self._noted = self._noted, []
        for check, decision, tenant, principal, trace_id, decided_ns, latency_s in noted:
            try:
                event = decision_event(
                    check,
                    decision,
                    tenant,
                    principal,
                    cached=decision.cached,
                    trace_id=format(trace_id, "032x") if trace_id else "",
                    time_ns=decided_ns,
                    latency_s=latency_s,
                )
            except Exception:  # one event that cannot be built must not cost the others
                log.exception("a decision's audit event could not be built", extra={"fields": {"tenant": tenant}})
                continue
            self._outbox.add(event_record(event, TOPIC_AUDIT))
