"""Client-side measurements shared by the benches: unary echo, a bidi PCM-frame stream, the
CPU of the processes on a path, and the services a bench starts."""

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


def _children() -> dict[int, list[int]]:
    """Every process's children, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while listed
        children.setdefault(parent, []).append(int(entry))
    return children


def process_tree(pid: int, children: Mapping[int, list[int]] | None = None) -> tuple[int, ...]:
    """`pid` and every process below it (PostgreSQL: the postmaster, or the `runuser` in front
    of it when run as root, and its backends)."""
    children = _children() if children is None else children
    tree, pending = [pid], [pid]
    while pending:
        for child in children.get(pending.pop(), ()):
            tree.append(child)
            pending.append(child)
    return tuple(tree)


_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _thread_seconds(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds each thread of `pid` has run (user + system), by (pid, thread id): from
    /proc/<pid>/task/<tid>/schedstat, in nanoseconds; where the kernel keeps no schedstat,
    the process's own total in ticks of /proc/<pid>/stat (10 ms)."""
    if not _SCHEDSTAT:
        return {(pid, 0): cpu_seconds((pid,))}
    threads: dict[tuple[int, int], float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                threads[(pid, int(tid))] = int(stat.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while listed
    return threads


CpuReading = dict[str, dict[tuple[int, int], float]]


@dataclass(frozen=True)
class CpuRun:
    """What each process spent (CPU seconds, by name) over `count` calls or frames that took
    `elapsed` seconds of wall time."""

    used: Mapping[str, float]
    elapsed: float
    count: int


class CpuMeter:
    """CPU seconds of named processes, each with every process below it (see
    `process_tree`), read together thread by thread, and what they spend idle: a path's CPU
    per call is what it spent over the calls less its idle rate times their duration (outbox
    relays retrying Kafka, leases, caches refreshed in the background run whether or not
    calls come).

    Threads and processes are listed at each reading: one that starts between two readings
    counts whole, one that ends loses what it ran since the first (a process's threads, the
    backends of a connection pool, live as long as the process). The idle rate is pooled
    over every window sampled (`sample_idle`) before it is subtracted (`per_call`)."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self._roots = dict(roots)
        self._idle = dict.fromkeys(roots, 0.0)
        self._idle_seconds = 0.0

    def read(self) -> CpuReading:
        """Each name's threads and the CPU seconds each has run so far."""
        children = _children()
        reading: CpuReading = {}
        for name, root in self._roots.items():
            threads: dict[tuple[int, int], float] = {}
            for pid in process_tree(root, children):
                try:
                    threads.update(_thread_seconds(pid))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # ended since listed
            reading[name] = threads
        return reading

    @staticmethod
    def _spent(before: CpuReading, after: CpuReading) -> dict[str, float]:
        return {
            name: sum(seconds - before[name].get(thread, 0.0) for thread, seconds in threads.items())
            for name, threads in after.items()
        }

    def since(self, before: CpuReading, started: float, count: int) -> CpuRun:
        """What each spent since `before` was read at `started` (perf_counter), over `count`."""
        elapsed = time.perf_counter() - started
        return CpuRun(self._spent(before, self.read()), elapsed, count)

    async def sample_idle(self, seconds: float) -> None:
        """Adds `seconds` of nothing asked of the processes to the idle windows."""
        before, start = self.read(), time.perf_counter()
        await asyncio.sleep(seconds)
        self._idle_seconds += time.perf_counter() - start
        for name, spent in self._spent(before, self.read()).items():
            self._idle[name] += spent

    def idle_rates(self) -> dict[str, float]:
        """CPU seconds per second each spent idle, over every window sampled."""
        return {name: used / self._idle_seconds if self._idle_seconds else 0.0 for name, used in self._idle.items()}

    def per_call(self, run: CpuRun) -> dict[str, float]:
        """CPU seconds per call (or frame) of each process in `run`, less its idle rate."""
        rates = self.idle_rates()
        return {name: (used - rates[name] * run.elapsed) / run.count for name, used in run.used.items()}


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


# The admission's rate limits at their highest (SKM_ADMISSION_*, read by every service that
# owns public methods), out of a bench's way: each admitted call still takes its tokens from
# the tenant's and the user's buckets (leased from Redis a few at a time).
UNLIMITED_RATES = {
    f"SKM_ADMISSION_{name}": "1000000"
    for name in ("TENANT_RATE_PER_SECOND", "TENANT_BURST", "USER_RATE_PER_SECOND", "USER_BURST")
}


def bench_services(
    extra_env: Mapping[str, Mapping[str, str]],
    only: Collection[str] | None = None,
    *,
    every: Mapping[str, str] = UNLIMITED_RATES,
) -> list[Any]:
    """The stack's services on free ports, health-checked on every service they own, quiet
    (warnings only), with `every` (by default the rate limits out of the way) and then
    `extra_env[name]` added; all of them, or those named in `only`."""
    return [
        replace(
            spec,
            port=0,
            health_services=("", *services_of(spec.name)),
            extra_env={"SKM_LOG_LEVEL": "WARNING", **every, **extra_env.get(spec.name, {})},
        )
        for spec in default_services(env={})
        if only is None or spec.name in only
    ]
