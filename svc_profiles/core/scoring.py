"""The scoring job: rate every registered model for each role a tenant uses, recommend the
best one against the profile's tier 0, and, for profiles in auto mode, apply it within the
tenant's bounds.

    score = w_q*quality + w_c*(1/cost) + w_l*(1/latency) + w_r*reliability

Every term lies in [0, 1] (skm.profiles.v1.ModelScore says how; `score_role` is that text
as code): quality and reliability are shares; 1/cost and 1/latency are divided by the best
value among the role's candidates, i.e. cheapest/cost and fastest/latency. With weights that
sum to 1 a score lies in [0, 1], so the weights mean what they say. A term without data counts
0 and `sample_count` says how much data a score rests on.

A run is single-flight across replicas (the store's lock, held for the whole run), stores each
tenant's results in one transaction together with the run's note that the tenant is done, and
is resumable: a run left RUNNING by a crash is finished by the next start, which scores only
the tenants it had not stored. The schedule (`tick`) starts a run when the last scheduled one
is at least an interval old, under the same lock, so one run per interval across replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, ServiceUnavailable
from skm_runtime.values import ModelRole, Money
from svc_profiles import checks
from svc_profiles.bundle import canonical_json
from svc_profiles.errors import (
    EtagMismatch,
    InvalidBenchmark,
    InvalidPageToken,
    ModelNotFound,
    ModelProfileNotFound,
    RequestIdReused,
    ScoringAlreadyRunning,
)
from svc_profiles.model import (
    ROLE_ORDER,
    AutoSelected,
    BenchmarkRun,
    Defaults,
    Model,
    ModelProfile,
    ModelRecommendation,
    ModelScore,
    ModelTelemetry,
    RevisionOrigin,
    ScoreWeights,
    ScoringRun,
    ScoringState,
    ScoringTrigger,
)
from svc_profiles.ports import RegisteredModels, ScoringStore, Telemetry, TenantModelProfiles

log = logging.getLogger("skm.profiles.scoring")

# "What a typical answer takes": time to first token plus this many tokens at the median rate.
TYPICAL_ANSWER_TOKENS = 200
AUTHOR = "services/profiles"
SCORE_PAGE = 100
# How soon the schedule tries again after a failed run.
RETRY = timedelta(minutes=5)
RECOMMENDATION_PAGE = 50
_MAX_TIERS = 8
_MAX_SUITE_CHARS = 100
_NANOS = 1_000_000_000


# -- the formula --------------------------------------------------------------------------------


def weights_violations(weights: ScoreWeights) -> list[str]:
    """Why these weights cannot be used: each non-negative and finite, summing to 1."""
    values = dataclasses.asdict(weights)
    out = [f"{name} must be a non-negative number" for name, v in values.items() if not (math.isfinite(v) and v >= 0)]
    if not out and abs(sum(values.values()) - 1.0) > 1e-6:
        out.append(f"the weights must sum to 1 (they sum to {sum(values.values()):g})")
    return out


def amount(money: Money) -> float:
    return money.units + money.nanos / _NANOS


def money_of(value: float, currency: str) -> Money:
    """`value` rounded to the nano, as google.type.Money (units and nanos of the same sign)."""
    nanos_total = round(value * _NANOS)
    units = int(nanos_total / _NANOS)
    return Money(currency, units, nanos_total - units * _NANOS)


def quality_of(runs: Sequence[BenchmarkRun]) -> tuple[float, int]:
    """Share of capsule items judged correct over the runs, and the items attempted."""
    attempts = sum(r.attempts for r in runs)
    return (sum(r.successes for r in runs) / attempts if attempts else 0.0), attempts


def blended_cost(model: Model, telemetry: ModelTelemetry | None, runs: Sequence[BenchmarkRun]) -> Money:
    """Cost per million tokens: what production calls cost over their tokens, else the
    registry's prices weighted by the benchmark runs' input/output mix, else their mean."""
    if telemetry is not None and telemetry.calls and telemetry.cost_per_million is not None:
        return telemetry.cost_per_million
    currency = model.input_cost.currency_code or model.output_cost.currency_code
    tokens_in = sum(r.input_tokens for r in runs)
    tokens_out = sum(r.output_tokens for r in runs)
    share_in = tokens_in / (tokens_in + tokens_out) if tokens_in + tokens_out else 0.5
    value = share_in * amount(model.input_cost) + (1 - share_in) * amount(model.output_cost)
    return money_of(value, currency)


def latency_of(
    telemetry: ModelTelemetry | None, runs: Sequence[BenchmarkRun]
) -> tuple[float | None, float | None, float]:
    """(latency, time to first token, tokens per second), seconds: production's median TTFT
    plus TYPICAL_ANSWER_TOKENS at its median rate; without production samples, the benchmark
    runs' median call duration (attempt-weighted mean of the runs' medians); None: no data."""
    if telemetry is not None and telemetry.time_to_first_token_seconds is not None and telemetry.tokens_per_second:
        ttft = telemetry.time_to_first_token_seconds
        tps = telemetry.tokens_per_second
        return ttft + TYPICAL_ANSWER_TOKENS / tps, ttft, tps
    timed = [r for r in runs if r.attempts and r.latency_seconds > 0]
    if timed:
        weight = sum(r.attempts for r in timed)
        return sum(r.latency_seconds * r.attempts for r in timed) / weight, None, 0.0
    return None, None, 0.0


def reliability_of(telemetry: ModelTelemetry | None, runs: Sequence[BenchmarkRun]) -> tuple[float, float, int]:
    """(reliability, error rate, production calls): 1 - the share of failed production calls,
    else of failed benchmark items; 0 and 0 without data.

    The fallback rate takes no part: a call that fell back is one that failed (and a later
    tier recovered), so it is counted in the failure rate already; ModelScore.fallback_rate
    only says how much of that failure the loop's fallbacks absorbed."""
    if telemetry is not None and telemetry.calls and telemetry.failure_rate is not None:
        return 1.0 - telemetry.failure_rate, telemetry.failure_rate, telemetry.calls
    attempts = sum(r.attempts for r in runs)
    if attempts:
        failed = sum(r.failures for r in runs) / attempts
        return 1.0 - failed, failed, 0
    return 0.0, 0.0, 0


def _inverse_terms(values: Mapping[str, float | None]) -> dict[str, float]:
    """best/value per key, best the smallest known value; a value of 0 gets 1, and when the
    best is 0 every other known value gets 0; None (no data) gets 0."""
    known = [v for v in values.values() if v is not None]
    best = min(known) if known else 0.0
    out: dict[str, float] = {}
    for key, value in values.items():
        if value is None:
            out[key] = 0.0
        elif value <= 0:
            out[key] = 1.0
        else:
            out[key] = best / value if best > 0 else 0.0
    return out


def score_role(
    role: ModelRole,
    candidates: Sequence[Model],
    telemetry: Mapping[str, ModelTelemetry],
    benchmarks: Sequence[BenchmarkRun],
    weights: ScoreWeights,
    window: tuple[datetime, datetime],
    scoring_run: str = "",
) -> list[ModelScore]:
    """The candidates' scores for the role, best first (ties by name).

    Costs are compared within one currency: a candidate priced in another currency than the
    role's first priced candidate gets a cost term of 0 (the registry is meant to use one).
    """
    runs = {m.name: [r for r in benchmarks if r.model == m.name and r.role is role] for m in candidates}
    costs = {m.name: blended_cost(m, telemetry.get(m.name), runs[m.name]) for m in candidates}
    currencies = [c.currency_code for c in costs.values() if c.currency_code]
    currency = currencies[0] if currencies else ""
    cost_terms = _inverse_terms(
        {
            name: amount(cost) if not cost.currency_code or cost.currency_code == currency or cost.is_zero else None
            for name, cost in costs.items()
        }
    )
    latencies = {m.name: latency_of(telemetry.get(m.name), runs[m.name]) for m in candidates}
    latency_terms = _inverse_terms({name: lat[0] for name, lat in latencies.items()})
    scores = []
    for model in candidates:
        quality, items = quality_of(runs[model.name])
        reliability, error_rate, calls = reliability_of(telemetry.get(model.name), runs[model.name])
        latency, ttft, tps = latencies[model.name]
        seen = telemetry.get(model.name)
        score = (
            weights.quality * quality
            + weights.cost * cost_terms[model.name]
            + weights.latency * latency_terms[model.name]
            + weights.reliability * reliability
        )
        scores.append(
            ModelScore(
                model=model.name,
                role=role,
                quality=quality,
                cost_per_million_tokens=costs[model.name],
                latency_seconds=latency,
                reliability=reliability,
                score=score,
                weights=weights,
                sample_count=calls + items,
                window_start=window[0],
                window_end=window[1],
                time_to_first_token_seconds=ttft,
                tokens_per_second=tps,
                error_rate=error_rate,
                fallback_rate=(seen.fallback_rate or 0.0) if seen is not None else 0.0,
                scoring_run=scoring_run,
            )
        )
    scores.sort(key=lambda s: (-s.score, s.model))
    return scores


def candidates_for(role: ModelRole, models: Iterable[Model]) -> list[Model]:
    """Registered models that can serve the role (checks.role_fit_violations), served over the
    network: a "local:" model runs inside its caller and has no telemetry of calls."""
    return [
        m for m in models if not checks.role_fit_violations("m", role, [m]) and not m.endpoint_uri.startswith("local:")
    ]


# -- recommendations and auto mode ----------------------------------------------------------------


def _relative(new: float, old: float) -> float:
    """(new - old) / old; 0 when both are 0, +1 (i.e. +100%) from 0 to something."""
    if old == 0:
        return 0.0 if new == 0 else 1.0
    return (new - old) / old


def _short(model: str) -> str:
    return model.removeprefix("models/")


def _percent(change: float) -> str:
    return f"{change * 100:+.0f}%"


def recommend(
    tenant: str,
    role: ModelRole,
    scores: Sequence[ModelScore],
    current_model: str,
    model_profile: str,
    scoring_run: str,
    now: datetime,
) -> ModelRecommendation:
    """The best-scored model against `current_model` (tier 0 now); `scores` best first."""
    best = scores[0]
    current = next((s for s in scores if s.model == current_model), None)
    current_score = current.score if current is not None else 0.0
    current_cost = amount(current.cost_per_million_tokens) if current is not None else 0.0
    score_change = _relative(best.score, current_score)
    cost_change = _relative(amount(best.cost_per_million_tokens), current_cost)
    tenant_id = tenant.removeprefix("tenants/")
    if best.model == current_model:
        summary = f"keep {_short(best.model)} as {role.value} of tenant {tenant_id}: it scores best"
    else:
        summary = (
            f"switch {role.value} of tenant {tenant_id} from {_short(current_model) or '(none)'} to "
            f"{_short(best.model)}: {_percent(score_change)} score, {_percent(cost_change)} cost"
        )
    return ModelRecommendation(
        model_profile=model_profile,
        role=role,
        current_model=current_model,
        recommended_model=best.model,
        score_change=score_change,
        cost_change=cost_change,
        summary=summary,
        scoring_run=scoring_run,
        create_time=now,
    )


def auto_refusal(profile: ModelProfile | None, recommendation: ModelRecommendation, best: ModelScore) -> str:
    """Why auto mode must not apply the recommendation to the profile; "" when it may."""
    if profile is None:
        return "the role uses the deployment default"
    if not profile.auto_select:
        return "auto_select is off"
    if recommendation.recommended_model == recommendation.current_model:
        return "the recommended model is at tier 0 already"
    if best.sample_count == 0:
        return "the recommended model has no benchmark or production data"
    bounds = profile.auto_select_bounds
    if bounds is not None:
        if not bounds.max_cost.is_zero:
            cost = best.cost_per_million_tokens
            if (
                cost.currency_code
                and bounds.max_cost.currency_code
                and cost.currency_code != bounds.max_cost.currency_code
            ):
                return "cost is in another currency than the bound"
            if amount(cost) > amount(bounds.max_cost):
                return "cost above the bound"
        if bounds.min_quality > 0 and best.quality < bounds.min_quality:
            return "quality below the bound"
    return ""


def tiers_with_first(tiers: Sequence[str], model: str) -> tuple[str, ...]:
    """`model` at tier 0, the others after it in their order (at most 8)."""
    return (model, *(t for t in tiers if t != model))[:_MAX_TIERS]


# -- the use cases ------------------------------------------------------------------------------


def benchmark_violations(run: BenchmarkRun) -> list[FieldViolation]:
    field = "benchmark_run"
    out = []
    if not checks.is_model_name(run.model):
        out.append(FieldViolation(f"{field}.model", "expected models/{model}"))
    if run.role is None:
        out.append(FieldViolation(f"{field}.role", "required"))
    if not run.suite.strip() or len(run.suite) > _MAX_SUITE_CHARS:
        out.append(FieldViolation(f"{field}.suite", f"1 to {_MAX_SUITE_CHARS} characters"))
    if run.attempts <= 0:
        out.append(FieldViolation(f"{field}.attempts", "at least 1"))
    if run.successes < 0 or run.successes > run.attempts:
        out.append(FieldViolation(f"{field}.successes", "0 to attempts"))
    if run.failures < 0 or run.failures > run.attempts:
        out.append(FieldViolation(f"{field}.failures", "0 to attempts"))
    if run.successes + run.failures > run.attempts:
        out.append(FieldViolation(f"{field}.failures", "successes + failures cannot exceed attempts"))
    if run.latency_seconds < 0 or not math.isfinite(run.latency_seconds):
        out.append(FieldViolation(f"{field}.latency", "non-negative"))
    if run.input_tokens < 0 or run.output_tokens < 0:
        out.append(FieldViolation(f"{field}.input_tokens", "token counts are non-negative"))
    return out


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _benchmark_json(run: BenchmarkRun) -> dict[str, Any]:
    body = dataclasses.asdict(run)
    body["role"] = run.role.value if run.role else ""
    body["end_time"] = run.end_time.isoformat() if run.end_time else ""
    return body


Progress = tuple[ScoringRun, str]


class Revise(Protocol):
    """Profiles.revise_model_profile: store `after` as the next revision of `current`, with the
    origin, author and note given, and auto mode's event of the change in the same write;
    raises EtagMismatch when `current` is no longer stored."""

    def __call__(
        self,
        current: ModelProfile,
        after: ModelProfile,
        origin: RevisionOrigin,
        author: str,
        note: str,
        *,
        auto_selected: AutoSelected | None = None,
    ) -> Awaitable[ModelProfile]: ...


class Scoring:
    """The scoring job's use cases (ModelService's scores, benchmarks and recommendations)."""

    def __init__(
        self,
        store: ScoringStore,
        registry: RegisteredModels,
        profiles: TenantModelProfiles,
        telemetry: Telemetry,
        revise: Revise,
        defaults: Defaults,
        *,
        weights: ScoreWeights,
        window: timedelta,
        interval: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        problems = weights_violations(weights)
        if problems:
            raise ValueError("score weights: " + "; ".join(problems))
        self._store = store
        self._registry = registry
        self._profiles = profiles
        self._telemetry = telemetry
        self._revise = revise
        self._defaults = defaults
        self._weights = weights
        self._window = window
        self._interval = interval
        self._now = now

    # -- benchmarks -----------------------------------------------------------------------------

    async def record_benchmark(self, request_id: str, run: BenchmarkRun) -> BenchmarkRun:
        """Idempotent by request_id: a retry gets the run as first recorded."""
        violations = checks.check_request_id(request_id, "request_id") + benchmark_violations(run)
        if not request_id:
            violations.insert(0, FieldViolation("request_id", "required"))
        if violations:
            raise InvalidBenchmark("the benchmark run is invalid", violations=violations)
        if run.end_time is None:
            run = dataclasses.replace(run, end_time=self._now())
        fingerprint = _fingerprint({k: v for k, v in _benchmark_json(run).items() if k != "end_time"})
        for _ in range(2):
            earlier = await self._store.benchmark_by_request(request_id)
            if earlier is not None:
                if earlier[1] != fingerprint:
                    raise RequestIdReused(
                        "request_id was used for a different benchmark run", metadata={"request_id": request_id}
                    )
                return earlier[0]
            if not (await self._registry.get_models([run.model])):
                raise ModelNotFound(f"{run.model} is not registered", metadata={"model": run.model})
            if await self._store.insert_benchmark(run, request_id, fingerprint):
                return run
        raise RequestIdReused("request_id is in use", metadata={"request_id": request_id})  # pragma: no cover

    # -- reading results ------------------------------------------------------------------------

    async def list_scores(
        self, parent: str, role: ModelRole | None, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[ModelScore], str]:
        tenant = checks.tenant_of_parent(parent)
        if principal is not None and principal.tenant and principal.tenant != tenant:
            return [], ""
        found = [s for s in await self._store.latest_scores(tenant) if role is None or s.role is role]
        found.sort(key=lambda s: (ROLE_ORDER[s.role], -s.score, s.model))
        return self._page(
            found, f"modelScores|{tenant}|{role.value if role else ''}", page_size, page_token, SCORE_PAGE
        )

    async def list_recommendations(
        self, parent: str, role: ModelRole | None, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[ModelRecommendation], str]:
        tenant = checks.tenant_of_parent(parent)
        if principal is not None and principal.tenant and principal.tenant != tenant:
            return [], ""
        found = [r for r in await self._store.latest_recommendations(tenant) if role is None or r.role is role]
        found.sort(key=lambda r: (ROLE_ORDER[r.role], r.model_profile))
        scope = f"modelRecommendations|{tenant}|{role.value if role else ''}"
        return self._page(found, scope, page_size, page_token, RECOMMENDATION_PAGE)

    @staticmethod
    def _page(found: list[Any], scope: str, page_size: int, page_token: str, default: int) -> tuple[list[Any], str]:
        size = checks.page_size_of(page_size, default)
        offset = checks.position_of(page_token, scope) or 0
        if not isinstance(offset, int) or offset < 0:
            raise InvalidPageToken("page_token is not one this service issued")
        more = len(found) > offset + size
        return found[offset : offset + size], checks.token_of(scope, offset + size) if more else ""

    # -- running ------------------------------------------------------------------------------

    async def run_scoring(
        self, parent: str, trigger: ScoringTrigger = ScoringTrigger.ON_DEMAND
    ) -> AsyncGenerator[Progress, None]:
        """Score now, yielding (the run as it stands, the step in words); the last item holds
        the finished run. A run a crash left unfinished is finished first (its progress comes
        first), then the one asked for.

        Raises ScoringAlreadyRunning when another run holds the lock, ServiceUnavailable when
        the telemetry cannot be read (the run is then stored FAILED; what it had stored of
        earlier tenants stays, each tenant's results being all or nothing).
        """
        tenant = checks.tenant_of_parent(parent) if parent else ""
        async with self._store.single_flight() as held:
            if not held:
                running = await self._store.unfinished_run()
                raise ScoringAlreadyRunning(
                    "a scoring run is in progress", metadata={"scoring_run": running.name if running else ""}
                )
            unfinished = await self._store.unfinished_run()
            if unfinished is not None:
                async for progress in self._run_held(unfinished, resumed=True):
                    yield progress
            async for progress in self._run_held(await self._new_run(tenant, trigger)):
                yield progress

    async def tick(self) -> ScoringRun | None:
        """The schedule's step: finish an unfinished run, then start one when the last scheduled
        run is an interval old (RETRY old, when it failed). Returns the last run it ran; None
        when it ran none (nothing due, or another replica holds the lock)."""
        if self._interval <= timedelta(0):
            return None
        async with self._store.single_flight() as held:
            if not held:
                return None
            final: ScoringRun | None = None
            unfinished = await self._store.unfinished_run()
            if unfinished is not None:
                async for run, _ in self._run_held(unfinished, resumed=True):
                    final = run
            last = await self._store.latest_run(ScoringTrigger.SCHEDULE)
            # A failed run (svc_analytics down) is retried sooner than a whole interval later.
            due = (
                self._interval if last is None or last.state is not ScoringState.FAILED else min(self._interval, RETRY)
            )
            if last is None or self._now() - last.create_time >= due:
                async for run, _ in self._run_held(await self._new_run("", ScoringTrigger.SCHEDULE)):
                    final = run
            return final

    async def run_schedule(self, poll_seconds: float = 30.0) -> None:
        """`tick` forever, every `poll_seconds` (or the interval, if shorter); errors are logged
        and the next tick tries again."""
        poll = min(poll_seconds, max(self._interval.total_seconds(), 1.0))
        while True:
            try:
                run = await self.tick()
                if run is not None:
                    log.info(
                        "scheduled scoring run ended",
                        extra={"fields": {"scoring_run": run.name, "state": run.state.value}},
                    )
            except Exception:  # a failed tick must not stop the schedule
                log.exception("scheduled scoring run failed")
            await asyncio.sleep(poll)

    async def _new_run(self, tenant: str, trigger: ScoringTrigger) -> ScoringRun:
        # Whole seconds: svc_analytics buckets are whole seconds, and the window is one.
        end = self._now().replace(microsecond=0)
        run = ScoringRun(
            name=f"scoringRuns/{uuid.uuid4()}",
            state=ScoringState.RUNNING,
            trigger=trigger,
            window_start=end - self._window,
            window_end=end,
            create_time=end,
            tenant=tenant,
        )
        await self._store.insert_run(run)
        return run

    async def _run_held(self, run: ScoringRun, *, resumed: bool = False) -> AsyncIterator[Progress]:
        """Score the run's tenants it has not stored yet (all of them for a new run)."""
        tenants = [run.tenant] if run.tenant else await self._store.scoring_tenants()
        done = await self._store.tenants_scored(run.name)
        todo = [t for t in tenants if t not in done]
        run = dataclasses.replace(run, tenants_total=len(done) + len(todo), tenants_done=len(done))
        yield run, f"{run.name} {'resumed' if resumed else 'started'}: {len(todo)} tenants to score"
        try:
            models = await self._all_models()
            benchmarks = await self._store.latest_benchmarks()
            for name in todo:
                changed, steps = await self._score_tenant(run, name, models, benchmarks)
                run = dataclasses.replace(
                    run, tenants_done=run.tenants_done + 1, profiles_changed=run.profiles_changed + changed
                )
                await self._store.update_run(run)
                for step in steps:
                    yield run, step
        except Exception as exc:
            # Stored FAILED so that no later start resumes it; a crash or a cancelled call
            # (BaseException) leaves it RUNNING, to be resumed.
            reason = exc.message if isinstance(exc, ServiceUnavailable) else f"internal error ({type(exc).__name__})"
            run = dataclasses.replace(run, state=ScoringState.FAILED, end_time=self._now(), failure_reason=reason)
            await self._store.update_run(run)
            raise
        run = dataclasses.replace(run, state=ScoringState.SUCCEEDED, end_time=self._now())
        await self._store.update_run(run)
        yield run, "done"

    async def _all_models(self) -> list[Model]:
        models: list[Model] = []
        after = ""
        while True:
            page = await self._registry.list_models(None, after, 1000)
            models += page
            if len(page) < 1000:
                return models
            after = page[-1].name

    async def _score_tenant(
        self, run: ScoringRun, tenant: str, models: Sequence[Model], benchmarks: Sequence[BenchmarkRun]
    ) -> tuple[int, list[str]]:
        scored = [(role, c) for role in ModelRole if (c := candidates_for(role, models))]
        # Every role's telemetry before anything is applied: a read that fails leaves the
        # tenant untouched, to be scored again by the next start.
        telemetries = await asyncio.gather(
            *(self._telemetry.model_telemetry(tenant, role, run.window_start, run.window_end) for role, _ in scored)
        )
        profiles = await self._profiles.list_model_profiles(tenant)
        now = self._now()
        all_scores: list[ModelScore] = []
        recommendations: list[ModelRecommendation] = []
        profiles_by_role: dict[str, list[str]] = {}
        steps = []
        changed = 0
        for (role, candidates), telemetry in zip(scored, telemetries, strict=True):
            scores = score_role(
                role, candidates, telemetry, benchmarks, self._weights, (run.window_start, run.window_end), run.name
            )
            all_scores += scores
            own = sorted((p for p in profiles if p.role is role), key=lambda p: p.name)
            profiles_by_role[role.value] = [p.name for p in own]
            targets: list[tuple[ModelProfile | None, str]] = [(p, p.model_tiers[0]) for p in own if p.model_tiers]
            if not own:
                default = self._role_default(role)
                if default:
                    targets.append((None, default))
            for profile, current in targets:
                rec = recommend(tenant, role, scores, current, profile.name if profile else "", run.name, now)
                reason = auto_refusal(profile, rec, scores[0])
                if not reason and profile is not None:
                    applied = await self._apply(profile, rec, run)
                    reason = "" if applied else "the profile changed meanwhile; the next run tries again"
                    changed += applied
                rec = dataclasses.replace(rec, applied=not reason, not_applied_reason=reason)
                recommendations.append(rec)
            steps.append(f"{tenant}: {role.value}, {len(candidates)} models")
        await self._store.store_tenant_scores(run, tenant, all_scores, recommendations, profiles_by_role)
        return changed, steps

    def _role_default(self, role: ModelRole) -> str:
        """Tier 0 of the deployment's default for the role (the mode-less one first)."""
        found = sorted(
            (d for d in self._defaults.role_defaults if d.role is role and d.model_tiers),
            key=lambda d: d.mode is not None,
        )
        return found[0].model_tiers[0] if found else ""

    async def _apply(self, profile: ModelProfile, rec: ModelRecommendation, run: ScoringRun) -> bool:
        """The recommended model at tier 0, as the profile's next revision (origin AUTO_SELECT,
        made by this service) written with its announcement; False when the profile changed meanwhile."""
        after = dataclasses.replace(profile, model_tiers=tiers_with_first(profile.model_tiers, rec.recommended_model))
        change = AutoSelected(
            model_profile=profile.name,
            previous_model=rec.current_model,
            model=rec.recommended_model,
            previous_revision_id=profile.revision.revision_id if profile.revision else "",
            revision_id="",  # the new revision's, filled in by the write
            scoring_run=run.name,
            summary=rec.summary,
        )
        try:
            await self._revise(
                profile, after, RevisionOrigin.AUTO_SELECT, AUTHOR, f"{run.name}: {rec.summary}", auto_selected=change
            )
        except (EtagMismatch, ModelProfileNotFound):
            return False
        return True


def _tenant_of(name: str) -> str:
    return "/".join(name.split("/")[:2])


def weights_of(items: Sequence[str]) -> tuple[ScoreWeights, list[str]]:
    """Weights from "name=value" items (SKM_PROFILES_SCORE_WEIGHTS), and what is wrong with
    them; a weight not named is 0."""
    values = {"quality": 0.0, "cost": 0.0, "latency": 0.0, "reliability": 0.0}
    problems = []
    for item in items:
        name, _, text = item.partition("=")
        name = name.strip()
        if name not in values:
            problems.append(f"score weight {name!r}: expected one of {', '.join(values)}")
            continue
        try:
            values[name] = float(text)
        except ValueError:
            problems.append(f"score weight {name}: {text.strip()!r} is not a number")
    weights = ScoreWeights(**values)
    return weights, problems or weights_violations(weights)
