"""svc_profiles's events as Kafka records for its outbox (skm.events.v1.Event, source
"profiles"): built here, at the edge, from domain values, and written by the Postgres store in
the transaction of the change each describes.

Topics: `profiles` (tenant onboarding, persona bundles, auto mode's changes) and
`model.profile.scored` (the scoring job). The record key is the tenant, so one tenant's events
keep their order.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from skm.events.v1 import event_pb2
from skm_runtime.records import OutboxRecord

TOPIC_PROFILES = "profiles"
TOPIC_SCORED = "model.profile.scored"
TOPICS = (TOPIC_PROFILES, TOPIC_SCORED)
SOURCE = "profiles"


def envelope(tenant: str, at: datetime, *, event_id: str = "") -> event_pb2.Event:
    """An Event with its header filled; the caller sets the payload. `event_id`: a stable id
    when the same event may be built twice (a retried step), else a new UUID."""
    event = event_pb2.Event(event_id=event_id or str(uuid.uuid4()), tenant=tenant, source=SOURCE)
    stamp = Timestamp()
    stamp.FromDatetime(at)
    event.event_time.CopyFrom(stamp)
    return event


def record(event: event_pb2.Event, topic: str = TOPIC_PROFILES) -> OutboxRecord:
    """The event as the outbox's record, keyed by its tenant."""
    return OutboxRecord(event.event_id, topic, event.tenant.encode(), event.SerializeToString())
