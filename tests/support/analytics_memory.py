"""In-memory implementations of svc_analytics's ingestion ports (ports.EventLog,
ports.Warehouse, ports.DeadLetters), real enough to run core.ingest against: a log with
partitions, offsets and committed offsets; a warehouse holding rows per table. The same
port suite runs over MemoryWarehouse and the ClickHouse one
(tests/integration/test_analytics_warehouse.py).

Failures are injected by the tests: `fail_after_writes` makes the warehouse fail on the
next write after that many more have succeeded (the way a crash between two table inserts
looks to ingestion), `fail_commits` makes commits fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from svc_analytics.adapters.events import decode
from svc_analytics.errors import EventLogUnavailable, WarehouseUnavailable
from svc_analytics.model import Delivery, Partition, Poison, Position, Record, Row, Table


@dataclass
class MemoryEventLog:
    """Topics as lists of (key, value) per partition, read by one consumer."""

    records: dict[Partition, list[tuple[bytes | None, bytes | None]]] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    cursor: dict[Partition, int] = field(default_factory=dict)
    fail_commits: int = 0
    # Seconds a read takes before it looks at the log (a read in flight, as Kafka's poll),
    # and a rewind per partition.
    delay: float = 0.0

    def append(self, partition: Partition, value: bytes | None, key: bytes | None = None) -> int:
        log = self.records.setdefault(partition, [])
        log.append((key, value))
        return len(log) - 1

    async def next_batch(self, max_records: int, max_seconds: float) -> list[Record]:
        if self.delay:
            await asyncio.sleep(self.delay)
        batch: list[Record] = []
        for partition in sorted(self.records):
            log = self.records[partition]
            start = self.cursor.get(partition, self.committed.get(partition, 0))
            end = min(len(log), start + max_records - len(batch))
            for offset in range(start, end):
                key, value = log[offset]
                batch.append(decode(Position(partition.topic, partition.partition, offset), key, value))
            self.cursor[partition] = end
        if not batch:
            await asyncio.sleep(0.001)  # a quiet wait, as Kafka's poll
        return batch

    async def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise EventLogUnavailable("commit refused (injected)")
        self.committed.update(next_offsets)

    async def rewind(self) -> None:
        # One partition at a time, as Kafka's asks each one's committed offset.
        for partition in sorted(self.cursor):
            del self.cursor[partition]
            if self.delay:
                await asyncio.sleep(self.delay)


@dataclass
class MemoryWarehouse:
    tables: dict[Table, list[tuple[Position, Row]]] = field(default_factory=dict)
    dead: list[Poison] = field(default_factory=list)
    fail_after_writes: int | None = None

    def _write_allowed(self) -> None:
        if self.fail_after_writes is None:
            return
        if self.fail_after_writes == 0:
            self.fail_after_writes = None
            raise WarehouseUnavailable("the warehouse went away (injected)")
        self.fail_after_writes -= 1

    async def positions(self) -> dict[Table, dict[Partition, int]]:
        out: dict[Table, dict[Partition, int]] = {table: {} for table in Table}
        for table, rows in self.tables.items():
            for position, _ in rows:
                held = out[table]
                held[position.of] = max(held.get(position.of, -1), position.offset)
        for p in self.dead:
            held = out[Table.DEAD_LETTERS]
            held[p.position.of] = max(held.get(p.position.of, -1), p.position.offset)
        return out

    async def known_events(self, deliveries: Sequence[Delivery]) -> set[str]:
        ids = {d.event_id for d in deliveries}
        return {str(row[0]) for _, row in self.tables.get(Table.EVENTS, []) if row[0] in ids}

    async def write(self, table: Table, rows: Sequence[tuple[Position, Row]]) -> None:
        self._write_allowed()
        self.tables.setdefault(table, []).extend(rows)

    async def write_dead_letters(self, poisons: Sequence[Poison]) -> None:
        self._write_allowed()
        self.dead.extend(poisons)

    def ids(self, table: Table) -> list[str]:
        return [str(row[0]) for _, row in self.tables.get(table, [])]


@dataclass
class MemoryDeadLetters:
    sent: list[Poison] = field(default_factory=list)

    async def send(self, poisons: Sequence[Poison]) -> None:
        self.sent.extend(poisons)
