"""The public path: a unary call through Envoy against the service that owns it, one run.

No Python process forwards a public call any more: Envoy routes each public method straight
to the service that owns it (deploy/envoy/envoy.yaml, generated from the contract), and that
service admits the call itself in its server interceptor (skm_runtime.gate: the bearer
token, the constitution hash, the rate limits, authz through svc_policy, each with its
cache). svc_gateway is started but is on no path (it serves health, reflection and
METHOD_NOT_PUBLIC): its CPU should read ~0. The old bench's bare Python hop is gone with
the hop it stood for.

Starts only what the path of one unary call needs: PostgreSQL, Redis and OpenFGA;
svc_policy, svc_profiles (a new session's persona), svc_conversation and svc_gateway; Envoy
routing each public method to its owner. Kafka is not started: nothing on this path
publishes (the services' outbox relays retry in the background; see idle CPU below). The
rate limits (SKM_ADMISSION_*, on every service) are raised out of the way; every admitted
call still takes its tokens from the tenant's and the user's buckets.

ConversationService.GetSession, made sequentially (one call in flight) in alternating
rounds, on these paths to the same session:
  direct    svc_conversation's port, a principal signed with the mesh key (how services
            call each other): no admission
  token     svc_conversation's port with the bearer token: admission in the service, no Envoy
  envoy     Envoy's port with the bearer token: a client's path
Reported: p50/p99 latency (the client's own clock; overheads are differences of the medians
of the rounds' percentiles), and the CPU time (user + system) each process spent per call,
the client excepted, less what it spends idle (outbox relays retrying Kafka, leases and
caches refreshed in the background; a second sampled before each round, pooled over the
rounds) times the calls' duration. PostgreSQL counts its postmaster and every backend. Then: the public
path's overhead (envoy - direct) split into admission (token - direct) and Envoy's hop
(envoy - token), the admission's Python CPU per call (svc_conversation's CPU on token less
on direct) and Envoy's CPU per call.

Usage: python -m bench gateway [--rounds N] [--calls N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.conversation import ConversationStub, _create_session, _new_user, _User
from bench.measure import UNLIMITED_RATES, CpuMeter, CpuRun, bench_services
from skm.conversation.v1 import conversation_service_pb2 as pb
from skm_runtime.gate import AdmissionSettings, Gate
from skm_runtime.server import RuntimeSettings, open_channel
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack

# What a public call to svc_conversation needs, and svc_gateway, to show it is off the path.
SERVICES = ("policy", "profiles", "conversation", "gateway")
_PATHS = {
    "direct": "direct: svc_conversation, mesh principal",
    "token": "token: svc_conversation, bearer token",
    "envoy": "envoy: Envoy, bearer token (a client)",
}
_IDLE_SECONDS = 1.0
_GET_SESSION = "/skm.conversation.v1.ConversationService/GetSession"


@contextmanager
def path_stack(prefix: str) -> Iterator[RunningStack]:
    """PostgreSQL, Redis, OpenFGA, the `SERVICES` (rate limits out of the way) and Envoy
    routing each public method to its owner; stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix=prefix) as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(
            state_dir=Path(state), components=("postgres", "redis", "openfga"), ports=EPHEMERAL_PORTS, durable=False
        ).start()
        try:
            stack.start_services(bench_services({}, SERVICES))
            stack.start_envoy()
            yield stack
        finally:
            stack.stop()


def path_processes(stack: RunningStack) -> dict[str, int]:
    """The processes a public call may touch, by name (PostgreSQL: the root of its tree)."""
    if stack.envoy is None or stack.redis is None or stack.postgres is None:
        raise RuntimeError("the stack runs no Envoy, Redis or PostgreSQL")
    return {
        "conversation": stack.services["conversation"].process.pid,
        "envoy": stack.envoy.process.pid,
        "gateway": stack.services["gateway"].process.pid,
        "policy": stack.services["policy"].process.pid,
        "redis": stack.redis.process.pid,
        "postgres": stack.postgres.process.pid,
    }


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def _measure(stack: RunningStack, rounds: int, calls: int) -> None:
    if stack.envoy is None:
        raise RuntimeError("the stack runs no Envoy")
    user = await _new_user(stack)
    processes = path_processes(stack)
    meter = CpuMeter(processes)
    conversation = stack.services["conversation"].addr
    targets = {
        "direct": (conversation, user.forwarded),
        "token": (conversation, user.bearer),
        "envoy": (stack.envoy_url.removeprefix("http://"), user.bearer),
    }
    # One channel (one connection) per path, so no path waits behind another's.
    channels = {
        name: grpc.aio.insecure_channel(addr, options=(("grpc.use_local_subchannel_pool", 1),))
        for name, (addr, _) in targets.items()
    }
    latencies: dict[str, list[list[float]]] = {name: [] for name in targets}
    runs: dict[str, list[CpuRun]] = {name: [] for name in targets}
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
            print(f"public path round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            await meter.sample_idle(_IDLE_SECONDS)
            order = list(paths.items())
            # Each round starts with another path: no path always follows the idle sample.
            for name, one in order[index % len(order) :] + order[: index % len(order)]:
                samples = []
                before, started = meter.read(), time.perf_counter()
                for _ in range(calls):
                    start = time.perf_counter()
                    await one()
                    samples.append(time.perf_counter() - start)
                runs[name].append(meter.since(before, started, calls))
                latencies[name].append(samples)
        alone = await _admission_alone(stack, user, request, calls)
    finally:
        for channel in channels.values():
            await channel.close()

    cpu = {name: [meter.per_call(run) for run in path_runs] for name, path_runs in runs.items()}

    def p(name: str, q: float) -> float:
        return statistics.median(_ms(run, q) for run in latencies[name])

    def us(name: str, process: str) -> float:
        return statistics.median(run[process] for run in cpu[name]) * 1e6

    print(
        f"\nunary ConversationService.GetSession, one call in flight: median of {rounds} alternating rounds, "
        f"{calls} calls a path each\n"
    )
    print(f"  {'':<42}{'p50':>9}{'p99':>11}   CPU us a call:" + "".join(f"{proc:>13}" for proc in processes))
    for name, label in _PATHS.items():
        print(
            f"  {label:<42}{p(name, 0.5):6.3f} ms{p(name, 0.99):8.3f} ms   {'':<14}"
            + "".join(f"{us(name, proc):13.1f}" for proc in processes)
        )

    def over(a: str, b: str) -> str:
        return f"p50 {p(a, 0.5) - p(b, 0.5):+.3f} ms   p99 {p(a, 0.99) - p(b, 0.99):+.3f} ms"

    admission = us("token", "conversation") - us("direct", "conversation")
    lines: Sequence[tuple[str, str, str]] = (
        (
            "the public path's overhead (envoy - direct)",
            over("envoy", "direct"),
            "(goal p50 <= +0.5 ms, p99 <= +1.5 ms)",
        ),
        ("  of which admission in the service (token - direct)", over("token", "direct"), ""),
        ("  of which Envoy's hop (envoy - token)", over("envoy", "token"), ""),
        (
            "admission's Python CPU a call (svc_conversation: token - direct)",
            f"{admission:6.1f} us",
            "(goal <= 60 us)",
        ),
        (
            "  and on the envoy path (svc_conversation: envoy - direct)",
            f"{us('envoy', 'conversation') - us('direct', 'conversation'):6.1f} us",
            "",
        ),
        (
            "  admission alone, in this process (token .. policy; see below)",
            f"{alone * 1e6:6.1f} us",
            "(goal <= 60 us)",
        ),
        ("Envoy's CPU a call (envoy path)", f"{us('envoy', 'envoy'):6.1f} us", ""),
        (
            "svc_gateway's CPU a call (envoy path; not on it, so ~0)",
            f"{us('envoy', 'gateway'):6.1f} us",
            "",
        ),
        (
            "svc_policy, Redis a call (token path: decisions, leases, refreshes)",
            f"{us('token', 'policy'):6.1f} us, {us('token', 'redis'):.1f} us",
            "",
        ),
    )
    print()
    for label, value, goal in lines:
        print(f"  {label:<70}{value}   {goal}".rstrip())
    print(
        "\n  admission alone: the gate's steps for the same call (the token, the constitution hash, the rate"
        "\n    limits, policy on the session) run in this process against the stack's own Redis and svc_policy,"
        "\n    every cache as a service has it; CPU of this process per call (time.process_time), less nothing:"
        "\n    the steadier figure, free of the services' call-to-call noise that the difference above carries."
        "\n  CPU: the run time (user + system) of each process's threads over a path's calls (/proc schedstat,"
        "\n    in ns), less the process's idle rate times their duration, per call; the client (this process)"
        f"\n    not counted. Idle CPU subtracted (us per second of wall time, over {rounds} x {_IDLE_SECONDS:.0f} s):"
        "\n    " + ", ".join(f"{proc} {rate * 1e6:.0f}" for proc, rate in meter.idle_rates().items())
    )


async def _admission_alone(stack: RunningStack, user: _User, request: pb.GetSessionRequest, calls: int) -> float:
    """CPU seconds of this process per admission of `request` with the user's token, through a
    gate like the services' (SKM_ADMISSION_* as the bench gives them) on the stack's servers."""
    env = stack.service_env()
    settings = AdmissionSettings(
        jwks_file=env["SKM_ADMISSION_JWKS_FILE"],
        policy_addr=stack.services["policy"].addr,
        redis_url=stack.redis_url,
        tenant_rate_per_second=float(UNLIMITED_RATES["SKM_ADMISSION_TENANT_RATE_PER_SECOND"]),
        tenant_burst=float(UNLIMITED_RATES["SKM_ADMISSION_TENANT_BURST"]),
        user_rate_per_second=float(UNLIMITED_RATES["SKM_ADMISSION_USER_RATE_PER_SECOND"]),
        user_burst=float(UNLIMITED_RATES["SKM_ADMISSION_USER_BURST"]),
    )
    channel = open_channel(settings.policy_addr, RuntimeSettings())
    gate = await Gate.open(settings, channel)
    try:
        rule = gate.rule(_GET_SESSION)
        if rule is None:
            raise RuntimeError(f"{_GET_SESSION} is no public method")

        async def admit() -> None:
            principal = await gate.admit_caller(user.bearer, rule)
            await gate.authorize(principal, rule, request)

        for _ in range(200):  # every cache filled, a lease taken
            await admit()
        started = time.process_time()
        for _ in range(calls):
            await admit()
        return (time.process_time() - started) / calls
    finally:
        await gate.close()
        await channel.close()


def main(rounds: int = 5, calls: int = 2000) -> None:
    """Starts the path's servers and services, measures, prints, stops them."""
    print("\n== the public path: a unary call through Envoy against the service direct ==", flush=True)
    with path_stack("skm-bench-gateway-") as stack:
        asyncio.run(_measure(stack, rounds, calls))
