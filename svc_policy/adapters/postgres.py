"""svc_policy's durable state in Postgres (schema `policy`): the requeue store of blocked
actions, tenant constitutions, and the outbox that carries their events to Kafka.

Every state change is one transaction: the row, its outbox event and a NOTIFY that wakes
both the outbox relay and the watchers of that action. Transitions are compare-and-set on
(state, update_time), so two operators racing on one entry cannot both win, and a claim
cannot be taken twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from skm.events.v1 import event_pb2
from skm.policy.v1 import blocked_action_pb2
from skm_runtime.outbox import add_events, outbox_ddl
from skm_runtime.records import OutboxRecord
from svc_policy.adapters.redis import RedisBlockedIndex
from svc_policy.convert import blocked_action_of, blocked_action_to, blocked_event
from svc_policy.errors import InvalidPageToken, PolicyBackendUnavailable
from svc_policy.model import BlockedAction, Constitution

log = logging.getLogger("skm.policy.store")

SCHEMA = "policy"
TOPIC_BLOCKED = "policy.blocked"
_CHANGES = "policy_blocked_changes"

_DDL = f"""
{outbox_ddl(SCHEMA)}
CREATE TABLE IF NOT EXISTS {SCHEMA}.blocked_actions (
    name text PRIMARY KEY,
    tenant text NOT NULL,
    request_id text NOT NULL,
    session text NOT NULL,
    state text NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL,
    body bytea NOT NULL,
    UNIQUE (tenant, request_id)
);
-- Counts every change of an entry: the listing index keeps the highest it has seen.
ALTER TABLE {SCHEMA}.blocked_actions ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS blocked_actions_listing
    ON {SCHEMA}.blocked_actions (tenant, create_time, name);
CREATE INDEX IF NOT EXISTS blocked_actions_expiring
    ON {SCHEMA}.blocked_actions (expire_time) WHERE state IN ('PENDING', 'APPROVED');
CREATE TABLE IF NOT EXISTS {SCHEMA}.constitutions (
    tenant text PRIMARY KEY,
    content text NOT NULL,
    sha256 text NOT NULL,
    update_time timestamptz NOT NULL,
    updated_by text NOT NULL
);
"""


def event_record(event: event_pb2.Event, topic: str) -> OutboxRecord:
    key = (event.session or event.tenant).encode()
    return OutboxRecord(event.event_id, topic, key, event.SerializeToString())


def _row_to_action(row: Any) -> BlockedAction:
    return blocked_action_of(blocked_action_pb2.BlockedAction.FromString(row["body"]), row["request_id"])


def _unavailable(exc: BaseException) -> PolicyBackendUnavailable:
    return PolicyBackendUnavailable("the policy database cannot be reached", metadata={"error": type(exc).__name__})


class PostgresPolicyStore:
    """Blocked actions (with an optional Redis listing index) and constitutions."""

    def __init__(self, pool: asyncpg.Pool, index: RedisBlockedIndex | None = None) -> None:
        self._pool = pool
        self._index = index
        self._watchers: dict[str, set[asyncio.Queue[str]]] = {}
        self._listener: Any = None
        self._rebuilding: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, dsn: str, index: RedisBlockedIndex | None = None) -> PostgresPolicyStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, command_timeout=10)
        async with pool.acquire() as conn, conn.transaction():
            # One migrating process at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('skm.policy.migrate'))")
            await conn.execute(_DDL)
        return cls(pool, index)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        if self._rebuilding is not None:
            self._rebuilding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebuilding
            self._rebuilding = None
        if self._listener is not None:
            await self._listener.remove_listener(_CHANGES, self._notified)
            await self._pool.release(self._listener)
            self._listener = None
        await asyncio.wait_for(self._pool.close(), 10)

    # -- blocked actions -------------------------------------------------------------

    async def hold(self, action: BlockedAction) -> BlockedAction:
        body = blocked_action_to(action).SerializeToString()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchrow(
                    f"""INSERT INTO {SCHEMA}.blocked_actions
                        (name, tenant, request_id, session, state, create_time, update_time, expire_time, body)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                        ON CONFLICT (tenant, request_id) DO NOTHING RETURNING name""",
                    action.name,
                    action.tenant,
                    action.request_id,
                    action.session,
                    action.state.value,
                    action.create_time,
                    action.update_time,
                    action.expire_time,
                    body,
                )
                if inserted is None:
                    row = await conn.fetchrow(
                        f"SELECT request_id, body FROM {SCHEMA}.blocked_actions WHERE tenant = $1 AND request_id = $2",
                        action.tenant,
                        action.request_id,
                    )
                    return _row_to_action(row)
                await add_events(conn, SCHEMA, [event_record(blocked_event(action, None), TOPIC_BLOCKED)])
                await conn.execute(f"SELECT pg_notify('{_CHANGES}', $1)", action.name)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        await self._indexed(action, 1)
        return action

    async def get(self, name: str) -> BlockedAction | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT request_id, body FROM {SCHEMA}.blocked_actions WHERE name = $1", name
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        return None if row is None else _row_to_action(row)

    async def list_page(
        self, tenant: str, states: Sequence[str], session: str, page_size: int, page_token: str
    ) -> tuple[list[BlockedAction], str]:
        offset = _offset_of(page_token)
        try:
            if self._index is not None and not session:
                names = await self._index.page(tenant, states, offset, page_size + 1)
                if names is not None:
                    rows = await self._pool.fetch(
                        f"SELECT request_id, body, name, state FROM {SCHEMA}.blocked_actions"
                        " WHERE name = ANY($1::text[])",
                        names[:page_size],
                    )
                    # The index may still hold an entry under an older state (a write
                    # this process or another missed): Postgres' state decides.
                    by_name = {row["name"]: _row_to_action(row) for row in rows if not states or row["state"] in states}
                    page = [by_name[n] for n in names[:page_size] if n in by_name]
                    more = len(names) > page_size
                    return page, _token_of(offset + page_size) if more else ""
                self._rebuild_soon()
            rows = await self._pool.fetch(
                f"""SELECT request_id, body FROM {SCHEMA}.blocked_actions
                    WHERE tenant = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2::text[]))
                      AND ($3 = '' OR session = $3)
                    ORDER BY create_time, name OFFSET $4 LIMIT $5""",
                tenant,
                list(states),
                session,
                offset,
                page_size + 1,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        page = [_row_to_action(row) for row in rows[:page_size]]
        return page, _token_of(offset + page_size) if len(rows) > page_size else ""

    async def save_transition(self, before: BlockedAction, after: BlockedAction) -> bool:
        body = blocked_action_to(after).SerializeToString()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"""UPDATE {SCHEMA}.blocked_actions
                        SET state = $2, update_time = $3, body = $4, expire_time = $7, version = version + 1
                        WHERE name = $1 AND state = $5 AND update_time = $6 RETURNING version""",
                    after.name,
                    after.state.value,
                    after.update_time,
                    body,
                    before.state.value,
                    before.update_time,
                    after.expire_time,
                )
                if done is None:
                    return False
                event = blocked_event(after, before.state)
                await add_events(conn, SCHEMA, [event_record(event, TOPIC_BLOCKED)])
                await conn.execute(f"SELECT pg_notify('{_CHANGES}', $1)", after.name)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        await self._indexed(after, done)
        return True

    async def expiring(self, now: datetime, limit: int) -> list[BlockedAction]:
        """PENDING or APPROVED entries whose time is up."""
        rows = await self._pool.fetch(
            f"""SELECT request_id, body FROM {SCHEMA}.blocked_actions
                WHERE state IN ('PENDING', 'APPROVED') AND expire_time <= $1
                ORDER BY expire_time LIMIT $2""",
            now,
            limit,
        )
        return [_row_to_action(row) for row in rows]

    async def _indexed(self, action: BlockedAction, version: int) -> None:
        """Index a committed change (the row's version after it); when the index missed it,
        have it rebuilt."""
        if self._index is not None:
            await self._index.put(action, version)
            if self._index.stale:
                self._rebuild_soon()

    async def rebuild_index(self) -> int:
        """Put every stored entry into the Redis index and mark it whole (at start, and
        whenever it cannot be trusted: Redis lost it, or a write to it failed). Returns
        how many entries it indexed; when Redis fails on the way, a rebuild is retried in
        the background and listing reads Postgres meanwhile."""
        if self._index is None:
            return 0
        try:
            return await self._rebuild_once(self._index)
        except RedisError as exc:
            log.warning("blocked-action index not rebuilt; retrying", extra={"fields": {"error": type(exc).__name__}})
            self._rebuild_soon()
            return 0

    async def _rebuild_once(self, index: RedisBlockedIndex) -> int:
        async with self._pool.acquire() as conn, conn.transaction():

            async def stored() -> AsyncIterator[tuple[BlockedAction, int]]:
                query = f"SELECT request_id, body, version FROM {SCHEMA}.blocked_actions"
                async for row in conn.cursor(query):
                    yield _row_to_action(row), int(row["version"])

            return await index.rebuild(stored())

    def _rebuild_soon(self) -> None:
        if self._index is None or (self._rebuilding is not None and not self._rebuilding.done()):
            return
        self._rebuilding = asyncio.create_task(self._rebuild_until_whole(self._index))

    async def _rebuild_until_whole(self, index: RedisBlockedIndex) -> None:
        delay = 0.5
        while index.stale:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            try:
                count = await self._rebuild_once(index)
                log.info("blocked-action index rebuilt", extra={"fields": {"entries": count}})
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("blocked-action index not rebuilt", extra={"fields": {"error": type(exc).__name__}})

    @asynccontextmanager
    async def watch(self, keys: Sequence[str]) -> AsyncIterator[AsyncIterator[BlockedAction]]:
        """A live feed of later changes to the named entries ("tenants/{t}/*": all of a
        tenant's), from NOTIFY; subscribed before the context is entered."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        wanted = set(keys)
        await self._listen()
        for key in wanted:
            self._watchers.setdefault(key, set()).add(queue)
        try:
            yield self._feed(queue)
        finally:
            for key in wanted:
                subscribers = self._watchers.get(key)
                if subscribers is not None:
                    subscribers.discard(queue)
                    if not subscribers:
                        del self._watchers[key]

    async def _feed(self, queue: asyncio.Queue[str]) -> AsyncIterator[BlockedAction]:
        while True:
            action = await self.get(await queue.get())
            if action is not None:
                yield action

    async def _listen(self) -> None:
        if self._listener is not None:
            return
        self._listener = await self._pool.acquire()
        await self._listener.add_listener(_CHANGES, self._notified)

    def _notified(self, _conn: Any, _pid: int, _channel: str, name: str) -> None:
        tenant = "/".join(name.split("/")[:2])
        for key in (name, f"{tenant}/*"):
            for queue in self._watchers.get(key, ()):
                queue.put_nowait(name)

    # -- constitutions ---------------------------------------------------------------

    async def get_constitution(self, tenant: str) -> Constitution | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT content, sha256, update_time, updated_by FROM {SCHEMA}.constitutions WHERE tenant = $1",
                tenant,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        if row is None:
            return None
        return Constitution(tenant, row["content"], row["sha256"], row["update_time"], row["updated_by"])

    async def put_constitution(self, constitution: Constitution, expected_sha256: str) -> bool:
        """Store it only if the stored hash is still `expected_sha256` ("" = none stored)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # A row lock cannot guard a first insert; a per-tenant advisory lock can.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    f"skm.policy.constitution:{constitution.tenant}",
                )
                current = await conn.fetchval(
                    f"SELECT sha256 FROM {SCHEMA}.constitutions WHERE tenant = $1", constitution.tenant
                )
                if (current or "") != expected_sha256:
                    return False
                await conn.execute(
                    f"""INSERT INTO {SCHEMA}.constitutions (tenant, content, sha256, update_time, updated_by)
                        VALUES ($1, $2, $3, $4, $5)
                        ON CONFLICT (tenant) DO UPDATE SET content = $2, sha256 = $3, update_time = $4,
                        updated_by = $5""",
                    constitution.tenant,
                    constitution.content,
                    constitution.sha256,
                    constitution.update_time,
                    constitution.updater,
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        return True


def _offset_of(token: str) -> int:
    if not token:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("o:"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if value < 0:
        raise InvalidPageToken("page_token is not one this service issued")
    return value


def _token_of(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()
