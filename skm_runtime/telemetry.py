"""OpenTelemetry traces and metrics for a service process.

Traces: W3C trace context travels in gRPC metadata (`traceparent`, `tracestate`); the server
interceptor continues the caller's trace and the client interceptor passes it on, so one
trace spans every service hop. Exporters: `otlp` (to SKM_OTEL_ENDPOINT, e.g. an OpenTelemetry
Collector or Tempo), `console` (debugging), or `none`.

Metrics: `rpc.server.duration` (ms, by method and status code);
served on a Prometheus endpoint when SKM_METRICS_ADDR is set, and exported over OTLP when
the exporter is `otlp`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from skm_runtime.settings import parse_address


class Exporter(enum.Enum):
    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """The providers a process installed; shut down on exit to flush what is buffered."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    # False when no exporter or processor receives spans: servers then make none.
    records_spans: bool
    # False when no reader collects metrics (no Prometheus endpoint, no OTLP): servers then
    # record none.
    records_metrics: bool = True

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configure_telemetry(
    service: str,
    *,
    exporter: Exporter,
    otlp_endpoint: str,
    metrics_addr: str,
    extra_span_processors: tuple[SpanProcessor, ...] = (),
) -> Telemetry:
    """Build tracer and meter providers for one service (see `install_globally`)."""
    resource = Resource.create({"service.name": f"skm.{service}", "service.namespace": "skm"})
    # Spans are made only where something receives them; otherwise servers just carry
    # the caller's trace context on to the next hop.
    records = exporter is not Exporter.NONE or bool(extra_span_processors)
    tracer_provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
    readers: list[MetricReader] = []
    if exporter is Exporter.OTLP:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True)))
    elif exporter is Exporter.CONSOLE:
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    for processor in extra_span_processors:
        tracer_provider.add_span_processor(processor)
    if metrics_addr:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = parse_address(metrics_addr)
        start_http_server(port, addr=host)
        readers.append(PrometheusMetricReader())
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider, meter_provider, records, records_metrics=bool(readers))


def install_globally(telemetry: Telemetry) -> None:
    """Make these providers the process-wide ones (once per process; OpenTelemetry's rule)."""
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
