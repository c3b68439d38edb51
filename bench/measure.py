"""Client-side measurements shared by the benches: unary echo and a bidi PCM-frame stream."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

import grpc

from skm_runtime.contract import services_of
from skm_stack import default_services
from tests.support.echo_service import SERVICE

FRAME = b"\x00\x01" * 320  # 640 bytes: 20 ms of 16 kHz 16-bit mono PCM


@dataclass(frozen=True)
class Figures:
    """One measured run: calls (or frames) per second, latency percentiles in ms, and the
    CPU time the serving processes spent per call (or frame), in microseconds."""

    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us: float


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU seconds used so far by these processes (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _ms(samples: list[float], q: float) -> float:
    """The q-quantile of samples in seconds, in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def unary(target: str, pids: tuple[int, ...], calls: int, concurrency: int) -> Figures:
    """`calls` unary echoes of 100 bytes from `concurrency` workers on one channel."""
    async with grpc.aio.insecure_channel(target) as chan:
        echo = chan.unary_unary(f"/{SERVICE}/Unary")
        payload = b"p" * 100
        for _ in range(50):  # warm the connection and the server's caches
            await echo(payload, timeout=10)
        latencies: list[float] = []
        per_worker = calls // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                start = time.perf_counter()
                await echo(payload, timeout=10)
                latencies.append(time.perf_counter() - start)

        cpu = cpu_seconds(pids)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pids) - cpu
    count = len(latencies)
    return Figures(count / elapsed, _ms(latencies, 0.5), _ms(latencies, 0.99), cpu / count * 1e6)


async def bidi(target: str, pids: tuple[int, ...], frames: int) -> Figures:
    """One bidi stream of 640-byte frames.

    Throughput: frames written back to back while a reader takes the echoes (a live audio
    stream's shape). Latency: each frame written and its echo read before the next.
    """
    async with grpc.aio.insecure_channel(target) as chan:
        call = chan.stream_stream(f"/{SERVICE}/Bidi")(timeout=120)
        for _ in range(50):
            await call.write(FRAME)
            await call.read()
        latencies: list[float] = []
        cpu = cpu_seconds(pids)
        for _ in range(frames):
            sent = time.perf_counter()
            await call.write(FRAME)
            await call.read()
            latencies.append(time.perf_counter() - sent)

        async def write_all() -> None:
            for _ in range(frames):
                await call.write(FRAME)

        start = time.perf_counter()
        writer = asyncio.create_task(write_all())
        for _ in range(frames):
            await call.read()
        elapsed = time.perf_counter() - start
        await writer
        cpu = cpu_seconds(pids) - cpu
        await call.done_writing()
        await call.read()
    return Figures(frames / elapsed, _ms(latencies, 0.5), _ms(latencies, 0.99), cpu / (2 * frames) * 1e6)


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(r.per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.cpu_us for r in runs),
    )


def bench_services(extra_env: Mapping[str, Mapping[str, str]], only: Collection[str] | None = None) -> list[Any]:
    """The stack's services on free ports, health-checked on every service they own, quiet
    (warnings only), with `extra_env[name]` added; all of them, or those named in `only`."""
    return [
        replace(
            spec,
            port=0,
            health_services=("", *services_of(spec.name)),
            extra_env={"SKM_LOG_LEVEL": "WARNING", **extra_env.get(spec.name, {})},
        )
        for spec in default_services(env={})
        if only is None or spec.name in only
    ]
