"""The scoring job's ports in memory, following the Postgres adapters' rules: benchmark runs
by request_id, one holder of the single-flight lock at a time, a tenant's results stored all
or nothing with the run's note that the tenant is done, and compare-and-set profile writes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime

from skm_runtime.errors import ServiceUnavailable
from skm_runtime.values import ModelRole
from svc_profiles.errors import EtagMismatch, ModelProfileNotFound
from svc_profiles.model import (
    AutoSelected,
    BenchmarkRun,
    Capability,
    Model,
    ModelProfile,
    ModelRecommendation,
    ModelScore,
    ModelTelemetry,
    Revision,
    RevisionOrigin,
    ScoringRun,
    ScoringState,
    ScoringTrigger,
)


class MemoryScoringStore:
    def __init__(self) -> None:
        self.benchmarks: dict[str, tuple[BenchmarkRun, str, int]] = {}
        self.runs: dict[str, ScoringRun] = {}
        self.run_order: list[str] = []
        self.done: dict[str, list[str]] = {}
        # tenant -> (run, scores, recommendations), the latest store last
        self.results: dict[str, list[tuple[str, list[ModelScore], list[ModelRecommendation]]]] = {}
        # (tenant, role value, recommended model, applied) per ModelProfileScored event
        self.scored_events: list[tuple[str, str, str, bool]] = []
        self.lock = asyncio.Lock()
        self.tenants: set[str] = set()

    async def benchmark_by_request(self, request_id: str) -> tuple[BenchmarkRun, str] | None:
        found = self.benchmarks.get(request_id)
        return None if found is None else (found[0], found[1])

    async def insert_benchmark(self, run: BenchmarkRun, request_id: str, fingerprint: str) -> bool:
        if request_id in self.benchmarks:
            return False
        self.benchmarks[request_id] = (run, fingerprint, len(self.benchmarks))
        return True

    async def latest_benchmarks(self) -> list[BenchmarkRun]:
        latest: dict[tuple[str, object, str], tuple[BenchmarkRun, int]] = {}
        for run, _, seq in self.benchmarks.values():
            key = (run.model, run.role, run.suite)
            held = latest.get(key)
            assert run.end_time is not None
            if held is None or (run.end_time, seq) > (held[0].end_time or run.end_time, held[1]):
                latest[key] = (run, seq)
        return [run for run, _ in latest.values()]

    @contextlib.asynccontextmanager
    async def single_flight(self) -> AsyncIterator[bool]:
        if self.lock.locked():
            yield False
            return
        async with self.lock:
            yield True

    async def unfinished_run(self) -> ScoringRun | None:
        return next((self.runs[n] for n in self.run_order if self.runs[n].state is ScoringState.RUNNING), None)

    async def latest_run(self, trigger: ScoringTrigger | None = None) -> ScoringRun | None:
        runs = [self.runs[n] for n in self.run_order if trigger is None or self.runs[n].trigger is trigger]
        return runs[-1] if runs else None

    async def insert_run(self, run: ScoringRun) -> None:
        self.runs[run.name] = run
        self.run_order.append(run.name)

    async def update_run(self, run: ScoringRun) -> None:
        self.runs[run.name] = run

    async def tenants_scored(self, run: str) -> set[str]:
        return set(self.done.get(run, []))

    async def store_tenant_scores(
        self,
        run: ScoringRun,
        tenant: str,
        scores: Sequence[ModelScore],
        recommendations: Sequence[ModelRecommendation],
        profiles_by_role: Mapping[str, Sequence[str]],
    ) -> None:
        if tenant in self.done.get(run.name, []):
            return
        self.done.setdefault(run.name, []).append(tenant)
        self.results.setdefault(tenant, []).append((run.name, list(scores), list(recommendations)))
        for role in profiles_by_role:
            own = [s for s in scores if s.role.value == role]
            if own:
                applied = any(r.applied for r in recommendations if r.role.value == role)
                self.scored_events.append((tenant, role, own[0].model, applied))

    async def scoring_tenants(self) -> list[str]:
        return sorted(self.tenants | set(self.results))

    async def latest_scores(self, tenant: str) -> list[ModelScore]:
        found = self.results.get(tenant)
        return list(found[-1][1]) if found else []

    async def latest_recommendations(self, tenant: str) -> list[ModelRecommendation]:
        found = self.results.get(tenant)
        return list(found[-1][2]) if found else []


class MemoryTelemetry:
    """Telemetry per tenant and model, the same in every role unless `by_role` holds the
    tenant's figures of that role; a tenant in `unavailable` fails as svc_analytics down
    does."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, dict[str, ModelTelemetry]] = {}
        self.by_role: dict[tuple[str, ModelRole], dict[str, ModelTelemetry]] = {}
        # (tenant, role) of each read, in order.
        self.asked: list[tuple[str, ModelRole]] = []
        self.unavailable: set[str] = set()
        # Tenants whose read fails as a bug would (RuntimeError).
        self.broken: set[str] = set()
        self.windows: list[tuple[datetime, datetime]] = []

    async def model_telemetry(
        self, tenant: str, role: ModelRole, start: datetime, end: datetime
    ) -> dict[str, ModelTelemetry]:
        self.windows.append((start, end))
        self.asked.append((tenant, role))
        if tenant in self.unavailable:
            raise ServiceUnavailable("svc_analytics cannot give the telemetry (UNAVAILABLE)")
        if tenant in self.broken:
            raise RuntimeError("a bug")
        if (tenant, role) in self.by_role:
            return dict(self.by_role[tenant, role])
        return dict(self.by_tenant.get(tenant, {}))


class MemoryModels:
    """The registry and the model profiles the job reads, auto mode's revisions and events."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.profiles: dict[str, ModelProfile] = {}
        self.auto_events: list[AutoSelected] = []
        self.revisions: dict[str, list[ModelProfile]] = {}
        self.now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

    async def get_models(self, names: Collection[str]) -> dict[str, Model]:
        return {n: self.models[n] for n in names if n in self.models}

    async def list_models(self, capability: Capability | None, after: str, limit: int) -> list[Model]:
        found = sorted(
            (m for n, m in self.models.items() if n > after and (capability is None or capability in m.capabilities)),
            key=lambda m: m.name,
        )
        return found[:limit]

    async def list_model_profiles(self, tenant: str) -> list[ModelProfile]:
        return [p for n, p in self.profiles.items() if n.startswith(f"{tenant}/")]

    def put_profile(self, profile: ModelProfile) -> None:
        self.profiles[profile.name] = profile
        self.revisions.setdefault(profile.name, []).append(profile)

    async def revise(
        self,
        current: ModelProfile,
        after: ModelProfile,
        origin: RevisionOrigin,
        author: str,
        note: str,
        *,
        auto_selected: AutoSelected | None = None,
    ) -> ModelProfile:
        """As Profiles.revise_model_profile: compare-and-set on `current`'s etag, the next
        revision id."""
        stored = self.profiles.get(current.name)
        if stored is None:
            raise ModelProfileNotFound(current.name)
        if stored.etag != current.etag:
            raise EtagMismatch("the model profile changed since it was read")
        number = int(current.revision.revision_id) + 1 if current.revision else 1
        revised = dataclasses.replace(
            after,
            etag=f"e{number}",
            update_time=self.now,
            revision=Revision(str(number), self.now, origin, author, note),
        )
        self.put_profile(revised)
        if auto_selected is not None:
            self.auto_events.append(dataclasses.replace(auto_selected, revision_id=str(number)))
        return revised
