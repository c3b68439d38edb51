"""Client-side measurements shared by the benches: unary echo and a bidi PCM-frame stream."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import grpc

from tests.support.echo_service import SERVICE

FRAME = b"\x00\x01" * 320  # 640 bytes: 20 ms of 16 kHz 16-bit mono PCM


@dataclass(frozen=True)
class Figures:
    """One measured run: calls (or frames) per second and latency percentiles in ms."""

    per_second: float
    p50_ms: float
    p99_ms: float


def _ms(samples: list[float], q: float) -> float:
    """The q-quantile of samples in seconds, in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def unary(target: str, calls: int, concurrency: int) -> Figures:
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

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Figures(len(latencies) / elapsed, _ms(latencies, 0.5), _ms(latencies, 0.99))


async def bidi(target: str, frames: int) -> Figures:
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
        await call.done_writing()
        await call.read()
    return Figures(frames / elapsed, _ms(latencies, 0.5), _ms(latencies, 0.99))


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(r.per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
    )
