"""The real local stack: PostgreSQL, Redis, Kafka, OpenFGA, the LLM engine and Envoy as child processes.

``python -m skm_stack install | up | down | status`` is the command line; tests and
``make run`` share the API below.
"""

from skm_stack.health import StartError
from skm_stack.install import InstallError, Toolchain, ensure_installed
from skm_stack.services import DEFAULT_SERVICE_PORTS, ServiceSpec, default_services
from skm_stack.stack import (
    DEFAULT_PORTS,
    EPHEMERAL_PORTS,
    SERVERS,
    PortInUse,
    RunningStack,
    Stack,
    ports_from_env,
    read_manifest,
    stop_recorded,
)

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_SERVICE_PORTS",
    "EPHEMERAL_PORTS",
    "SERVERS",
    "InstallError",
    "PortInUse",
    "RunningStack",
    "ServiceSpec",
    "Stack",
    "StartError",
    "Toolchain",
    "default_services",
    "ensure_installed",
    "ports_from_env",
    "read_manifest",
    "stop_recorded",
]
