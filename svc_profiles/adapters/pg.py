"""What svc_profiles's Postgres stores share: the schema, the driver boundary, migrations and
the split of resource names into their key columns.

The stores (`postgres.py`: the registry, personas and profiles; `postgres_tenants.py`,
`postgres_bundles.py`, `postgres_scoring.py`) share one pool and one schema, and migrate one
process at a time under the same advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from skm_runtime.errors import ServiceUnavailable

SCHEMA = "profiles"

log = logging.getLogger("skm.profiles.postgres")

# What says the database cannot be reached now, rather than that a statement is wrong: the
# network, the driver's connection, Postgres refusing or shutting down connections.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('skm.profiles.migrate'))"


@contextmanager
def database() -> Iterator[None]:
    """The driver boundary: an unreachable database is UNAVAILABLE (the caller may retry);
    any other driver error is a bug of this service, raised on as INTERNAL by the error
    interceptor, which logs its cause (never a client's business). Nothing asyncpg leaks."""
    try:
        yield
    except UNREACHABLE as exc:
        raise ServiceUnavailable(
            "the profile service's database cannot be reached", metadata={"error": type(exc).__name__}
        ) from exc
    except asyncpg.PostgresError as exc:
        log.error("a statement failed", extra={"fields": {"error": type(exc).__name__, "sqlstate": exc.sqlstate}})
        raise RuntimeError(f"a profiles statement failed ({type(exc).__name__})") from None


async def migrate(conn: Any, ddl: str) -> None:
    """Run `ddl` (CREATE ... IF NOT EXISTS, ALTER ... IF NOT EXISTS) in one transaction, one
    migrating process at a time."""
    async with conn.transaction():
        await conn.execute(_MIGRATION_LOCK)
        await conn.execute(ddl)


def split_name(name: str) -> tuple[str, str]:
    """ "tenants/{t}/{collection}/{id}" -> ("tenants/{t}", id); the core checked the shape."""
    parts = name.split("/")
    return f"{parts[0]}/{parts[1]}", parts[3]
