"""Helpers for tests that run SKM servers in the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from skm_runtime.gate import AdmissionSettings, Gate
from skm_runtime.server import RunningServer, RuntimeSettings, ServiceSpec, start_server
from skm_runtime.telemetry import Exporter, configure_telemetry


@dataclass
class Served:
    running: RunningServer
    spans: InMemorySpanExporter

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@asynccontextmanager
async def serving(
    spec: ServiceSpec,
    runtime: RuntimeSettings | None = None,
    *,
    record_spans: bool = True,
    admission: AdmissionSettings | None = None,
    gate: Gate | None = None,
) -> AsyncIterator[Served]:
    """Start `spec` on a free loopback port (spans captured in memory); stop it afterwards.

    With `admission`, the service admits the public calls it owns itself, as under
    `python -m`; with a `gate` (over in-memory ports, say), through that gate (the caller
    closes it); without either, it answers calls from inside the mesh only."""
    spans = InMemorySpanExporter()
    telemetry = configure_telemetry(
        spec.name,
        exporter=Exporter.NONE,
        otlp_endpoint="",
        metrics_addr="",
        extra_span_processors=(SimpleSpanProcessor(spans),) if record_spans else (),
    )
    try:
        running = await start_server(
            spec, "127.0.0.1:0", runtime or RuntimeSettings(), telemetry, admission=admission, gate=gate
        )
    except BaseException:
        if spec.stop is not None:
            await spec.stop()
        telemetry.shutdown()
        raise
    try:
        yield Served(running, spans)
    finally:
        await running.drain(0)
        telemetry.shutdown()
