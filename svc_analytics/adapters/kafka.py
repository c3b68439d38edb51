"""The platform's topics as ingestion reads them (aiokafka), and the dead-letter topic.

One consumer group; offsets are committed only by `commit`, after the warehouse holds the
rows (never automatically). A new group starts from the earliest offset, so a fresh
warehouse gets everything the topics still keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from skm_runtime.outbox import closed, durable_producer, ensure_topics
from svc_analytics.adapters.events import budget_exceeded_event, decode
from svc_analytics.errors import EventLogUnavailable
from svc_analytics.model import BudgetCrossed, Partition, Poison, Position, Record

log = logging.getLogger("skm.analytics.kafka")

_QUIET_SECONDS = 1.0


class KafkaEventLog:
    """Implements ports.EventLog over one aiokafka consumer."""

    def __init__(self, bootstrap: str, topics: Sequence[str], group: str, *, instance: str, poll_records: int) -> None:
        self._bootstrap = bootstrap
        self._topics = tuple(topics)
        self._group = group
        self._instance = instance
        self._poll_records = poll_records
        self._consumer: AIOKafkaConsumer | None = None

    async def _ready(self) -> AIOKafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        try:
            await ensure_topics(self._bootstrap, self._topics)
            consumer = AIOKafkaConsumer(
                *self._topics,
                bootstrap_servers=self._bootstrap,
                group_id=self._group,
                # Static membership: a restarted process (same instance) takes its partitions
                # back at once instead of after the dead one's session times out.
                group_instance_id=self._instance,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # Only what the producers' transactions (none today) committed.
                isolation_level="read_committed",
                max_partition_fetch_bytes=4 * 1024 * 1024,
                request_timeout_ms=10_000,
            )
            await consumer.start()
        except (KafkaError, OSError) as exc:
            raise EventLogUnavailable(f"Kafka cannot be reached: {type(exc).__name__}") from exc
        self._consumer = consumer
        return consumer

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await closed(consumer.stop())

    async def next_batch(self, max_records: int, max_seconds: float) -> list[Record]:
        consumer = await self._ready()
        batch: list[Record] = []
        deadline: float | None = None
        try:
            while len(batch) < max_records:
                left = _QUIET_SECONDS if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                got = await consumer.getmany(
                    timeout_ms=max(1, int(left * 1000)), max_records=min(self._poll_records, max_records - len(batch))
                )
                for tp, messages in got.items():
                    for m in messages:
                        batch.append(decode(Position(tp.topic, tp.partition, m.offset, m.timestamp), m.key, m.value))
                if not batch:
                    return []
                if deadline is None:
                    deadline = time.monotonic() + max_seconds
        except KafkaError as exc:
            raise EventLogUnavailable(f"reading Kafka failed: {type(exc).__name__}") from exc
        return batch

    async def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        consumer = await self._ready()
        try:
            await consumer.commit({TopicPartition(p.topic, p.partition): o for p, o in next_offsets.items()})
        except KafkaError as exc:
            raise EventLogUnavailable(f"committing offsets failed: {type(exc).__name__}") from exc

    async def rewind(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            for tp in consumer.assignment():
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
        except (KafkaError, AssertionError) as exc:
            # Without the committed offsets, start over: a fresh consumer reads from them.
            await self.close()
            raise EventLogUnavailable(f"rewinding failed: {type(exc).__name__}") from exc


class _Topic:
    """One topic written with a durable producer, started on first use and dropped after a
    failure (the next send starts a fresh one)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self.name = topic
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def send_all(self, records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> None:
        """(key, value, headers) each, acknowledged on return; EventLogUnavailable otherwise."""
        try:
            async with self._lock:
                if self._producer is None:
                    await ensure_topics(self._bootstrap, (self.name,))
                    producer = durable_producer(self._bootstrap)
                    await producer.start()
                    self._producer = producer
                producer = self._producer
            sends = [await producer.send(self.name, value=v, key=k, headers=h) for k, v, h in records]
            await asyncio.gather(*sends)
        except (KafkaError, OSError) as exc:
            await self.close()
            raise EventLogUnavailable(f"{self.name} cannot be written: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await closed(producer.stop())


class KafkaDeadLetters:
    """Implements ports.DeadLetters: the record as it was, with why and where it came from
    in its headers (skm-dead-letter-reason, -detail, -topic, -partition, -offset)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = _Topic(bootstrap, topic)

    async def send(self, poisons: Sequence[Poison]) -> None:
        await self._topic.send_all([(p.key, p.value, _headers(p)) for p in poisons])

    async def close(self) -> None:
        await self._topic.close()


class KafkaAnnouncements:
    """Implements ports.Announcements: the events svc_analytics emits, on the `analytics`
    topic, keyed by tenant like every event outside a session."""

    def __init__(self, bootstrap: str, topic: str = "analytics") -> None:
        self._topic = _Topic(bootstrap, topic)

    async def announce(self, crossing: BudgetCrossed) -> None:
        event = budget_exceeded_event(crossing)
        await self._topic.send_all([(event.tenant.encode(), event.SerializeToString(), [])])

    async def close(self) -> None:
        await self._topic.close()


def _headers(p: Poison) -> list[tuple[str, bytes]]:
    return [
        ("skm-dead-letter-reason", p.reason.value.encode()),
        ("skm-dead-letter-detail", p.detail.encode()),
        ("skm-dead-letter-topic", p.position.topic.encode()),
        ("skm-dead-letter-partition", str(p.position.partition).encode()),
        ("skm-dead-letter-offset", str(p.position.offset).encode()),
    ]
