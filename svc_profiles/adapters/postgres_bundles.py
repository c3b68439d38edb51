"""Persona bundles in Postgres (schema `profiles`, sharing the profile store's pool):
tenants' trusted publisher keys, each persona's current install, and the history of its
installs (a rollback finds there the permissions of the bundle it brings back). Install and
refusal events go to the schema's outbox: an install's in the transaction of its record, a
refusal's on its own (a refusal changes nothing else).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from skm.events.v1 import event_pb2
from skm_runtime.outbox import add_events
from svc_profiles.adapters.events import envelope, record
from svc_profiles.adapters.pg import SCHEMA, database, migrate, split_name
from svc_profiles.model import (
    BundleInstalled,
    BundlePermissions,
    BundleRefused,
    InstalledBundle,
    Relationship,
    TrustedKey,
)

_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.trusted_keys (
    tenant text NOT NULL,
    key_id text NOT NULL COLLATE "C",
    -- The 32 raw bytes of the Ed25519 public key.
    public_key bytea NOT NULL,
    expire_time timestamptz NOT NULL,
    display_name text NOT NULL,
    create_time timestamptz NOT NULL,
    CONSTRAINT trusted_keys_pkey PRIMARY KEY (tenant, key_id)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.persona_installs (
    tenant text NOT NULL,
    persona_id text NOT NULL,
    version bigint NOT NULL,
    key_id text NOT NULL,
    bundle_digest text NOT NULL,
    -- {{"tools": [...], "memory_read": [...], "memory_write": [...]}}
    permissions jsonb NOT NULL,
    -- The relationships the install wrote in svc_policy, [[subject, relation, object], ...].
    relationships jsonb NOT NULL,
    install_time timestamptz NOT NULL,
    CONSTRAINT persona_installs_pkey PRIMARY KEY (tenant, persona_id)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.persona_install_history (
    seq bigserial PRIMARY KEY,
    tenant text NOT NULL,
    persona_id text NOT NULL,
    version bigint NOT NULL,
    key_id text NOT NULL,
    bundle_digest text NOT NULL,
    permissions jsonb NOT NULL,
    relationships jsonb NOT NULL,
    install_time timestamptz NOT NULL,
    -- The install's idempotency key ('' for none, and for rollbacks) and the file's SHA-256.
    request_id text NOT NULL,
    bundle_sha256 text NOT NULL
);
CREATE INDEX IF NOT EXISTS persona_install_history_persona
    ON {SCHEMA}.persona_install_history (tenant, persona_id, bundle_digest);
CREATE UNIQUE INDEX IF NOT EXISTS persona_install_history_request
    ON {SCHEMA}.persona_install_history (tenant, request_id) WHERE request_id <> '';
"""

_KEY_COLUMNS = "tenant, key_id, public_key, expire_time, display_name, create_time"
_INSTALL_COLUMNS = "tenant, persona_id, version, key_id, bundle_digest, permissions, relationships, install_time"


def _key(row: Any) -> TrustedKey:
    return TrustedKey(
        name=f"{row['tenant']}/trustedKeys/{row['key_id']}",
        public_key=bytes(row["public_key"]),
        expire_time=row["expire_time"],
        display_name=row["display_name"],
        create_time=row["create_time"],
    )


def _installed(row: Any) -> InstalledBundle:
    permissions = json.loads(row["permissions"])
    return InstalledBundle(
        persona=f"{row['tenant']}/personas/{row['persona_id']}",
        version=row["version"],
        key_id=row["key_id"],
        bundle_digest=row["bundle_digest"],
        permissions=BundlePermissions(
            tuple(permissions["tools"]), tuple(permissions["memory_read"]), tuple(permissions["memory_write"])
        ),
        relationships=tuple(Relationship(*r) for r in json.loads(row["relationships"])),
        install_time=row["install_time"],
    )


def _install_values(installed: InstalledBundle) -> tuple[Any, ...]:
    tenant, persona_id = split_name(installed.persona)
    p = installed.permissions
    return (
        tenant,
        persona_id,
        installed.version,
        installed.key_id,
        installed.bundle_digest,
        json.dumps({"tools": list(p.tools), "memory_read": list(p.memory_read), "memory_write": list(p.memory_write)}),
        json.dumps([[r.subject, r.relation, r.object] for r in installed.relationships]),
        installed.install_time,
    )


def installed_event(tenant: str, done: BundleInstalled) -> event_pb2.Event:
    """PersonaBundleInstalled, topic `profiles`."""
    event = envelope(tenant, done.at)
    payload = event.persona_bundle_installed
    payload.persona = done.persona
    payload.version = done.version
    payload.previous_version = done.previous_version
    payload.key_id = done.key_id
    payload.bundle_digest = done.bundle_digest
    payload.revision_id = done.revision_id
    return event


def refused_event(refused: BundleRefused) -> event_pb2.Event:
    """PersonaBundleRefused, topic `profiles`."""
    event = envelope(refused.tenant, refused.at)
    payload = event.persona_bundle_refused
    payload.persona = refused.persona
    payload.reason = refused.reason
    payload.key_id = refused.key_id
    payload.version = refused.version
    payload.bundle_sha256 = refused.bundle_sha256
    return event


class PostgresBundleStore:
    """ports.BundleStore in the `profiles` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        with database():
            async with self._pool.acquire() as conn:
                await migrate(conn, _DDL)

    # -- trusted keys ------------------------------------------------------------------------

    async def insert_trusted_key(self, key: TrustedKey) -> bool:
        tenant, key_id = split_name(key.name)
        with database():
            done = await self._pool.fetchval(
                f"INSERT INTO {SCHEMA}.trusted_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                tenant,
                key_id,
                key.public_key,
                key.expire_time,
                key.display_name,
                key.create_time,
            )
        return done is not None

    async def get_trusted_key(self, name: str) -> TrustedKey | None:
        tenant, key_id = split_name(name)
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM {SCHEMA}.trusted_keys WHERE tenant = $1 AND key_id = $2", tenant, key_id
            )
        return None if row is None else _key(row)

    async def list_trusted_keys(self, tenant: str, after: str, limit: int) -> list[TrustedKey]:
        with database():
            rows = await self._pool.fetch(
                f"SELECT {_KEY_COLUMNS} FROM {SCHEMA}.trusted_keys WHERE tenant = $1 AND key_id > $2"
                " ORDER BY key_id LIMIT $3",
                tenant,
                after,
                limit,
            )
        return [_key(row) for row in rows]

    async def delete_trusted_key(self, name: str) -> bool:
        tenant, key_id = split_name(name)
        with database():
            done = await self._pool.fetchval(
                f"DELETE FROM {SCHEMA}.trusted_keys WHERE tenant = $1 AND key_id = $2 RETURNING 1", tenant, key_id
            )
        return done is not None

    # -- installs ----------------------------------------------------------------------------

    async def installed_bundle(self, persona: str) -> InstalledBundle | None:
        tenant, persona_id = split_name(persona)
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_INSTALL_COLUMNS} FROM {SCHEMA}.persona_installs WHERE tenant = $1 AND persona_id = $2",
                tenant,
                persona_id,
            )
        return None if row is None else _installed(row)

    async def bundle_with_digest(self, persona: str, bundle_digest: str) -> InstalledBundle | None:
        tenant, persona_id = split_name(persona)
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_INSTALL_COLUMNS} FROM {SCHEMA}.persona_install_history"
                " WHERE tenant = $1 AND persona_id = $2 AND bundle_digest = $3 ORDER BY seq DESC LIMIT 1",
                tenant,
                persona_id,
                bundle_digest,
            )
        return None if row is None else _installed(row)

    async def install_by_request(self, tenant: str, request_id: str) -> tuple[str, str] | None:
        with database():
            row = await self._pool.fetchrow(
                f"SELECT persona_id, bundle_sha256 FROM {SCHEMA}.persona_install_history"
                " WHERE tenant = $1 AND request_id = $2 AND request_id <> ''",
                tenant,
                request_id,
            )
        return None if row is None else (f"{tenant}/personas/{row['persona_id']}", row["bundle_sha256"])

    async def record_install(
        self, installed: InstalledBundle, event: BundleInstalled | None, request_id: str, bundle_sha256: str
    ) -> None:
        values = _install_values(installed)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.persona_installs ({_INSTALL_COLUMNS})"
                    " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)"
                    " ON CONFLICT (tenant, persona_id) DO UPDATE SET version = $3, key_id = $4,"
                    " bundle_digest = $5, permissions = $6::jsonb, relationships = $7::jsonb, install_time = $8",
                    *values,
                )
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.persona_install_history ({_INSTALL_COLUMNS}, request_id, bundle_sha256)"
                    " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10)"
                    " ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING",
                    *values,
                    request_id,
                    bundle_sha256,
                )
                if event is not None:
                    await add_events(conn, SCHEMA, [record(installed_event(values[0], event))])

    async def record_refusal(self, refused: BundleRefused) -> None:
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                await add_events(conn, SCHEMA, [record(refused_event(refused))])

    async def forget_installs(self, persona: str) -> None:
        tenant, persona_id = split_name(persona)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                for table in ("persona_installs", "persona_install_history"):
                    await conn.execute(
                        f"DELETE FROM {SCHEMA}.{table} WHERE tenant = $1 AND persona_id = $2", tenant, persona_id
                    )
