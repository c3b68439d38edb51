"""The warehouse in ClickHouse, through clickhouse-connect: the embedded chdb engine by
default ("chdb:///dir": the engine runs in this process; one process per folder), a server
in deployments ("http(s)://host:port[/database]").

clickhouse-connect's client is synchronous, and a chdb client is one connection handle:
writes go through one client on one thread (ingestion writes one batch at a time anyway),
queries through a small pool of threads, each with a client of its own, so a long dashboard
query never holds up ingestion and the event loop never waits on ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from svc_analytics.adapters.schema import MIGRATIONS, POSITION_COLUMNS, SCHEMAS
from svc_analytics.errors import WarehouseUnavailable
from svc_analytics.model import Delivery, Partition, Poison, Position, Row, Table

log = logging.getLogger("skm.analytics.warehouse")

T = TypeVar("T")
_READERS = 2
_POSITION_NAMES = tuple(c.name for c in POSITION_COLUMNS)


def _connect(url: str, user: str, password: str) -> Client:
    if url.startswith("chdb://"):
        folder = Path(url.removeprefix("chdb://"))
        folder.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{folder.resolve()}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"warehouse URL must be chdb://<dir> or http(s)://host[:port][/database], not {url!r}")
    return clickhouse_connect.get_client(
        host=parts.hostname,
        port=parts.port or (8443 if parts.scheme == "https" else 8123),
        secure=parts.scheme == "https",
        username=user,
        password=password,
        database=parts.path.strip("/") or "default",
    )


class ClickHouseWarehouse:
    """Implements ports.Warehouse; `query` serves the read side (adapters.queries)."""

    def __init__(self, url: str, user: str = "default", password: str = "") -> None:
        self._connect: Callable[[], Client] = lambda: _connect(url, user, password)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="warehouse-write")
        self._reader_pool = ThreadPoolExecutor(_READERS, thread_name_prefix="warehouse-read")
        self._writer: Client | None = None
        self._readers = threading.local()
        self.url = url

    @classmethod
    async def open(cls, url: str, user: str = "default", password: str = "") -> ClickHouseWarehouse:
        warehouse = cls(url, user, password)
        await warehouse._on_writer(warehouse._migrate)
        return warehouse

    async def close(self) -> None:
        self._writer_pool.shutdown(wait=True, cancel_futures=True)
        self._reader_pool.shutdown(wait=True, cancel_futures=True)

    # -- threads ---------------------------------------------------------------------------

    def _writer_client(self) -> Client:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    async def _on_writer(self, work: Callable[[Client], T]) -> T:
        def run() -> T:
            try:
                return work(self._writer_client())
            except (ClickHouseError, OSError) as exc:
                self._writer = None  # a server connection may be broken: open a fresh one
                raise WarehouseUnavailable(f"the warehouse failed: {type(exc).__name__}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, run)

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement (parameters bound by the server, never pasted).

        A String column holding bytes that are not UTF-8 (``events.event``, the protobuf)
        comes back as hex text unless ``column_formats`` says ``{"event": "bytes"}``.
        """

        def run() -> list[tuple[Any, ...]]:
            client = getattr(self._readers, "client", None)
            try:
                if client is None:
                    client = self._readers.client = self._connect()
                result = client.query(
                    sql, parameters=dict(parameters or {}), column_formats=dict(column_formats or {}) or None
                )
                return list(result.result_rows)
            except (ClickHouseError, OSError) as exc:
                self._readers.client = None
                raise WarehouseUnavailable(f"the warehouse failed: {type(exc).__name__}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    # -- schema ----------------------------------------------------------------------------

    def _migrate(self, client: Client) -> None:
        client.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime DEFAULT now())"
            " ENGINE = MergeTree ORDER BY version"
        )
        applied = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                client.command(statement)
            client.insert("schema_migrations", [[version]], column_names=["version"])
            log.info("warehouse migrated", extra={"fields": {"version": version}})

    # -- ports.Warehouse -------------------------------------------------------------------

    async def positions(self) -> dict[Table, dict[Partition, int]]:
        def run(client: Client) -> dict[Table, dict[Partition, int]]:
            out: dict[Table, dict[Partition, int]] = {}
            for table in Table:
                rows = client.query(
                    f"SELECT topic, partition, max(offset) FROM {table.value} GROUP BY topic, partition"
                ).result_rows
                out[table] = {Partition(str(t), int(p)): int(o) for t, p, o in rows}
            return out

        return await self._on_writer(run)

    async def known_events(self, deliveries: Sequence[Delivery]) -> set[str]:
        # An event's id comes with its tenant and time, so the lookup reads only the part of
        # the key range the batch spans.
        tenants = sorted({d.tenant for d in deliveries})
        times = [d.event_us for d in deliveries]
        parameters = {
            "tenants": tenants,
            # One string, split by the server: a 10,000-element array parameter costs the
            # client about twice as much to format and the server to parse. Event ids hold
            # no comma (adapters.events dead-letters those that do).
            "ids": ",".join(d.event_id for d in deliveries),
            "low": min(times),
            "high": max(times),
        }

        def run(client: Client) -> set[str]:
            rows = client.query(
                "SELECT event_id FROM events WHERE tenant IN {tenants:Array(String)}"
                " AND event_time BETWEEN fromUnixTimestamp64Micro({low:Int64}, 'UTC')"
                " AND fromUnixTimestamp64Micro({high:Int64}, 'UTC')"
                " AND event_id IN splitByChar(',', {ids:String})",
                parameters=parameters,
            ).result_rows
            return {str(r[0]) for r in rows}

        return await self._on_writer(run)

    async def write(self, table: Table, rows: Sequence[tuple[Position, Row]]) -> None:
        names = (*SCHEMAS[table].names, *_POSITION_NAMES)

        def insert(client: Client) -> None:
            # Rows to columns with zip (in C); a Position is a tuple of the position columns.
            positions, values = zip(*rows, strict=True)
            columns = [list(column) for column in zip(*values, strict=True)]
            columns.extend(list(column) for column in zip(*positions, strict=True))
            client.insert(table.value, columns, column_names=names, column_oriented=True)

        await self._on_writer(insert)

    async def write_dead_letters(self, poisons: Sequence[Poison]) -> None:
        rows: list[tuple[Position, Row]] = [
            (p.position, (p.reason.value, p.detail, p.key or b"", p.value or b"")) for p in poisons
        ]
        await self.write(Table.DEAD_LETTERS, rows)
