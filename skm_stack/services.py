"""The platform's own services, started as ``python -m <module>`` and checked over gRPC health.

The stack knows nothing service-specific: a :class:`ServiceSpec` names the module, the
address it binds (``SKM_<NAME>_ADDR``) and the gRPC health service names that must answer
SERVING before the service counts as up.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm_stack.health import StartError, wait_healthy
from skm_stack.paths import REPO_ROOT
from skm_stack.process import ServerProcess

# name -> default port; each binds 127.0.0.1:<port> unless SKM_<NAME>_ADDR says otherwise.
DEFAULT_SERVICE_PORTS: Mapping[str, int] = {
    "gateway": 50051,
    "conversation": 50052,
    "audio": 50053,
    "tools": 50054,
    "policy": 50055,
    "profiles": 50056,
    "analytics": 50057,
}


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to know it is up.

    ``health_services`` are names for ``grpc.health.v1.Health/Check``; the empty name asks
    about the server as a whole. ``port`` 0 means "pick a free port at start".
    """

    name: str
    module: str
    port: int
    host: str = "127.0.0.1"
    health_services: tuple[str, ...] = ("",)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def addr_env_var(self) -> str:
        return f"SKM_{self.name.upper()}_ADDR"

    def with_port(self, port: int) -> ServiceSpec:
        return replace(self, port=port)


def default_services(
    health_services: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ServiceSpec]:
    """The seven ``svc_<name>`` services, each at ``SKM_<NAME>_ADDR`` or its default port.

    ``health_services`` maps a service name to the fully-qualified gRPC service names to
    wait for (e.g. ``{"conversation": ["skm.conversation.v1.ConversationService"]}``).
    """
    env = os.environ if env is None else env
    names = health_services or {}
    specs = []
    for name, default_port in DEFAULT_SERVICE_PORTS.items():
        host, port = "127.0.0.1", default_port
        configured = env.get(f"SKM_{name.upper()}_ADDR")
        if configured:
            host, _, port_text = configured.rpartition(":")
            if not port_text.isdigit():
                raise ValueError(f"SKM_{name.upper()}_ADDR must be host:port, not {configured!r}")
            port = int(port_text)
        specs.append(
            ServiceSpec(
                name=name,
                module=f"svc_{name}",
                port=port,
                host=host or "127.0.0.1",
                health_services=tuple(names.get(name, ("",))),
            )
        )
    return specs


def module_is_runnable(module: str) -> bool:
    """Whether ``python -m module`` would find the module (and its ``__main__``)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is None:
        return True  # a plain module runs as itself
    try:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class ServiceProcess:
    """A running service."""

    spec: ServiceSpec
    process: ServerProcess

    @property
    def addr(self) -> str:
        return self.spec.addr

    def stop(self) -> None:
        self.process.stop()


def probe_serving(addr: str, names: Sequence[str]) -> None:
    """Raise unless gRPC health answers SERVING for every name."""
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in names:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2.0)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                raise RuntimeError(f"health of {name or '(server)'} is {status}")


def start_service(
    spec: ServiceSpec,
    state_dir: Path,
    env: Mapping[str, str],
    *,
    python: str = sys.executable,
    cwd: Path = REPO_ROOT,
    timeout: float = 60.0,
) -> ServiceProcess:
    """Start ``python -m <module>`` with ``env`` and wait until every health name is SERVING."""
    if not module_is_runnable(spec.module):
        raise StartError(spec.name, f"`python -m {spec.module}` has nothing to run (no such module or no __main__)", "")
    child_env = {**os.environ, **env, **spec.extra_env, "PYTHONUNBUFFERED": "1"}
    process = ServerProcess(spec.name, [python, "-m", spec.module], state_dir=state_dir, env=child_env, cwd=cwd)
    try:
        wait_healthy(
            process,
            lambda: probe_serving(spec.addr, spec.health_services),
            timeout=timeout,
            what="gRPC health SERVING",
        )
    except BaseException:
        process.stop()
        raise
    return ServiceProcess(spec, process)
