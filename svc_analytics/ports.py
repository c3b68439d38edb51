"""What svc_analytics's core needs from the world, as protocols its adapters implement.

Methods raise :class:`svc_analytics.errors.WarehouseUnavailable` or
:class:`svc_analytics.errors.EventLogUnavailable` when their server cannot be reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from svc_analytics.model import (
    AuditEvent,
    AuditRead,
    Budget,
    BudgetCrossed,
    Delivery,
    Partition,
    Poison,
    Position,
    Record,
    Row,
    Series,
    SeriesRead,
    Spend,
    Table,
)


class EventLog(Protocol):
    """The platform's topics, read by one consumer group (Kafka)."""

    async def next_batch(self, max_records: int, max_seconds: float) -> list[Record]:
        """Records in offset order per partition: as soon as `max_records` are in, or
        `max_seconds` after the first one arrived; [] after a quiet wait."""
        ...

    async def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        """Record that everything below these offsets is durable in the warehouse."""
        ...

    async def rewind(self) -> None:
        """Read again from the committed offsets (after a batch that did not complete)."""
        ...


class DeadLetters(Protocol):
    """Where records that are not events go (a Kafka topic)."""

    async def send(self, poisons: Sequence[Poison]) -> None:
        """Durable on return (acknowledged by every in-sync replica)."""
        ...


class Warehouse(Protocol):
    """The analytics tables (ClickHouse)."""

    async def positions(self) -> dict[Table, dict[Partition, int]]:
        """Per table and partition, the highest offset whose rows it holds."""
        ...

    async def known_events(self, deliveries: Sequence[Delivery]) -> set[str]:
        """The ids among these events that the events table already holds."""
        ...

    async def write(self, table: Table, rows: Sequence[tuple[Position, Row]]) -> None:
        """Append the rows, all or none."""
        ...

    async def write_dead_letters(self, poisons: Sequence[Poison]) -> None:
        """Append the records, all or none."""
        ...


# -- the read side: dashboards and the audit log -------------------------------------------------


class WarehouseReader(Protocol):
    """What QueryMetrics and QueryAuditEvents read from the warehouse (ClickHouse). Every
    read is of one tenant's rows only."""

    async def series(self, read: SeriesRead) -> list[Series]:
        """The series of one metric: one per persona / model when split by them, and for
        MODEL_COST one per currency (the series' unit); only buckets with samples, in time
        order. [] when nothing matches."""
        ...

    async def audit_events(self, read: AuditRead) -> list[AuditEvent]:
        """Up to `read.limit` events, oldest first by (event time, event id)."""
        ...

    async def model_spend(self, tenant: str, role: str, since: datetime) -> Spend:
        """The tenant's USD spend on model calls of `role` ("PRIMARY", ...; "" for every
        role) with event time at or after `since`."""
        ...


class BudgetSource(Protocol):
    """The tenants' model budgets (svc_policy's model_budget tuples)."""

    async def budgets(self, tenant: str) -> list[Budget]:
        """The tenant's budgets that have a limit; [] when it has none."""
        ...


class Announcements(Protocol):
    """Where events svc_analytics itself emits go (Kafka, topic analytics)."""

    async def announce(self, crossing: BudgetCrossed) -> None:
        """Durable on return (acknowledged by every in-sync replica)."""
        ...
