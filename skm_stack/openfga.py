"""OpenFGA (built by ``go install``) on PostgreSQL, bound to 127.0.0.1.

Every start runs ``openfga migrate`` (idempotent) and then ``openfga run`` with HTTP and
gRPC on loopback, the playground off and metrics off, and its check iterator cache on
(datastore reads reused for ``ITERATOR_CACHE_TTL_SECONDS``; measured: about 0.5 ms less per
svc_policy miss). svc_policy asks with HIGHER_CONSISTENCY, which skips that cache, for as long
after every relationship change it makes or hears of (SKM_POLICY_OPENFGA_CACHE_TTL_SECONDS,
the same value by default), so no change it knows of is answered from older reads. A change
written to OpenFGA around svc_policy may be unseen for this long on top of svc_policy's TTLs.

Clients authenticate with a preshared key generated for this stack start: it is written to
``<state>/openfga/api-token`` (mode 0600) and handed to the server in its environment, so
it never shows in a command line, a log or ``stack.json``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from skm_stack.health import StartError, wait_healthy
from skm_stack.install import Toolchain
from skm_stack.process import ServerProcess, tail_file


@dataclass
class OpenFGAServer:
    """A running OpenFGA; services get ``api_url`` and ``token_file``."""

    process: ServerProcess
    http_port: int
    grpc_port: int
    token_file: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def api_token(self) -> str:
        return self.token_file.read_text().strip()

    def stop(self) -> None:
        self.process.stop()


# Must not exceed svc_policy's SKM_POLICY_OPENFGA_CACHE_TTL_SECONDS (2 s by default).
ITERATOR_CACHE_TTL_SECONDS = 2


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file already existed with a wider mode
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def probe_healthz(api_url: str) -> None:
    """Raise unless ``GET /healthz`` answers SERVING."""
    response = httpx.get(f"{api_url}/healthz", timeout=2.0)
    response.raise_for_status()
    if response.json().get("status") != "SERVING":
        raise RuntimeError(f"healthz says {response.text}")


def start_openfga(
    toolchain: Toolchain,
    state_dir: Path,
    http_port: int,
    grpc_port: int,
    *,
    datastore_uri: str,
    timeout: float = 60.0,
) -> OpenFGAServer:
    """Migrate the datastore, start the server, wait for ``/healthz`` to say SERVING."""
    root = state_dir / "openfga"
    root.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    datastore = ["--datastore-engine", "postgres", "--datastore-uri", datastore_uri]
    # The datastore URI names no password (trust on loopback), so it may be logged.
    migrate_log = logs / "openfga-migrate.log"
    with open(migrate_log, "wb") as log:
        migrated = subprocess.run(
            [str(toolchain.openfga), "migrate", *datastore],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            check=False,
            timeout=120,
        )
    if migrated.returncode != 0:
        raise StartError("openfga", f"openfga migrate failed with status {migrated.returncode}", tail_file(migrate_log))

    token_file = root / "api-token"
    token = secrets.token_urlsafe(32)
    _write_secret(token_file, token)
    argv = [
        str(toolchain.openfga),
        "run",
        *datastore,
        "--http-addr",
        f"127.0.0.1:{http_port}",
        "--grpc-addr",
        f"127.0.0.1:{grpc_port}",
        "--playground-enabled=false",
        "--metrics-enabled=false",
        "--check-iterator-cache-enabled=true",
        f"--check-iterator-cache-ttl={ITERATOR_CACHE_TTL_SECONDS}s",
        "--authn-method",
        "preshared",
        "--log-format",
        "json",
    ]
    # OPENFGA_* variables fill flags that are not given; the key goes this way only.
    env = {**os.environ, "OPENFGA_AUTHN_PRESHARED_KEYS": token}
    process = ServerProcess("openfga", argv, state_dir=state_dir, env=env, cwd=root)
    server = OpenFGAServer(process, http_port, grpc_port, token_file)
    try:
        wait_healthy(process, lambda: probe_healthz(server.api_url), timeout=timeout, what="/healthz SERVING")
    except BaseException:
        process.stop()
        raise
    return server
