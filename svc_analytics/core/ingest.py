"""Ingestion: every record of the platform's topics into the warehouse, each event once.

A batch is read (up to N records or T seconds), written, and only then committed to Kafka.
What makes a redelivery harmless, whatever cut it short (a crash mid-batch, Kafka or the
warehouse going away, a relay publishing an event twice):

- Each table remembers, per partition, the highest offset it holds (the warehouse says so
  at start, and after any failure); a row at or below it is not written again. One insert
  per table per batch is atomic, and tables are written in a fixed order, so a batch cut
  short between two tables is finished by the next reading without repeating the first.
- ``events`` is written last. An event id it holds is an event whose rows are all durable:
  a second copy of it (an outbox relay may publish twice, at another offset) is dropped,
  as is a second copy within the batch.
- A record that is not an event goes to the dead-letter topic, acknowledged, before the
  batch's offsets are committed past it; it is also kept in ``dead_letters``. (After a crash
  between the two, the topic may get it twice; the table never does.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

from svc_analytics.errors import EventLogUnavailable, WarehouseUnavailable
from svc_analytics.model import Delivery, Partition, Poison, Position, Record, Row, Table, Written
from svc_analytics.ports import DeadLetters, EventLog, Warehouse

log = logging.getLogger("skm.analytics.ingest")

# Per table, the highest offset it holds per partition, keyed (topic, partition): a Partition
# is such a tuple, and a plain one costs less to make for every record.
Positions = dict[Table, dict[tuple[str, int], int]]


def next_offsets(batch: Sequence[Record]) -> dict[Partition, int]:
    """The offsets to commit after the batch: one past the last record of each partition."""
    top = _highest(record.position for record in batch)
    return {Partition(topic, partition): offset + 1 for (topic, partition), offset in top.items()}


def _highest(positions: Iterable[Position]) -> dict[tuple[str, int], int]:
    top: dict[tuple[str, int], int] = {}
    for p in positions:
        key = (p.topic, p.partition)
        if top.get(key, -1) < p.offset:
            top[key] = p.offset
    return top


class Ingestion:
    """Reads, writes and commits batches until cancelled, recovering from failures."""

    def __init__(
        self,
        log_: EventLog,
        warehouse: Warehouse,
        dead_letters: DeadLetters,
        *,
        batch_records: int,
        batch_seconds: float,
        on_written: Callable[[Written], None] | None = None,
        retry_seconds: float = 0.2,
    ) -> None:
        """`retry_seconds`: the first wait after a failure; it doubles up to 5 s."""
        self._log = log_
        self._warehouse = warehouse
        self._dead = dead_letters
        self._batch_records = batch_records
        self._batch_seconds = batch_seconds
        self._on_written = on_written
        self._retry = retry_seconds
        self._positions: Positions | None = None
        self.batches = 0

    async def run(self) -> None:
        """Batches until cancelled; the next one is read (and decoded) while one is written."""
        backoff = self._retry
        while True:
            reading: asyncio.Task[list[Record]] | None = None
            try:
                positions = await self._held()
                reading = asyncio.create_task(self._read())
                while True:
                    batch = await reading
                    reading = asyncio.create_task(self._read())
                    if batch:
                        await self._land(batch, positions)
                        backoff = self._retry
            except (EventLogUnavailable, WarehouseUnavailable) as exc:
                # What was written stays written; what was not is read again from the
                # committed offsets, and the positions say which rows are already in. The
                # batch read ahead is dropped first: read after the rewind, it would move
                # the consumer past records nobody writes.
                log.warning(
                    "ingestion waiting for Kafka or the warehouse",
                    extra={"fields": {"error": exc.message, "retry_s": backoff}},
                )
                await _dropped(reading)
                reading = None
                self._positions = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(EventLogUnavailable):
                    await self._log.rewind()
            finally:
                # Cancelled (the service stops): what was read ahead is uncommitted, read again
                # by the next process.
                await _dropped(reading)

    async def step(self) -> Written | None:
        """One batch: read, write, commit. None after a quiet wait."""
        positions = await self._held()
        batch = await self._read()
        if not batch:
            return None
        return await self._land(batch, positions)

    async def _held(self) -> Positions:
        if self._positions is None:
            found = await self._warehouse.positions()
            self._positions = {
                table: {(p.topic, p.partition): o for p, o in found.get(table, {}).items()} for table in Table
            }
        return self._positions

    async def _read(self) -> list[Record]:
        return await self._log.next_batch(self._batch_records, self._batch_seconds)

    async def _land(self, batch: Sequence[Record], positions: Positions) -> Written:
        written = await self.write(batch, positions)
        await self._log.commit(next_offsets(batch))
        if written.duplicates or written.rows_held:
            log.info(
                "records already in the warehouse were skipped",
                extra={"fields": {"events": written.duplicates, "rows": written.rows_held, "records": len(batch)}},
            )
        self.batches += 1
        if self._on_written is not None:
            self._on_written(written)
        return written

    async def write(self, batch: Sequence[Record], positions: Positions) -> Written:
        """Write the batch's rows that the warehouse does not hold yet; updates positions."""
        written = Written(records=len(batch))
        seen: set[str] = set()
        fresh: list[Delivery] = []
        poisons: list[Poison] = []
        for record in batch:
            if isinstance(record, Poison):
                poisons.append(record)
            elif record.event_id in seen:
                written.duplicates += 1
            else:
                seen.add(record.event_id)
                fresh.append(record)
        if fresh:
            known = await self._warehouse.known_events(fresh)
            if known:
                written.duplicates += len(known)
                fresh = [d for d in fresh if d.event_id not in known]
        written.events = len(fresh)

        dead = [p for p in poisons if _beyond(positions, Table.DEAD_LETTERS, p.position)]
        if dead:
            await self._dead.send(dead)
            await self._warehouse.write_dead_letters(dead)
            _advance(positions, Table.DEAD_LETTERS, [p.position for p in dead])
            written.dead_letters = len(dead)
            reasons = sorted({p.reason.value for p in dead})
            log.warning(
                "records that are not events were dead-lettered",
                extra={
                    "fields": {
                        "count": len(dead),
                        "reasons": reasons,
                        "first": f"{dead[0].position.topic}/{dead[0].position.partition}@{dead[0].position.offset}",
                    }
                },
            )

        # One pass over the events: each row to its table, unless the table holds its offset.
        held = {table: positions.setdefault(table, {}) for table in Table}
        rows: dict[Table, list[tuple[Position, Row]]] = {}
        for d in fresh:
            position = d.position
            of = (position.topic, position.partition)
            for table, mine in d.rows.items():
                if position.offset > held[table].get(of, -1):
                    bucket = rows.get(table)
                    if bucket is None:
                        bucket = rows[table] = []
                    bucket.extend([(position, row) for row in mine])
                    if table is Table.MODEL_CALLS:
                        written.charged.add(d.tenant)
                else:
                    written.rows_held += len(mine)
        for table in Table:
            if table is Table.DEAD_LETTERS or table not in rows:
                continue
            await self._warehouse.write(table, rows[table])
            _advance(positions, table, [position for position, _ in rows[table]])
            written.rows[table] = len(rows[table])
        return written


async def _dropped(reading: asyncio.Task[list[Record]] | None) -> None:
    if reading is None:
        return
    if not reading.done():
        reading.cancel()
    with contextlib.suppress(asyncio.CancelledError, EventLogUnavailable):
        await reading


def _beyond(positions: Positions, table: Table, position: Position) -> bool:
    return position.offset > positions.get(table, {}).get((position.topic, position.partition), -1)


def _advance(positions: Positions, table: Table, written: Iterable[Position]) -> None:
    held = positions.setdefault(table, {})
    for key, offset in _highest(written).items():
        if held.get(key, -1) < offset:
            held[key] = offset
