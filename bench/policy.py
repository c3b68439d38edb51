"""Policy checks measured side by side: the policy client, svc_policy (cache hit, cache miss)
and OpenFGA direct.

One run starts its own real stack (PostgreSQL, Redis, Kafka, OpenFGA on Postgres) and two
svc_policy processes: one as deployed (decision cache on), one with
SKM_POLICY_CACHE_TTL_SECONDS=0 (every Check asks OpenFGA). It writes a tenant's
relationships (100 members, a low-risk tool), then alternates rounds of:
  direct   one check straight to OpenFGA's HTTP API (a BatchCheck of one) through
           svc_policy's own OpenFGA adapter, in the bench process: "may member uN
           execute the tool?" (the model's can_execute, answered by OpenFGA alone)
  probes   the same member and tool, as a BatchCheck of every probe the decision table
           asks for this question: what a svc_policy miss asks OpenFGA
  miss     PolicyService.Check over gRPC, same members and tool, on the TTL 0 process:
           the same question as `direct`/`probes`, decided in full every time (ALLOW)
  new      PolicyService.Check on the cached process for a subject never asked before
           (an unknown user: DENY), so its cache cannot answer
  hit      PolicyService.Check on the cached process for one of 5 members just decided
           (answered from svc_policy's decision cache; the gRPC round trip remains)
  client   the same 5 questions through the policy client (skm_runtime/policy_client.py) in the
           bench process: verdicts reused in process, no round trip
  bare     the hit's request bytes to a byte echo on a bare grpc.aio server (no SKM
           runtime, no protobuf) in a process of its own: the floor a gRPC call in
           Python puts under any answer that crosses a process boundary
Sequential calls: latency p50/p99. Then decisions per second on one core, from the CPU
time each svc_policy process spent per decision.
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
from skm.type.v1 import policy_decision_pb2
from skm_runtime.access import AccessCheck
from skm_runtime.policy_client import PolicyClient
from skm_runtime.principal import caller_metadata, configure_mesh_key
from skm_runtime.server import signed_channel
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from skm_stack.services import ServiceSpec
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import OpenFgaAuthorizer, bootstrap
from svc_policy.settings import PolicySettings
from tests.support.echo_service import SERVICE as ECHO_SERVICE
from tests.support.ports import free_port

_UNCACHED = "policy_uncached"
_CHECK = "/skm.policy.v1.PolicyService/Check"
_WRITE = "/skm.policy.v1.PolicyService/WriteRelationships"


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
    configure_mesh_key(stack.mesh_key_file)  # svc_policy serves callers of the mesh only
    service = stack.services["policy"]
    uncached = stack.services[_UNCACHED]
    model = PolicySettings().model_path
    store_id, model_id = await bootstrap(stack.openfga_api_url, token, store, model)
    direct = OpenFgaAuthorizer(stack.openfga_api_url, token, store_id, model_id)
    tenant = f"tenants/bench{uuid.uuid4().hex[:6]}"
    tool = f"tool:{tenant}/tools/search"
    async with (
        grpc.aio.insecure_channel(service.addr) as channel,
        signed_channel(service.addr) as client_channel,
        grpc.aio.insecure_channel(uncached.addr) as uncached_channel,
        grpc.aio.insecure_channel(bare) as bare_channel,
    ):
        stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        uncached_stub = policy_service_pb2_grpc.PolicyServiceStub(uncached_channel)
        # As services do, the client's calls are signed as a caller of the mesh (an
        # interceptor, as on their channels); the stubs sign each call themselves.
        client = PolicyClient(client_channel, redis_url=stack.redis_url, ttl=1.0)
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
                metadata=caller_metadata(_WRITE),
            )

        def request(subject: str) -> policy_service_pb2.CheckRequest:
            return policy_service_pb2.CheckRequest(
                check=access_pb2.AccessCheck(subject=subject, relation="can_execute", object=tool)
            )

        async def via_direct(i: int) -> object:
            return await direct.check(
                [AccessCheck(f"user:{tenant}/users/u{i % 100}", "can_execute", tool)], fresh=False
            )

        rules = load_decision_table(PolicySettings().decisions_path).rules_for("tool", "can_execute")
        assert rules is not None  # the table answers the question this bench asks

        async def via_probes(i: int) -> object:
            subject = f"user:{tenant}/users/u{i % 100}"
            return await direct.check([AccessCheck(subject, rule.asked, tool) for rule in rules.probes], fresh=False)

        async def via_miss(i: int) -> object:
            reply = await uncached_stub.Check(
                request(f"user:{tenant}/users/u{i % 100}"), timeout=10, metadata=caller_metadata(_CHECK)
            )
            assert reply.decision.verdict == policy_decision_pb2.VERDICT_ALLOW  # the question `direct` asks
            return reply

        new_counter = iter(range(10**9))

        async def via_new(i: int) -> object:
            # A subject never asked before: nothing cached. (Unknown users are simply DENY.)
            return await stub.Check(
                request(f"user:{tenant}/users/new{next(new_counter)}"), timeout=10, metadata=caller_metadata(_CHECK)
            )

        async def via_hit(i: int) -> object:
            return await stub.Check(
                request(f"user:{tenant}/users/u{i % 5}"), timeout=10, metadata=caller_metadata(_CHECK)
            )

        async def via_client(i: int) -> object:
            return await client.check(request(f"user:{tenant}/users/u{i % 5}"), rpc_timeout=10)

        client.start()
        for _ in range(500):  # wait for the client's subscription (Redis), at most 5 s
            if client.caching:
                break
            await asyncio.sleep(0.01)
        if not client.caching:
            raise RuntimeError("the policy client did not subscribe to svc_policy's changes")

        hit_bytes = request(f"user:{tenant}/users/u0").SerializeToString()

        async def via_bare(i: int) -> object:
            return await echo(hit_bytes, timeout=10, wait_for_ready=True)

        pids = {"miss": (uncached.process.pid,), "new": (service.process.pid,), "hit": (service.process.pid,)}
        paths: dict[str, Callable[[int], Awaitable[object]]] = {
            "direct": via_direct,
            "probes": via_probes,
            "miss": via_miss,
            "new": via_new,
            "hit": via_hit,
            "client": via_client,
            "bare": via_bare,
        }
        for one in paths.values():
            await _timed(100, one)  # warm connections and caches
        results: dict[str, list[list[float]]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in pids}
        for index in range(rounds):
            print(f"round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            for name, one in paths.items():
                used = cpu_seconds(pids.get(name, ()))
                results[name].append(await _timed(calls, one))
                if name in cpu:
                    cpu[name].append((cpu_seconds(pids[name]) - used) / calls)
        await direct.close()
        await client.close()

    def p(name: str, q: float) -> float:
        return statistics.median(_ms(run, q) for run in results[name])

    print(f"\npolicy checks: median of {rounds} alternating rounds, {calls} sequential calls each\n")
    for name, label in [
        ("client", "policy client, verdict reused in process (TTL 1 s)"),
        ("hit", "svc_policy over gRPC, its cache answers"),
        ("bare", "bare grpc.aio echo (floor of any gRPC answer)"),
        ("miss", "svc_policy over gRPC, cache off: OpenFGA + table"),
        ("new", "svc_policy over gRPC, new subject (cache on)"),
        ("direct", "OpenFGA direct, 1 check (same question)"),
        ("probes", f"OpenFGA direct, the table's {len(rules.probes)} probes"),
    ]:
        print(f"  {label:<58} p50 {p(name, 0.5):7.3f} ms   p99 {p(name, 0.99):7.3f} ms")
    print(
        f"\n  cached, in process (policy client)     p50 {p('client', 0.5):.3f} ms  (goal <= 0.2 ms)"
        f"\n  cached, svc_policy over gRPC           p50 {p('hit', 0.5):.3f} ms;"
        f" over a bare grpc.aio call {p('hit', 0.5) - p('bare', 0.5):+.3f} ms"
        f"\n  miss overhead over direct (same question, same OpenFGA)"
        f"  p50 {p('miss', 0.5) - p('direct', 0.5):+.3f} ms  (goal <= +1 ms);"
        f" over its {len(rules.probes)} probes direct {p('miss', 0.5) - p('probes', 0.5):+.3f} ms"
        f"\n  end to end (miss, cache off)           p50 {p('miss', 0.5):.3f} ms, p99 {p('miss', 0.99):.3f} ms"
        "  (goal p50 <= 3 ms, p99 <= 15 ms)"
        f"\n  end to end (new subject, cache on)     p50 {p('new', 0.5):.3f} ms, p99 {p('new', 0.99):.3f} ms"
    )
    for name, what in [("hit", "cache hit"), ("miss", "cache off, full decision"), ("new", "new subject")]:
        per = statistics.median(cpu[name])
        print(
            f"  decisions/s on one core, svc_policy ({what}): {1 / per:8.0f}"
            f"   ({per * 1e6:.0f} us CPU each in svc_policy)"
        )


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
    # The same service with its decision cache off, on an address of its own.
    uncached_port = free_port()
    uncached = ServiceSpec(
        name=_UNCACHED,
        module="svc_policy",
        port=uncached_port,
        health_services=("", "skm.policy.v1.PolicyService"),
        extra_env={
            **spec.extra_env,
            "SKM_POLICY_ADDR": f"127.0.0.1:{uncached_port}",
            "SKM_POLICY_CACHE_TTL_SECONDS": "0",
        },
    )
    with tempfile.TemporaryDirectory(prefix="skm-bench-policy-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False).start()
        bare = f"127.0.0.1:{free_port()}"
        echo = subprocess.Popen([sys.executable, "-m", "bench.bare_echo", bare], stderr=subprocess.DEVNULL)
        try:
            stack.start_services([spec, uncached])
            token = Path(stack.openfga_token_file).read_text().strip()
            asyncio.run(_against(stack, store, token, rounds, calls, bare))
        finally:
            echo.terminate()
            echo.wait(timeout=15)
            stack.stop()
