"""Databases of a test's own in the session's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from skm_stack import RunningStack


@asynccontextmanager
async def fresh_database(stack: RunningStack, prefix: str) -> AsyncIterator[str]:
    """A new, empty database (its DSN), dropped afterwards with whatever still uses it.

    Services' copies in other tests share the default database's schemas, and would take
    over (or be confused by) what a port suite leaves there; a database of its own keeps
    each suite's rows to itself."""
    assert stack.postgres is not None
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # As the superuser: DROP ... WITH (FORCE) must be able to end every session on it,
    # autovacuum workers included, which the services' role may not signal.
    admin = await asyncpg.connect(stack.postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "skm"')
        try:
            yield stack.postgres.dsn_for("skm", name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
