"""How every SKM service starts, serves and stops.

`run(spec, settings_cls)` is a service's whole `__main__`: settings from SKM_* variables
(exit 2 with every bad value named), the mesh key that signs and checks principals
(SKM_MESH_KEY_FILE; required unless the process never touches a principal), JSON logs,
OpenTelemetry, a grpc.aio server with the runtime interceptor, the admission of the public
calls the service owns (skm_runtime.gate, SKM_ADMISSION_*), explicit message-size and
keepalive limits, gRPC health per service name, server reflection, and a graceful stop on
SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, calls in flight (open
streams included) get up to SKM_GRPC_DRAIN_SECONDS to finish, then the process exits 0.

`start_server(...)` is the same server without the process concerns, for tests and benches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from skm_runtime.contract import methods
from skm_runtime.gate import AdmissionSettings, Gate
from skm_runtime.interceptors import ServerInterceptor, mesh_caller_interceptors, outbound_interceptors
from skm_runtime.logs import configure_logging
from skm_runtime.principal import (
    MESH_KEY_FILE_VAR,
    MeshKeyInvalid,
    MeshKeyMissing,
    has_mesh_key,
    read_mesh_keys,
    use_caller_name,
    use_mesh_keys,
)
from skm_runtime.settings import SettingsError, bounded, field_env_name, load_settings
from skm_runtime.telemetry import Exporter, Telemetry, configure_telemetry, install_globally

log = logging.getLogger("skm.runtime")

# The service whose server a gate asks as itself (svc_policy admits its own public calls).
_POLICY_SERVICE = "skm.policy.v1.PolicyService"

# How long a service's adapters (pools, producers) get to close after the server stopped.
_STOP_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Process-wide settings, from SKM_GRPC_*, SKM_LOG_*, SKM_OTEL_* and SKM_MESH_* variables."""

    grpc_max_receive_bytes: int = bounded(4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024)
    grpc_max_send_bytes: int = bounded(4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024)
    # Time calls in flight get to finish after SIGTERM before they are cancelled.
    grpc_drain_seconds: float = bounded(10.0, low=0.0, high=600.0)
    # Server pings an idle connection this often, and drops it when no ack comes in time.
    grpc_keepalive_seconds: float = bounded(60.0, low=1.0, high=7200.0)
    grpc_keepalive_timeout_seconds: float = bounded(20.0, low=1.0, high=600.0)
    # Deadlines outbound calls get when they set none (cut to the inbound call's deadline).
    grpc_call_timeout_seconds: float = bounded(10.0, low=0.01, high=3600.0)
    grpc_stream_timeout_seconds: float = bounded(3600.0, low=0.01, high=86400.0)
    log_level: str = "INFO"
    log_personal_data: bool = False
    otel_exporter: Exporter = Exporter.NONE
    otel_endpoint: str = "127.0.0.1:4317"
    # The mesh key file (skm_runtime.principal): hex text, one key of 32+ bytes a line, the
    # first signs. Required by every process that signs or reads principals.
    mesh_key_file: Path | None = None


class Listens(Protocol):
    @property
    def addr(self) -> str: ...

    @property
    def metrics_addr(self) -> str: ...


SettingsT = TypeVar("SettingsT", bound=Listens)


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the runtime sees it.

    `service_names` are the full gRPC names it serves (health and reflection list them);
    `register` adds its servicers to a server; `start`/`stop` open and close its adapters
    (pools, producers) around serving. `reflect_extra` adds names to reflection only
    (the gateway describes every service of the mesh); `health` replaces the standard health
    servicer (a subclass, so that the gateway can answer for every service);
    `max_receive_bytes` replaces the runtime's receive limit for this server alone.
    """

    name: str
    service_names: tuple[str, ...]
    register: Callable[[grpc.aio.Server], None]
    start: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None
    reflect_extra: tuple[str, ...] = field(default=())
    health: HealthServicer | None = None
    # The server's receive limit when it is not SKM_GRPC_MAX_RECEIVE_BYTES (a server that
    # admits public calls takes the higher of this and SKM_ADMISSION_MAX_RECEIVE_BYTES).
    max_receive_bytes: int | None = None
    # Whether only calls from inside the mesh (a signed principal or caller) and public
    # calls admitted by token are served, as in every service but the gateway (which serves
    # only health, reflection and refusals) and the runtime's test services.
    mesh_only: bool = True


def channel_options(runtime: RuntimeSettings) -> list[tuple[str, int]]:
    """Message-size limits and keepalive, the same on both ends of every connection."""
    return [
        ("grpc.max_receive_message_length", runtime.grpc_max_receive_bytes),
        ("grpc.max_send_message_length", runtime.grpc_max_send_bytes),
        ("grpc.keepalive_time_ms", int(runtime.grpc_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(runtime.grpc_keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(runtime: RuntimeSettings) -> list[tuple[str, int]]:
    return [
        *channel_options(runtime),
        # Clients may ping every 10 s; more often is abuse and gets the connection closed.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Two processes must never share a port silently.
        ("grpc.so_reuseport", 0),
    ]


def open_channel(target: str, runtime: RuntimeSettings) -> grpc.aio.Channel:
    """A channel to another service: deadlines on every call, trace context passed on."""
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(runtime),
        interceptors=outbound_interceptors(
            call_timeout=runtime.grpc_call_timeout_seconds,
            stream_timeout=runtime.grpc_stream_timeout_seconds,
        ),
    )


def signed_channel(target: str, *, options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """A channel whose every call is signed as this process's (a caller of the mesh, see
    skm_runtime.principal), and nothing more: for the mesh operator's tools (`skm relationships --mesh`),
    benches and tests that call a service directly. The process must hold the mesh key."""
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=mesh_caller_interceptors())


@dataclass
class RunningServer:
    """A started server: its bound port, and how to drain it."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    spec: ServiceSpec
    # The admission of its public calls and the channel it asks svc_policy on, where the
    # server opened them itself (closed when it drains).
    gate: Gate | None = None
    gate_channel: grpc.aio.Channel | None = None

    async def drain(self, grace: float) -> None:
        """Refuse new calls, let calls in flight finish within `grace`, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.gate is not None:
            await self.gate.close()
        if self.gate_channel is not None:
            await self.gate_channel.close()
        if self.spec.stop is not None:
            try:
                # Bounded, so that SIGTERM always ends the process.
                await asyncio.wait_for(self.spec.stop(), _STOP_SECONDS)
            except TimeoutError:
                log.error("the service's adapters did not close in time", extra={"fields": {"seconds": _STOP_SECONDS}})


def owns_public_methods(spec: ServiceSpec) -> bool:
    """Whether the service serves a public method of the contract (one with an authz rule)."""
    served = {f"/{name}/" for name in spec.service_names}
    return any(method.authz is not None and path.startswith(tuple(served)) for path, method in methods().items())


async def start_server(
    spec: ServiceSpec,
    addr: str,
    runtime: RuntimeSettings,
    telemetry: Telemetry,
    *,
    admission: AdmissionSettings | None = None,
    gate: Gate | None = None,
) -> RunningServer:
    """Build, bind and start the server of one service.

    With `admission`, a service that owns public methods admits their public calls itself
    (skm_runtime.gate); without, every call must come from inside the mesh. The gate asks
    svc_policy at SKM_POLICY_ADDR, or, in svc_policy itself, this very server. `gate`: one
    made by the caller instead (tests, over in-memory ports), which the caller closes.
    """
    if spec.mesh_only and not has_mesh_key():
        # It could admit nobody, or (worse) would have to admit everybody.
        raise MeshKeyMissing(f"the {spec.name} service admits callers of the mesh only: set {MESH_KEY_FILE_VAR}")
    if admission is not None and gate is not None:
        raise ValueError("admission settings or a gate, not both")
    admits = admission is not None and spec.mesh_only and owns_public_methods(spec)
    interceptor = ServerInterceptor(
        telemetry.tracer_provider.get_tracer("skm.runtime"),
        telemetry.meter_provider.get_meter("skm.runtime"),
        record_spans=telemetry.records_spans,
        record_metrics=telemetry.records_metrics,
        mesh_only=spec.mesh_only,
    )
    limits = runtime
    receive = spec.max_receive_bytes
    if admits and admission is not None:
        # Above the public message limit, so that the gate answers those with an ErrorInfo.
        receive = max(receive or 0, admission.max_receive_bytes, admission.max_message_bytes)
    if gate is not None:
        receive = max(receive or 0, gate.max_receive_bytes)
        interceptor.use_gate(gate)
    if receive is not None:
        limits = dataclasses.replace(runtime, grpc_max_receive_bytes=receive)
    server = grpc.aio.server(interceptors=[interceptor], options=server_options(limits))
    spec.register(server)
    health = spec.health or HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflected = (
        *spec.service_names,
        *spec.reflect_extra,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    _serve_reflection(server, reflected)
    try:
        port = server.add_insecure_port(addr)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {addr}: {exc}") from None
    opened = gate_channel = None
    if admits and admission is not None:
        asks_itself = _POLICY_SERVICE in spec.service_names
        target = f"127.0.0.1:{port}" if asks_itself else admission.policy_addr
        gate_channel = open_channel(target, runtime)
        opened = await Gate.open(admission, gate_channel)
        interceptor.use_gate(opened)
    if spec.start is not None:
        await spec.start()
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health.set("", serving)
    for name in spec.service_names:
        await health.set(name, serving)
    return RunningServer(server, port, health, spec, opened, gate_channel)


def _serve_reflection(server: grpc.aio.Server, names: Sequence[str]) -> None:
    """Server reflection under both protocol names.

    grpcio-reflection implements only `grpc.reflection.v1alpha`; clients (buf curl, grpcurl)
    ask `grpc.reflection.v1` first, and not every client falls back on every call. The two
    protocols are the same messages under another package, so the v1 name is served by the
    same servicer with the v1alpha message classes.
    """
    servicer = ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    request = reflection_pb2.ServerReflectionRequest
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "grpc.reflection.v1.ServerReflection",
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=request.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )


def run(
    name: str,
    settings_cls: type[SettingsT],
    build: Callable[[SettingsT, RuntimeSettings], Awaitable[ServiceSpec]],
    argv: Sequence[str] | None = None,
    *,
    uses_principals: bool = True,
) -> int:
    """A service process from start to exit; returns the exit code.

    `name` is the service's settings prefix (SKM_<NAME>_*); `build` is its composition
    root, run inside the event loop: from settings to adapters, core and servicers.
    The mesh key is loaded before `build` runs; a process that `uses_principals` (signs or
    reads them: every service) does not start without one. Only a process that never
    touches a principal (the runtime's echo test service) may say False.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args:
        wants_help = args[0] in ("-h", "--help")
        print(usage(name, settings_cls, uses_principals=uses_principals), file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else 2
    problems: list[str] = []
    try:
        runtime = load_settings(RuntimeSettings, "")
    except SettingsError as exc:
        problems += exc.problems
    else:
        problems += _use_mesh_key(runtime.mesh_key_file, required=uses_principals)
    try:
        settings = load_settings(settings_cls, name)
    except SettingsError as exc:
        problems += exc.problems
    try:
        admission = load_settings(AdmissionSettings, "admission")
    except SettingsError as exc:
        problems += exc.problems
    if problems:
        print(f"{_program()}: {SettingsError(problems)}", file=sys.stderr)
        return 2
    configure_logging(name, level=runtime.log_level, include_personal=runtime.log_personal_data)
    use_caller_name(name)
    telemetry = configure_telemetry(
        name,
        exporter=runtime.otel_exporter,
        otlp_endpoint=runtime.otel_endpoint,
        metrics_addr=settings.metrics_addr,
    )
    install_globally(telemetry)
    try:
        return asyncio.run(_serve(build, settings, runtime, telemetry, admission))
    except OSError as exc:
        log.error("service cannot start", extra={"fields": {"error": str(exc)}})
        return 1
    finally:
        telemetry.shutdown()


def _use_mesh_key(path: Path | None, *, required: bool) -> list[str]:
    """Load the mesh key into the process; the problems, as settings problems (no key text)."""
    if path is None:
        if not required:
            return []
        return [
            f"{MESH_KEY_FILE_VAR}: required, not set: the file with the mesh key that signs and checks"
            " principals between services (hex text, 32+ random bytes; `python -m skm_stack up` makes"
            " one in its state dir)"
        ]
    try:
        use_mesh_keys(read_mesh_keys(path))
    except MeshKeyInvalid as exc:
        return [f"{MESH_KEY_FILE_VAR}: {exc}"]
    return []


def _program() -> str:
    main = sys.modules.get("__main__")
    main_spec = getattr(main, "__spec__", None)
    name = getattr(main_spec, "name", "") or "skm"
    return name.removesuffix(".__main__")


def usage(name: str, settings_cls: type[object], *, uses_principals: bool = True) -> str:
    """`--help`: what the process is and every variable it reads, with defaults."""
    lines = [
        f"usage: python -m {_program()}",
        "",
        f"The SKM {name} service: a gRPC server with health and reflection.",
        "Configured only by environment variables:",
        "",
    ]
    for cls, prefix in ((settings_cls, name), (RuntimeSettings, ""), (AdmissionSettings, "admission")):
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]  # settings are dataclasses
            default = item.default if item.default is not dataclasses.MISSING else "(required)"
            shown = "<secret>" if item.metadata.get("secret") else getattr(default, "value", default)
            if cls is RuntimeSettings and item.name == "mesh_key_file" and uses_principals:
                shown = "(required)"
            lines.append(f"  {field_env_name(item, prefix):<40} default: {shown!r}")
    lines.append("")
    lines.append("Stops gracefully on SIGTERM or SIGINT (exit 0).")
    return "\n".join(lines)


async def _serve(
    build: Callable[[SettingsT, RuntimeSettings], Awaitable[ServiceSpec]],
    settings: SettingsT,
    runtime: RuntimeSettings,
    telemetry: Telemetry,
    admission: AdmissionSettings,
) -> int:
    spec = await build(settings, runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = await start_server(spec, settings.addr, runtime, telemetry, admission=admission)
    host = settings.addr.rpartition(":")[0]
    log.info(
        "serving",
        extra={"fields": {"addr": f"{host}:{running.port}", "services": list(spec.service_names)}},
    )
    await stop.wait()
    log.info("draining", extra={"fields": {"grace_seconds": runtime.grpc_drain_seconds}})
    await running.drain(runtime.grpc_drain_seconds)
    log.info("stopped")
    return 0
