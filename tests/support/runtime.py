"""Helpers for tests that run SKM servers in the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
    spec: ServiceSpec, runtime: RuntimeSettings | None = None, *, record_spans: bool = True
) -> AsyncIterator[Served]:
    """Start `spec` on a free loopback port (spans captured in memory); stop it afterwards."""
    spans = InMemorySpanExporter()
    telemetry = configure_telemetry(
        spec.name,
        exporter=Exporter.NONE,
        otlp_endpoint="",
        metrics_addr="",
        extra_span_processors=(SimpleSpanProcessor(spans),) if record_spans else (),
    )
    try:
        running = await start_server(spec, "127.0.0.1:0", runtime or RuntimeSettings(), telemetry)
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
