"""The scoring job end to end on real servers: two llama.cpp engines (llama-cpp-python's
server, as the stack runs it) with different settings, svc_profiles on a real PostgreSQL,
svc_analytics on its real warehouse (chdb, in this process).

- FAST serves the tiny UNTRAINED fixture model, registered at 1 USD per million tokens;
  SLOW serves a larger UNTRAINED model built here (6 layers, 384 wide: more work per token),
  registered at 4 USD per million tokens. Both run one thread.
- The capsule set's `exact` items are asked of both through the platform's model client
  (evals.runner, as `python -m evals` does) and recorded with RecordBenchmark
  (evals.record, as `python -m evals --record` does).
- The same real calls, with what they measured (time to first token, tokens per second,
  tokens), are ingested by svc_analytics as the ModelCallCompleted events svc_conversation
  emits for production calls, priced at the registry's prices: the job's telemetry.

The models are UNTRAINED, so quality means nothing here (both are near 0); speed and price
are what differ. The job must rank FAST first, and auto mode must switch a profile whose
bounds admit FAST and leave those whose bounds exclude it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from evals.capsules import DEFAULT_CAPSULES, load_capsules, select
from evals.prompts import Budgets, agent_setup
from evals.record import record_benchmarks, suite_of
from evals.runner import EvalModel, ModelResult, run_model
from skm.events.v1 import event_pb2
from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    model_score_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    revision_pb2,
)
from skm.type.v1 import deployment_mode_pb2, model_pb2, money_pb2
from skm_runtime.contract import services_of
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, ServiceSpec, signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.llm import LLMServer, start_llm
from skm_stack.process import free_port
from skm_stack.tinyllm import TINY_MODELS, TOKENIZER_FILE, TinyModel, ensure_tiny_models, vocabulary, write_gguf
from svc_analytics import api as analytics_api
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.events import decode
from svc_analytics.adapters.queries import ClickHouseReader
from svc_analytics.core.queries import Queries
from svc_analytics.model import Delivery, Position, Row, Table
from svc_conversation.adapters.openai import OpenAICompatibleClient
from svc_profiles.__main__ import build
from svc_profiles.adapters.defaults import load_defaults
from svc_profiles.adapters.postgres_scoring import PostgresScoringStore
from svc_profiles.settings import DEFAULTS_FILE, ProfilesSettings
from tests.support.runtime import Served, serving

pytestmark = pytest.mark.timeout(600)

PRIMARY = model_pb2.MODEL_ROLE_PRIMARY
FAST, SLOW = "models/fast-engine", "models/slow-engine"
PRICE = {FAST: 1, SLOW: 4}  # USD per million tokens, input and output alike
SLOW_MODEL = TinyModel("skm-untrained-slow", n_layer=6, n_embd=384, n_head=6, n_head_kv=2, n_ff=1024, seed=3)
ITEMS = 6
State = model_score_pb2.ScoringRun.State
Mode = deployment_mode_pb2.DeploymentMode


# -- the two engines ------------------------------------------------------------------------------


@dataclass
class Engines:
    fast: LLMServer
    slow: LLMServer


def _slow_gguf(folder: Path) -> Path:
    """A larger UNTRAINED model on the tiny models' tokenizer (random weights, like them)."""
    tiny = ensure_tiny_models()
    tokenizer = next(iter(tiny.values())).parent / TOKENIZER_FILE
    path = folder / SLOW_MODEL.file_name
    write_gguf(SLOW_MODEL, vocabulary(tokenizer.read_bytes()), path)
    return path


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    state = Path(tempfile.mkdtemp(prefix="skm-test-scoring-"))
    state.chmod(0o755)
    started: list[LLMServer] = []
    try:
        tiny = ensure_tiny_models()
        settings = {"SKM_STACK_LLM_THREADS": "1", "SKM_STACK_LLM_CACHE_BYTES": "0"}
        fast_env = {**os.environ, **settings, "SKM_STACK_LLM_MODEL": str(tiny[TINY_MODELS[0].name])}
        started.append(start_llm(state / "fast", free_port(), env=fast_env))
        slow_env = {**os.environ, **settings, "SKM_STACK_LLM_MODEL": str(_slow_gguf(state))}
        started.append(start_llm(state / "slow", free_port(), env=slow_env))
        yield Engines(*started)
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(state, ignore_errors=True)


# -- svc_analytics and svc_profiles ---------------------------------------------------------------


@pytest.fixture(scope="module")
async def warehouse(chdb_warehouse_url: str) -> AsyncIterator[ClickHouseWarehouse]:
    opened = await ClickHouseWarehouse.open(chdb_warehouse_url)
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
async def analytics(warehouse: ClickHouseWarehouse) -> AsyncIterator[Served]:
    queries = Queries(ClickHouseReader(warehouse), now=lambda: datetime.now(UTC))
    spec = ServiceSpec(
        name="analytics",
        service_names=services_of("analytics"),
        register=lambda server: analytics_api.register(server, queries),
    )
    async with serving(spec, record_spans=False) as served:
        yield served


def _defaults_file(folder: Path, engines: Engines) -> Path:
    """The deployment's registry: the two engines (and the in-process embedder for EMBEDDING)."""

    def model(name: str, url: str, served: str) -> str:
        price = f"{{currency_code: USD, units: {PRICE[name]}, nanos: 0}}"
        return f"""
  - name: {name}
    display_name: "{served} (UNTRAINED)"
    endpoint_uri: {url}
    served_model: {served}
    context_length: 8192
    capabilities: [CHAT, STRUCTURED_OUTPUT]
    input_cost_per_million_tokens: {price}
    output_cost_per_million_tokens: {price}
"""

    path = folder / "defaults.yaml"
    path.write_text(
        "models:"
        + model(FAST, engines.fast.url, engines.fast.aliases[0])
        + model(SLOW, engines.slow.url, engines.slow.aliases[0])
        + """
  - name: models/all-minilm-l6-v2
    display_name: "all-MiniLM-L6-v2"
    endpoint_uri: "local:"
    served_model: all-minilm-l6-v2
    context_length: 256
    capabilities: [EMBEDDINGS]
    embedding_dimensions: 384
role_defaults:
  - role: PRIMARY
    model_tiers: [models/slow-engine]
  - role: PRE_SLM
    model_tiers: [models/fast-engine]
  - role: UTILITY
    model_tiers: [models/fast-engine]
  - role: EMBEDDING
    model_tiers: [models/all-minilm-l6-v2]
personas: []
"""
    )
    return path


@pytest.fixture(scope="module")
async def database(stack: RunningStack) -> str:
    """A database of its own: the job scores every registered model, so no other test's."""
    name = f"scoring_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return stack.postgres_dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
async def profiles(
    stack: RunningStack, database: str, analytics: Served, engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    settings = ProfilesSettings(
        addr="127.0.0.1:0",
        postgres_dsn=database,
        defaults_file=_defaults_file(tmp_path_factory.mktemp("scoring-defaults"), engines),
        kafka_bootstrap=stack.kafka_bootstrap,
        analytics_addr=analytics.target,
        scoring_interval_seconds=0,
        scoring_window_seconds=3600,
    )
    async with serving(await build(settings, RuntimeSettings()), record_spans=False) as served:
        yield served


# -- driving real calls ---------------------------------------------------------------------------


async def _ask_both(engines: Engines) -> list[ModelResult]:
    """The capsule set's first `exact` items, asked of each engine through the model client."""
    capsules = load_capsules(DEFAULT_CAPSULES)
    items = select(capsules.items, kinds=["exact"], limit=ITEMS)
    setup = agent_setup(load_defaults(DEFAULTS_FILE), "default")
    client = OpenAICompatibleClient(first_token_timeout=120, idle_timeout=120)
    results = []
    try:
        for name, server in ((FAST, engines.fast), (SLOW, engines.slow)):
            model = EvalModel(name, server.aliases[0], "UNTRAINED", server.url, 8192, False, "untrained")
            results.append(await run_model(client, model, items, setup, Budgets(), None, lambda _line: None))
    finally:
        await client.close()
    for result in results:
        assert result.errors() == []
        assert len(result.items) == ITEMS
    return results


def _stamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _calls_as_production(tenant: str, results: list[ModelResult], at: datetime) -> list[event_pb2.Event]:
    """Each real call as the ModelCallCompleted svc_conversation emits, priced by the registry."""
    events = []
    for result in results:
        for item in result.items:
            tokens = item.input_tokens + item.output_tokens
            nanos = tokens * PRICE[result.model.name] * 1000  # price per million tokens, in nanos
            usage = model_pb2.ModelUsage(
                model=result.model.name,
                role=PRIMARY,
                input_tokens=item.input_tokens,
                output_tokens=item.output_tokens,
                duration=duration_pb2.Duration(
                    nanos=int(item.duration * 1e9) % 1_000_000_000, seconds=int(item.duration)
                ),
                tokens_per_second=item.tokens_per_second,
                cost=money_pb2.Money(currency_code="USD", units=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000),
            )
            if item.time_to_first_token is not None:
                usage.time_to_first_token.FromNanoseconds(round(item.time_to_first_token * 1e9))
            events.append(
                event_pb2.Event(
                    event_id=str(uuid.uuid4()),
                    tenant=tenant,
                    source="conversation",
                    event_time=_stamp(at),
                    model_call_completed=event_pb2.ModelCallCompleted(
                        persona=f"{tenant}/personas/default", usage=usage, failure_reason=item.failure
                    ),
                )
            )
    return events


async def _ingest(warehouse: ClickHouseWarehouse, events: list[event_pb2.Event]) -> None:
    """The events' rows, written as svc_analytics' ingestion writes them."""
    rows: dict[Table, list[tuple[Position, Row]]] = {}
    for offset, message in enumerate(events):
        delivery = decode(Position("audit", 0, offset), message.tenant.encode(), message.SerializeToString())
        assert isinstance(delivery, Delivery), delivery
        for table, table_rows in delivery.rows.items():
            rows.setdefault(table, []).extend((delivery.position, row) for row in table_rows)
    for table in Table:
        if rows.get(table):
            await warehouse.write(table, rows[table])


def _usd(units: int, nanos: int = 0) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=units, nanos=nanos)


async def _profile(
    stub: model_profile_service_pb2_grpc.ModelProfileServiceAsyncStub,
    tenant: str,
    admin: tuple[tuple[str, bytes], ...],
    mode: Mode.ValueType,
    bounds: model_profile_pb2.AutoSelectBounds,
) -> model_profile_pb2.ModelProfile:
    reply = await stub.CreateModelProfile(
        model_profile_service_pb2.CreateModelProfileRequest(
            parent=tenant,
            model_profile=model_profile_pb2.ModelProfile(
                role=PRIMARY, mode=mode, model_tiers=[SLOW], auto_select=True, auto_select_bounds=bounds
            ),
        ),
        metadata=admin,
        timeout=10,
    )
    return reply.model_profile


# -- the test -----------------------------------------------------------------------------------


async def test_the_job_ranks_the_fast_cheap_engine_first_and_auto_mode_keeps_to_its_bounds(
    engines: Engines, warehouse: ClickHouseWarehouse, profiles: Served, database: str
) -> None:
    tenant = f"tenants/s{uuid.uuid4().hex[:8]}"
    admin = principal_metadata(principal_message(tenant, f"{tenant}/users/alice", ["admin"]))
    results = await _ask_both(engines)
    capsules = load_capsules(DEFAULT_CAPSULES)
    assert await record_benchmarks(profiles.target, results, capsules, lambda _line: None) == []
    await _ingest(warehouse, _calls_as_production(tenant, results, datetime.now(UTC) - timedelta(minutes=5)))

    async with signed_channel(profiles.target) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        profile_stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
        # Bounds that admit FAST (1 USD per million tokens, any quality)...
        admits = await _profile(
            profile_stub,
            tenant,
            admin,
            Mode.DEPLOYMENT_MODE_DEVELOPER,
            model_profile_pb2.AutoSelectBounds(max_cost_per_million_tokens=_usd(2)),
        )
        # ...and two that exclude it: a lower cost ceiling, a quality floor no untrained model reaches.
        too_cheap = await _profile(
            profile_stub,
            tenant,
            admin,
            Mode.DEPLOYMENT_MODE_TEST,
            model_profile_pb2.AutoSelectBounds(max_cost_per_million_tokens=_usd(0, 500_000_000)),
        )
        too_good = await _profile(
            profile_stub,
            tenant,
            admin,
            Mode.DEPLOYMENT_MODE_PRODUCTION,
            model_profile_pb2.AutoSelectBounds(min_quality=1.0),
        )

        stream = models.RunScoring(model_service_pb2.RunScoringRequest(parent=tenant), timeout=120)
        progress = [reply async for reply in stream]
        final = progress[-1].scoring_run
        assert (final.state, final.tenants_done, final.tenants_total, final.profiles_changed) == (
            State.STATE_SUCCEEDED,
            1,
            1,
            1,
        )
        assert f"{tenant}: PRIMARY, 2 models" in [reply.step for reply in progress]

        scores = await models.ListModelScores(
            model_service_pb2.ListModelScoresRequest(parent=tenant, role=PRIMARY), metadata=admin, timeout=10
        )
        fast, slow = scores.model_scores
        assert (fast.model, slow.model) == (FAST, SLOW)
        assert fast.score > slow.score
        # Telemetry from the real calls: the share that answered, each model's price as registered.
        answered = {r.model.name: sum(not item.failure for item in r.items) / ITEMS for r in results}
        assert fast.reliability == pytest.approx(answered[FAST])
        assert slow.reliability == pytest.approx(answered[SLOW])
        assert (fast.cost_per_million_tokens.units, slow.cost_per_million_tokens.units) == (1, 4)
        assert fast.sample_count == slow.sample_count == 2 * ITEMS  # the calls and the benchmark items
        assert fast.latency.ToNanoseconds() > 0
        assert slow.latency.ToNanoseconds() > 0
        assert fast.scoring_run == final.name
        # Quality: the benchmark runs recorded, on UNTRAINED models.
        passed = {r.model.name: r.passed()[0] / ITEMS for r in results}
        assert fast.quality == pytest.approx(passed[FAST])
        assert slow.quality == pytest.approx(passed[SLOW])

        recommendations = await models.ListModelRecommendations(
            model_service_pb2.ListModelRecommendationsRequest(parent=tenant), metadata=admin, timeout=10
        )
        by_profile = {r.model_profile: r for r in recommendations.model_recommendations}
        assert {
            r.recommended_model
            for r in by_profile.values()
            if r.model_profile in (admits.name, too_cheap.name, too_good.name)
        } == {FAST}
        assert (by_profile[admits.name].applied, by_profile[admits.name].not_applied_reason) == (True, "")
        assert by_profile[too_cheap.name].not_applied_reason == "cost above the bound"
        assert by_profile[too_good.name].not_applied_reason == "quality below the bound"
        assert by_profile[admits.name].summary.startswith(
            f"switch PRIMARY of tenant {tenant.removeprefix('tenants/')} from slow-engine to fast-engine:"
        )

        switched = await _get(profile_stub, admits.name, admin)
        assert list(switched.model_tiers) == [FAST, SLOW]
        assert (switched.revision.origin, switched.revision.author) == (
            revision_pb2.Revision.ORIGIN_AUTO_SELECT,
            "services/profiles",
        )
        assert switched.revision.note.startswith(final.name)
        for untouched in (too_cheap, too_good):
            assert list((await _get(profile_stub, untouched.name, admin)).model_tiers) == [SLOW]

        # The change is an event with the revision it replaced, so it can be rolled back.
        auto = [e for e in await _outbox(database) if e.WhichOneof("payload") == "model_profile_auto_selected"]
        (event,) = [
            e.model_profile_auto_selected for e in auto if e.model_profile_auto_selected.model_profile == admits.name
        ]
        assert (event.previous_model, event.model, event.scoring_run) == (SLOW, FAST, final.name)
        assert event.previous_revision_id == admits.revision.revision_id
        assert event.revision_id == switched.revision.revision_id
        rolled = await profile_stub.RollbackModelProfile(
            model_profile_service_pb2.RollbackModelProfileRequest(
                name=admits.name, revision_id=event.previous_revision_id, etag=switched.etag
            ),
            metadata=admin,
            timeout=10,
        )
        assert list(rolled.model_profile.model_tiers) == [SLOW]

        # A benchmark run that cannot be is refused with the field's reason.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await models.RecordBenchmark(
                model_service_pb2.RecordBenchmarkRequest(
                    request_id=str(uuid.uuid4()),
                    benchmark_run=model_score_pb2.BenchmarkRun(
                        model=FAST, role=PRIMARY, suite=suite_of(capsules), attempts=2, successes=3
                    ),
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info_of(refused.value)
        assert info is not None
        assert info.reason == "INVALID_BENCHMARK"


async def _get(
    stub: model_profile_service_pb2_grpc.ModelProfileServiceAsyncStub, name: str, admin: tuple[tuple[str, bytes], ...]
) -> model_profile_pb2.ModelProfile:
    reply = await stub.GetModelProfile(
        model_profile_service_pb2.GetModelProfileRequest(name=name), metadata=admin, timeout=10
    )
    return reply.model_profile


async def _outbox(dsn: str) -> list[event_pb2.Event]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT value FROM profiles.outbox ORDER BY seq")
    finally:
        await conn.close()
    return [event_pb2.Event.FromString(bytes(row["value"])) for row in rows]


async def test_analytics_unreachable_fails_the_run_with_unavailable(
    stack: RunningStack, database: str, engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = ProfilesSettings(
        addr="127.0.0.1:0",
        postgres_dsn=database,
        defaults_file=_defaults_file(tmp_path_factory.mktemp("scoring-defaults-down"), engines),
        kafka_bootstrap=stack.kafka_bootstrap,
        analytics_addr=f"127.0.0.1:{free_port()}",
        scoring_interval_seconds=0,
    )
    tenant = f"tenants/d{uuid.uuid4().hex[:8]}"
    spec = await build(settings, RuntimeSettings())
    async with serving(spec, record_spans=False) as served, signed_channel(served.target) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in models.RunScoring(model_service_pb2.RunScoringRequest(parent=tenant), timeout=60):
                pass
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        scores = await models.ListModelScores(model_service_pb2.ListModelScoresRequest(parent=tenant), timeout=10)
        assert list(scores.model_scores) == []


async def test_one_run_at_a_time_across_replicas_and_a_dead_holder_frees_the_lock(database: str) -> None:
    """Two replicas' stores on pools of their own: the advisory lock admits one holder; when the
    holder's connection dies (its process crashed: the server ends its session), the other gets it."""
    first = await asyncpg.create_pool(database, min_size=1, max_size=2)
    second = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        one, other = PostgresScoringStore(first), PostgresScoringStore(second)
        await one.migrate()
        async with one.single_flight() as held:
            assert held is True
            async with other.single_flight() as also:
                assert also is False
            ended = await second.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert ended is True
            async with other.single_flight() as now_held:
                assert now_held is True
    finally:
        await first.close()
        await second.close()


async def _skm(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skm_cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_skm_models_runs_the_job_and_shows_scores_and_recommendations(
    profiles: Served, mesh_key_file: Path
) -> None:
    tenant = f"c{uuid.uuid4().hex[:8]}"
    mesh = ("--mesh", "--mesh-key", str(mesh_key_file), "--profiles-addr", profiles.target)
    code, out, err = await _skm("models", "score", "--tenant", tenant, *mesh)
    assert code == 0, err
    assert f"tenants/{tenant}: PRIMARY, 2 models" in err
    assert out.startswith("scoringRuns/")
    assert "SUCCEEDED: 1/1 tenants" in out

    code, out, err = await _skm("models", "scores", "--tenant", tenant, "--role", "primary", "--json", *mesh)
    assert code == 0, err
    scores = [json.loads(line) for line in out.splitlines()]
    assert {s["model"] for s in scores} == {FAST, SLOW}
    assert all(s["role"] == "MODEL_ROLE_PRIMARY" for s in scores)

    code, out, err = await _skm("models", "recommendations", "--tenant", tenant, *mesh)
    assert code == 0, err
    # No profile: PRIMARY's deployment default (SLOW) is what a recommendation compares with.
    assert "[deployment default; not applied: the role uses the deployment default]" in out

    code, out, err = await _skm("models", "list", "--json", *mesh)
    assert code == 0, err
    assert {json.loads(line)["name"] for line in out.splitlines()} >= {FAST, SLOW}

    code, _, err = await _skm("models", "score", "--tenant", tenant)
    assert code == 2
    assert "add --mesh" in err


async def test_benchmark_records_are_idempotent_and_a_run_in_progress_refuses_another(
    profiles: Served, database: str
) -> None:
    run = model_score_pb2.BenchmarkRun(model=FAST, role=PRIMARY, suite="probe-v1", attempts=4, successes=3)
    request_id = str(uuid.uuid4())
    async with signed_channel(profiles.target) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_service_pb2.RecordBenchmarkRequest(request_id=request_id, benchmark_run=run)
        first = await models.RecordBenchmark(request, timeout=10)
        again = await models.RecordBenchmark(request, timeout=10)
        assert first.benchmark_run == again.benchmark_run
        assert first.benchmark_run.end_time.seconds > 0  # stamped when recorded

        refusals = [
            (
                request_id,
                model_score_pb2.BenchmarkRun(model=FAST, role=PRIMARY, suite="probe-v1", attempts=4, successes=2),
            ),
            (str(uuid.uuid4()), model_score_pb2.BenchmarkRun(model="models/nope", role=PRIMARY, suite="x", attempts=1)),
        ]
        reasons = []
        for rid, body in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await models.RecordBenchmark(
                    model_service_pb2.RecordBenchmarkRequest(request_id=rid, benchmark_run=body), timeout=10
                )
            info = error_info_of(refused.value)
            assert info is not None
            reasons.append((refused.value.code(), info.reason))
        assert reasons == [
            (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED"),
            (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        ]

        # Another replica's run holds the lock: this one is refused, naming it.
        pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
        try:
            async with PostgresScoringStore(pool).single_flight() as held:
                assert held is True
                with pytest.raises(grpc.aio.AioRpcError) as busy:
                    async for _ in models.RunScoring(model_service_pb2.RunScoringRequest(), timeout=30):
                        pass
        finally:
            await pool.close()
        info = error_info_of(busy.value)
        assert info is not None
        assert (busy.value.code(), info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCORING_ALREADY_RUNNING")
        assert "scoring_run" in info.metadata
