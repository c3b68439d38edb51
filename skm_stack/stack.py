"""The local stack as one object: start chosen servers into a state dir, stop them in reverse.

``Stack`` says what to start (components, ports, state dir); ``Stack.start()`` returns a
``RunningStack`` that holds every started server, exposes their URLs and the environment
for services, records everything in ``<state>/stack.json`` and stops what it started.
Tests (tests/conftest.py) and ``python -m skm_stack up`` share this code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from skm_stack.catalogue import models_root
from skm_stack.devkeys import ensure_dev_keys, ensure_mesh_key
from skm_stack.envoy import EnvoyServer, start_envoy
from skm_stack.install import Report, Toolchain, ensure_installed, print_report
from skm_stack.kafka import KafkaServer, start_kafka
from skm_stack.llm import LLMServer, start_llm
from skm_stack.openfga import OpenFGAServer, start_openfga
from skm_stack.postgres import PostgresServer, start_postgres
from skm_stack.process import ProcessRecord, free_port, port_is_free, process_start_ticks
from skm_stack.redis_server import RedisServer, start_redis
from skm_stack.services import ServiceProcess, ServiceSpec, start_service
from skm_stack.web import WebServer, start_web

# Servers in start order; Envoy and the services are started separately, after them.
SERVERS = ("postgres", "redis", "kafka", "openfga", "llm")
_REQUIRES = {"openfga": ("postgres",)}
# The ports each server binds, by their names in DEFAULT_PORTS.
_PORTS_OF = {
    "postgres": ("postgres",),
    "redis": ("redis",),
    "kafka": ("kafka", "kafka_controller"),
    "openfga": ("openfga_http", "openfga_grpc"),
    "llm": ("llm",),
}

DEFAULT_PORTS: Mapping[str, int] = {
    "postgres": 55432,
    "redis": 56379,
    "kafka": 59092,
    "kafka_controller": 59093,
    "openfga_http": 58080,
    "openfga_grpc": 58081,
    "llm": 58090,
    "envoy": 8080,
    "envoy_admin": 9901,
    "web": 8081,
}
# Every port picked free at start: for test stacks that must not collide with anything.
EPHEMERAL_PORTS: Mapping[str, int] = {name: 0 for name in DEFAULT_PORTS}

MANIFEST = "stack.json"

_S = TypeVar("_S")


class PortInUse(RuntimeError):
    """A fixed port a server needs is taken by some other process."""


def ports_from_env(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Default ports, each overridable by ``SKM_STACK_<NAME>_PORT`` (0 = pick a free one)."""
    env = os.environ if env is None else env
    ports = dict(DEFAULT_PORTS)
    for name in ports:
        variable = f"SKM_STACK_{name.upper()}_PORT"
        if env.get(variable):
            try:
                ports[name] = int(env[variable])
            except ValueError:
                raise ValueError(f"{variable} must be a port number, not {env[variable]!r}") from None
            if not 0 <= ports[name] <= 65535:
                raise ValueError(f"{variable}={ports[name]} is not a TCP port")
    return ports


def _resolve_port(owner: str, wanted: int, taken: set[int]) -> int:
    if wanted == 0:
        while True:
            port = free_port()
            if port not in taken:
                taken.add(port)
                return port
    if wanted in taken or not port_is_free(wanted):
        raise PortInUse(
            f"127.0.0.1:{wanted} (for {owner}) is already in use; stop whatever holds it or "
            f"set SKM_STACK_{owner.upper()}_PORT to another port (0 picks a free one)"
        )
    taken.add(wanted)
    return wanted


@dataclass
class Stack:
    """What to start: which servers, on which ports, into which state dir."""

    state_dir: Path
    components: Sequence[str] = SERVERS
    ports: Mapping[str, int] = field(default_factory=ports_from_env)
    # False turns off fsync and friends in PostgreSQL: right for throwaway test stacks.
    durable: bool = True
    report: Report = print_report
    # None: run ensure_installed() first (fast when everything is there).
    toolchain: Toolchain | None = None
    # The foreground process that owns the stack (`up`), recorded so that `down` can ask it
    # to stop everything in order. None for stacks owned by tests.
    supervisor: ProcessRecord | None = None
    # The mesh key file every service gets (SKM_MESH_KEY_FILE). None: the state dir's own,
    # made on first use. Tests give all their stacks one, which the test process uses too.
    mesh_key_file: Path | None = None
    # Which models the LLM engine serves ("real" or "untrained", see skm_stack.llm); None:
    # SKM_STACK_LLM_SERVE decides (untrained when it is not set).
    llm_serve: str | None = None

    def start(self) -> RunningStack:
        """Start the chosen servers in dependency order and wait for each one's real health.

        If one fails, everything already started is stopped again before the error (which
        carries the tail of the failing server's log) propagates.
        """
        unknown = set(self.components) - set(SERVERS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {SERVERS}")
        wanted = set(self.components)
        for component in list(wanted):
            wanted.update(_REQUIRES.get(component, ()))
        toolchain = self.toolchain or ensure_installed(self.report)
        running = RunningStack(
            Path(self.state_dir),
            toolchain,
            dict(self.ports),
            self.durable,
            self.report,
            mesh_key_file=self.mesh_key_file,
            llm_serve=self.llm_serve,
        )
        running.supervisor = self.supervisor
        # Every port first, so a taken one fails the start before any server runs.
        for component in SERVERS:
            if component in wanted:
                for port_name in _PORTS_OF[component]:
                    running._port(port_name)
        try:
            for component in SERVERS:
                if component in wanted:
                    running.start_server(component)
        except BaseException:
            running.stop()
            raise
        return running


class RunningStack:
    """Servers started by this process, with their addresses; stops them in reverse order."""

    def __init__(
        self,
        state_dir: Path,
        toolchain: Toolchain,
        ports: Mapping[str, int],
        durable: bool = True,
        report: Report = print_report,
        *,
        mesh_key_file: Path | None = None,
        llm_serve: str | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.llm_serve = llm_serve
        self.toolchain = toolchain
        self.requested_ports = dict(ports)
        self.durable = durable
        self.report = report
        self.ports: dict[str, int] = {}
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.kafka: KafkaServer | None = None
        self.openfga: OpenFGAServer | None = None
        self.llm: LLMServer | None = None
        self.envoy: EnvoyServer | None = None
        self.web: WebServer | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.service_specs: list[ServiceSpec] = []
        # Seconds from spawn to healthy, per started server.
        self.start_seconds: dict[str, float] = {}
        # See Stack.supervisor.
        self.supervisor: ProcessRecord | None = None
        self._started: list[tuple[str, Callable[[], None], ProcessRecord]] = []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # As root, PostgreSQL runs as user postgres and must be able to reach its data dir.
        self.state_dir.chmod(0o755)
        self.mesh_key_file = (mesh_key_file or ensure_mesh_key(self.state_dir)).resolve()

    # -- addresses ---------------------------------------------------------------------

    @property
    def postgres_dsn(self) -> str:
        return self._need(self.postgres, "postgres").dsn

    @property
    def postgres_admin_dsn(self) -> str:
        return self._need(self.postgres, "postgres").admin_dsn

    @property
    def redis_url(self) -> str:
        return self._need(self.redis, "redis").url

    @property
    def kafka_bootstrap(self) -> str:
        return self._need(self.kafka, "kafka").bootstrap

    @property
    def openfga_api_url(self) -> str:
        return self._need(self.openfga, "openfga").api_url

    @property
    def openfga_token_file(self) -> Path:
        return self._need(self.openfga, "openfga").token_file

    @property
    def llm_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``) of the embedded LLM engine."""
        return self._need(self.llm, "llm").url

    @property
    def envoy_url(self) -> str:
        return self._need(self.envoy, "envoy").url

    @property
    def envoy_admin_url(self) -> str:
        return self._need(self.envoy, "envoy").admin_url

    @staticmethod
    def _need(server: _S | None, name: str) -> _S:
        if server is None:
            raise RuntimeError(f"{name} is not part of this stack")
        return server

    def service_env(self) -> dict[str, str]:
        """Variables every service gets: where the stores and the other services are, and
        the mesh key that signs the principals they pass each other."""
        env: dict[str, str] = {"SKM_MESH_KEY_FILE": str(self.mesh_key_file)}
        if self.postgres:
            env["SKM_POSTGRES_DSN"] = self.postgres.dsn
        if self.redis:
            env["SKM_REDIS_URL"] = self.redis.url
        if self.kafka:
            env["SKM_KAFKA_BOOTSTRAP"] = self.kafka.bootstrap
        if self.openfga:
            env["SKM_OPENFGA_API_URL"] = self.openfga.api_url
            env["SKM_OPENFGA_API_TOKEN_FILE"] = str(self.openfga.token_file)
        if self.llm:
            env["SKM_LLM_URL"] = self.llm.url
            env["SKM_LLM_MODELS"] = ",".join(self.llm.aliases)
        for spec in self.service_specs:
            env[spec.addr_env_var] = spec.addr
        if self.service_specs:
            env["SKM_ADMISSION_JWKS_FILE"] = str(ensure_dev_keys(self.state_dir).jwks)
            # Embedded Qdrant allows one process per folder: each stack has its own.
            env["SKM_TOOLS_QDRANT_PATH"] = str(self.state_dir / "tools" / "qdrant")
            # Embedded ClickHouse (chdb) allows one process per folder too.
            env["SKM_ANALYTICS_WAREHOUSE_URL"] = f"chdb://{self.state_dir / 'analytics' / 'chdb'}"
            env["SKM_AUDIO_QDRANT_LOCATION"] = str(self.state_dir / "audio" / "qdrant")
            env["SKM_AUDIO_MODELS_DIR"] = str(models_root())
        return env

    # -- starting ----------------------------------------------------------------------

    def _port(self, name: str) -> int:
        if name in self.ports:
            return self.ports[name]
        wanted = self.requested_ports.get(name, DEFAULT_PORTS[name])
        port = _resolve_port(name, wanted, set(self.ports.values()))
        self.ports[name] = port
        return port

    def _track(self, name: str, stop: Callable[[], None], record: ProcessRecord, started: float) -> None:
        self._started.append((name, stop, record))
        self.start_seconds[name] = time.monotonic() - started
        self.report(f"{name} is up ({self.start_seconds[name]:.1f}s)")
        self.write_manifest()

    def start_server(self, component: str) -> None:
        """Start one of :data:`SERVERS` (its dependencies must already run)."""
        started = time.monotonic()
        self.report(f"starting {component}...")
        if component == "postgres":
            pg = start_postgres(
                self.toolchain,
                self.state_dir,
                self._port("postgres"),
                durable=self.durable,
                report=self.report,
            )
            self.postgres = pg
            self._track(component, pg.stop, pg.process.record, started)
        elif component == "redis":
            rd = start_redis(self.toolchain, self.state_dir, self._port("redis"))
            self.redis = rd
            self._track(component, rd.stop, rd.process.record, started)
        elif component == "kafka":
            kf = start_kafka(
                self.toolchain,
                self.state_dir,
                self._port("kafka"),
                self._port("kafka_controller"),
                report=self.report,
            )
            self.kafka = kf
            self._track(component, kf.stop, kf.process.record, started)
        elif component == "openfga":
            pg = self._need(self.postgres, "postgres")
            fga = start_openfga(
                self.toolchain,
                self.state_dir,
                self._port("openfga_http"),
                self._port("openfga_grpc"),
                datastore_uri=f"{pg.dsn_for('openfga', 'openfga')}?sslmode=disable",
            )
            self.openfga = fga
            self._track(component, fga.stop, fga.process.record, started)
        elif component == "llm":
            env = dict(os.environ)
            if self.llm_serve:
                env["SKM_STACK_LLM_SERVE"] = self.llm_serve
            llm = start_llm(self.state_dir, self._port("llm"), report=self.report, env=env)
            self.llm = llm
            self._track(component, llm.stop, llm.process.record, started)
        else:
            raise ValueError(f"unknown server {component!r}")

    def start_services(self, specs: Iterable[ServiceSpec]) -> None:
        """Start services in the given order; each waits for gRPC health SERVING.

        Every address is fixed before the first one starts, so each service's environment
        names all the others (``SKM_<NAME>_ADDR``). Envoy comes after, via start_envoy().
        """
        taken = set(self.ports.values())
        resolved = []
        for spec in specs:
            port = _resolve_port(spec.name, spec.port, taken)
            resolved.append(spec.with_port(port))
        self.service_specs.extend(resolved)
        for spec in resolved:
            started = time.monotonic()
            self.report(f"starting service {spec.name} (python -m {spec.module}) on {spec.addr}...")
            service = start_service(spec, self.state_dir, self.service_env())
            self.services[spec.name] = service
            self._track(spec.name, service.stop, service.process.record, started)

    def restart_service(self, name: str, *, kill: bool = False) -> ServiceProcess:
        """Stop one started service (SIGKILL with ``kill``: no drain, as in a crash) and
        start it again on the same address with the same environment."""
        old = self.services[name]
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.process.record.pid, signal.SIGKILL)
            # Reap it now: a killed child nobody waits for lingers (and warns) until exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.process.popen.wait(timeout=10)
        old.stop()
        self._started = [entry for entry in self._started if entry[2] is not old.process.record]
        started = time.monotonic()
        self.report(f"restarting service {name} on {old.spec.addr}...")
        service = start_service(old.spec, self.state_dir, self.service_env())
        self.services[name] = service
        self._track(name, service.stop, service.process.record, started)
        return service

    def start_web(self, *, demo_sign_in: bool = True) -> WebServer:
        """Serve the built browser UI (skm_stack.web), pointed at this stack's Envoy.

        ``demo_sign_in`` offers the one-click sign-in as the demo admin, minted with this
        state dir's development key (``make run``'s; never a deployment's).
        """
        started = time.monotonic()
        self.report("starting the browser UI's static server...")
        key = ensure_dev_keys(self.state_dir).private_key if demo_sign_in else None
        web = start_web(self.state_dir, self._port("web"), self.envoy_url, signing_key=key)
        self.web = web
        self._track("web", web.stop, web.process.record, started)
        return web

    def start_envoy(self, upstreams: int | Mapping[str, int] | None = None) -> EnvoyServer:
        """Start Envoy, routing each public method to the started service that owns it.

        By default each owner's cluster points at the started service of that name; an owner
        not started falls back to the gateway's port (50051 without a gateway). ``upstreams``
        names the ports instead: owner -> port (same fallback), or one port for every route.
        """
        if upstreams is None:
            upstreams = {spec.name: spec.port for spec in self.service_specs}
        elif isinstance(upstreams, int):
            upstreams = {"gateway": upstreams}
        upstreams = {"gateway": 50051, **upstreams}
        started = time.monotonic()
        named = ", ".join(f"{name} {port}" for name, port in sorted(upstreams.items()))
        self.report(f"starting envoy (each public method to its owner, on 127.0.0.1: {named})...")
        envoy = start_envoy(
            self.toolchain.envoy,
            self.state_dir,
            self._port("envoy"),
            self._port("envoy_admin"),
            upstreams,
        )
        self.envoy = envoy
        self._track("envoy", envoy.stop, envoy.process.record, started)
        return envoy

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this object started, last started first; never anything else."""
        while self._started:
            name, stop, _record = self._started.pop()
            self.report(f"stopping {name}...")
            try:
                stop()
            except Exception as exc:  # noqa: BLE001  # keep stopping the rest; say what went wrong
                self.report(f"stopping {name} failed: {exc!r}")
            self.write_manifest()
        self.postgres = self.redis = self.kafka = self.openfga = self.llm = self.envoy = None
        self.web = None
        self.services.clear()
        (self.state_dir / MANIFEST).unlink(missing_ok=True)

    def __enter__(self) -> RunningStack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- manifest ----------------------------------------------------------------------

    def urls(self) -> dict[str, str]:
        """Every address of the running stack, public Envoy URL first."""
        urls: dict[str, str] = {}
        if self.envoy:
            urls["envoy"] = self.envoy.url
            urls["envoy_admin"] = self.envoy.admin_url
        if self.web:
            urls["web"] = self.web.url
        for name, service in self.services.items():
            urls[f"svc_{name}"] = service.addr
        if self.postgres:
            urls["postgres"] = self.postgres.dsn
        if self.redis:
            urls["redis"] = self.redis.url
        if self.kafka:
            urls["kafka"] = self.kafka.bootstrap
        if self.openfga:
            urls["openfga"] = self.openfga.api_url
            urls["openfga_grpc"] = self.openfga.grpc_addr
        if self.llm:
            urls["llm"] = self.llm.url
        return urls

    def write_manifest(self) -> None:
        """Write ``<state>/stack.json``: addresses, ports and the PIDs to stop."""
        manifest = {
            "version": 1,
            "state_dir": str(self.state_dir),
            "supervisor": self.supervisor.to_json() if self.supervisor else None,
            "urls": self.urls(),
            "ports": self.ports,
            "env": self.service_env(),
            "health": {spec.name: list(spec.health_services) for spec in self.service_specs},
            "processes": [record.to_json() for _name, _stop, record in self._started],
        }
        path = self.state_dir / MANIFEST
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(manifest, indent=2) + "\n")
        partial.replace(path)


def read_manifest(state_dir: Path) -> dict[str, Any] | None:
    """The ``stack.json`` of a state dir, or None when no stack was started there."""
    path = Path(state_dir) / MANIFEST
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def stop_recorded(state_dir: Path, report: Report = print_report, supervisor_timeout: float = 180.0) -> int:
    """Stop a stack that another process started, using its ``stack.json``.

    If the foreground ``up`` that owns it is alive, it is asked (SIGTERM) to stop
    everything in order; whatever is still running afterwards is stopped by PID, last
    started first. Returns how many server processes were still ours to stop.
    """
    import signal

    manifest = read_manifest(state_dir)
    if manifest is None:
        report(f"no stack.json in {state_dir}: nothing to stop")
        return 0
    supervisor = manifest.get("supervisor")
    if supervisor:
        record = ProcessRecord.from_json(supervisor)
        if process_start_ticks(record.pid) == record.start_ticks:
            report(f"asking the running `up` (pid {record.pid}) to stop the stack...")
            os.kill(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + supervisor_timeout
            while process_start_ticks(record.pid) == record.start_ticks and time.monotonic() < deadline:
                time.sleep(0.2)
    stopped = 0
    for data in reversed(manifest.get("processes", [])):
        record = ProcessRecord.from_json(data)
        if record.is_ours():
            report(f"stopping {record.name} (pid {record.pid})...")
            record.stop()
            stopped += 1
        Path(state_dir, "pids", f"{record.name}.pid").unlink(missing_ok=True)
    Path(state_dir, MANIFEST).unlink(missing_ok=True)
    return stopped
