"""svc_tools settings: SKM_TOOLS_* plus the stores and services the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field

from skm_runtime.server import ServiceSettings
from skm_runtime.settings import address, bounded

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ToolsSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50054")
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    # svc_policy, asked before every execution.
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    # Upper bound of a run's wall-clock timeout (a request asking more gets this).
    max_timeout_seconds: float = bounded(300.0, low=1.0, high=3600.0)
    # A process that stops renewing its lease this long loses its executions to another.
    lease_seconds: float = bounded(30.0, low=1.0, high=600.0)
    # How often leases are renewed and abandoned executions taken over.
    maintain_interval_seconds: float = bounded(5.0, low=0.1, high=600.0)

    # -- the bubblewrap sandbox of code_execution --------------------------------------
    # Runs at the same time; more wait for a free slot.
    sandbox_slots: int = bounded(4, low=1, high=256)
    # Host uids of the runs: uid_base .. uid_base + slots - 1, used by nothing else.
    sandbox_uid_base: int = bounded(420_000, low=10_000, high=2**31 - 1024)
    sandbox_cpu_seconds: int = bounded(30, low=1, high=3600)
    sandbox_memory_bytes: int = bounded(512 * _MIB, low=64 * _MIB, high=64 * 1024 * _MIB)
    sandbox_max_processes: int = bounded(32, low=4, high=4096)
    sandbox_max_file_bytes: int = bounded(16 * _MIB, low=4096, high=4096 * _MIB)
    sandbox_work_bytes: int = bounded(64 * _MIB, low=_MIB, high=16 * 1024 * _MIB)
    sandbox_tmp_bytes: int = bounded(16 * _MIB, low=_MIB, high=16 * 1024 * _MIB)
    # stdout and stderr together, per run.
    sandbox_output_bytes: int = bounded(_MIB, low=1024, high=256 * _MIB)
    # How much of the end of each stream a result keeps.
    sandbox_tail_bytes: int = bounded(64 * 1024, low=1024, high=256 * 1024)
    bwrap_path: str = "/usr/bin/bwrap"
    python_path: str = "/usr/bin/python3"
