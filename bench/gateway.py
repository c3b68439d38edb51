"""The gateway's overhead on a unary call, against the service called directly, one run.

Starts only what the public path of one unary call needs: PostgreSQL, Redis and OpenFGA;
svc_policy, svc_profiles (a new session's persona), svc_conversation and svc_gateway; Envoy in
front of the gateway. Kafka is not
started: nothing on this path publishes (the services' outbox relays retry in the
background). The gateway's rate limits are raised out of the way; every call still takes
its tokens from the tenant's and the user's buckets.

ConversationService.GetSession, made sequentially (one call in flight) in alternating
rounds, on these paths to the same session:
  direct    svc_conversation itself, the principal in metadata as the gateway sets it
  hop       a bare grpc.aio pass-through (this module run as `hop`: bytes in, bytes out, the
            caller's metadata passed on, nothing checked): what any Python hop costs
  gateway   svc_gateway's own port (token, constitution hash, rate limits, policy, forward)
  envoy     Envoy + svc_gateway: a client's path
Reported: p50/p99 latency (the client's own clock), and the CPU time (user + system) each
process on the way spent per call, the client excepted. Overheads are differences of
medians of the rounds' percentiles.

Usage: python -m bench gateway [--rounds N] [--calls N]
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.conversation import ConversationStub, _create_session, _new_user
from bench.measure import bench_services, cpu_seconds
from skm.conversation.v1 import conversation_service_pb2 as pb
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
_UNLIMITED = "1000000"
_SERVICES = ("policy", "profiles", "conversation", "gateway")
_GATEWAY_ENV = {
    "SKM_GATEWAY_TENANT_RATE_PER_SECOND": _UNLIMITED,
    "SKM_GATEWAY_TENANT_BURST": _UNLIMITED,
    "SKM_GATEWAY_USER_RATE_PER_SECOND": _UNLIMITED,
    "SKM_GATEWAY_USER_BURST": _UNLIMITED,
}
_PATHS = {
    "direct": "svc_conversation direct",
    "hop": "bare grpc.aio hop",
    "gateway": "svc_gateway's port",
    "envoy": "Envoy + svc_gateway",
}


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


@contextmanager
def _hop(target: str) -> Iterator[tuple[str, int]]:
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gateway", "hop", addr, target], cwd=ROOT)
    try:
        yield addr, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def _measure(stack: RunningStack, hop: tuple[str, int], rounds: int, calls: int) -> None:
    if stack.envoy is None or stack.redis is None:
        raise RuntimeError("the stack runs no Envoy or no Redis")
    user = await _new_user(stack)
    processes = {
        "conversation": stack.services["conversation"].process.pid,
        "hop": hop[1],
        "gateway": stack.services["gateway"].process.pid,
        "policy": stack.services["policy"].process.pid,
        "redis": stack.redis.process.pid,
        "envoy": stack.envoy.process.pid,
    }
    targets = {
        "direct": (stack.services["conversation"].addr, user.forwarded),
        "hop": (hop[0], user.forwarded),
        "gateway": (stack.services["gateway"].addr, user.bearer),
        "envoy": (stack.envoy_url.removeprefix("http://"), user.bearer),
    }
    channels = {name: grpc.aio.insecure_channel(addr) for name, (addr, _) in targets.items()}
    latencies: dict[str, list[list[float]]] = {name: [] for name in targets}
    cpu: dict[str, dict[str, list[float]]] = {name: {proc: [] for proc in processes} for name in targets}
    try:
        for channel in channels.values():
            await asyncio.wait_for(channel.channel_ready(), 20)
        session = await _create_session(ConversationStub(channels["direct"]), user, user.forwarded)
        request = pb.GetSessionRequest(name=session)

        def path(name: str) -> Callable[[], Awaitable[object]]:
            stub, metadata = ConversationStub(channels[name]), targets[name][1]
            return lambda: stub.GetSession(request, metadata=metadata, timeout=10)

        paths = {name: path(name) for name in targets}
        for one in paths.values():
            for _ in range(200):  # warm connections and every cache on the way
                await one()
        for index in range(rounds):
            print(f"gateway round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            for name, one in paths.items():
                samples = []
                used = {proc: cpu_seconds((pid,)) for proc, pid in processes.items()}
                for _ in range(calls):
                    start = time.perf_counter()
                    await one()
                    samples.append(time.perf_counter() - start)
                for proc, pid in processes.items():
                    cpu[name][proc].append((cpu_seconds((pid,)) - used[proc]) / calls)
                latencies[name].append(samples)
    finally:
        for channel in channels.values():
            await channel.close()

    def p(name: str, q: float) -> float:
        return statistics.median(_ms(run, q) for run in latencies[name])

    def us(name: str, process: str) -> float:
        return statistics.median(cpu[name][process]) * 1e6

    print(
        f"\nunary ConversationService.GetSession, sequential calls: median of {rounds} alternating rounds, "
        f"{calls} calls each\n"
    )
    print(f"  {'':<24} {'p50':>9} {'p99':>10}    CPU us a call: " + " ".join(f"{proc:>12}" for proc in processes))
    for name, label in _PATHS.items():
        print(
            f"  {label:<24} {p(name, 0.5):6.3f} ms {p(name, 0.99):7.3f} ms                   "
            + " ".join(f"{us(name, process):12.0f}" for process in processes)
        )

    def over(a: str, b: str, q: float) -> float:
        return p(a, q) - p(b, q)

    print(
        f"\n  gateway overhead (Envoy + gateway - direct)  p50 {over('envoy', 'direct', 0.5):+.3f} ms"
        f"   p99 {over('envoy', 'direct', 0.99):+.3f} ms   (goal p50 <= +0.5 ms)"
        f"\n    of which svc_gateway                      p50 {over('gateway', 'direct', 0.5):+.3f} ms"
        f"   p99 {over('gateway', 'direct', 0.99):+.3f} ms"
        f"\n      a bare Python hop alone                 p50 {over('hop', 'direct', 0.5):+.3f} ms"
        f"   p99 {over('hop', 'direct', 0.99):+.3f} ms"
        f"\n      the gateway's own work                  p50 {over('gateway', 'hop', 0.5):+.3f} ms"
        f"\n    of which Envoy                            p50 {over('envoy', 'gateway', 0.5):+.3f} ms"
        f"   p99 {over('envoy', 'gateway', 0.99):+.3f} ms"
        f"\n  CPU a call, the client excepted: svc_gateway {us('envoy', 'gateway'):.0f} us,"
        f" Envoy {us('envoy', 'envoy'):.0f} us, Redis {us('envoy', 'redis'):.0f} us,"
        f" svc_policy {us('envoy', 'policy'):.0f} us (on the Envoy path);"
        f" the bare hop {us('hop', 'hop'):.0f} us"
    )


def main(rounds: int = 5, calls: int = 2000) -> None:
    """Starts the path's servers and services, measures, prints, stops them."""
    print("\n== the gateway: a unary call through Envoy + svc_gateway against the service direct ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="skm-bench-gateway-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(
            state_dir=Path(state), components=("postgres", "redis", "openfga"), ports=EPHEMERAL_PORTS, durable=False
        ).start()
        try:
            stack.start_services(bench_services({"gateway": _GATEWAY_ENV}, _SERVICES))
            stack.start_envoy()
            with _hop(stack.services["conversation"].addr) as hop:
                asyncio.run(_measure(stack, hop, rounds, calls))
        finally:
            stack.stop()


# -- the bare hop ----------------------------------------------------------------------------


class _PassThrough(grpc.GenericRpcHandler):
    """Every unary call forwarded as bytes with the caller's metadata; nothing checked."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            forward: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(path)

            async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if not k.startswith(":"))
                response: bytes = await forward(request, metadata=metadata, timeout=context.time_remaining())
                return response

            handler = self._handlers[path] = grpc.unary_unary_rpc_method_handler(unary)
        return handler


async def _serve_hop(addr: str, target: str) -> None:
    channel = grpc.aio.insecure_channel(target)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_PassThrough(channel),))
    server.add_insecure_port(addr)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    await channel.close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "hop":
        asyncio.run(_serve_hop(sys.argv[2], sys.argv[3]))
    else:
        print("usage: python -m bench.gateway hop ADDR TARGET (the bench itself: python -m bench gateway)")
        raise SystemExit(os.EX_USAGE)
