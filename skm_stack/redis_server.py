"""Redis from Debian's ``redis-server``, with a generated config bound to 127.0.0.1.

Redis holds hot, rebuildable state only (session cache, rate-limit counters, idempotency
keys), so this development server keeps no snapshots and no append-only file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from skm_stack.health import wait_healthy
from skm_stack.install import Toolchain
from skm_stack.process import ServerProcess


@dataclass
class RedisServer:
    """A running Redis; ``url`` is what services get as ``SKM_REDIS_URL``."""

    process: ServerProcess
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.stop()


def _config(port: int, data_dir: Path) -> str:
    return "\n".join(
        [
            "# Written by skm_stack at every start.",
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            "supervised no",
            f'dir "{data_dir}"',
            'logfile ""',
            "loglevel notice",
            "# hot state only: no RDB snapshots, no AOF",
            'save ""',
            "appendonly no",
            "",
        ]
    )


def probe_ping(port: int) -> None:
    """Raise unless the server answers PING."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        if client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def start_redis(toolchain: Toolchain, state_dir: Path, port: int, *, timeout: float = 30.0) -> RedisServer:
    """Start redis-server and wait until it answers PING."""
    root = state_dir / "redis"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "redis.conf"
    config.write_text(_config(port, root))
    process = ServerProcess("redis", [str(toolchain.redis_server), str(config)], state_dir=state_dir, cwd=root)
    try:
        wait_healthy(process, lambda: probe_ping(port), timeout=timeout, what="PING reply")
    except BaseException:
        process.stop()
        raise
    return RedisServer(process, port)
