"""Outcomes owed to svc_policy, kept in the service's own PostgreSQL (the PendingReports port
of skm_runtime.held_actions), so they are reported after a restart too.

A service adds `pending_reports_ddl(SCHEMA)` to its schema and builds
`PostgresPendingReports(pool, SCHEMA)` on its pool.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from skm_runtime.access import Outcome, Principal
from skm_runtime.held_actions import PendingReport


def pending_reports_ddl(schema: str) -> str:
    return f"""
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.pending_reports (
        blocked_action text NOT NULL,
        claim_id text NOT NULL,
        succeeded boolean NOT NULL,
        failure_reason text NOT NULL,
        principal jsonb,
        since timestamptz NOT NULL,
        PRIMARY KEY (blocked_action, claim_id)
    );
    """


def _principal_json(principal: Principal | None) -> str | None:
    if principal is None:
        return None
    return json.dumps({"tenant": principal.tenant, "user": principal.user, "roles": list(principal.roles)})


def _principal_of(value: Any) -> Principal | None:
    if value is None:
        return None
    data = json.loads(value) if isinstance(value, str) else value
    return Principal(tenant=data["tenant"], user=data.get("user", ""), roles=tuple(data.get("roles", ())))


class PostgresPendingReports:
    """PendingReports in `{schema}.pending_reports`."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def add(self, report: PendingReport) -> None:
        await self._pool.execute(
            f"INSERT INTO {self._schema}.pending_reports"
            " (blocked_action, claim_id, succeeded, failure_reason, principal, since)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
            " ON CONFLICT (blocked_action, claim_id) DO UPDATE"
            " SET succeeded = EXCLUDED.succeeded, failure_reason = EXCLUDED.failure_reason,"
            " principal = EXCLUDED.principal",
            report.blocked_action,
            report.claim_id,
            report.outcome.succeeded,
            report.outcome.failure_reason,
            _principal_json(report.principal),
            report.since,
        )

    async def due(self, limit: int) -> list[PendingReport]:
        rows = await self._pool.fetch(
            f"SELECT blocked_action, claim_id, succeeded, failure_reason, principal, since"
            f" FROM {self._schema}.pending_reports ORDER BY since, blocked_action LIMIT $1",
            limit,
        )
        return [
            PendingReport(
                row["blocked_action"],
                row["claim_id"],
                Outcome(row["succeeded"], row["failure_reason"]),
                _principal_of(row["principal"]),
                row["since"],
            )
            for row in rows
        ]

    async def remove(self, blocked_action: str, claim_id: str) -> None:
        await self._pool.execute(
            f"DELETE FROM {self._schema}.pending_reports WHERE blocked_action = $1 AND claim_id = $2",
            blocked_action,
            claim_id,
        )
