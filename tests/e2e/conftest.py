"""The whole mesh for end-to-end tests: the real servers, all seven services, Envoy in front."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from skm_runtime.contract import services_of
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack, Toolchain
from skm_stack.health import run_coroutine_sync
from skm_stack.services import default_services

# The mesh's services keep their tables in a database of their own: the integration tests'
# copies of the services share the session's servers, and a service of the mesh must not
# pick up (e.g. take over) what those leave behind in the same tables.
E2E_DATABASE = "skm_e2e"

# A short agent loop (the untrained models never finish on their own before the bound)
# and a short lease, so a killed svc_conversation's turns are taken over quickly.
_EXTRA_ENV = {
    "conversation": {"SKM_CONVERSATION_MAX_ITERATIONS": "3", "SKM_CONVERSATION_LEASE_SECONDS": "3"},
    # A short idle limit, so the test of an idle voice stream does not wait half a minute.
    "audio": {"SKM_AUDIO_IDLE_SECONDS": "3"},
}


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def mesh_dsn(stack: RunningStack) -> str:
    """The database of the mesh's services (see E2E_DATABASE)."""
    assert stack.postgres is not None
    run_coroutine_sync(lambda: _create_database(stack.postgres_dsn, E2E_DATABASE))
    return stack.postgres.dsn_for("skm", E2E_DATABASE)


@pytest.fixture(scope="session")
def mesh(stack: RunningStack, mesh_dsn: str) -> RunningStack:
    """The session's stack with every service (free ports) and Envoy started on it.

    They are stopped, with the servers, when the session's stack stops.
    """
    specs = [
        replace(
            spec,
            port=0,
            health_services=("", *services_of(spec.name)),
            extra_env={"SKM_POSTGRES_DSN": mesh_dsn, **_EXTRA_ENV.get(spec.name, {})},
        )
        for spec in default_services(env={})
    ]
    stack.start_services(specs)
    stack.start_envoy()
    return stack


@pytest.fixture(scope="session")
def real_engine(toolchain: Toolchain, mesh_key_file: Path) -> Iterator[RunningStack]:
    """An LLM engine serving the catalogue's REAL models, for the tenants of the modules that
    talk to a real model (the mesh's own engine serves the untrained fixtures)."""
    state = Path(tempfile.mkdtemp(prefix="skm-test-real-llm-"))
    running = Stack(
        state_dir=state,
        components=("llm",),
        ports=EPHEMERAL_PORTS,
        toolchain=toolchain,
        durable=False,
        mesh_key_file=mesh_key_file,
        llm_serve="real",
    ).start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(state, ignore_errors=True)
