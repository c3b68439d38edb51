"""`make bench`: the runtime and Envoy measured side by side against bare baselines, one run.

Three paths to the same echo handlers, measured in alternating rounds so machine noise falls
on all of them alike:
  bare      the echo handlers on a bare grpc.aio server
  runtime   the same handlers on the SKM runtime (interceptors, health, reflection on)
  envoy     the runtime server behind Envoy (the public path's proxy hop)
Reported: unary echo (100 B, 16 concurrent callers) and a bidi stream of 640-byte frames
(20 ms of 16 kHz PCM; throughput with frames sent back to back, latency ping-pong) as
throughput, p50/p99 latency and the CPU the serving side spent per call or frame (server,
plus Envoy on the envoy path; client, server and Envoy share this machine's cores), and
the ratios runtime/bare and envoy/runtime. The numbers are machine-dependent; the ratios
are the point.

Then the policy checks (bench/policy.py): svc_policy with a cache hit and a miss against
OpenFGA called directly, on a real stack started for the run.

Then conversations (bench/conversation.py), on a whole mesh started for the run: time to
first token and tokens/s through Envoy + svc_conversation (Envoy routes each public method to
its owner, which admits it) against the engine called directly, and the memory of idle
sessions. `--llm real` measures the first with each of the catalogue's REAL models instead of
the tiny untrained one (`--models` picks).

Then the public path (bench/gateway.py), on the few servers its path needs: a unary call
(GetSession) through Envoy with a token, to svc_conversation's own port with a token
(admission in the service, no Envoy) and with a principal signed with the mesh key (no
admission): p50/p99, the CPU each process spends per call, the admission's Python CPU and
Envoy's.

Then frames (bench/frames.py), on the same few servers: the CPU each process spends per
640-byte frame written on a Converse bidi stream through Envoy against straight to
svc_conversation, and frames/s.

Then tools (bench/tools.py): the code_execution sandbox against a bare subprocess running the
same code, executions per second, and memory recall latency and recall@1 at 10k memories.

Then analytics (bench/analytics.py), on Kafka and one svc_analytics process: events/s from
Kafka into ClickHouse (a pre-produced backlog drained), the lag from produce to queryable at
5,000 and 20,000 offered events/s, the service's CPU per event; then QueryMetrics p50/p99 on
10 million generated model-call rows (`--events`, `--rows` for smaller runs).

Then profile resolution (bench/profiles.py), on PostgreSQL and one svc_profiles process:
ResolveModelProfile over gRPC (uncached), svc_profiles' resolution in process over the same
database, and svc_conversation's cached lookup, p50/p99.

Then the scoring job (bench/scoring.py), on PostgreSQL and the engine's tiny UNTRAINED models:
5 models x 40 capsule items asked and judged (the expensive part), then the scoring step over
what is stored, for 1 tenant and for 100 (`--items`, `--tenants` for smaller runs).

Then voice (bench/audio.py), on PostgreSQL, Redis, Kafka and svc_audio processes: real-time
20 ms streams one process holds with VAD and features on (its frame-lag p99), the engines inside
svc_audio against the engines called directly (real-time factors), the svc_audio share of a
voice turn, and barge-in detection (`--streams`, `--stream-seconds`, `--stream-clients`).

Then diarization (bench/diarization.py): svc_audio's online speaker labelling on twelve
utterances by two TTS voices (piper and espeak-ng), the share labelled right.

Then the browser UI (bench/web.py), in Debian's Chromium on a whole mesh: first load cold and
cached, and Enter to the first token on screen against the same turn's first token as
`skm chat --json` receives it.

Usage: python -m bench [runtime|policy|conversation|gateway|frames|tools|analytics|profiles|scoring|
                        diarization|audio|web|all]
                       [--rounds N] [--calls N] [--frames N] [--turns N] [--sessions N]
                       [--llm untrained|real] [--models a,b]
                       [--events N] [--rows N] [--lag-seconds S] [--items N] [--tenants N]
                       [--streams N,N] [--stream-seconds S] [--stream-clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.measure import Figures, bidi, median_figures, unary
from skm_stack.envoy import start_envoy
from skm_stack.install import envoy_binary
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def _process(argv: list[str], env: dict[str, str]) -> Iterator[int]:
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def _ready(target: str) -> None:
    deadline = time.monotonic() + 20
    async with grpc.aio.insecure_channel(target) as chan:
        while True:
            try:
                await chan.unary_unary("/skm.testing.v1.EchoService/Unary")(b"", timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


def _row(name: str, figures: Figures, unit: str) -> str:
    rate = f"{figures.per_second:>10.0f} {unit:<9}"
    latency = f"p50 {figures.p50_ms:7.3f} ms   p99 {figures.p99_ms:7.3f} ms"
    return f"  {name:<10} {rate} {latency}   serving CPU {figures.cpu_us:6.1f} us each"


def _ratio(label: str, ours: Figures, base: Figures, goal: str) -> str:
    return (
        f"  {label:<18} throughput {ours.per_second / base.per_second:5.2f}x   "
        f"p50 {ours.p50_ms - base.p50_ms:+.3f} ms   p99 {ours.p99_ms - base.p99_ms:+.3f} ms   "
        f"CPU {ours.cpu_us - base.cpu_us:+6.1f} us   ({goal})"
    )


async def _measure(targets: dict[str, tuple[str, tuple[int, ...]]], rounds: int, calls: int, frames: int) -> None:
    for target, _pids in targets.values():
        await _ready(target)
    unary_runs: dict[str, list[Figures]] = {name: [] for name in targets}
    bidi_runs: dict[str, list[Figures]] = {name: [] for name in targets}
    for index in range(rounds):
        print(f"round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
        for name, (target, pids) in targets.items():
            unary_runs[name].append(await unary(target, pids, calls, concurrency=16))
            bidi_runs[name].append(await bidi(target, pids, frames))
    u = {name: median_figures(runs) for name, runs in unary_runs.items()}
    b = {name: median_figures(runs) for name, runs in bidi_runs.items()}
    print(f"\nmedian of {rounds} alternating rounds; {calls} unary calls, {frames} bidi frames per round\n")
    print("unary echo, 100 B, 16 concurrent callers")
    for name in targets:
        print(_row(name, u[name], "calls/s"))
    print("bidi stream, 640 B frames (20 ms of 16 kHz PCM); rate streamed, latency ping-pong")
    for name in targets:
        print(_row(name, b[name], "frames/s"))
    print("\nratios")
    print(_ratio("unary runtime/bare", u["runtime"], u["bare"], "goal >= 0.8x"))
    print(_ratio("bidi runtime/bare", b["runtime"], b["bare"], "goal >= 0.8x"))
    print(_ratio("unary envoy/direct", u["envoy"], u["runtime"], "goal >= 0.7x, p50 <= +0.5 ms"))
    print(_ratio("bidi envoy/direct", b["envoy"], b["runtime"], "goal >= 0.7x, p50 <= +0.5 ms"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        nargs="?",
        choices=(
            "runtime",
            "policy",
            "conversation",
            "gateway",
            "frames",
            "tools",
            "analytics",
            "profiles",
            "scoring",
            "diarization",
            "audio",
            "web",
            "all",
        ),
        default="all",
        help="default: all",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--calls", type=int, default=4000, help="unary calls per round (default 4000; gateway: at most 2000)"
    )
    parser.add_argument(
        "--frames", type=int, default=2000, help="bidi frames per round (default 2000; runtime and frames)"
    )
    parser.add_argument("--turns", type=int, default=3, help="conversation: turns per path per round (default 3)")
    parser.add_argument(
        "--sessions", type=int, default=1000, help="conversation: idle sessions held by one process (default 1000)"
    )
    parser.add_argument(
        "--llm",
        choices=("untrained", "real"),
        default="untrained",
        help="conversation: the engine's models (default untrained: the tiny fixtures; real: the catalogue's, "
        "streaming only, once per model)",
    )
    parser.add_argument(
        "--models", default="", help="conversation --llm real: comma-separated aliases (default: every real model)"
    )
    parser.add_argument(
        "--events", type=int, default=300_000, help="analytics: backlog events drained (default 300000)"
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="analytics: generated model-call rows queried (default 10000000)"
    )
    parser.add_argument(
        "--lag-seconds", type=float, default=20.0, help="analytics: seconds at each offered rate (default 20)"
    )
    parser.add_argument(
        "--streams", default="50,100,250", help="audio: concurrent streams per step (default 50,100,250)"
    )
    parser.add_argument(
        "--stream-seconds", type=float, default=20.0, help="audio: seconds measured per step, after a ramp (default 20)"
    )
    parser.add_argument(
        "--stream-clients", type=int, default=1, help="audio: client processes sending the streams (default 1)"
    )
    parser.add_argument("--items", type=int, default=40, help="scoring: capsule items per model (default 40)")
    parser.add_argument(
        "--tenants", type=int, default=100, help="scoring: tenants in the larger scoring run (default 100)"
    )
    args = parser.parse_args()
    if args.what in ("runtime", "all"):
        _runtime(args)
    if args.what in ("policy", "all"):
        from bench import policy

        policy.main(rounds=args.rounds)
    if args.what in ("conversation", "all"):
        from bench import conversation

        conversation.main(
            rounds=args.rounds,
            turns=args.turns,
            sessions=args.sessions,
            llm=args.llm,
            models=[m for m in args.models.split(",") if m],
        )
    if args.what in ("gateway", "all"):
        from bench import gateway

        gateway.main(rounds=args.rounds, calls=min(args.calls, 2000))
    if args.what in ("frames", "all"):
        from bench import frames

        frames.main(rounds=args.rounds, frames=args.frames)
    if args.what in ("tools", "all"):
        from bench import tools

        tools.main(rounds=min(args.rounds, 3))
    if args.what in ("analytics", "all"):
        from bench import analytics

        analytics.main(events=args.events, rows=args.rows, lag_seconds=args.lag_seconds)
    if args.what in ("profiles", "all"):
        from bench import profiles

        profiles.main(rounds=args.rounds)
    if args.what in ("scoring", "all"):
        from bench import scoring

        scoring.main(items=args.items, tenants=args.tenants)
    if args.what in ("audio", "all"):
        from bench import audio

        audio.main(
            counts=[int(n) for n in args.streams.split(",") if n],
            seconds=args.stream_seconds,
            clients=args.stream_clients,
        )
    if args.what in ("diarization", "all"):
        from bench import diarization

        diarization.main()
    if args.what in ("web", "all"):
        from bench import web

        web.main(rounds=args.rounds, llm=args.llm)
    return 0


def _runtime(args: argparse.Namespace) -> None:
    print("== the service runtime and Envoy ==")
    bare, runtime = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    runtime_port = int(runtime.rpartition(":")[2])
    with (
        tempfile.TemporaryDirectory(prefix="skm-bench-") as state,
        _process([sys.executable, "-m", "bench.bare_echo", bare], {}) as bare_pid,
        _process(
            [sys.executable, "-m", "tests.support.echo_service"],
            {"SKM_ECHO_ADDR": runtime, "SKM_LOG_LEVEL": "WARNING"},
        ) as runtime_pid,
    ):
        # The echo service answers no contract path: every route goes to its one port.
        envoy = start_envoy(
            envoy_binary(), Path(state), free_port(), free_port(), {"gateway": runtime_port}, concurrency=1
        )
        try:
            targets = {
                "bare": (bare, (bare_pid,)),
                "runtime": (runtime, (runtime_pid,)),
                "envoy": (f"127.0.0.1:{envoy.port}", (runtime_pid, envoy.process.pid)),
            }
            asyncio.run(_measure(targets, args.rounds, args.calls, args.frames))
        finally:
            envoy.stop()


if __name__ == "__main__":
    raise SystemExit(main())
