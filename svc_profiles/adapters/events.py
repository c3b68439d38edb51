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
from svc_profiles.model import AutoSelected

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


# Ids of events derived from what they announce, so announcing the same thing twice is one event.
_EVENT_NAMESPACE = uuid.UUID("6f1d3c1e-5d0b-4a53-9d2f-0f6a2b1c9e11")


def auto_selected_event(tenant: str, change: AutoSelected, at: datetime) -> event_pb2.Event:
    """ModelProfileAutoSelected; its id is stable for (run, profile)."""
    event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{change.scoring_run}|{change.model_profile}|auto"))
    event = envelope(tenant, at, event_id=event_id)
    event.model_profile_auto_selected.CopyFrom(
        event_pb2.ModelProfileAutoSelected(
            model_profile=change.model_profile,
            previous_model=change.previous_model,
            model=change.model,
            previous_revision_id=change.previous_revision_id,
            revision_id=change.revision_id,
            scoring_run=change.scoring_run,
            summary=change.summary,
        )
    )
    return event
