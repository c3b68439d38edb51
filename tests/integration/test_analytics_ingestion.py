"""svc_analytics as a process on a real Kafka: each event counted exactly once through
SIGKILLs mid-batch and a Kafka outage; records that are not events dead-lettered while
ingestion goes on.

The service's warehouse is its own chdb folder, read after it stopped
(tests.support.chdb_probe: chdb allows one process per folder).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from skm.events.v1 import event_pb2
from skm_runtime.outbox import ensure_topics
from skm_stack import RunningStack
from skm_stack.services import ServiceSpec
from svc_analytics.settings import PLATFORM_TOPICS
from tests.conftest import StackFactory
from tests.support.analytics_events import event_id_of, model_call, turn_started

GROUP = "skm-analytics"
# What svc_analytics logs when a batch holds rows it wrote before (a kill between a write and
# its commit, then the batch read again).
_READ_AGAIN = "records already in the warehouse were skipped"
DEAD_LETTERS = "analytics.dead_letter"


def _service(batch_records: int) -> ServiceSpec:
    return ServiceSpec(
        name="analytics",
        module="svc_analytics",
        port=0,
        extra_env={
            "SKM_ANALYTICS_BATCH_RECORDS": str(batch_records),
            "SKM_ANALYTICS_BATCH_SECONDS": "0.2",
            "SKM_ANALYTICS_POLL_RECORDS": str(batch_records),
        },
    )


def _unknown_payload() -> bytes:
    """An Event envelope whose payload is a field this build does not know (a newer writer)."""
    known = event_pb2.Event(event_id=str(uuid.uuid4()), tenant="tenants/k1").SerializeToString()
    return known + bytes([0xFA, 0x07, 0x00])  # field 127, length-delimited, empty


class _Stream:
    """Publishes events (and the odd poison record) keyed by session, as the relays do."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        self.ids: list[str] = []
        self.poison = 0

    async def send(self, n: int, *, poison_every: int = 0) -> None:
        sends = []
        for i in range(n):
            tenant = f"tenants/i{i % 3}"
            value = model_call(tenant) if i % 2 else turn_started(tenant)
            self.ids.append(event_id_of(value))
            topic = "audit" if i % 5 else "policy.blocked"
            sends.append(await self.producer.send(topic, value=value, key=f"{tenant}/sessions/s{i % 7}".encode()))
            if poison_every and i % poison_every == poison_every - 1:
                bad = b"\xff\xfe not an event" if self.poison % 2 else _unknown_payload()
                sends.append(await self.producer.send("audit", value=bad, key=b"junk"))
                self.poison += 1
        await asyncio.gather(*sends)


async def _caught_up(bootstrap: str, seconds: float = 90.0) -> None:
    """Until the group has committed every partition's end offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p) for t in PLATFORM_TOPICS for p in (consumer.partitions_for_topic(t) or {0, 1, 2})
        ]
        deadline = time.monotonic() + seconds
        while True:
            ends = await consumer.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(GROUP)
            behind = {
                tp: end for tp, end in ends.items() if end and (committed.get(tp) is None or committed[tp].offset < end)
            }
            if not behind:
                return
            assert time.monotonic() < deadline, f"svc_analytics did not catch up: {behind}"
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()
        await admin.close()


async def _committed(admin: AIOKafkaAdminClient) -> int:
    """The group's committed offsets, summed over its partitions."""
    return sum(meta.offset for meta in (await admin.list_consumer_group_offsets(GROUP)).values())


async def _commits_past(admin: AIOKafkaAdminClient, before: int) -> None:
    """Until the group's committed offsets sum past `before`: a batch was written."""
    async with asyncio.timeout(60):
        while True:
            if await _committed(admin) > before:
                return
            await asyncio.sleep(0.05)


def _probe(folder: Path, sql: str) -> list[list[object]]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.chdb_probe", str(folder), sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows: list[list[object]] = json.loads(out.stdout)
    return rows


def _warehouse(stack: RunningStack) -> Path:
    return stack.state_dir / "analytics" / "chdb"


def _assert_exactly_once(folder: Path, ids: list[str]) -> None:
    stored = [str(r[0]) for r in _probe(folder, "SELECT event_id FROM events")]
    assert len(stored) == len(ids), f"{len(stored) - len(ids):+d} events"
    assert sorted(stored) == sorted(ids)
    typed = _probe(folder, "SELECT event_id FROM model_calls UNION ALL SELECT event_id FROM turns")
    assert sorted(str(r[0]) for r in typed) == sorted(ids)


async def _dead_lettered(bootstrap: str, expected: int) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(DEAD_LETTERS, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                got.extend({k: v.decode() for k, v in m.headers} for m in messages)
        return got
    finally:
        await consumer.stop()


async def test_five_sigkills_mid_batch_during_a_steady_stream_count_every_event_exactly_once(
    stack_factory: StackFactory,
) -> None:
    own = stack_factory(components=("kafka",))
    await ensure_topics(own.kafka_bootstrap, (*PLATFORM_TOPICS, DEAD_LETTERS))
    await asyncio.to_thread(own.start_services, [_service(batch_records=2000)])
    stream = _Stream(own.kafka_bootstrap)
    await stream.producer.start()
    try:
        stop = asyncio.Event()

        async def steady() -> None:
            # About 2,000 events/s, a few bad records among them.
            while not stop.is_set():
                await stream.send(100, poison_every=50)
                await asyncio.sleep(0.05)

        producing = asyncio.create_task(steady())
        admin = AIOKafkaAdminClient(bootstrap_servers=own.kafka_bootstrap)
        await admin.start()
        log = own.state_dir / "logs" / "analytics.log"
        mid_batch = kills = 0
        try:
            # Kill until five kills have fallen mid-batch (between a write and its commit:
            # the next process finds rows of its first batch already written), 25 at most.
            while mid_batch < 5 and kills < 25:
                # A burst faster than it ingests: once it commits again it is draining it,
                # batch after batch, one read while the one before is written, and the kill
                # lands in the middle of that, or not.
                before = await _committed(admin)
                burst = asyncio.create_task(stream.send(30_000))
                await _commits_past(admin, before)
                await asyncio.sleep(random.uniform(0.05, 0.4))
                skipped = log.read_text().count(_READ_AGAIN)
                await asyncio.to_thread(own.restart_service, "analytics", kill=True)
                kills += 1
                await burst
                # The new process's first batch is committed, then logged.
                await _commits_past(admin, await _committed(admin))
                await asyncio.sleep(0.5)
                mid_batch += log.read_text().count(_READ_AGAIN) > skipped
        finally:
            await admin.close()
        await asyncio.sleep(1.0)
        stop.set()
        await producing
    finally:
        await stream.producer.stop()
    await _caught_up(own.kafka_bootstrap)
    await asyncio.to_thread(own.services["analytics"].stop)

    assert mid_batch == 5, f"{mid_batch} of {kills} kills fell between a write and its commit"
    assert len(stream.ids) > 150_000
    _assert_exactly_once(_warehouse(own), stream.ids)
    dead = _probe(_warehouse(own), "SELECT reason, count() FROM dead_letters GROUP BY reason ORDER BY reason")
    assert dead == [["NOT_AN_EVENT", stream.poison // 2], ["UNKNOWN_PAYLOAD", stream.poison - stream.poison // 2]]
    # The topic gets each at least once (twice only when a kill fell between topic and table).
    headers = await _dead_lettered(own.kafka_bootstrap, stream.poison)
    assert {(h["skm-dead-letter-topic"], h["skm-dead-letter-offset"]) for h in headers} == {
        ("audit", str(r[1])) for r in _probe(_warehouse(own), "SELECT topic, offset FROM dead_letters")
    }


async def test_ingestion_resumes_from_the_committed_offsets_after_kafka_was_down(stack_factory: StackFactory) -> None:
    own = stack_factory(components=("kafka",))
    await ensure_topics(own.kafka_bootstrap, (*PLATFORM_TOPICS, DEAD_LETTERS))
    # Small batches: the outage falls while the first events are still being ingested.
    await asyncio.to_thread(own.start_services, [_service(batch_records=50)])
    stream = _Stream(own.kafka_bootstrap)
    await stream.producer.start()
    await stream.send(3000, poison_every=1000)
    await stream.producer.stop()
    assert own.kafka is not None
    await asyncio.to_thread(own.kafka.stop)
    await asyncio.sleep(4)  # the service finds Kafka gone and waits for it
    await asyncio.to_thread(own.start_server, "kafka")
    stream.producer = AIOKafkaProducer(bootstrap_servers=own.kafka_bootstrap, acks="all", enable_idempotence=True)
    await stream.producer.start()
    await stream.send(1000)
    await stream.producer.stop()
    await _caught_up(own.kafka_bootstrap)
    await asyncio.to_thread(own.services["analytics"].stop)

    assert len(stream.ids) == 4000
    _assert_exactly_once(_warehouse(own), stream.ids)
    assert _probe(_warehouse(own), "SELECT count() FROM dead_letters") == [[3]]
