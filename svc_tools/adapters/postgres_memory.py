"""Memories and knowledge-base documents in Postgres (schema `tools`): the metadata and text
whose vectors live in Qdrant.

These tables are the truth about what exists: a vector without its row is never shown.
Memory changes write their skm.events.v1.MemoryOperation audit events to the outbox in the
same transaction (recalls, which change nothing, in a transaction of their own).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from skm_runtime.errors import ServiceUnavailable
from skm_runtime.outbox import add_events
from skm_runtime.records import OutboxRecord
from svc_tools.adapters.postgres import SCHEMA, TOPIC_AUDIT
from svc_tools.convert import memory_operation_event
from svc_tools.model import Chunk, Document, Memory, MemoryOperation

_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.memories (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    -- "tenants/{{t}}/memoryNamespaces/{{n}}" or "tenants/{{t}}/users/{{u}}/memoryNamespaces/main".
    namespace text NOT NULL,
    text text NOT NULL,
    -- The embedding model of its vector (vectors of different models are never compared).
    model text NOT NULL,
    -- The user it was saved for, the persona that saved it, the memory_save execution.
    author text NOT NULL,
    persona text NOT NULL DEFAULT '',
    execution text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_namespace ON {SCHEMA}.memories (tenant, namespace);
CREATE TABLE IF NOT EXISTS {SCHEMA}.documents (
    name text PRIMARY KEY,
    tenant text NOT NULL,
    knowledge_base text NOT NULL,
    title text NOT NULL,
    mime_type text NOT NULL,
    sha256 text NOT NULL,
    chunk_count integer NOT NULL,
    model text NOT NULL,
    creator text NOT NULL,
    create_time timestamptz NOT NULL,
    UNIQUE (knowledge_base, sha256)
);
CREATE INDEX IF NOT EXISTS documents_newest ON {SCHEMA}.documents (knowledge_base, create_time DESC, name DESC);
CREATE TABLE IF NOT EXISTS {SCHEMA}.chunks (
    id text PRIMARY KEY,
    document text NOT NULL REFERENCES {SCHEMA}.documents (name) ON DELETE CASCADE,
    tenant text NOT NULL,
    ordinal integer NOT NULL,
    text text NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_document ON {SCHEMA}.chunks (document);
"""

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_MEMORY = "id, tenant, namespace, text, model, author, persona, execution, create_time"
_DOCUMENT = "name, title, mime_type, sha256, chunk_count, model, create_time, creator"


async def migrate(pool: asyncpg.Pool) -> None:
    """Create the tables (the schema and its outbox exist: PostgresExecutionStore made them)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('skm.tools.migrate'))")
            await conn.execute(_DDL)
    except _DB_ERRORS as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable("the tool service's database cannot be reached", metadata={"error": type(exc).__name__})


def _records(operations: Sequence[MemoryOperation]) -> list[OutboxRecord]:
    records = []
    for operation in operations:
        event = memory_operation_event(operation)
        key = (event.session or event.tenant).encode()
        records.append(OutboxRecord(event.event_id, TOPIC_AUDIT, key, event.SerializeToString()))
    return records


def _memory(row: Any) -> Memory:
    return Memory(
        id=row["id"],
        tenant=row["tenant"],
        namespace=row["namespace"],
        text=row["text"],
        model=row["model"],
        create_time=row["create_time"],
        author=row["author"],
        persona=row["persona"],
        execution=row["execution"],
    )


def _document(row: Any) -> Document:
    return Document(
        name=row["name"],
        title=row["title"],
        mime_type=row["mime_type"],
        sha256=row["sha256"],
        chunk_count=row["chunk_count"],
        model=row["model"],
        create_time=row["create_time"],
        creator=row["creator"],
    )


class PostgresMemoryStore:
    """Memories in `tools.memories`, their audit events in `tools.outbox`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, memory: Memory, operation: MemoryOperation) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.memories ({_MEMORY}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    memory.id,
                    memory.tenant,
                    memory.namespace,
                    memory.text,
                    memory.model,
                    memory.author,
                    memory.persona,
                    memory.execution,
                    memory.create_time,
                )
                await add_events(conn, SCHEMA, _records([operation]))
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        if not ids:
            return []
        try:
            rows = await self._pool.fetch(
                f"SELECT {_MEMORY} FROM {SCHEMA}.memories WHERE tenant = $1 AND id = ANY($2::text[])", tenant, list(ids)
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_memory(row) for row in rows]

    async def remove(self, tenant: str, ids: Sequence[str], operations: Sequence[MemoryOperation]) -> list[Memory]:
        if not ids:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"DELETE FROM {SCHEMA}.memories WHERE tenant = $1 AND id = ANY($2::text[]) RETURNING {_MEMORY}",
                    tenant,
                    list(ids),
                )
                await add_events(conn, SCHEMA, _records(operations))
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_memory(row) for row in rows]

    async def record(self, operations: Sequence[MemoryOperation]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await add_events(conn, SCHEMA, _records(operations))
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc


class PostgresKnowledgeStore:
    """Documents in `tools.documents`, their chunks' text in `tools.chunks`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def find(self, knowledge_base: str, sha256: str) -> Document | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {_DOCUMENT} FROM {SCHEMA}.documents WHERE knowledge_base = $1 AND sha256 = $2",
                knowledge_base,
                sha256,
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if row is None else _document(row)

    async def add(self, document: Document, chunks: Sequence[Chunk]) -> tuple[Document, bool]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    f"""INSERT INTO {SCHEMA}.documents
                        (name, tenant, knowledge_base, title, mime_type, sha256, chunk_count, model, creator,
                         create_time)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                        ON CONFLICT (knowledge_base, sha256) DO NOTHING RETURNING name""",
                    document.name,
                    document.tenant,
                    document.knowledge_base,
                    document.title,
                    document.mime_type,
                    document.sha256,
                    document.chunk_count,
                    document.model,
                    document.creator,
                    document.create_time,
                )
                if inserted is None:
                    row = await conn.fetchrow(
                        f"SELECT {_DOCUMENT} FROM {SCHEMA}.documents WHERE knowledge_base = $1 AND sha256 = $2",
                        document.knowledge_base,
                        document.sha256,
                    )
                    return _document(row), False
                await conn.copy_records_to_table(
                    "chunks",
                    schema_name=SCHEMA,
                    columns=["id", "document", "tenant", "ordinal", "text"],
                    records=[(c.id, c.document, document.tenant, c.ordinal, c.text) for c in chunks],
                )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return document, True

    async def get(self, name: str) -> Document | None:
        try:
            row = await self._pool.fetchrow(f"SELECT {_DOCUMENT} FROM {SCHEMA}.documents WHERE name = $1", name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if row is None else _document(row)

    async def page(self, knowledge_base: str, after: tuple[datetime, str] | None, limit: int) -> list[Document]:
        try:
            if after is None:
                rows = await self._pool.fetch(
                    f"""SELECT {_DOCUMENT} FROM {SCHEMA}.documents WHERE knowledge_base = $1
                        ORDER BY create_time DESC, name DESC LIMIT $2""",
                    knowledge_base,
                    limit,
                )
            else:
                rows = await self._pool.fetch(
                    f"""SELECT {_DOCUMENT} FROM {SCHEMA}.documents
                        WHERE knowledge_base = $1 AND (create_time, name) < ($2, $3)
                        ORDER BY create_time DESC, name DESC LIMIT $4""",
                    knowledge_base,
                    after[0],
                    after[1],
                    limit,
                )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_document(row) for row in rows]

    async def remove(self, name: str) -> tuple[Document, list[str]] | None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                ids = await conn.fetch(f"SELECT id FROM {SCHEMA}.chunks WHERE document = $1", name)
                row = await conn.fetchrow(f"DELETE FROM {SCHEMA}.documents WHERE name = $1 RETURNING {_DOCUMENT}", name)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if row is None else (_document(row), [r["id"] for r in ids])

    async def chunks(self, tenant: str, ids: Sequence[str]) -> list[tuple[Chunk, Document]]:
        if not ids:
            return []
        try:
            rows = await self._pool.fetch(
                f"""SELECT c.id, c.ordinal, c.text AS chunk_text, d.name, d.title, d.mime_type, d.sha256,
                           d.chunk_count, d.model, d.create_time, d.creator
                    FROM {SCHEMA}.chunks c JOIN {SCHEMA}.documents d ON d.name = c.document
                    WHERE c.tenant = $1 AND c.id = ANY($2::text[])""",
                tenant,
                list(ids),
            )
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [(Chunk(row["id"], row["name"], row["ordinal"], row["chunk_text"]), _document(row)) for row in rows]
