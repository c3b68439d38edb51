"""Quality measurements as AudioQualityMeasured events (skm.events.v1.Event, source "audio").

A measurement changes no state of svc_audio, so its event goes through the buffered outbox:
`record` builds the event and hands it over at once; the outbox writes batches to
`audio.outbox` in Postgres and the relay publishes them to the topic "analytics" (which
svc_analytics ingests), so a Kafka outage delays the events but loses none. The record
key is the tenant, so one tenant's measurements keep their order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from skm.events.v1 import event_pb2
from skm_runtime.outbox import BufferedOutbox, OutboxRelay, outbox_ddl
from skm_runtime.records import OutboxRecord
from svc_audio.convert import quality_metrics
from svc_audio.model import QualityReport

SCHEMA = "audio"
SOURCE = "audio"
TOPIC_ANALYTICS = "analytics"

_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('skm.audio.migrate'))"


def quality_event(report: QualityReport, at: datetime) -> event_pb2.Event:
    """The AudioQualityMeasured event of a report, with a new event id."""
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return event_pb2.Event(
        event_id=str(uuid.uuid4()),
        tenant=report.tenant,
        source=SOURCE,
        event_time=stamp,
        audio_quality_measured=event_pb2.AudioQualityMeasured(
            voice_stream=report.voice_stream,
            turn=report.turn,
            persona=report.persona,
            recognizer=report.recognizer,
            voice=report.voice,
            metrics=quality_metrics(report.quality),
        ),
    )


def _now() -> datetime:
    return datetime.now(UTC)


class OutboxQualityLog:
    """The QualityLog port over a buffered outbox (`skm_runtime.outbox.BufferedOutbox`)."""

    def __init__(self, outbox: BufferedOutbox, *, now: Callable[[], datetime] = _now) -> None:
        self._outbox = outbox
        self._now = now

    def record(self, report: QualityReport) -> None:
        event = quality_event(report, self._now())
        self._outbox.add(
            OutboxRecord(event.event_id, TOPIC_ANALYTICS, event.tenant.encode(), event.SerializeToString())
        )


class AudioOutbox(NamedTuple):
    """svc_audio's outbox: the pool it writes with, the buffer quality events go to, and
    the relay that publishes them. The caller starts the buffer and the relay once serving,
    and at shutdown closes the buffer (its last flush), then the relay, then the pool."""

    pool: asyncpg.Pool
    outbox: BufferedOutbox
    relay: OutboxRelay


async def open_outbox(dsn: str, kafka_bootstrap: str) -> AudioOutbox:
    """Connects to Postgres, creates the schema "audio" and its outbox table (one migrating
    process at a time), and builds the buffer and the relay for the topic "analytics"."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, command_timeout=10)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_MIGRATION_LOCK)
            await conn.execute(outbox_ddl(SCHEMA))
    except BaseException:
        await pool.close()
        raise
    return AudioOutbox(
        pool,
        BufferedOutbox(pool, SCHEMA),
        OutboxRelay(pool, SCHEMA, kafka_bootstrap, topics=(TOPIC_ANALYTICS,)),
    )
