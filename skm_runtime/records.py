"""What a service hands the outbox: one event, as a Kafka record. A plain value, apart from
the relay (skm_runtime.outbox) and its drivers, so code that builds events imports no driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One Kafka record to publish: its topic, key, protobuf value and stable event id."""

    event_id: str
    topic: str
    key: bytes
    value: bytes
