"""The transactional outbox: events written with the state change they describe, then relayed
to Kafka, so a Kafka outage delays events but loses none.

Each service owns `<schema>.outbox` in its own Postgres schema. A use case that changes
state calls `add_events(conn, schema, records)` inside its own transaction; the same
transaction sends a NOTIFY so the relay wakes at once. `OutboxRelay` publishes unpublished
rows in order (acks=all, idempotent producer) and marks them published; on any Kafka error
it leaves them for the next attempt. Several copies of a service may run a relay; one
publishes at a time, so records keep their order. Delivery is at least once: a crash between the send
and the mark resends a batch, with the same `event_id`s, which consumers use to drop
duplicates.

Events that describe no state change (e.g. a policy verdict) go through `BufferedOutbox`:
added in memory off the hot path and written in batches every few milliseconds, then
relayed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from skm_runtime.records import OutboxRecord

log = logging.getLogger("skm.outbox")


_CLOSE_SECONDS = 5.0


async def closed(closing: Awaitable[None]) -> None:
    """Close a Kafka client, also when this task is being cancelled, within a bound."""
    try:
        await asyncio.wait_for(asyncio.shield(closing), _CLOSE_SECONDS)
    except (TimeoutError, KafkaError, OSError):
        log.warning("a Kafka client did not close cleanly")


def durable_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer whose acknowledged sends are durable: every in-sync replica has them
    (acks=all), and a send retried after a lost answer is written once (idempotent)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=10_000)


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int = 3) -> None:
    """Create whichever of the topics Kafka does not have yet (3 partitions, 1 replica here;
    a deployment creates its topics itself, with its own replication)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    finally:
        # Also after a start cut short (cancelled, refused): aiokafka leaves sockets open otherwise.
        await closed(admin.close())


def outbox_ddl(schema: str) -> str:
    return f"""
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.outbox (
        seq bigserial PRIMARY KEY,
        event_id uuid NOT NULL UNIQUE,
        topic text NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
    );
    CREATE INDEX IF NOT EXISTS outbox_unpublished ON {schema}.outbox (seq) WHERE published_at IS NULL;
    """


def _channel(schema: str) -> str:
    return f"{schema}_outbox"


async def add_events(conn: Any, schema: str, records: Sequence[OutboxRecord]) -> None:
    """Write records inside the caller's transaction (`conn` is an asyncpg connection)."""
    if not records:
        return
    await conn.executemany(
        f"INSERT INTO {schema}.outbox (event_id, topic, key, value) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (event_id) DO NOTHING",
        [(r.event_id, r.topic, r.key, r.value) for r in records],
    )
    await conn.execute(f"NOTIFY {_channel(schema)}")


def outbox_insert(schema: str, first: int, *, where: str = "TRUE") -> str:
    """An INSERT of records given as four arrays, parameters `$first` to `$first+3` (see
    `outbox_arrays`), kept in their order, to embed as a data-modifying CTE in a statement
    that writes a state change and its events in one round trip (`where`: a condition, e.g.
    that the state change happened). The statement must also evaluate `outbox_notify(schema)`
    so the relay wakes when it commits."""
    p = [f"${first + i}" for i in range(4)]
    return (
        f"INSERT INTO {schema}.outbox (event_id, topic, key, value)"
        " SELECT r.event_id, r.topic, r.key, r.value"
        f" FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::bytea[], {p[3]}::bytea[])"
        f" WITH ORDINALITY AS r(event_id, topic, key, value, n) WHERE {where} ORDER BY r.n"
        " ON CONFLICT (event_id) DO NOTHING"
    )


def outbox_arrays(records: Sequence[OutboxRecord]) -> list[list[Any]]:
    """The four array parameters of `outbox_insert`."""
    return [
        [r.event_id for r in records],
        [r.topic for r in records],
        [r.key for r in records],
        [r.value for r in records],
    ]


def outbox_notify(schema: str) -> str:
    """An expression waking the relay when the transaction commits."""
    return f"pg_notify('{_channel(schema)}', '')"


class BufferedOutbox:
    """Collects records in memory and writes them in batches (for events of no state change).

    A crash loses at most the last `interval` seconds of such events; `close()` flushes.
    """

    def __init__(self, pool: asyncpg.Pool, schema: str, *, interval: float = 0.02, limit: int = 100_000):
        self._pool = pool
        self._schema = schema
        self._interval = interval
        self._limit = limit
        self._pending: list[OutboxRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, record: OutboxRecord) -> None:
        if len(self._pending) >= self._limit:
            # Postgres is gone for long: shed the oldest, count it, keep serving.
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(record)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._schema}-buffered-outbox")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._flush(), _CLOSE_SECONDS)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("outbox batch lost at shutdown", extra={"fields": {"error": type(exc).__name__}})

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._interval)
            self._wake.clear()
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001  # whatever a database restart throws, never stop writing
                log.warning("outbox batch not written yet", extra={"fields": {"error": type(exc).__name__}})
                self._wake.set()
                await asyncio.sleep(1.0)

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await add_events(conn, self._schema, batch)
        except BaseException:
            self._pending[:0] = batch
            raise


class OutboxRelay:
    """Publishes a schema's outbox to Kafka, in order, until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        bootstrap: str,
        *,
        topics: Sequence[str],
        batch: int = 500,
        poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._bootstrap = bootstrap
        self._topics = tuple(topics)
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._schema}-outbox-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a Kafka client stuck in its own shutdown must not hold up the service's.
            await asyncio.wait({self._task}, timeout=_CLOSE_SECONDS * 2)

    async def _run(self) -> None:
        listener: Any = None
        try:
            backoff = 0.2
            while True:
                producer = None
                try:
                    if listener is None:
                        listener = await self._pool.acquire()
                        await listener.add_listener(_channel(self._schema), self._notified)
                    await self._ensure_topics()
                    producer = durable_producer(self._bootstrap)
                    await producer.start()
                    backoff = 0.2
                    await self._publish_forever(producer)
                except Exception as exc:  # noqa: BLE001  # whatever Kafka or a database restart throws, go on
                    log.warning(
                        "outbox relay waiting for Kafka or Postgres",
                        extra={"fields": {"schema": self._schema, "error": type(exc).__name__, "retry_s": backoff}},
                    )
                    if listener is not None and not isinstance(exc, KafkaError):
                        # Its connection may be gone with the server: take a fresh one.
                        await self._drop(listener)
                        listener = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                finally:
                    if producer is not None:
                        await closed(producer.stop())
        finally:
            if listener is not None:
                await self._drop(listener)

    async def _drop(self, listener: Any) -> None:
        """Stops listening on a connection and gives it back, whatever state it is in (after
        a database restart it may be closed, or already taken back by the pool)."""
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await listener.remove_listener(_channel(self._schema), self._notified)
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._pool.release(listener)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _publish_forever(self, producer: AIOKafkaProducer) -> None:
        while True:
            sent = await self._publish_batch(producer)
            if sent < self._batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _ensure_topics(self) -> None:
        await ensure_topics(self._bootstrap, self._topics)

    async def _publish_batch(self, producer: AIOKafkaProducer) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            # One publisher per schema at a time, whatever the number of service copies:
            # rows skipped by a second publisher would overtake the first one's, and Kafka
            # would see a session's events out of order.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", f"skm.outbox:{self._schema}"):
                return 0
            rows = await conn.fetch(
                f"SELECT seq, topic, key, value FROM {self._schema}.outbox"
                " WHERE published_at IS NULL ORDER BY seq LIMIT $1",
                self._batch,
            )
            if not rows:
                return 0
            sends = [await producer.send(row["topic"], value=row["value"], key=row["key"]) for row in rows]
            await asyncio.gather(*sends)
            await conn.execute(
                f"UPDATE {self._schema}.outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                [row["seq"] for row in rows],
            )
        self.published += len(rows)
        return len(rows)
