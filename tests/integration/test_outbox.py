"""The outbox relay on real PostgreSQL and Kafka: in order, and nothing lost while Kafka is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaConsumer

from skm_runtime.outbox import BufferedOutbox, OutboxRelay, add_events, outbox_ddl
from skm_runtime.records import OutboxRecord
from skm_stack import RunningStack


async def _consume(bootstrap: str, topic: str, count: int, settle_ms: int = 1500) -> list[tuple[str, bytes]]:
    """Everything on the topic once `count` records arrived and nothing more came for a while."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[tuple[str, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen.extend((record.key.decode(), record.value) for record in records)
            for records in (await consumer.getmany(timeout_ms=settle_ms)).values():
                seen.extend((record.key.decode(), record.value) for record in records)
    finally:
        await consumer.stop()
    return seen


def _records(topic: str, key: str, first: int, last: int) -> list[OutboxRecord]:
    return [OutboxRecord(str(uuid.uuid4()), topic, key.encode(), f"event-{i}".encode()) for i in range(first, last)]


async def test_events_written_while_kafka_is_down_arrive_once_it_is_back(
    stack: RunningStack, stack_factory: Callable[..., RunningStack]
) -> None:
    own = stack_factory(components=("kafka",))
    schema = f"outbox_test_{uuid.uuid4().hex[:8]}"
    topic = f"test.outbox.{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    relay = OutboxRelay(pool, schema, own.kafka_bootstrap, topics=(topic,), poll_seconds=0.2)
    try:
        async with pool.acquire() as conn:
            await conn.execute(outbox_ddl(schema))
        relay.start()
        async with pool.acquire() as conn, conn.transaction():
            await add_events(conn, schema, _records(topic, "session-1", 0, 5))
        assert [v for _, v in await _consume(own.kafka_bootstrap, topic, 5)] == [
            f"event-{i}".encode() for i in range(5)
        ]

        assert own.kafka is not None
        own.kafka.stop()
        buffered = BufferedOutbox(pool, schema, interval=0.01)
        buffered.start()
        for record in _records(topic, "session-1", 5, 10):
            buffered.add(record)
        await buffered.close()  # written to Postgres while Kafka is gone
        async with pool.acquire() as conn:
            waiting = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")
        assert waiting == 5

        await asyncio.to_thread(own.start_server, "kafka")
        got = await _consume(own.kafka_bootstrap, topic, 10)
        assert [v for _, v in got] == [f"event-{i}".encode() for i in range(10)]  # in order, each once
        assert {k for k, _ in got} == {"session-1"}
        async with pool.acquire() as conn:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL") == 0
    finally:
        await relay.close()
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def test_two_relays_on_one_outbox_keep_the_order(stack: RunningStack) -> None:
    """Two copies of a service relay the same outbox: every record once, in outbox order."""
    schema = f"outbox_test_{uuid.uuid4().hex[:8]}"
    topic = f"test.outbox.{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=6)
    assert pool is not None
    relays = [
        OutboxRelay(pool, schema, stack.kafka_bootstrap, topics=(topic,), batch=5, poll_seconds=0.05) for _ in range(2)
    ]
    try:
        async with pool.acquire() as conn:
            await conn.execute(outbox_ddl(schema))
        for relay in relays:
            relay.start()
        for start in range(0, 200, 10):
            async with pool.acquire() as conn, conn.transaction():
                await add_events(conn, schema, _records(topic, "session-1", start, start + 10))
        got = await _consume(stack.kafka_bootstrap, topic, 200)
        assert [v for _, v in got] == [f"event-{i}".encode() for i in range(200)]
    finally:
        for relay in relays:
            await relay.close()
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
