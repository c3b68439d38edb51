"""The scoring job's core: the formula with numbers worked out by hand (zero costs, missing
data), recommendations, auto mode within and outside its bounds, benchmark records, and the
run's single flight, failure and resumption, over the in-memory ports."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from skm_runtime.errors import ServiceUnavailable
from skm_runtime.values import DeploymentMode, ModelRole, Money
from svc_profiles.core.scoring import (
    Scoring,
    auto_refusal,
    blended_cost,
    recommend,
    score_role,
    tiers_with_first,
    weights_of,
)
from svc_profiles.errors import (
    InvalidBenchmark,
    InvalidPageToken,
    ModelNotFound,
    RequestIdReused,
    ScoringAlreadyRunning,
)
from svc_profiles.model import (
    AutoSelectBounds,
    BenchmarkRun,
    Capability,
    Defaults,
    Model,
    ModelProfile,
    ModelTelemetry,
    Revision,
    RevisionOrigin,
    RoleDefault,
    ScoreWeights,
    ScoringState,
    ScoringTrigger,
)
from tests.support.scoring_memory import MemoryModels, MemoryScoringStore, MemoryTelemetry

PRIMARY = ModelRole.PRIMARY
W = ScoreWeights(quality=0.4, cost=0.2, latency=0.2, reliability=0.2)
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
WINDOW = (T0 - timedelta(days=1), T0)
A, B, C = "models/a", "models/b", "models/c"
T1, T2 = "tenants/t1", "tenants/t2"
REQUEST = "6f1c8e4a-3b2d-4c5e-9f80-1a2b3c4d5e6f"


def usd(value: float) -> Money:
    units = int(value)
    return Money("USD", units, round((value - units) * 1e9))


def chat(name: str, input_cost: float = 0.0, output_cost: float = 0.0) -> Model:
    return Model(
        name=name,
        display_name=name,
        endpoint_uri="http://127.0.0.1:1/v1",
        served_model=name.removeprefix("models/"),
        context_length=2048,
        capabilities=(Capability.CHAT,),
        input_cost=usd(input_cost),
        output_cost=usd(output_cost),
    )


def bench(model: str, attempts: int, successes: int, *, failures: int = 0, **fields: object) -> BenchmarkRun:
    fields.setdefault("end_time", T0)
    return BenchmarkRun(
        model=model,
        role=PRIMARY,
        suite="capsules-v1",
        attempts=attempts,
        successes=successes,
        failures=failures,
        **fields,  # type: ignore[arg-type]  # the remaining BenchmarkRun fields, by name
    )


def by_model(scores: list) -> dict:  # type: ignore[type-arg]  # ModelScore by name, for asserts
    return {s.model: s for s in scores}


# -- the formula ----------------------------------------------------------------------------------


def test_score_is_the_documented_weighted_sum_of_normalised_terms() -> None:
    # A: cost 1/M, latency 1 + 200/100 = 3 s, quality 0.8, 10% failed.
    # B: cost 2/M, latency 0.5 + 200/50 = 4.5 s, quality 0.9, none failed.
    telemetry = {
        A: ModelTelemetry(
            calls=10,
            time_to_first_token_seconds=1.0,
            tokens_per_second=100.0,
            failure_rate=0.1,
            cost_per_million=usd(1),
            fallback_rate=0.05,
        ),
        B: ModelTelemetry(
            calls=20, time_to_first_token_seconds=0.5, tokens_per_second=50.0, failure_rate=0.0, cost_per_million=usd(2)
        ),
    }
    benchmarks = [bench(A, 10, 8), bench(B, 10, 9)]
    scores = score_role(PRIMARY, [chat(B), chat(A)], telemetry, benchmarks, W, WINDOW, "scoringRuns/r")
    assert [s.model for s in scores] == [A, B]
    a, b = by_model(scores)[A], by_model(scores)[B]
    # A: 0.4*0.8 + 0.2*(1/1) + 0.2*(3/3) + 0.2*0.9 = 0.90
    assert a.score == pytest.approx(0.90)
    # B: 0.4*0.9 + 0.2*(1/2) + 0.2*(3/4.5) + 0.2*1.0 = 0.36 + 0.1 + 0.13333 + 0.2
    assert b.score == pytest.approx(0.36 + 0.1 + 0.2 * 3 / 4.5 + 0.2)
    assert (a.latency_seconds, b.latency_seconds) == (pytest.approx(3.0), pytest.approx(4.5))
    # Half of A's failures fell back: counted among its failures, not a second time.
    assert (a.reliability, a.error_rate, a.sample_count) == (pytest.approx(0.9), pytest.approx(0.1), 20)
    assert (a.fallback_rate, b.fallback_rate) == (pytest.approx(0.05), 0.0)
    assert b.sample_count == 30
    assert a.cost_per_million_tokens == usd(1)
    assert (a.window_start, a.window_end, a.scoring_run) == (*WINDOW, "scoringRuns/r")


def test_a_model_that_costs_nothing_gets_the_whole_cost_term_and_priced_ones_none() -> None:
    telemetry = {
        A: ModelTelemetry(
            calls=1, time_to_first_token_seconds=1.0, tokens_per_second=200.0, failure_rate=0.0, cost_per_million=usd(0)
        ),
        B: ModelTelemetry(
            calls=1, time_to_first_token_seconds=1.0, tokens_per_second=200.0, failure_rate=0.0, cost_per_million=usd(3)
        ),
    }
    weights = ScoreWeights(quality=0, cost=1, latency=0, reliability=0)
    scores = by_model(score_role(PRIMARY, [chat(A), chat(B)], telemetry, [], weights, WINDOW))
    assert (scores[A].score, scores[B].score) == (1.0, 0.0)


def test_a_term_without_data_counts_zero_and_cost_falls_back_to_the_registry_prices() -> None:
    # C has no call and no benchmark: quality 0, no latency, reliability 0; its cost is the
    # mean of its prices, (1 + 3) / 2 = 2, against A's observed 1.
    telemetry = {
        A: ModelTelemetry(
            calls=4,
            time_to_first_token_seconds=0.2,
            tokens_per_second=100.0,
            failure_rate=0.25,
            cost_per_million=usd(1),
        )
    }
    scores = by_model(score_role(PRIMARY, [chat(A), chat(C, 1, 3)], telemetry, [], W, WINDOW))
    c = scores[C]
    assert (c.quality, c.latency_seconds, c.reliability, c.sample_count) == (0.0, None, 0.0, 0)
    assert c.cost_per_million_tokens == usd(2)
    assert c.score == pytest.approx(0.2 * 0.5)
    # A: quality 0 (no benchmark), cost 1, latency 1, reliability 0.75
    assert scores[A].score == pytest.approx(0.2 + 0.2 + 0.2 * 0.75)


def test_without_production_calls_benchmarks_give_latency_reliability_and_the_token_mix() -> None:
    # 3 input tokens for 1 output token: 0.75 * 1 + 0.25 * 5 = 2 per million.
    runs = [bench(A, 4, 3, failures=1, latency_seconds=2.0, input_tokens=300, output_tokens=100)]
    cost = blended_cost(chat(A, 1, 5), None, runs)
    assert cost == usd(2)
    (score,) = score_role(PRIMARY, [chat(A, 1, 5)], {}, runs, W, WINDOW)
    assert (score.latency_seconds, score.reliability, score.quality) == (2.0, 0.75, 0.75)
    assert score.score == pytest.approx(0.4 * 0.75 + 0.2 + 0.2 + 0.2 * 0.75)


def test_weights_are_parsed_and_must_be_non_negative_and_sum_to_one() -> None:
    assert weights_of(["quality=0.5", "cost=0.5"]) == (ScoreWeights(0.5, 0.5, 0.0, 0.0), [])
    assert weights_of(["quality=0.5", "cost=0.6"])[1] == ["the weights must sum to 1 (they sum to 1.1)"]
    assert weights_of(["quality=1.5", "cost=-0.5"])[1] == ["cost must be a non-negative number"]
    assert weights_of(["speed=1"])[1][0].startswith("score weight 'speed'")
    assert weights_of(["quality=x"])[1] == ["score weight quality: 'x' is not a number"]


# -- recommendations and auto mode --------------------------------------------------------------


def _profile(tiers: tuple[str, ...], *, auto: bool = True, bounds: AutoSelectBounds | None = None) -> ModelProfile:
    return ModelProfile(
        name=f"{T1}/modelProfiles/primary-developer",
        role=PRIMARY,
        mode=DeploymentMode.DEVELOPER,
        model_tiers=tiers,
        auto_select=auto,
        auto_select_bounds=bounds,
        etag="e1",
        revision=Revision("3", T0, RevisionOrigin.UPDATE),
    )


def test_a_recommendation_says_what_changes_in_words() -> None:
    telemetry = {
        A: ModelTelemetry(
            calls=1, time_to_first_token_seconds=1.0, tokens_per_second=100.0, failure_rate=0.0, cost_per_million=usd(1)
        ),
        B: ModelTelemetry(
            calls=1, time_to_first_token_seconds=2.0, tokens_per_second=100.0, failure_rate=0.0, cost_per_million=usd(2)
        ),
    }
    scores = score_role(PRIMARY, [chat(A), chat(B)], telemetry, [], W, WINDOW)
    rec = recommend(T1, PRIMARY, scores, B, "p", "scoringRuns/r", T0)
    a, b = by_model(scores)[A].score, by_model(scores)[B].score
    assert rec.recommended_model == A
    assert rec.score_change == pytest.approx((a - b) / b)
    assert rec.cost_change == pytest.approx(-0.5)
    assert rec.summary == f"switch PRIMARY of tenant t1 from b to a: {(a - b) / b * 100:+.0f}% score, -50% cost"
    keep = recommend(T1, PRIMARY, scores, A, "p", "scoringRuns/r", T0)
    assert (keep.score_change, keep.cost_change) == (0.0, 0.0)
    assert keep.summary == "keep a as PRIMARY of tenant t1: it scores best"


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        (None, "the role uses the deployment default"),
        (_profile((B,), auto=False), "auto_select is off"),
        (_profile((A,)), "the recommended model is at tier 0 already"),
        (_profile((B,), bounds=AutoSelectBounds(max_cost=usd(0.5))), "cost above the bound"),
        (
            _profile((B,), bounds=AutoSelectBounds(max_cost=Money("EUR", 5))),
            "cost is in another currency than the bound",
        ),
        (_profile((B,), bounds=AutoSelectBounds(min_quality=0.9)), "quality below the bound"),
        (_profile((B,), bounds=AutoSelectBounds(max_cost=usd(1), min_quality=0.8)), ""),
        (_profile((B,)), ""),
    ],
)
def test_auto_mode_applies_only_within_the_bounds(profile: ModelProfile | None, reason: str) -> None:
    telemetry = {
        A: ModelTelemetry(
            calls=1, time_to_first_token_seconds=1.0, tokens_per_second=100.0, failure_rate=0.0, cost_per_million=usd(1)
        )
    }
    scores = score_role(PRIMARY, [chat(A), chat(B, 9, 9)], telemetry, [bench(A, 10, 8)], W, WINDOW)
    rec = recommend(T1, PRIMARY, scores, profile.model_tiers[0] if profile else B, "", "r", T0)
    assert auto_refusal(profile, rec, scores[0]) == reason


def test_the_recommended_model_goes_first_and_the_others_keep_their_order() -> None:
    assert tiers_with_first((B, C, A), A) == (A, B, C)
    assert tiers_with_first(tuple(f"models/m{i}" for i in range(8)), A)[-1] == "models/m6"


# -- the job ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclasses.dataclass
class Job:
    scoring: Scoring
    store: MemoryScoringStore
    telemetry: MemoryTelemetry
    models: MemoryModels
    clock: Clock


def job(interval: timedelta = timedelta(hours=1)) -> Job:
    store, telemetry, models, clock = MemoryScoringStore(), MemoryTelemetry(), MemoryModels(), Clock()
    models.models = {A: chat(A, 1, 1), B: chat(B, 4, 4)}
    defaults = Defaults(role_defaults=(RoleDefault(PRIMARY, (B,)),))
    scoring = Scoring(
        store,
        models,
        models,
        telemetry,
        models.revise,
        defaults,
        weights=W,
        window=timedelta(days=1),
        interval=interval,
        now=clock,
    )
    return Job(scoring, store, telemetry, models, clock)


def _fast_and_cheap(j: Job, tenant: str) -> None:
    j.telemetry.by_tenant[tenant] = {
        A: ModelTelemetry(calls=5, time_to_first_token_seconds=0.1, tokens_per_second=100.0, failure_rate=0.0),
        B: ModelTelemetry(calls=5, time_to_first_token_seconds=0.5, tokens_per_second=20.0, failure_rate=0.0),
    }


async def _run(j: Job, parent: str = "") -> list[tuple[ScoringState, str]]:
    return [(run.state, step) async for run, step in j.scoring.run_scoring(parent)]


async def test_a_run_scores_recommends_and_switches_a_profile_in_auto_mode() -> None:
    j = job()
    _fast_and_cheap(j, T1)
    j.models.put_profile(_profile((B, C), bounds=AutoSelectBounds(max_cost=usd(2))))
    progress = await _run(j, T1)
    assert progress[0][1].endswith(" started: 1 tenants to score")
    assert progress[-1] == (ScoringState.SUCCEEDED, "done")
    assert (ScoringState.RUNNING, "tenants/t1: PRIMARY, 2 models") in progress
    scores, _ = await j.scoring.list_scores(T1, PRIMARY, 0, "", None)
    assert [s.model for s in scores] == [A, B]
    (rec,), _ = await j.scoring.list_recommendations(T1, None, 0, "", None)
    assert (rec.current_model, rec.recommended_model, rec.applied, rec.not_applied_reason) == (B, A, True, "")
    profile = j.models.profiles[f"{T1}/modelProfiles/primary-developer"]
    assert profile.model_tiers == (A, B, C)
    assert profile.revision is not None
    assert (profile.revision.revision_id, profile.revision.origin, profile.revision.author) == (
        "4",
        RevisionOrigin.AUTO_SELECT,
        "services/profiles",
    )
    (change,) = j.models.auto_events
    assert (change.previous_model, change.model, change.previous_revision_id, change.revision_id) == (B, A, "3", "4")
    # One event per role scored (every chat role); only PRIMARY has a profile to apply it to.
    assert j.store.scored_events == [
        (T1, "PRE_SLM", A, False),
        (T1, "PRIMARY", A, True),
        (T1, "UTILITY", A, False),
    ]
    (run,) = j.store.runs.values()
    assert (run.tenants_done, run.tenants_total, run.profiles_changed, run.trigger) == (
        1,
        1,
        1,
        ScoringTrigger.ON_DEMAND,
    )


async def test_auto_mode_leaves_a_profile_whose_bounds_exclude_the_best_model() -> None:
    j = job()
    _fast_and_cheap(j, T1)
    j.models.put_profile(_profile((B,), bounds=AutoSelectBounds(max_cost=usd(0.5))))
    await _run(j, T1)
    (rec,), _ = await j.scoring.list_recommendations(T1, PRIMARY, 0, "", None)
    assert (rec.recommended_model, rec.applied, rec.not_applied_reason) == (A, False, "cost above the bound")
    assert j.models.profiles[f"{T1}/modelProfiles/primary-developer"].model_tiers == (B,)
    assert j.models.auto_events == []


async def test_a_tenant_without_a_profile_is_compared_with_the_deployment_default() -> None:
    j = job()
    _fast_and_cheap(j, T2)
    await _run(j, T2)
    (rec,), _ = await j.scoring.list_recommendations(T2, None, 0, "", None)
    assert (rec.model_profile, rec.current_model, rec.recommended_model) == ("", B, A)
    assert rec.not_applied_reason == "the role uses the deployment default"


async def test_another_tenant_sees_no_scores_and_a_foreign_page_token_is_refused() -> None:
    from skm_runtime.access import Principal

    j = job()
    _fast_and_cheap(j, T1)
    await _run(j, T1)
    assert await j.scoring.list_scores(T1, None, 0, "", Principal(T2, "u", ())) == ([], "")
    first, token = await j.scoring.list_scores(T1, None, 1, "", None)
    assert len(first) == 1
    assert token
    second, _ = await j.scoring.list_scores(T1, None, 1, token, None)
    assert [s.model for s in first + second] == [A, B]
    with pytest.raises(InvalidPageToken):
        await j.scoring.list_recommendations(T1, None, 1, token, None)


async def test_a_second_run_while_one_holds_the_lock_is_refused_with_its_name() -> None:
    j = job()
    _fast_and_cheap(j, T1)
    first = j.scoring.run_scoring(T1)
    running, _ = await anext(first)
    with pytest.raises(ScoringAlreadyRunning) as refused:
        await _run(j, T1)
    assert refused.value.metadata == {"scoring_run": running.name}
    assert [state async for state, _ in first][-1].state is ScoringState.SUCCEEDED


async def test_analytics_down_fails_the_run_and_stores_nothing_for_that_tenant() -> None:
    j = job()
    j.store.tenants = {T1, T2}
    _fast_and_cheap(j, T1)
    j.telemetry.unavailable.add(T2)
    with pytest.raises(ServiceUnavailable):
        await _run(j)
    (run,) = j.store.runs.values()
    assert (run.state, run.tenants_done, run.tenants_total) == (ScoringState.FAILED, 1, 2)
    assert "UNAVAILABLE" in run.failure_reason
    assert await j.scoring.list_scores(T2, None, 0, "", None) == ([], "")
    assert len((await j.scoring.list_scores(T1, None, 0, "", None))[0]) == 6  # 2 models x 3 chat roles


async def test_each_role_is_scored_on_its_own_calls() -> None:
    j = job()
    _fast_and_cheap(j, T1)
    # As UTILITY, A fails half its calls (a fifth of them fell back); as PRIMARY, none.
    j.telemetry.by_role[T1, ModelRole.UTILITY] = {
        A: ModelTelemetry(calls=10, failure_rate=0.5, fallback_rate=0.1),
        B: ModelTelemetry(calls=10, failure_rate=0.0, fallback_rate=0.0),
    }
    await _run(j, T1)
    assert j.telemetry.asked == [(T1, ModelRole.PRE_SLM), (T1, PRIMARY), (T1, ModelRole.UTILITY)]
    primary, _ = await j.scoring.list_scores(T1, PRIMARY, 0, "", None)
    utility, _ = await j.scoring.list_scores(T1, ModelRole.UTILITY, 0, "", None)
    assert [(s.model, s.reliability, s.fallback_rate) for s in primary] == [(A, 1.0, 0.0), (B, 1.0, 0.0)]
    assert sorted((s.model, s.reliability, s.error_rate, s.fallback_rate) for s in utility) == [
        (A, 0.5, 0.5, 0.1),
        (B, 1.0, 0.0, 0.0),
    ]


async def test_a_run_cut_short_is_finished_by_the_next_start_for_the_tenants_left() -> None:
    j = job()
    j.store.tenants = {T1, T2}
    _fast_and_cheap(j, T1)
    _fast_and_cheap(j, T2)
    steps = j.scoring.run_scoring("")
    async for _, step in steps:
        if step.startswith(T1):
            break  # the process dies after storing t1: the run stays RUNNING
    await steps.aclose()
    (cut,) = j.store.runs.values()
    assert (cut.state, j.store.done[cut.name]) == (ScoringState.RUNNING, [T1])
    j.telemetry.windows.clear()
    progress = [(run.name, step) async for run, step in j.scoring.run_scoring(T1)]
    # The unfinished run first, for the tenant it had left, over its own window; then the one asked.
    assert progress[0] == (cut.name, f"{cut.name} resumed: 1 tenants to score")
    first, asked = j.store.run_order
    assert first == cut.name
    assert progress[-1] == (asked, "done")
    assert j.store.runs[cut.name].state is ScoringState.SUCCEEDED
    assert j.store.runs[cut.name].tenants_done == 2
    assert j.store.done == {cut.name: [T1, T2], asked: [T1]}
    assert j.telemetry.windows[0] == (cut.window_start, cut.window_end)


async def test_a_run_that_fails_on_a_bug_is_stored_failed_and_not_resumed() -> None:
    j = job()
    j.telemetry.broken.add(T1)
    with pytest.raises(RuntimeError):
        await _run(j, T1)
    (run,) = j.store.runs.values()
    assert (run.state, run.failure_reason) == (ScoringState.FAILED, "internal error (RuntimeError)")
    assert await j.store.unfinished_run() is None


async def test_the_schedule_runs_once_per_interval() -> None:
    j = job(interval=timedelta(hours=1))
    j.store.tenants = {T1}
    _fast_and_cheap(j, T1)
    first = await j.scoring.tick()
    assert first is not None
    assert (first.state, first.trigger) == (ScoringState.SUCCEEDED, ScoringTrigger.SCHEDULE)
    j.clock.now += timedelta(minutes=59)
    assert await j.scoring.tick() is None
    j.clock.now += timedelta(minutes=1)
    assert await j.scoring.tick() is not None
    assert len(j.store.runs) == 2
    assert await job(interval=timedelta(0)).scoring.tick() is None


async def test_the_schedule_retries_a_failed_run_after_five_minutes() -> None:
    j = job(interval=timedelta(hours=1))
    j.store.tenants = {T1}
    j.telemetry.unavailable.add(T1)
    with pytest.raises(ServiceUnavailable):
        await j.scoring.tick()
    j.telemetry.unavailable.clear()
    _fast_and_cheap(j, T1)
    j.clock.now += timedelta(minutes=4)
    assert await j.scoring.tick() is None
    j.clock.now += timedelta(minutes=1)
    retried = await j.scoring.tick()
    assert retried is not None
    assert retried.state is ScoringState.SUCCEEDED


# -- benchmarks -------------------------------------------------------------------------------


async def test_record_benchmark_is_idempotent_by_request_id() -> None:
    j = job()
    run = bench(A, 40, 30, latency_seconds=0.5)
    assert await j.scoring.record_benchmark(REQUEST, run) == run
    assert await j.scoring.record_benchmark(REQUEST, run) == run
    assert len(j.store.benchmarks) == 1
    with pytest.raises(RequestIdReused):
        await j.scoring.record_benchmark(REQUEST, dataclasses.replace(run, successes=31))
    with pytest.raises(ModelNotFound):
        await j.scoring.record_benchmark("7f1c8e4a-3b2d-4c5e-9f80-1a2b3c4d5e6f", dataclasses.replace(run, model=C))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"successes": 41}, "benchmark_run.successes"),
        ({"attempts": 0, "successes": 0}, "benchmark_run.attempts"),
        ({"failures": 20}, "benchmark_run.failures"),
        ({"role": None}, "benchmark_run.role"),
        ({"suite": ""}, "benchmark_run.suite"),
        ({"model": "a"}, "benchmark_run.model"),
    ],
)
async def test_an_invalid_benchmark_run_is_refused_with_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidBenchmark) as refused:
        await job().scoring.record_benchmark(REQUEST, dataclasses.replace(bench(A, 40, 30), **change))  # type: ignore[arg-type]  # fields by name
    assert field in [v.field for v in refused.value.violations]


async def test_the_latest_benchmark_of_a_suite_is_the_one_scored() -> None:
    j = job()
    await j.scoring.record_benchmark(REQUEST, bench(A, 10, 1, end_time=T0 - timedelta(days=1)))
    await j.scoring.record_benchmark("7f1c8e4a-3b2d-4c5e-9f80-1a2b3c4d5e6f", bench(A, 10, 9))
    _fast_and_cheap(j, T1)
    await _run(j, T1)
    scores = by_model((await j.scoring.list_scores(T1, PRIMARY, 0, "", None))[0])
    assert scores[A].quality == pytest.approx(0.9)
    assert scores[A].sample_count == 15
