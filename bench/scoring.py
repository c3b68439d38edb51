"""The scoring job's run time for 5 models x 40 capsule items, in its two parts.

One run starts PostgreSQL and the stack's LLM engine with the tiny UNTRAINED models (random
weights: their answers, so the quality figures, mean nothing; the work per call is real) and
registers 5 models on it (alternately the two tiny models, at different prices).

  capsules  the evals capsule set's first --items items (default 40, taken evenly across the
            kinds, as `python -m evals --limit` takes them) asked of each of the 5 models
            through the platform's model client and judged, as `python -m evals --record`
            does, then recorded with the scoring core's record_benchmark: the expensive part,
            dominated by generation on this machine's cores
  scoring   the scoring job over what is stored (svc_profiles' core and its Postgres adapter,
            in this process, no gRPC): scores for every role, a recommendation per profile,
            auto mode, the events into the outbox. Its telemetry input is served from memory:
            per model, the capsule run's own measured medians (TTFT, tokens/s, failures) and
            the registry's prices, the same for every tenant. (svc_analytics' QueryMetrics,
            one call per tenant in a deployment, is measured by `python -m bench analytics`.)
            Timed for 1 tenant and for --tenants tenants (default 100), each with a PRIMARY
            profile in auto mode.

No figure is asserted; the numbers are this machine's.

Usage: python -m bench scoring [--items N] [--tenants N]
       python -m bench.scoring [--items N] [--models N] [--tenants N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from evals.capsules import DEFAULT_CAPSULES, load_capsules, select
from evals.prompts import Budgets, agent_setup, primary_max_tokens
from evals.record import benchmark_run_of, request_id_of
from evals.runner import EvalModel, ModelResult, run_model
from evals.sandbox import SandboxCodeRunner
from skm_runtime.values import DeploymentMode, ModelRole, Money
from skm_stack import EPHEMERAL_PORTS, Stack
from svc_conversation.adapters.openai import OpenAICompatibleClient
from svc_profiles import convert
from svc_profiles.adapters.defaults import load_defaults
from svc_profiles.adapters.keys import Ed25519PersonaKeys
from svc_profiles.adapters.postgres import PostgresProfileStore
from svc_profiles.adapters.postgres_scoring import PostgresScoringStore
from svc_profiles.core import Profiles
from svc_profiles.core.scoring import Scoring
from svc_profiles.model import (
    Capability,
    Defaults,
    Model,
    ModelProfile,
    ModelTelemetry,
    RoleDefault,
    ScoreWeights,
    ScoringState,
)
from svc_profiles.settings import DEFAULTS_FILE


def _now() -> datetime:
    return datetime.now(UTC)


class MeasuredTelemetry:
    """Every tenant's telemetry in every role: each model's measured medians from the capsule run."""

    def __init__(self, by_model: dict[str, ModelTelemetry]) -> None:
        self._by_model = by_model

    async def model_telemetry(
        self, tenant: str, role: ModelRole, start: datetime, end: datetime
    ) -> dict[str, ModelTelemetry]:
        return dict(self._by_model)


def _models(url: str, aliases: tuple[str, ...], count: int) -> list[Model]:
    now = _now()
    return [
        Model(
            name=f"models/bench-{index}",
            display_name=f"bench {index} ({aliases[index % len(aliases)]}, UNTRAINED)",
            endpoint_uri=url,
            served_model=aliases[index % len(aliases)],
            context_length=8192,
            capabilities=(Capability.CHAT, Capability.STRUCTURED_OUTPUT),
            input_cost=Money("USD", index + 1),
            output_cost=Money("USD", 2 * (index + 1)),
            create_time=now,
            update_time=now,
            etag=f"bench-{index}",
        )
        for index in range(count)
    ]


async def _capsules(models: list[Model], items: int) -> tuple[list[ModelResult], float]:
    capsules = load_capsules(DEFAULT_CAPSULES)
    chosen = select(capsules.items, limit=items)
    defaults = load_defaults(DEFAULTS_FILE)
    setup, budgets = agent_setup(defaults, "default"), Budgets(agent=primary_max_tokens(defaults))
    client = OpenAICompatibleClient(first_token_timeout=300, idle_timeout=300)
    results = []
    started = time.perf_counter()
    try:
        for model in models:
            subject = EvalModel(
                model.name, model.served_model, "UNTRAINED", model.endpoint_uri, 8192, True, "untrained"
            )
            results.append(
                await run_model(client, subject, chosen, setup, budgets, SandboxCodeRunner(), lambda _: None)
            )
    finally:
        await client.close()
    return results, time.perf_counter() - started


def _telemetry(results: list[ModelResult], models: list[Model]) -> dict[str, ModelTelemetry]:
    out = {}
    for result, model in zip(results, models, strict=True):
        calls = len(result.items)
        failed = sum(1 for item in result.items if item.failure)
        price = (model.input_cost.units + model.output_cost.units) / 2
        out[model.name] = ModelTelemetry(
            calls=calls,
            time_to_first_token_seconds=result.median_ttft(),
            tokens_per_second=result.median_tokens_per_second(),
            failure_rate=failed / calls if calls else None,
            cost_per_million=Money("USD", int(price), round((price - int(price)) * 1e9)),
        )
    return out


async def _scoring(dsn: str, models: list[Model], results: list[ModelResult], tenants: int) -> None:
    store = await PostgresProfileStore.open(dsn)
    try:
        scoring_store = PostgresScoringStore(store.pool)
        await scoring_store.migrate()
        await store.upsert_models(models)
        defaults = Defaults(models=tuple(models), role_defaults=(RoleDefault(ModelRole.PRIMARY, (models[-1].name,)),))
        profiles = Profiles(store, Ed25519PersonaKeys({}), defaults, now=_now)
        scoring = Scoring(
            scoring_store,
            store,
            store,
            MeasuredTelemetry(_telemetry(results, models)),
            profiles.revise_model_profile,
            defaults,
            weights=ScoreWeights(),
            window=timedelta(hours=1),
            interval=timedelta(0),
            now=_now,
        )
        capsules = load_capsules(DEFAULT_CAPSULES)
        started = time.perf_counter()
        for result in results:
            run = convert.benchmark_run_of(benchmark_run_of(result, capsules))
            await scoring.record_benchmark(request_id_of(result, capsules), run)
        recorded = time.perf_counter() - started
        print(f"  record   5 benchmark runs (RecordBenchmark's core, Postgres): {recorded * 1000:.1f} ms")
        for index in range(tenants):
            await profiles.create_model_profile(
                f"tenants/bench-{index}",
                ModelProfile(
                    name="",
                    role=ModelRole.PRIMARY,
                    mode=DeploymentMode.PRODUCTION,
                    model_tiers=(models[-1].name,),
                    auto_select=True,
                ),
                "",
                None,
            )
        for parent, label in (("tenants/bench-0", "1 tenant"), ("", f"{tenants} tenants")):
            started = time.perf_counter()
            final = None
            async for run_state, _ in scoring.run_scoring(parent):
                final = run_state
            elapsed = time.perf_counter() - started
            assert final is not None
            assert final.state is ScoringState.SUCCEEDED
            print(
                f"  scoring  {label:<12} {len(models)} models x 3 chat roles: {elapsed * 1000:8.1f} ms"
                f"  ({final.tenants_done} tenants, {final.profiles_changed} profiles switched by auto mode)"
            )
    finally:
        await store.close()


def main(items: int = 40, model_count: int = 5, tenants: int = 100) -> None:
    print(f"== the scoring job: {model_count} models x {items} capsule items ==")
    print("   (tiny UNTRAINED models on the local engine: quality figures are meaningless, the work is real)")
    state = Path(tempfile.mkdtemp(prefix="skm-bench-scoring-"))
    state.chmod(0o755)
    running = Stack(
        state_dir=state, components=("postgres", "llm"), ports=EPHEMERAL_PORTS, llm_serve="untrained"
    ).start()
    try:
        assert running.llm is not None
        models = _models(running.llm.url, running.llm.aliases, model_count)
        results, seconds = asyncio.run(_capsules(models, items))
        calls = sum(len(r.items) for r in results)
        durations = [item.duration for r in results for item in r.items]
        print(
            f"  capsules {calls} calls ({model_count} models x {calls // max(model_count, 1)} items), asked and judged:"
            f" {seconds:.1f} s  (median call {statistics.median(durations) * 1000:.0f} ms)"
        )
        for result in results:
            passed, total = result.passed()
            print(f"    {result.model.name} ({result.model.served_model}): {passed}/{total} judged correct")
        asyncio.run(_scoring(running.postgres_dsn, models, results, tenants))
    finally:
        running.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40, help="capsule items per model (default 40)")
    parser.add_argument("--models", type=int, default=5, help="registered models (default 5)")
    parser.add_argument("--tenants", type=int, default=100, help="tenants scored in the larger run (default 100)")
    args = parser.parse_args()
    main(items=args.items, model_count=args.models, tenants=args.tenants)
