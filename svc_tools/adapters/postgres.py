"""svc_tools's durable state in Postgres (schema `tools`): executions and the outbox that
carries their audit events to Kafka.

Every write is one transaction: the row, its outbox event (ToolRequested for a new direct
run, ToolCompleted for a result) and a NOTIFY that wakes the outbox relay and every
process following the execution. Transitions are compare-and-set on (state, driver), so a
process whose lease ran out cannot overwrite the work of the one that took over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from skm.events.v1 import event_pb2
from skm.tools.v1 import execution_pb2, tool_service_pb2
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.outbox import add_events, outbox_ddl
from skm_runtime.pending_reports import pending_reports_ddl
from skm_runtime.records import OutboxRecord
from svc_tools.convert import execution_of, execution_to, request_to, tool_completed_event, tool_requested_event
from svc_tools.model import Change, Execution

SCHEMA = "tools"
TOPIC_AUDIT = "audit"
_CHANGES = "tools_execution_changes"
_CANCEL_PREFIX = "cancel "
_LIVE = "('CHECKING', 'AWAITING_APPROVAL', 'RUNNING')"

_DDL = f"""
{outbox_ddl(SCHEMA)}
{pending_reports_ddl(SCHEMA)}
CREATE TABLE IF NOT EXISTS {SCHEMA}.executions (
    name text PRIMARY KEY,
    tenant text NOT NULL,
    request_id text NOT NULL,
    fingerprint text NOT NULL,
    state text NOT NULL,
    -- The process driving it, while its lease lasts.
    driver text,
    lease_until timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- svc_policy bound the blocked action to this execution / was told the outcome.
    claimed boolean NOT NULL DEFAULT false,
    completion_reported boolean NOT NULL DEFAULT false,
    trace_id text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    -- skm.tools.v1.ExecuteToolRequest as accepted, and skm.tools.v1.Execution.
    request bytea NOT NULL,
    body bytea NOT NULL,
    UNIQUE (tenant, request_id)
);
CREATE INDEX IF NOT EXISTS executions_live ON {SCHEMA}.executions (lease_until) WHERE state IN {_LIVE};
CREATE INDEX IF NOT EXISTS executions_unreported ON {SCHEMA}.executions (update_time)
    WHERE claimed AND NOT completion_reported AND state IN ('SUCCEEDED', 'FAILED');
"""

_COLUMNS = "body, request, fingerprint, claimed, completion_reported, cancel_requested, trace_id"
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _record(event: event_pb2.Event) -> OutboxRecord:
    key = (event.session or event.tenant).encode()
    return OutboxRecord(event.event_id, TOPIC_AUDIT, key, event.SerializeToString())


def _execution(row: Any) -> Execution:
    return execution_of(
        execution_pb2.Execution.FromString(row["body"]),
        tool_service_pb2.ExecuteToolRequest.FromString(row["request"]),
        fingerprint=row["fingerprint"],
        claimed=row["claimed"],
        completion_reported=row["completion_reported"],
        cancel_requested=row["cancel_requested"],
        trace_id=row["trace_id"],
    )


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable("the tool service's database cannot be reached", metadata={"error": type(exc).__name__})


class PostgresExecutionStore:
    """Executions in `tools.executions`, leases for the processes that drive them."""

    def __init__(self, pool: asyncpg.Pool, *, lease_seconds: float) -> None:
        self._pool = pool
        self._lease = lease_seconds

    @classmethod
    async def open(cls, dsn: str, *, lease_seconds: float) -> PostgresExecutionStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, command_timeout=10)
        async with pool.acquire() as conn, conn.transaction():
            # One migrating process at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('skm.tools.migrate'))")
            await conn.execute(_DDL)
        return cls(pool, lease_seconds=lease_seconds)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), 10)

    async def create(self, execution: Execution, driver: str) -> tuple[Execution, bool]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    f"""INSERT INTO {SCHEMA}.executions
                        (name, tenant, request_id, fingerprint, state, driver, lease_until, trace_id,
                         create_time, update_time, request, body)
                        VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8, $9, $9, $10, $11)
                        ON CONFLICT (tenant, request_id) DO NOTHING RETURNING name""",
                    execution.name,
                    execution.tenant,
                    execution.request_id,
                    execution.fingerprint,
                    execution.state.value,
                    driver,
                    self._lease,
                    execution.trace_id,
                    execution.create_time,
                    request_to(execution).SerializeToString(),
                    execution_to(execution).SerializeToString(),
                )
                if inserted is None:
                    row = await conn.fetchrow(
                        f"SELECT {_COLUMNS} FROM {SCHEMA}.executions WHERE tenant = $1 AND request_id = $2",
                        execution.tenant,
                        execution.request_id,
                    )
                    return _execution(row), False
                if not execution.turn:
                    # The agent loop reports the calls of its turns itself (ToolRequested is
                    # svc_conversation's); direct runs by operators are reported here.
                    await add_events(conn, SCHEMA, [_record(tool_requested_event(execution))])
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return execution, True

    async def get(self, name: str) -> Execution | None:
        try:
            row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM {SCHEMA}.executions WHERE name = $1", name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if row is None else _execution(row)

    async def take(self, name: str, driver: str) -> Execution | None:
        try:
            row = await self._pool.fetchrow(
                f"""UPDATE {SCHEMA}.executions
                    SET driver = $2, lease_until = now() + make_interval(secs => $3)
                    WHERE name = $1 AND state IN {_LIVE}
                      AND (driver IS NULL OR driver = $2 OR lease_until < now())
                    RETURNING {_COLUMNS}""",
                name,
                driver,
                self._lease,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if row is None else _execution(row)

    async def save(self, before: Execution, after: Execution, driver: str) -> bool:
        terminal = after.state.terminal
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"""UPDATE {SCHEMA}.executions
                        SET state = $3, body = $4, claimed = $5, completion_reported = $6, update_time = now(),
                            driver = CASE WHEN $7 THEN NULL ELSE driver END,
                            lease_until = CASE WHEN $7 THEN NULL ELSE now() + make_interval(secs => $8) END
                        WHERE name = $1 AND state = $2 AND driver = $9 RETURNING 1""",
                    after.name,
                    before.state.value,
                    after.state.value,
                    execution_to(after).SerializeToString(),
                    after.claimed,
                    after.completion_reported,
                    terminal,
                    self._lease,
                    driver,
                )
                if done is None:
                    return False
                if terminal:
                    await add_events(conn, SCHEMA, [_record(tool_completed_event(after))])
                await conn.execute(f"SELECT pg_notify('{_CHANGES}', $1)", after.name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return True

    async def release(self, name: str, driver: str) -> None:
        try:
            await self._pool.execute(
                f"""UPDATE {SCHEMA}.executions SET driver = NULL, lease_until = NULL
                    WHERE name = $1 AND driver = $2""",
                name,
                driver,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def renew(self, driver: str, names: Sequence[str]) -> None:
        if not names:
            return
        try:
            await self._pool.execute(
                f"""UPDATE {SCHEMA}.executions SET lease_until = now() + make_interval(secs => $2)
                    WHERE driver = $1 AND name = ANY($3::text[]) AND state IN {_LIVE}""",
                driver,
                self._lease,
                list(names),
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def orphans(self, limit: int) -> list[Execution]:
        try:
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM {SCHEMA}.executions
                    WHERE state IN ('AWAITING_APPROVAL', 'RUNNING') AND (driver IS NULL OR lease_until < now())
                    ORDER BY create_time LIMIT $1""",
                limit,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_execution(row) for row in rows]

    async def unreported(self, limit: int) -> list[Execution]:
        try:
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM {SCHEMA}.executions
                    WHERE claimed AND NOT completion_reported AND state IN ('SUCCEEDED', 'FAILED')
                    ORDER BY update_time LIMIT $1""",
                limit,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_execution(row) for row in rows]

    async def mark_reported(self, name: str) -> None:
        try:
            await self._pool.execute(f"UPDATE {SCHEMA}.executions SET completion_reported = true WHERE name = $1", name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def request_cancel(self, name: str) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"UPDATE {SCHEMA}.executions SET cancel_requested = true WHERE name = $1 AND state IN {_LIVE}",
                    name,
                )
                await conn.execute(f"SELECT pg_notify('{_CHANGES}', $1)", _CANCEL_PREFIX + name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Every change NOTIFY of every process, on a connection of its own."""
        # None: the connection is gone, and with it the notices; the feed then fails.
        queue: asyncio.Queue[Change | None] = asyncio.Queue()

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload.startswith(_CANCEL_PREFIX):
                queue.put_nowait(Change(payload.removeprefix(_CANCEL_PREFIX), cancel_requested=True))
            else:
                queue.put_nowait(Change(payload))

        def terminated(_conn: Any) -> None:
            queue.put_nowait(None)

        try:
            conn = await self._pool.acquire()
            conn.add_termination_listener(terminated)
            await conn.add_listener(_CHANGES, notified)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        try:
            yield _feed(queue)
        finally:
            try:
                conn.remove_termination_listener(terminated)
                if not conn.is_closed():
                    await conn.remove_listener(_CHANGES, notified)
            finally:
                await self._pool.release(conn)


async def _feed(queue: asyncio.Queue[Change | None]) -> AsyncIterator[Change]:
    while True:
        change = await queue.get()
        if change is None:
            raise ServiceUnavailable("lost the connection that carried change notices")
        yield change
