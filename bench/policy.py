"""Policy checks measured side by side: svc_policy (cache hit, cache miss) vs OpenFGA direct.

One run starts its own real stack (PostgreSQL, Redis, Kafka, OpenFGA on Postgres) and
svc_policy as a process, writes a tenant's relationships, then alternates rounds of:
  direct   one check straight to OpenFGA's HTTP API (a BatchCheck of one) through
           svc_policy's own OpenFGA adapter, in the bench process
  probes   the same, but a BatchCheck of every probe the decision table asks for this
           question (what a miss asks OpenFGA), so the miss's own overhead shows apart
           from the engine's extra work
  miss     PolicyService.Check over gRPC for a subject not seen before (every probe of the
           decision table goes to OpenFGA in one BatchCheck)
  hit      PolicyService.Check for a subject just decided (answered from the cache)
  bare     the same request's bytes to a byte echo on a bare grpc.aio server (no SKM
           runtime, no protobuf) in a process of its own: the floor a gRPC call in Python
           puts under any cache hit
Sequential calls: latency p50/p99. Then decisions per second on one core, from the CPU
time the svc_policy process spent per decision.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.measure import cpu_seconds
from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from skm_stack.services import ServiceSpec
from svc_policy.adapters.openfga import OpenFgaAuthorizer, bootstrap
from svc_policy.decisions import DecisionTable
from svc_policy.model import AccessCheck
from svc_policy.settings import PolicySettings
from tests.support.echo_service import SERVICE as ECHO_SERVICE
from tests.support.ports import free_port


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def _timed(calls: int, one: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await one(i)
        samples.append(time.perf_counter() - start)
    return samples


async def _against(stack: RunningStack, store: str, token: str, rounds: int, calls: int, bare: str) -> None:
    service = stack.services["policy"]
    model = PolicySettings().model_path
    store_id, model_id = await bootstrap(stack.openfga_api_url, token, store, model)
    direct = OpenFgaAuthorizer(stack.openfga_api_url, token, store_id, model_id)
    tenant = f"tenants/bench{uuid.uuid4().hex[:6]}"
    tool = f"tool:{tenant}/tools/search"
    async with (
        grpc.aio.insecure_channel(service.addr) as channel,
        grpc.aio.insecure_channel(bare) as bare_channel,
    ):
        stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = bare_channel.unary_unary(f"/{ECHO_SERVICE}/Unary")
        relationships = [
            access_pb2.Relationship(subject=f"tenant:{tenant}", relation="tenant", object=tool),
            access_pb2.Relationship(subject=f"tenant:{tenant}", relation="low_risk", object=tool),
        ] + [
            access_pb2.Relationship(subject=f"user:{tenant}/users/u{i}", relation="member", object=f"tenant:{tenant}")
            for i in range(100)
        ]
        for start in range(0, len(relationships), 100):
            await stub.WriteRelationships(
                policy_service_pb2.WriteRelationshipsRequest(
                    parent=tenant, relationships=relationships[start : start + 100]
                ),
                timeout=30,
            )

        def request(subject: str) -> policy_service_pb2.CheckRequest:
            return policy_service_pb2.CheckRequest(
                check=access_pb2.AccessCheck(subject=subject, relation="can_execute", object=tool)
            )

        async def via_direct(i: int) -> object:
            return await direct.check(
                [AccessCheck(f"user:{tenant}/users/u{i % 100}", "can_execute", tool)], fresh=False
            )

        rules = DecisionTable.load(PolicySettings().decisions_path).rules_for("tool", "can_execute")
        assert rules is not None  # the table answers the question this bench asks

        async def via_probes(i: int) -> object:
            subject = f"user:{tenant}/users/u{i % 100}"
            return await direct.check([AccessCheck(subject, rule.relation, tool) for rule in rules.probes], fresh=False)

        miss_counter = iter(range(10**9))

        async def via_miss(i: int) -> object:
            # A subject never asked before: nothing cached. (Unknown users are simply DENY.)
            return await stub.Check(request(f"user:{tenant}/users/new{next(miss_counter)}"), timeout=10)

        async def via_hit(i: int) -> object:
            return await stub.Check(request(f"user:{tenant}/users/u{i % 5}"), timeout=10)

        hit_bytes = request(f"user:{tenant}/users/u0").SerializeToString()

        async def via_bare(i: int) -> object:
            return await echo(hit_bytes, timeout=10, wait_for_ready=True)

        pid = (service.process.pid,)
        paths: dict[str, Callable[[int], Awaitable[object]]] = {
            "direct": via_direct,
            "probes": via_probes,
            "miss": via_miss,
            "hit": via_hit,
            "bare": via_bare,
        }
        for one in paths.values():
            await _timed(100, one)  # warm connections and caches
        results: dict[str, list[list[float]]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {"miss": [], "hit": []}
        for index in range(rounds):
            print(f"round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            for name, one in paths.items():
                used = cpu_seconds(pid)
                results[name].append(await _timed(calls, one))
                if name in cpu:
                    cpu[name].append((cpu_seconds(pid) - used) / calls)
        await direct.close()

    def p(name: str, q: float) -> float:
        return statistics.median(_ms(run, q) for run in results[name])

    print(f"\npolicy checks: median of {rounds} alternating rounds, {calls} sequential calls each\n")
    for name, label in [
        ("direct", "OpenFGA direct"),
        ("probes", "OpenFGA direct, probes"),
        ("miss", "svc_policy, cache miss"),
        ("hit", "svc_policy, cache hit"),
        ("bare", "bare grpc.aio echo"),
    ]:
        print(f"  {label:<24} p50 {p(name, 0.5):7.3f} ms   p99 {p(name, 0.99):7.3f} ms")
    print(
        f"\n  miss overhead over direct   p50 {p('miss', 0.5) - p('direct', 0.5):+.3f} ms  (goal <= +1 ms);"
        f" over the same probes direct {p('miss', 0.5) - p('probes', 0.5):+.3f} ms"
        f" ({len(rules.probes)} probes)"
        f"\n  cached                      p50 {p('hit', 0.5):.3f} ms  (goal <= 0.2 ms);"
        f" over a bare grpc.aio call {p('hit', 0.5) - p('bare', 0.5):+.3f} ms"
        f"\n  end to end (miss)           p50 {p('miss', 0.5):.3f} ms, p99 {p('miss', 0.99):.3f} ms"
        "  (goal p50 <= 3 ms, p99 <= 15 ms)"
    )
    for name in ("hit", "miss"):
        per = statistics.median(cpu[name])
        print(f"  decisions/s on one core ({name}): {1 / per:8.0f}   ({per * 1e6:.0f} us CPU each in svc_policy)")


def main(rounds: int = 3, calls: int = 500) -> None:
    print("\n== policy checks (svc_policy on a real OpenFGA) ==", flush=True)
    store = f"bench-{uuid.uuid4().hex[:8]}"
    spec = ServiceSpec(
        name="policy",
        module="svc_policy",
        port=0,
        health_services=("", "skm.policy.v1.PolicyService"),
        extra_env={"SKM_POLICY_OPENFGA_STORE": store, "SKM_LOG_LEVEL": "WARNING"},
    )
    with tempfile.TemporaryDirectory(prefix="skm-bench-policy-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False).start()
        bare = f"127.0.0.1:{free_port()}"
        echo = subprocess.Popen([sys.executable, "-m", "bench.bare_echo", bare], stderr=subprocess.DEVNULL)
        try:
            stack.start_services([spec])
            token = Path(stack.openfga_token_file).read_text().strip()
            asyncio.run(_against(stack, store, token, rounds, calls, bare))
        finally:
            echo.terminate()
            echo.wait(timeout=15)
            stack.stop()
