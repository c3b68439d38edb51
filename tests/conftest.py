"""Fixtures for the real local stack (PostgreSQL, Redis, Kafka, OpenFGA, Envoy).

Tests never skip because a server is missing: the ``stack`` fixture installs what is
missing and starts every server, in a fresh temporary state dir on free ports, and stops
exactly those processes (by PID) when the session ends. The install step (minutes on a
fresh machine: OpenFGA is built with Go) runs once after collection, outside any test's
timeout, and only when a selected test needs the stack.

One mesh key serves the whole session: the test process signs principals with it (tests
that call services directly, and services served in-process), and every stack the suite
starts gives it to its services (SKM_MESH_KEY_FILE).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from skm_runtime.principal import configure_mesh_key
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack, Toolchain, ensure_installed
from skm_stack.devkeys import ensure_mesh_key
from skm_stack.envoy import EnvoyServer

_STACK_FIXTURES = {"stack", "toolchain", "envoy_factory", "stack_factory"}

EnvoyFactory = Callable[[int | Mapping[str, int]], EnvoyServer]
StackFactory = Callable[..., RunningStack]

_MESH_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """The session's mesh key, in use in this process before any test module is imported."""
    key = ensure_mesh_key(Path(tempfile.mkdtemp(prefix="skm-test-mesh-")))
    configure_mesh_key(key)
    config.stash[_MESH_KEY] = key


def pytest_unconfigure(config: pytest.Config) -> None:
    key = config.stash.get(_MESH_KEY, None)
    if key is not None:
        shutil.rmtree(key.parent.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def mesh_key_file(request: pytest.FixtureRequest) -> Path:
    """The session's mesh key file: this process signs with it, every suite stack's services check with it."""
    return request.config.stash[_MESH_KEY]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install the stack's servers up front when any selected test will use them."""
    if not any(_STACK_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        # Show install progress live: a cold install takes minutes.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            ensure_installed()
    except Exception:  # noqa: BLE001  # the `toolchain` fixture re-raises it in the tests that need it
        pass


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    """Where the installed servers are (installs whatever is still missing)."""
    return ensure_installed()


def _fresh_state_dir(prefix: str) -> Path:
    # Not tmp_path: pytest makes its temp folders 0700, and as root PostgreSQL runs as
    # user postgres, which must be able to reach its data dir.
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)
    return state


def _discard(state: Path, session: pytest.Session) -> None:
    if session.testsfailed:
        print(f"\nkept the stack's state dir (logs in {state / 'logs'})")
    else:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(toolchain: Toolchain, mesh_key_file: Path, request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    """PostgreSQL, Redis, Kafka and OpenFGA, started once per session on free ports."""
    state = _fresh_state_dir("skm-test-stack-")
    running = Stack(
        state_dir=state, ports=EPHEMERAL_PORTS, durable=False, toolchain=toolchain, mesh_key_file=mesh_key_file
    ).start()
    try:
        yield running
    finally:
        running.stop()
        _discard(state, request.session)


@pytest.fixture
def stack_factory(toolchain: Toolchain, mesh_key_file: Path, request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    """Start a stack of one's own (``components=()`` for none), stopped after the test.

    For tests that start services or Envoy on it, or that need servers the session
    ``stack`` must not share. Its PostgreSQL skips fsync unless ``durable=True`` is passed:
    tests that restart it must pass it, or the last commits may be lost in the restart.
    """
    started: list[tuple[RunningStack, Path]] = []

    def start(components: tuple[str, ...] = (), **options: object) -> RunningStack:
        state = _fresh_state_dir("skm-test-extra-")
        options.setdefault("durable", False)
        options.setdefault("mesh_key_file", mesh_key_file)
        running = Stack(
            state_dir=state,
            components=components,
            ports=EPHEMERAL_PORTS,
            toolchain=toolchain,
            **options,  # type: ignore[arg-type]  # the remaining Stack fields, by name
        ).start()
        started.append((running, state))
        return running

    yield start
    for running, state in reversed(started):
        running.stop()
        _discard(state, request.session)


@pytest.fixture
def envoy_factory(stack_factory: StackFactory) -> EnvoyFactory:
    """Start Envoy (the committed config) with its routes pointing at ``127.0.0.1`` ports.

    ``upstreams``: one port for every route, or owner ("gateway", "conversation", ...) ->
    port, an owner missing going to the gateway's. Listener and admin ports are free ones;
    it is stopped after the test.
    """

    def start(upstreams: int | Mapping[str, int]) -> EnvoyServer:
        return stack_factory().start_envoy(upstreams)

    return start


@pytest.fixture(scope="session")
def chdb_warehouse_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The one chdb data folder of this test process, as a warehouse URL.

    chdb runs one engine per process, on one folder: every in-process warehouse of the
    session shares it (tests keep apart by tenant). Services started as processes get
    folders of their own.
    """
    folder = _fresh_state_dir("skm-test-chdb-")
    yield f"chdb://{folder}"
    _discard(folder, request.session)
