"""The deployment's tenants in Postgres (ports.TenantStore): table `profiles.tenants`, in the
schema and pool of PostgresProfileStore, migrated by `migrate` (with the schema's outbox, which
it writes to).

A tenant becomes ACTIVE in one transaction with its TenantOnboarded event in the outbox, and
only from PROVISIONING, so the event is written once however many creates race to finish it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from skm.events.v1 import event_pb2
from skm_runtime.outbox import add_events, outbox_ddl
from svc_profiles import convert
from svc_profiles.adapters.events import envelope, record
from svc_profiles.adapters.pg import SCHEMA, database, migrate
from svc_profiles.model import Tenant, TenantState

_DDL = f"""
{outbox_ddl(SCHEMA)}
CREATE TABLE IF NOT EXISTS {SCHEMA}.tenants (
    -- "tenants/{{tenant}}"
    name text PRIMARY KEY COLLATE "C",
    display_name text NOT NULL,
    -- "tenants/{{tenant}}/users/{{user}}"
    admins text[] NOT NULL,
    state text NOT NULL,
    constitution_sha256 text NOT NULL,
    personas text[] NOT NULL,
    relationship_count integer NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
"""

_COLUMNS = (
    "name, display_name, admins, state, constitution_sha256, personas, relationship_count, create_time, update_time"
)
# TenantOnboarded's event id is derived from the tenant and its creation, so a retried
# activation (should one ever be written twice) keeps one id for consumers to drop.
_EVENT_IDS = uuid.UUID("3b1f6c9e-2a4d-4f0e-9c55-7d1e8a0b6f21")


def _tenant(row: Any) -> Tenant:
    return Tenant(
        name=row["name"],
        display_name=row["display_name"],
        admins=tuple(row["admins"]),
        state=TenantState(row["state"]),
        constitution_sha256=row["constitution_sha256"],
        personas=tuple(row["personas"]),
        relationship_count=row["relationship_count"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _onboarded(tenant: Tenant) -> event_pb2.Event:
    stamp = tenant.create_time.isoformat() if tenant.create_time else ""
    at = tenant.update_time or datetime.now(UTC)
    event = envelope(tenant.name, at, event_id=str(uuid.uuid5(_EVENT_IDS, f"{tenant.name}|{stamp}")))
    event.tenant_onboarded.tenant.CopyFrom(convert.tenant_to(tenant))
    return event


class PostgresTenantStore:
    """Tenants in `profiles.tenants`, sharing the profile store's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        with database():
            async with self._pool.acquire() as conn:
                await migrate(conn, _DDL)

    async def get_tenant(self, name: str) -> Tenant | None:
        with database():
            row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM {SCHEMA}.tenants WHERE name = $1", name)
        return None if row is None else _tenant(row)

    async def insert_tenant(self, tenant: Tenant) -> bool:
        with database():
            status = await self._pool.execute(
                f"INSERT INTO {SCHEMA}.tenants ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
                " ON CONFLICT (name) DO NOTHING",
                tenant.name,
                tenant.display_name,
                list(tenant.admins),
                TenantState.PROVISIONING.value,
                "",
                [],
                0,
                tenant.create_time,
            )
        return bool(status == "INSERT 0 1")

    async def activate_tenant(self, tenant: Tenant) -> bool:
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    f"UPDATE {SCHEMA}.tenants SET state = $2, constitution_sha256 = $3, personas = $4,"
                    " relationship_count = $5, update_time = $6 WHERE name = $1 AND state = $7",
                    tenant.name,
                    TenantState.ACTIVE.value,
                    tenant.constitution_sha256,
                    list(tenant.personas),
                    tenant.relationship_count,
                    tenant.update_time,
                    TenantState.PROVISIONING.value,
                )
                if status != "UPDATE 1":
                    return False
                await add_events(conn, SCHEMA, [record(_onboarded(tenant))])
        return True

    async def list_tenants(self, after: str, limit: int) -> list[Tenant]:
        with database():
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.tenants WHERE name > $1 ORDER BY name LIMIT $2", after, limit
            )
        return [_tenant(row) for row in rows]
