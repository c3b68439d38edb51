"""Durable sessions, turns and events in PostgreSQL (schema ``conversation``).

Sessions, turns and events are stored as their protobuf messages plus the columns the
queries need. Events are append-only; each write of a session (its events, its turns, the
session row, the audit records for the outbox and the ids of accepted commands) is one
transaction, so a crash leaves either all of it or none.

Sequence numbers are handed out by the one process that runs the session's turn, from a
block reserved in the session row: streamed token deltas get numbers before they are
stored (they are stored in batches), and a process that takes a session over starts after
the reserved block, so a number a client has seen is never given to another event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm_runtime.outbox import add_events, outbox_arrays, outbox_ddl, outbox_insert, outbox_notify
from skm_runtime.pending_reports import pending_reports_ddl
from skm_runtime.records import OutboxRecord
from svc_conversation.adapters.audit import TOPIC_AUDIT
from svc_conversation.adapters.records import EncodedSessionStore, EncodedWrite
from svc_conversation.errors import SessionGone
from svc_conversation.model import Command, Lease, split_name, turn_ordinal

SCHEMA = "conversation"
__all__ = ["SCHEMA", "TOPIC_AUDIT", "PostgresSessionRecords", "PostgresSessionStore"]

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.sessions (
    tenant text NOT NULL,
    id text NOT NULL,
    owner text NOT NULL,
    request_id text,
    update_time timestamptz NOT NULL,
    reserved_sequence bigint NOT NULL DEFAULT 0,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_request ON {SCHEMA}.sessions (tenant, owner, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_recent ON {SCHEMA}.sessions (tenant, update_time DESC, id DESC);
CREATE TABLE IF NOT EXISTS {SCHEMA}.turns (
    tenant text NOT NULL,
    session text NOT NULL,
    ordinal integer NOT NULL,
    request_id text NOT NULL,
    state text NOT NULL,
    runner text,
    lease_until timestamptz,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, session, ordinal)
);
-- Where the runner that holds the lease is dialled (interventions are forwarded there).
ALTER TABLE {SCHEMA}.turns ADD COLUMN IF NOT EXISTS runner_address text;
CREATE UNIQUE INDEX IF NOT EXISTS turns_request ON {SCHEMA}.turns (tenant, session, request_id);
CREATE INDEX IF NOT EXISTS turns_live ON {SCHEMA}.turns (lease_until)
    WHERE state IN ('RUNNING', 'AWAITING_APPROVAL');
CREATE TABLE IF NOT EXISTS {SCHEMA}.events (
    tenant text NOT NULL,
    session text NOT NULL,
    sequence bigint NOT NULL,
    turn integer NOT NULL,
    delta boolean NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, session, sequence)
);
CREATE INDEX IF NOT EXISTS events_turn ON {SCHEMA}.events (tenant, session, turn, sequence);
CREATE TABLE IF NOT EXISTS {SCHEMA}.commands (
    tenant text NOT NULL,
    session text NOT NULL,
    request_id text NOT NULL,
    kind text NOT NULL,
    turn integer NOT NULL,
    fingerprint text NOT NULL,
    PRIMARY KEY (tenant, session, request_id)
);
{outbox_ddl(SCHEMA)}
{pending_reports_ddl(SCHEMA)}
"""


_SESSION_WRITTEN = "EXISTS (SELECT 1 FROM s)"
# One session write (see PostgresSessionStore.write); its data-modifying parts all see the
# same snapshot, and none touches a row another part touches.
_WRITE = f"""
WITH s AS (
    UPDATE {SCHEMA}.sessions SET body = $3, update_time = $4, reserved_sequence = GREATEST(reserved_sequence, $5)
    WHERE tenant = $1 AND id = $2 RETURNING 1
), t AS (
    INSERT INTO {SCHEMA}.turns (tenant, session, ordinal, request_id, state, runner, lease_until, runner_address, body)
    SELECT $1, $2, x.ordinal, x.request_id, x.state, $10, $11, $25, x.body
    FROM unnest($6::integer[], $7::text[], $8::text[], $9::bytea[]) AS x(ordinal, request_id, state, body)
    WHERE {_SESSION_WRITTEN}
    ON CONFLICT (tenant, session, ordinal) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body,
        runner = COALESCE(EXCLUDED.runner, turns.runner),
        lease_until = COALESCE(EXCLUDED.lease_until, turns.lease_until),
        runner_address = COALESCE(EXCLUDED.runner_address, turns.runner_address)
), e AS (
    INSERT INTO {SCHEMA}.events (tenant, session, sequence, turn, delta, body)
    SELECT $1, $2, x.sequence, x.turn, x.delta, x.body
    FROM unnest($12::bigint[], $13::integer[], $14::boolean[], $15::bytea[]) AS x(sequence, turn, delta, body)
    WHERE {_SESSION_WRITTEN}
), d AS (
    DELETE FROM {SCHEMA}.events
    WHERE tenant = $1 AND session = $2 AND turn = ANY($16::integer[]) AND delta AND {_SESSION_WRITTEN}
), c AS (
    INSERT INTO {SCHEMA}.commands (tenant, session, request_id, kind, turn, fingerprint)
    SELECT $1, $2, x.request_id, x.kind, x.turn, x.fingerprint
    FROM unnest($17::text[], $18::text[], $19::integer[], $20::text[]) AS x(request_id, kind, turn, fingerprint)
    WHERE {_SESSION_WRITTEN}
), o AS (
    {outbox_insert(SCHEMA, 21, where=_SESSION_WRITTEN)}
)
SELECT (SELECT count(*) FROM s), CASE WHEN cardinality($21::uuid[]) > 0 THEN {outbox_notify(SCHEMA)} END
"""


def _state_name(turn: turn_pb2.Turn) -> str:
    return turn_pb2.Turn.State.Name(turn.state).removeprefix("STATE_")


class PostgresSessionRecords:
    """The session store's records in PostgreSQL (see adapters/records.py)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresSessionRecords:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        # One migrator at a time when several copies start together.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('skm.conversation.migrate'))")
            await conn.execute(_DDL)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    # -- sessions --------------------------------------------------------------------

    async def create_session(
        self, session: session_pb2.Session, request_id: str | None, audit: Sequence[OutboxRecord]
    ) -> tuple[session_pb2.Session, bool]:
        """Stores a new session; with a request_id already used by its owner, returns that
        session instead (and False)."""
        tenant, sid = split_name(session.name)
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                f"INSERT INTO {SCHEMA}.sessions (tenant, id, owner, request_id, update_time, body)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
                tenant,
                sid,
                session.owner,
                request_id,
                session.update_time.ToDatetime().astimezone(),
                session.SerializeToString(),
            )
            if inserted:
                await add_events(conn, SCHEMA, audit)
                return session, True
            body = await conn.fetchval(
                f"SELECT body FROM {SCHEMA}.sessions WHERE tenant = $1 AND owner = $2 AND request_id = $3",
                tenant,
                session.owner,
                request_id,
            )
        if body is None:
            raise RuntimeError("session id collision")
        return session_pb2.Session.FromString(body), False

    async def get_session(self, name: str) -> tuple[session_pb2.Session, int] | None:
        tenant, sid = split_name(name)
        row = await self.pool.fetchrow(
            f"SELECT body, reserved_sequence FROM {SCHEMA}.sessions WHERE tenant = $1 AND id = $2", tenant, sid
        )
        if row is None:
            return None
        return session_pb2.Session.FromString(row["body"]), int(row["reserved_sequence"])

    async def session_state(self, name: str) -> tuple[session_pb2.Session, int, turn_pb2.Turn | None] | None:
        """The session, its reserved sequence and its current turn (the newest: turns are
        only ever added with a higher ordinal, and each write names the newest current), in
        one round trip."""
        tenant, sid = split_name(name)
        row = await self.pool.fetchrow(
            f"SELECT s.body, s.reserved_sequence, t.body AS turn FROM {SCHEMA}.sessions s"
            f" LEFT JOIN LATERAL (SELECT body FROM {SCHEMA}.turns WHERE tenant = s.tenant AND session = s.id"
            " ORDER BY ordinal DESC LIMIT 1) t ON TRUE WHERE s.tenant = $1 AND s.id = $2",
            tenant,
            sid,
        )
        if row is None:
            return None
        session = session_pb2.Session.FromString(row["body"])
        turn = turn_pb2.Turn.FromString(row["turn"]) if row["turn"] is not None and session.current_turn else None
        return session, int(row["reserved_sequence"]), turn

    async def list_sessions(
        self, tenant: str, owner: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[session_pb2.Session]:
        args: list[Any] = [tenant, limit]
        where = "tenant = $1"
        if owner is not None:
            args.append(owner)
            where += f" AND owner = ${len(args)}"
        if after is not None:
            args.extend(after)
            where += f" AND (update_time, id) < (${len(args) - 1}, ${len(args)})"
        rows = await self.pool.fetch(
            f"SELECT body FROM {SCHEMA}.sessions WHERE {where} ORDER BY update_time DESC, id DESC LIMIT $2", *args
        )
        return [session_pb2.Session.FromString(row["body"]) for row in rows]

    async def delete_session(self, name: str) -> None:
        tenant, sid = split_name(name)
        async with self.pool.acquire() as conn, conn.transaction():
            for table in ("events", "turns", "commands"):
                await conn.execute(f"DELETE FROM {SCHEMA}.{table} WHERE tenant = $1 AND session = $2", tenant, sid)
            await conn.execute(f"DELETE FROM {SCHEMA}.sessions WHERE tenant = $1 AND id = $2", tenant, sid)

    async def reserve(self, name: str, upto: int) -> None:
        tenant, sid = split_name(name)
        await self.pool.execute(
            f"UPDATE {SCHEMA}.sessions SET reserved_sequence = GREATEST(reserved_sequence, $3)"
            " WHERE tenant = $1 AND id = $2",
            tenant,
            sid,
            upto,
        )

    # -- one session's writes --------------------------------------------------------

    async def write(self, write: EncodedWrite) -> None:
        """Everything of `write` in one statement (one round trip, atomic): the session row
        first, and the rest only if that row still exists."""
        tenant, sid = split_name(write.session.name)
        turns = write.turns
        events = write.events
        commands = write.commands
        updated = await self.pool.fetchval(
            _WRITE,
            tenant,
            sid,
            write.session.SerializeToString(),
            write.session.update_time.ToDatetime().astimezone(),
            write.reserved_sequence,
            [turn_ordinal(turn.name) for turn in turns],
            [turn.request_id for turn in turns],
            [_state_name(turn) for turn in turns],
            [turn.SerializeToString() for turn in turns],
            write.lease.runner if write.lease else None,
            write.lease.until if write.lease else None,
            [event.sequence for event, _, _ in events],
            [ordinal for _, ordinal, _ in events],
            [delta for _, _, delta in events],
            [event.SerializeToString() for event, _, _ in events],
            write.compact_turns,
            [c.request_id for c in commands],
            [c.kind for c in commands],
            [c.turn for c in commands],
            [c.fingerprint for c in commands],
            *outbox_arrays(write.audit),
            write.lease.address if write.lease else None,
        )
        if not updated:
            raise SessionGone(write.session.name)

    # -- turns and events ------------------------------------------------------------

    async def get_turn(self, session: str, ordinal: int) -> turn_pb2.Turn | None:
        tenant, sid = split_name(session)
        body = await self.pool.fetchval(
            f"SELECT body FROM {SCHEMA}.turns WHERE tenant = $1 AND session = $2 AND ordinal = $3", tenant, sid, ordinal
        )
        return None if body is None else turn_pb2.Turn.FromString(body)

    async def turn_by_request(self, session: str, request_id: str) -> turn_pb2.Turn | None:
        tenant, sid = split_name(session)
        body = await self.pool.fetchval(
            f"SELECT body FROM {SCHEMA}.turns WHERE tenant = $1 AND session = $2 AND request_id = $3",
            tenant,
            sid,
            request_id,
        )
        return None if body is None else turn_pb2.Turn.FromString(body)

    async def list_turns(self, session: str, after_ordinal: int, limit: int) -> list[turn_pb2.Turn]:
        tenant, sid = split_name(session)
        rows = await self.pool.fetch(
            f"SELECT body FROM {SCHEMA}.turns WHERE tenant = $1 AND session = $2 AND ordinal > $3"
            " ORDER BY ordinal LIMIT $4",
            tenant,
            sid,
            after_ordinal,
            limit,
        )
        return [turn_pb2.Turn.FromString(row["body"]) for row in rows]

    async def list_events(
        self, session: str, after_sequence: int, limit: int, *, turn: int | None = None
    ) -> list[session_event_pb2.SessionEvent]:
        tenant, sid = split_name(session)
        if turn is None:
            rows = await self.pool.fetch(
                f"SELECT body FROM {SCHEMA}.events WHERE tenant = $1 AND session = $2 AND sequence > $3"
                " ORDER BY sequence LIMIT $4",
                tenant,
                sid,
                after_sequence,
                limit,
            )
        else:
            rows = await self.pool.fetch(
                f"SELECT body FROM {SCHEMA}.events WHERE tenant = $1 AND session = $2 AND turn = $5"
                " AND sequence > $3 ORDER BY sequence LIMIT $4",
                tenant,
                sid,
                after_sequence,
                limit,
                turn,
            )
        return [session_event_pb2.SessionEvent.FromString(row["body"]) for row in rows]

    async def command(self, session: str, request_id: str) -> Command | None:
        tenant, sid = split_name(session)
        row = await self.pool.fetchrow(
            f"SELECT kind, turn, fingerprint FROM {SCHEMA}.commands"
            " WHERE tenant = $1 AND session = $2 AND request_id = $3",
            tenant,
            sid,
            request_id,
        )
        return None if row is None else Command(request_id, row["kind"], row["turn"], row["fingerprint"])

    # -- leases on running turns -----------------------------------------------------

    async def renew(self, lease: Lease, sessions: Sequence[str]) -> None:
        if not sessions:
            return
        keys = [split_name(name) for name in sessions]
        await self.pool.execute(
            f"UPDATE {SCHEMA}.turns SET lease_until = $2, runner_address = $5 WHERE runner = $1"
            " AND state IN ('RUNNING', 'AWAITING_APPROVAL')"
            " AND (tenant, session) IN (SELECT * FROM unnest($3::text[], $4::text[]))",
            lease.runner,
            lease.until,
            [k[0] for k in keys],
            [k[1] for k in keys],
            lease.address,
        )

    async def take_own(self, lease: Lease) -> list[str]:
        """This runner's running turns, left by its previous incarnation; their leases renewed."""
        rows = await self.pool.fetch(
            f"UPDATE {SCHEMA}.turns SET lease_until = $2, runner_address = $3 WHERE runner = $1"
            " AND state IN ('RUNNING', 'AWAITING_APPROVAL') RETURNING tenant, session",
            lease.runner,
            lease.until,
            lease.address,
        )
        return [f"{row['tenant']}/sessions/{row['session']}" for row in rows]

    async def take_orphans(self, lease: Lease, now: datetime, limit: int = 50) -> list[str]:
        """Claims running turns whose runner stopped renewing; returns their session names."""
        rows = await self.pool.fetch(
            f"UPDATE {SCHEMA}.turns SET runner = $1, lease_until = $3, runner_address = $5"
            f" WHERE (tenant, session, ordinal) IN ("
            f" SELECT tenant, session, ordinal FROM {SCHEMA}.turns"
            " WHERE state IN ('RUNNING', 'AWAITING_APPROVAL') AND (lease_until IS NULL OR lease_until < $2)"
            " LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING tenant, session",
            lease.runner,
            now,
            lease.until,
            limit,
            lease.address,
        )
        return [f"{row['tenant']}/sessions/{row['session']}" for row in rows]

    async def lease(self, session: str, ordinal: int) -> tuple[turn_pb2.Turn, Lease | None] | None:
        """The turn as stored and the lease it carries (None: no runner has held it)."""
        tenant, sid = split_name(session)
        row = await self.pool.fetchrow(
            f"SELECT body, runner, runner_address, lease_until FROM {SCHEMA}.turns"
            " WHERE tenant = $1 AND session = $2 AND ordinal = $3",
            tenant,
            sid,
            ordinal,
        )
        if row is None:
            return None
        turn = turn_pb2.Turn.FromString(row["body"])
        if row["runner"] is None or row["lease_until"] is None:
            return turn, None
        return turn, Lease(row["runner"], row["runner_address"] or "", row["lease_until"])


class PostgresSessionStore(EncodedSessionStore):
    """The SessionStore port in PostgreSQL."""

    def __init__(self, records: PostgresSessionRecords) -> None:
        super().__init__(records)
        self.pool = records.pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresSessionStore:
        return cls(await PostgresSessionRecords.open(dsn))

    async def close(self) -> None:
        await self.pool.close()
