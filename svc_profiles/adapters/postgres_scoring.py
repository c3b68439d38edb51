"""The scoring job's state in Postgres (schema `profiles`, the pool of PostgresProfileStore):
benchmark runs, scoring runs with the tenants each has stored, and per tenant the scores and
recommendations of every run (the latest run that stored a tenant is what ListModelScores and
ListModelRecommendations show). A tenant's results, the run's note that the tenant is done
and the ModelProfileScored events go in one transaction, so a run cut short resumes exactly
where it stopped and never stores or announces a tenant twice.

Auto mode's ModelProfileAutoSelected events are written by PostgresProfileStore, in the
transaction of the profile's new revision.

Single flight: a session-level advisory lock, taken with pg_try_advisory_lock on a connection
held for the whole run. If the process dies the connection closes and Postgres frees the lock,
so a replica's crash never leaves the job locked; the run it left RUNNING is then resumed.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from skm.events.v1 import event_pb2
from skm_runtime.outbox import add_events
from skm_runtime.values import ModelRole, Money
from skm_runtime.values_wire import role_to
from svc_profiles import convert
from svc_profiles.adapters.events import TOPIC_SCORED, envelope, record
from svc_profiles.adapters.pg import SCHEMA, UNREACHABLE, database, migrate
from svc_profiles.model import (
    BenchmarkRun,
    ModelRecommendation,
    ModelScore,
    ScoreWeights,
    ScoringRun,
    ScoringState,
    ScoringTrigger,
)

# The lock's key: one scoring run at a time across every replica sharing the database.
_LOCK = "hashtext('skm.profiles.scoring')"
# Event ids derived from (run, tenant, role): a retried store writes the same ids.
_EVENT_NAMESPACE = uuid.UUID("6f1d3c1e-5d0b-4a53-9d2f-0f6a2b1c9e11")

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.benchmark_runs (
    request_id text PRIMARY KEY,
    request_fingerprint text NOT NULL,
    model text NOT NULL,
    role text NOT NULL,
    suite text NOT NULL,
    attempts integer NOT NULL,
    successes integer NOT NULL,
    failures integer NOT NULL,
    latency_seconds double precision NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    end_time timestamptz NOT NULL,
    record_seq bigserial
);
CREATE INDEX IF NOT EXISTS benchmark_runs_latest
    ON {SCHEMA}.benchmark_runs (model, role, suite, end_time DESC, record_seq DESC);
CREATE TABLE IF NOT EXISTS {SCHEMA}.scoring_runs (
    run_id text PRIMARY KEY,
    state text NOT NULL,
    trigger text NOT NULL,
    -- '' scores every tenant.
    tenant text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    create_time timestamptz NOT NULL,
    end_time timestamptz,
    tenants_done integer NOT NULL,
    tenants_total integer NOT NULL,
    profiles_changed integer NOT NULL,
    failure_reason text NOT NULL
);
CREATE INDEX IF NOT EXISTS scoring_runs_latest ON {SCHEMA}.scoring_runs (trigger, create_time DESC);
CREATE TABLE IF NOT EXISTS {SCHEMA}.scoring_run_tenants (
    run_id text NOT NULL,
    tenant text NOT NULL,
    store_seq bigserial,
    CONSTRAINT scoring_run_tenants_pkey PRIMARY KEY (run_id, tenant)
);
CREATE INDEX IF NOT EXISTS scoring_run_tenants_latest ON {SCHEMA}.scoring_run_tenants (tenant, store_seq DESC);
CREATE TABLE IF NOT EXISTS {SCHEMA}.model_scores (
    tenant text NOT NULL,
    run_id text NOT NULL,
    role text NOT NULL,
    model text NOT NULL,
    -- The score's fields (see _score_json).
    body jsonb NOT NULL,
    CONSTRAINT model_scores_pkey PRIMARY KEY (tenant, run_id, role, model)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.model_recommendations (
    tenant text NOT NULL,
    run_id text NOT NULL,
    role text NOT NULL,
    model_profile text NOT NULL,
    body jsonb NOT NULL,
    CONSTRAINT model_recommendations_pkey PRIMARY KEY (tenant, run_id, role, model_profile)
);
"""

_BENCHMARK_COLUMNS = (
    "model, role, suite, attempts, successes, failures, latency_seconds, input_tokens, output_tokens, end_time"
)
_RUN_COLUMNS = (
    "run_id, state, trigger, tenant, window_start, window_end, create_time, end_time, tenants_done, tenants_total,"
    " profiles_changed, failure_reason"
)


def _benchmark(row: Any) -> BenchmarkRun:
    return BenchmarkRun(
        model=row["model"],
        role=ModelRole(row["role"]),
        suite=row["suite"],
        attempts=row["attempts"],
        successes=row["successes"],
        failures=row["failures"],
        latency_seconds=row["latency_seconds"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        end_time=row["end_time"],
    )


def _run(row: Any) -> ScoringRun:
    return ScoringRun(
        name=f"scoringRuns/{row['run_id']}",
        state=ScoringState(row["state"]),
        trigger=ScoringTrigger(row["trigger"]),
        tenant=row["tenant"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        create_time=row["create_time"],
        end_time=row["end_time"],
        tenants_done=row["tenants_done"],
        tenants_total=row["tenants_total"],
        profiles_changed=row["profiles_changed"],
        failure_reason=row["failure_reason"],
    )


def _run_id(name: str) -> str:
    return name.removeprefix("scoringRuns/")


def _money(value: Money) -> dict[str, Any]:
    return {"currency_code": value.currency_code, "units": value.units, "nanos": value.nanos}


def _score_json(score: ModelScore) -> str:
    return json.dumps(
        {
            "quality": score.quality,
            "cost": _money(score.cost_per_million_tokens),
            "latency_seconds": score.latency_seconds,
            "reliability": score.reliability,
            "score": score.score,
            "weights": [score.weights.quality, score.weights.cost, score.weights.latency, score.weights.reliability],
            "sample_count": score.sample_count,
            "window": [score.window_start.isoformat(), score.window_end.isoformat()],
            "ttft_seconds": score.time_to_first_token_seconds,
            "tokens_per_second": score.tokens_per_second,
            "error_rate": score.error_rate,
            "fallback_rate": score.fallback_rate,
        }
    )


def _score(row: Any) -> ModelScore:
    body = json.loads(row["body"])
    return ModelScore(
        model=row["model"],
        role=ModelRole(row["role"]),
        quality=body["quality"],
        cost_per_million_tokens=Money(**body["cost"]),
        latency_seconds=body["latency_seconds"],
        reliability=body["reliability"],
        score=body["score"],
        weights=ScoreWeights(*body["weights"]),
        sample_count=body["sample_count"],
        window_start=datetime.fromisoformat(body["window"][0]),
        window_end=datetime.fromisoformat(body["window"][1]),
        time_to_first_token_seconds=body["ttft_seconds"],
        tokens_per_second=body["tokens_per_second"],
        error_rate=body["error_rate"],
        fallback_rate=body["fallback_rate"],
        scoring_run=f"scoringRuns/{row['run_id']}",
    )


def _recommendation_json(rec: ModelRecommendation) -> str:
    return json.dumps(
        {
            "current_model": rec.current_model,
            "recommended_model": rec.recommended_model,
            "score_change": rec.score_change,
            "cost_change": rec.cost_change,
            "summary": rec.summary,
            "applied": rec.applied,
            "not_applied_reason": rec.not_applied_reason,
            "create_time": rec.create_time.isoformat(),
        }
    )


def _recommendation(row: Any) -> ModelRecommendation:
    body = json.loads(row["body"])
    return ModelRecommendation(
        model_profile=row["model_profile"],
        role=ModelRole(row["role"]),
        current_model=body["current_model"],
        recommended_model=body["recommended_model"],
        score_change=body["score_change"],
        cost_change=body["cost_change"],
        summary=body["summary"],
        scoring_run=f"scoringRuns/{row['run_id']}",
        create_time=datetime.fromisoformat(body["create_time"]),
        applied=body["applied"],
        not_applied_reason=body["not_applied_reason"],
    )


async def _unlock(conn: Any) -> None:
    """Free the run's lock; when the session is gone (a database restart, a killed backend),
    the lock went with it, and the connection is of no further use."""
    try:
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK})")
    except (*UNREACHABLE, asyncpg.PostgresError, asyncpg.InternalClientError):
        with contextlib.suppress(*UNREACHABLE, asyncpg.PostgresError):
            conn.terminate()


def scored_event(
    tenant: str,
    run: ScoringRun,
    role: ModelRole,
    scores: Sequence[ModelScore],
    recommendations: Sequence[ModelRecommendation],
    profiles: Sequence[str],
    at: datetime,
) -> event_pb2.Event:
    """ModelProfileScored of one role of a tenant; its id is stable for (run, tenant, role)."""
    event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{run.name}|{tenant}|{role.value}"))
    event = envelope(tenant, at, event_id=event_id)
    event.model_profile_scored.CopyFrom(
        event_pb2.ModelProfileScored(
            role=role_to(role),
            scores=[convert.model_score_to(s) for s in scores],
            recommended_model=scores[0].model if scores else "",
            model_profiles=list(profiles),
            applied=any(r.applied for r in recommendations),
        )
    )
    return event


class PostgresScoringStore:
    """The scoring job's tables in the `profiles` schema (created by `migrate`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        with database():
            async with self._pool.acquire() as conn:
                await migrate(conn, DDL)

    # -- benchmarks --------------------------------------------------------------------------

    async def benchmark_by_request(self, request_id: str) -> tuple[BenchmarkRun, str] | None:
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_BENCHMARK_COLUMNS}, request_fingerprint FROM {SCHEMA}.benchmark_runs WHERE request_id = $1",
                request_id,
            )
        return None if row is None else (_benchmark(row), row["request_fingerprint"])

    async def insert_benchmark(self, run: BenchmarkRun, request_id: str, fingerprint: str) -> bool:
        # The core stores only valid runs, stamped.
        assert run.role is not None
        assert run.end_time is not None
        with database():
            done = await self._pool.fetchval(
                f"""INSERT INTO {SCHEMA}.benchmark_runs (request_id, request_fingerprint, {_BENCHMARK_COLUMNS})
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                    ON CONFLICT (request_id) DO NOTHING RETURNING 1""",
                request_id,
                fingerprint,
                run.model,
                run.role.value,
                run.suite,
                run.attempts,
                run.successes,
                run.failures,
                run.latency_seconds,
                run.input_tokens,
                run.output_tokens,
                run.end_time,
            )
        return done is not None

    async def latest_benchmarks(self) -> list[BenchmarkRun]:
        with database():
            rows = await self._pool.fetch(
                f"""SELECT DISTINCT ON (model, role, suite) {_BENCHMARK_COLUMNS} FROM {SCHEMA}.benchmark_runs
                    ORDER BY model, role, suite, end_time DESC, record_seq DESC"""
            )
        return [_benchmark(row) for row in rows]

    # -- runs --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def single_flight(self) -> AsyncIterator[bool]:
        with database():
            conn = await self._pool.acquire()
        try:
            with database():
                held = bool(await conn.fetchval(f"SELECT pg_try_advisory_lock({_LOCK})"))
            try:
                yield held
            finally:
                if held:
                    await _unlock(conn)
        finally:
            # The pool may have taken back a connection whose session ended under it.
            with contextlib.suppress(asyncpg.InterfaceError):
                await self._pool.release(conn)

    async def unfinished_run(self) -> ScoringRun | None:
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_RUN_COLUMNS} FROM {SCHEMA}.scoring_runs WHERE state = $1 ORDER BY create_time LIMIT 1",
                ScoringState.RUNNING.value,
            )
        return None if row is None else _run(row)

    async def latest_run(self, trigger: ScoringTrigger | None = None) -> ScoringRun | None:
        with database():
            row = await self._pool.fetchrow(
                f"""SELECT {_RUN_COLUMNS} FROM {SCHEMA}.scoring_runs WHERE ($1 = '' OR trigger = $1)
                    ORDER BY create_time DESC LIMIT 1""",
                trigger.value if trigger else "",
            )
        return None if row is None else _run(row)

    async def insert_run(self, run: ScoringRun) -> None:
        with database():
            await self._pool.execute(
                f"""INSERT INTO {SCHEMA}.scoring_runs ({_RUN_COLUMNS})
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
                _run_id(run.name),
                run.state.value,
                run.trigger.value,
                run.tenant,
                run.window_start,
                run.window_end,
                run.create_time,
                run.end_time,
                run.tenants_done,
                run.tenants_total,
                run.profiles_changed,
                run.failure_reason,
            )

    async def update_run(self, run: ScoringRun) -> None:
        with database():
            await self._pool.execute(
                f"""UPDATE {SCHEMA}.scoring_runs SET state = $2, end_time = $3, tenants_done = $4,
                    tenants_total = $5, profiles_changed = $6, failure_reason = $7 WHERE run_id = $1""",
                _run_id(run.name),
                run.state.value,
                run.end_time,
                run.tenants_done,
                run.tenants_total,
                run.profiles_changed,
                run.failure_reason,
            )

    async def tenants_scored(self, run: str) -> set[str]:
        with database():
            rows = await self._pool.fetch(
                f"SELECT tenant FROM {SCHEMA}.scoring_run_tenants WHERE run_id = $1", _run_id(run)
            )
        return {row["tenant"] for row in rows}

    async def store_tenant_scores(
        self,
        run: ScoringRun,
        tenant: str,
        scores: Sequence[ModelScore],
        recommendations: Sequence[ModelRecommendation],
        profiles_by_role: Mapping[str, Sequence[str]],
    ) -> None:
        run_id = _run_id(run.name)
        at = max((r.create_time for r in recommendations), default=run.window_end)
        events = [
            record(
                scored_event(
                    tenant,
                    run,
                    role,
                    [s for s in scores if s.role is role],
                    [r for r in recommendations if r.role is role],
                    profiles_by_role.get(role.value, ()),
                    at,
                ),
                TOPIC_SCORED,
            )
            for role in ModelRole
            if any(s.role is role for s in scores)
        ]
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                first = await conn.fetchval(
                    f"""INSERT INTO {SCHEMA}.scoring_run_tenants (run_id, tenant) VALUES ($1, $2)
                        ON CONFLICT DO NOTHING RETURNING 1""",
                    run_id,
                    tenant,
                )
                if first is None:
                    return  # stored by an earlier attempt of this run
                await conn.executemany(
                    f"""INSERT INTO {SCHEMA}.model_scores (tenant, run_id, role, model, body)
                        VALUES ($1, $2, $3, $4, $5)""",
                    [(tenant, run_id, s.role.value, s.model, _score_json(s)) for s in scores],
                )
                await conn.executemany(
                    f"""INSERT INTO {SCHEMA}.model_recommendations (tenant, run_id, role, model_profile, body)
                        VALUES ($1, $2, $3, $4, $5)""",
                    [(tenant, run_id, r.role.value, r.model_profile, _recommendation_json(r)) for r in recommendations],
                )
                await add_events(conn, SCHEMA, events)

    async def scoring_tenants(self) -> list[str]:
        with database():
            async with self._pool.acquire() as conn:
                # Onboarded tenants too, where onboarding's table exists (PostgresTenantStore
                # migrates it; a store used without it, as in the scoring bench, has none).
                onboarded = await conn.fetchval(f"SELECT to_regclass('{SCHEMA}.tenants') IS NOT NULL")
                rows = await conn.fetch(
                    f"""SELECT tenant FROM {SCHEMA}.model_profiles
                        UNION SELECT tenant FROM {SCHEMA}.scoring_run_tenants"""
                    + (f" UNION SELECT name FROM {SCHEMA}.tenants WHERE state = 'ACTIVE'" if onboarded else "")
                    + " ORDER BY 1"
                )
        return [row["tenant"] for row in rows]

    async def _latest_run_of(self, conn: Any, tenant: str) -> str | None:
        value: str | None = await conn.fetchval(
            f"SELECT run_id FROM {SCHEMA}.scoring_run_tenants WHERE tenant = $1 ORDER BY store_seq DESC LIMIT 1",
            tenant,
        )
        return value

    async def latest_scores(self, tenant: str) -> list[ModelScore]:
        with database():
            async with self._pool.acquire() as conn:
                run_id = await self._latest_run_of(conn, tenant)
                if run_id is None:
                    return []
                rows = await conn.fetch(
                    f"SELECT run_id, role, model, body FROM {SCHEMA}.model_scores WHERE tenant = $1 AND run_id = $2",
                    tenant,
                    run_id,
                )
        return [_score(row) for row in rows]

    async def latest_recommendations(self, tenant: str) -> list[ModelRecommendation]:
        with database():
            async with self._pool.acquire() as conn:
                run_id = await self._latest_run_of(conn, tenant)
                if run_id is None:
                    return []
                rows = await conn.fetch(
                    f"""SELECT run_id, role, model_profile, body FROM {SCHEMA}.model_recommendations
                        WHERE tenant = $1 AND run_id = $2""",
                    tenant,
                    run_id,
                )
        return [_recommendation(row) for row in rows]
