"""In-memory implementations of svc_analytics's ingestion ports (ports.EventLog,
ports.Warehouse, ports.DeadLetters) and of its read side (ports.WarehouseReader), real
enough to run core.ingest and core.queries against: a log with partitions, offsets and
committed offsets; a warehouse holding rows per table, whose series are computed as
adapters/queries.py's SQL computes them. The same port suite runs over MemoryWarehouse and
the ClickHouse one (tests/integration/test_analytics_warehouse.py).

Failures are injected by the tests: `fail_after_writes` makes the warehouse fail on the
next write after that many more have succeeded (the way a crash between two table inserts
looks to ingestion), `fail_commits` makes commits fail.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from svc_analytics.adapters.events import decode
from svc_analytics.adapters.schema import SCHEMAS
from svc_analytics.errors import EventLogUnavailable, WarehouseUnavailable
from svc_analytics.model import (
    MODEL_METRICS,
    UNITS,
    Aggregation,
    AuditEvent,
    AuditRead,
    Delivery,
    Metric,
    Partition,
    Point,
    Poison,
    Position,
    Record,
    Row,
    Series,
    SeriesRead,
    Spend,
    Table,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# A row by its column names (adapters.schema), as SQL sees it.
_Columns = dict[str, Any]
# (turn, role) -> the highest tier that succeeded there (MODEL_FALLBACK_RATE).
_Recovered = dict[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class _Source:
    """adapters.queries._Source in Python: the rows `keep` keeps, each one sample."""

    table: Table
    keep: Callable[[_Columns], bool]
    sample: Callable[[_Columns, _Recovered], float]
    persona: bool = True


def _always(_: _Columns) -> bool:
    return True


def _fell_back(c: _Columns, recovered: _Recovered) -> float:
    return float(bool(c["failed"]) and recovered.get((c["turn"], c["role"]), 0) > c["tier"])


_SOURCES: Mapping[Metric, _Source] = {
    Metric.TURNS: _Source(Table.TURNS, lambda c: c["kind"] == "started", lambda c, _: 1.0),
    Metric.TURN_LATENCY: _Source(
        Table.TURNS, lambda c: c["kind"] == "completed" and c["duration_s"] is not None, lambda c, _: c["duration_s"]
    ),
    Metric.TIME_TO_FIRST_TOKEN: _Source(
        Table.MODEL_CALLS, lambda c: c["role"] == "PRIMARY" and c["ttft_s"] is not None, lambda c, _: c["ttft_s"]
    ),
    Metric.TOKENS_PER_SECOND: _Source(
        Table.MODEL_CALLS, lambda c: c["tokens_per_second"] > 0, lambda c, _: c["tokens_per_second"]
    ),
    Metric.TOKENS: _Source(Table.MODEL_CALLS, _always, lambda c, _: c["input_tokens"] + c["output_tokens"]),
    Metric.MODEL_COST: _Source(Table.MODEL_CALLS, lambda c: c["currency"] != "", lambda c, _: c["cost"]),
    Metric.MODEL_FAILURE_RATE: _Source(Table.MODEL_CALLS, _always, lambda c, _: float(c["failed"])),
    Metric.MODEL_FALLBACK_RATE: _Source(Table.MODEL_CALLS, _always, _fell_back),
    Metric.REFUSAL_RATE: _Source(
        Table.TURNS, lambda c: c["kind"] == "completed", lambda c, _: float(c["state"] == "REFUSED")
    ),
    Metric.POLICY_DENY_RATE: _Source(Table.POLICY_DECISIONS, _always, lambda c, _: float(c["verdict"] == "DENY")),
    Metric.POLICY_APPROVAL_RATE: _Source(
        Table.POLICY_DECISIONS, _always, lambda c, _: float(c["verdict"] == "REQUIRES_APPROVAL")
    ),
    Metric.APPROVAL_WAIT: _Source(Table.BLOCKED_ACTIONS, lambda c: c["wait_s"] is not None, lambda c, _: c["wait_s"]),
    Metric.BLOCKED_ACTIONS_EXPIRED: _Source(Table.BLOCKED_ACTIONS, lambda c: bool(c["expired"]), lambda c, _: 1.0),
    Metric.WORD_ERROR_RATE: _Source(
        Table.AUDIO_QUALITY, lambda c: c["word_error_rate"] is not None, lambda c, _: c["word_error_rate"]
    ),
    Metric.MEAN_OPINION_SCORE: _Source(
        Table.AUDIO_QUALITY, lambda c: c["mean_opinion_score"] is not None, lambda c, _: c["mean_opinion_score"]
    ),
    Metric.VOICE_RESPONSE_LATENCY: _Source(
        Table.AUDIO_QUALITY, lambda c: c["response_latency_s"] is not None, lambda c, _: c["response_latency_s"]
    ),
    Metric.MODEL_SCORE: _Source(Table.MODEL_SCORES, _always, lambda c, _: c["score"], persona=False),
}


def _aggregate(aggregation: Aggregation, samples: list[float]) -> float:
    """As ClickHouse's avg, quantileExact (the sample at index floor(n * level) of the
    sorted ones), sum and count()."""
    if aggregation is Aggregation.MEAN:
        return sum(samples) / len(samples)
    if aggregation is Aggregation.SUM:
        return float(sum(samples))
    if aggregation is Aggregation.COUNT:
        return float(len(samples))
    level = {Aggregation.P50: 0.5, Aggregation.P95: 0.95, Aggregation.P99: 0.99}[aggregation]
    ordered = sorted(samples)
    return ordered[min(math.floor(len(ordered) * level), len(ordered) - 1)]


def _micros(time: datetime) -> int:
    return (time - _EPOCH) // _MICROSECOND


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

    # -- ports.WarehouseReader -------------------------------------------------------------

    def _rows(self, table: Table, tenant: str, start_us: int | None, end_us: int) -> list[_Columns]:
        """The tenant's rows of the table with start <= event time < end, by column name."""
        names = SCHEMAS[table].names
        out: list[_Columns] = []
        for _, row in self.tables.get(table, []):
            columns: _Columns = dict(zip(names, row, strict=True))
            at = int(columns["event_time"])
            if columns["tenant"] == tenant and (start_us is None or at >= start_us) and at < end_us:
                out.append(columns)
        return out

    async def series(self, read: SeriesRead) -> list[Series]:
        source = _SOURCES[read.metric]
        start_us, end_us, width_us = _micros(read.start), _micros(read.end), read.bucket_width // _MICROSECOND
        rows = self._rows(source.table, read.tenant, start_us, end_us)
        recovered: _Recovered = {}
        if read.metric is Metric.MODEL_FALLBACK_RATE:
            # Over all the tenant's calls in the range: not narrowed by the filters.
            for c in rows:
                if not c["failed"] and c["turn"]:
                    turn = (c["turn"], c["role"])
                    recovered[turn] = max(recovered.get(turn, 0), c["tier"])
        model_metric = read.metric in MODEL_METRICS
        samples: dict[tuple[str, str, str], dict[int, list[float]]] = {}
        for c in rows:
            persona = c["persona"] if source.persona else ""
            model = c["model"] if model_metric else ""
            if not source.keep(c):
                continue
            if (read.personas and persona not in read.personas) or (read.models and model not in read.models):
                continue
            if read.roles and c["role"] not in read.roles:
                continue
            key = (
                persona if read.by_persona else "",
                model if read.by_model else "",
                c["currency"] if read.metric is Metric.MODEL_COST else "",
            )
            bucket = (int(c["event_time"]) - start_us) // width_us
            samples.setdefault(key, {}).setdefault(bucket, []).append(float(source.sample(c, recovered)))
        return [
            Series(
                metric=read.metric,
                aggregation=read.aggregation,
                unit=unit or UNITS[read.metric],
                persona=persona,
                model=model,
                points=tuple(
                    Point(read.start + bucket * read.bucket_width, _aggregate(read.aggregation, values), len(values))
                    for bucket, values in sorted(buckets.items())
                ),
            )
            for (persona, model, unit), buckets in sorted(samples.items())
        ]

    async def audit_events(self, read: AuditRead) -> list[AuditEvent]:
        start_us = None if read.start is None else _micros(read.start)
        after = None if read.after is None else (_micros(read.after[0]), read.after[1])
        kept = [
            (int(c["event_time"]), str(c["event_id"]), bytes(c["event"]))
            for c in self._rows(Table.EVENTS, read.tenant, start_us, _micros(read.end))
            if (not read.session or c["session"] == read.session)
            and (not read.event_types or c["event_type"] in read.event_types)
            and (after is None or (int(c["event_time"]), str(c["event_id"])) > after)
        ]
        kept.sort()
        return [AuditEvent(_EPOCH + at * _MICROSECOND, event_id, body) for at, event_id, body in kept[: read.limit]]

    async def model_spend(self, tenant: str, role: str, since: datetime) -> Spend:
        calls = [
            c
            for c in self._rows(Table.MODEL_CALLS, tenant, _micros(since), 2**62)
            if c["currency"] == "USD" and (not role or c["role"] == role)
        ]
        return Spend(since, float(sum(c["cost"] for c in calls)), len(calls))


@dataclass
class MemoryDeadLetters:
    sent: list[Poison] = field(default_factory=list)

    async def send(self, poisons: Sequence[Poison]) -> None:
        self.sent.extend(poisons)
