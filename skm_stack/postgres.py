"""PostgreSQL 15 from Debian, run from a data dir inside the stack's state dir.

As root, ``initdb`` and the server run as the ``postgres`` user through ``runuser`` (the
server refuses to run as root), and the data dir is owned by it. Clients use TCP on
127.0.0.1 with trust authentication; the unix socket lives in the state dir, so nothing
touches /var/run/postgresql or the Debian cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from skm_stack.health import StartError, run_coroutine_sync, wait_healthy
from skm_stack.install import Report, Toolchain
from skm_stack.process import ServerProcess, tail_file

# database -> owning role. `skm` is the services' database (one schema per owning service);
# OpenFGA keeps its tables in a database of its own.
DATABASES = {"skm": "skm", "openfga": "openfga"}

# sockaddr_un holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107

_HBA = """\
# Written by skm_stack for a local development stack: trust on loopback only.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
"""


@dataclass
class PostgresServer:
    """A running PostgreSQL; ``dsn`` is what services get as ``SKM_POSTGRES_DSN``."""

    process: ServerProcess
    port: int
    socket_dir: Path

    @property
    def dsn(self) -> str:
        return self.dsn_for("skm", "skm")

    @property
    def admin_dsn(self) -> str:
        """Superuser DSN, for tests that create databases of their own."""
        return self.dsn_for("postgres", "postgres")

    def dsn_for(self, user: str, database: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.process.stop()
        if self.socket_dir.name.startswith("skm-pg-"):
            # the short socket dir made outside the state dir (see start_postgres)
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def _runs_as_root() -> bool:
    return os.geteuid() == 0


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if _runs_as_root() else argv


def _chown_to_postgres(*paths: Path) -> None:
    if not _runs_as_root():
        return
    owner = pwd.getpwnam("postgres")
    for path in paths:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _initdb(toolchain: Toolchain, root: Path, data: Path, *, durable: bool) -> None:
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chown_to_postgres(data)
    argv = [
        str(toolchain.postgres_bindir / "initdb"),
        "--pgdata",
        str(data),
        "--username=postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    if not durable:
        argv.append("--no-sync")
    log_path = root.parent / "logs" / "postgres-initdb.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        result = subprocess.run(_as_postgres(argv), stdout=log, stderr=subprocess.STDOUT, cwd=root, check=False)
    if result.returncode != 0:
        hint = ""
        if _runs_as_root():
            hint = (
                " (as root the state dir and every folder above it must be searchable by the "
                "postgres user, e.g. mode 0755)"
            )
        raise StartError("postgres", f"initdb failed with status {result.returncode}{hint}", tail_file(log_path))
    (data / "pg_hba.conf").write_text(_HBA)
    _chown_to_postgres(data / "pg_hba.conf")


async def _ensure_databases(port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        for database, owner in DATABASES.items():
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner):
                # CREATEDB lets test suites make throwaway databases as the services' role.
                await conn.execute(f'CREATE ROLE "{owner}" LOGIN CREATEDB')
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                await conn.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    finally:
        await conn.close()


async def probe_sql(port: int) -> None:
    """Raise unless the server runs ``SELECT 1`` for the superuser over TCP."""
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=2)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def start_postgres(
    toolchain: Toolchain,
    state_dir: Path,
    port: int,
    *,
    durable: bool,
    report: Report,
    timeout: float = 60.0,
) -> PostgresServer:
    """Init the data dir on first use, start the server, wait for SQL, create roles/DBs.

    ``durable=False`` turns off fsync and friends: right for throwaway test stacks.
    """
    root = state_dir / "postgres"
    data = root / "data"
    socket_dir = root / "run"
    if len(str(socket_dir / f".s.PGSQL.{port}.lock")) > _MAX_SOCKET_PATH:
        # A deep state dir would overflow the kernel's limit on unix socket paths.
        socket_dir = Path(tempfile.mkdtemp(prefix="skm-pg-"))
        socket_dir.chmod(0o755)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    socket_dir.mkdir(parents=True, exist_ok=True)
    _chown_to_postgres(socket_dir)
    if not (data / "PG_VERSION").is_file():
        report(f"initialising a PostgreSQL data dir in {data}...")
        _initdb(toolchain, root, data, durable=durable)
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "max_connections": "200",
        "logging_collector": "off",
        "log_min_messages": "warning",
    }
    if not durable:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    argv = [str(toolchain.postgres_bindir / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    process = ServerProcess(
        "postgres",
        _as_postgres(argv),
        state_dir=state_dir,
        cwd=root,
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for every client.
        stop_signal=signal.SIGINT,
        stop_timeout=30.0,
    )
    server = PostgresServer(process, port, socket_dir)
    try:
        wait_healthy(
            process,
            lambda: run_coroutine_sync(lambda: probe_sql(port)),
            timeout=timeout,
            what="SQL connection",
        )
        run_coroutine_sync(lambda: _ensure_databases(port))
    except BaseException:
        process.stop()
        raise
    return server
