"""Profile resolution, cached and uncached: what a turn pays to learn which models serve a role.

One run starts PostgreSQL and one svc_profiles process (the deployment defaults of the
repository), gives a tenant a PRIMARY profile and a persona with a PRIMARY preference, and
alternates rounds of sequential calls resolving PRIMARY for a session of that persona:

  uncached  ResolveModelProfile over gRPC to svc_profiles, with a mesh-signed principal (what
            svc_conversation asks on a cache miss): the tenant's profile, the persona and the
            registered models read from PostgreSQL on every call
  core      svc_profiles' own resolution (`Profiles.resolve`) in the bench process
            over the same database, no gRPC: the database's share of `uncached`
  cached    svc_conversation's lookups (core/lookups.py) over the same gRPC client, answered
            from its cache while fresh (5 s): what every turn after the first pays

Reported: p50 and p99 of each, in microseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    persona_pb2,
    persona_service_pb2,
    persona_service_pb2_grpc,
)
from skm.type.v1 import deployment_mode_pb2, model_pb2
from skm_runtime.access import Principal
from skm_runtime.principal import configure_mesh_key, principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_runtime.values import DeploymentMode, ModelRole
from skm_stack import EPHEMERAL_PORTS, Stack
from skm_stack.services import ServiceSpec
from svc_conversation.adapters.mesh import GrpcProfiles
from svc_conversation.core.lookups import Lookups
from svc_conversation.model import Session
from svc_profiles.adapters.defaults import load_defaults, with_served_engine
from svc_profiles.adapters.keys import Ed25519PersonaKeys
from svc_profiles.adapters.postgres import PostgresProfileStore
from svc_profiles.core import Profiles
from svc_profiles.settings import DEFAULTS_FILE

TENANT = "tenants/bench"
PERSONA = f"{TENANT}/personas/resolver"
MODEL = "models/qwen2.5-coder-0.5b-instruct"
ADMIN = Principal(TENANT, f"{TENANT}/users/admin", ("admin",))


def _metadata(principal: Principal) -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))


async def _setup(channel: grpc.aio.Channel) -> None:
    profiles = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
    personas = persona_service_pb2_grpc.PersonaServiceStub(channel)
    await profiles.CreateModelProfile(
        model_profile_service_pb2.CreateModelProfileRequest(
            parent=TENANT,
            model_profile=model_profile_pb2.ModelProfile(
                role=model_pb2.MODEL_ROLE_PRIMARY,
                mode=deployment_mode_pb2.DEPLOYMENT_MODE_PRODUCTION,
                model_tiers=[MODEL],
                max_output_tokens=512,
            ),
        ),
        metadata=_metadata(ADMIN),
    )
    await personas.CreatePersona(
        persona_service_pb2.CreatePersonaRequest(
            parent=TENANT,
            persona_id="resolver",
            persona=persona_pb2.Persona(
                display_name="Resolver",
                system_prompt="You answer briefly.",
                model_preferences=[model_profile_pb2.ModelOverride(role=model_pb2.MODEL_ROLE_PRIMARY, temperature=0.2)],
            ),
        ),
        metadata=_metadata(ADMIN),
    )


async def _timed(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    seconds: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - start)
    return seconds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _against(addr: str, dsn: str, rounds: int, calls: int) -> None:
    channel = signed_channel(addr)
    store = await PostgresProfileStore.open(dsn)
    try:
        await _setup(channel)
        stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
        request = model_profile_service_pb2.ResolveModelProfileRequest(
            parent=TENANT,
            role=model_pb2.MODEL_ROLE_PRIMARY,
            mode=deployment_mode_pb2.DEPLOYMENT_MODE_PRODUCTION,
            persona=PERSONA,
        )
        metadata = _metadata(ADMIN)
        # The service's own resolution over the same database, without its server.
        core = Profiles(
            store,
            Ed25519PersonaKeys({}),
            with_served_engine(load_defaults(DEFAULTS_FILE)),
            now=lambda: datetime.now(UTC),
        )
        lookups = Lookups(GrpcProfiles(channel), tools=None)  # type: ignore[arg-type]  # only resolve() is used
        session = Session(name=f"{TENANT}/sessions/bench", persona=PERSONA, mode=DeploymentMode.PRODUCTION)

        async def uncached() -> object:
            return await stub.ResolveModelProfile(request, metadata=metadata)

        async def in_core() -> object:
            return await core.resolve(TENANT, ModelRole.PRIMARY, DeploymentMode.PRODUCTION, PERSONA, ())

        async def cached() -> object:
            return await lookups.resolve(ADMIN, ModelRole.PRIMARY, session)

        paths = {"uncached": uncached, "core": in_core, "cached": cached}
        for call in paths.values():  # warm up: connections, the cache's first answer
            await _timed(call, 20)
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        for round_index in range(rounds):
            names = list(paths)
            names = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in names:
                seconds[name] += await _timed(paths[name], calls)
        print(f"  {'path':10} {'p50 us':>10} {'p99 us':>10}   ({rounds} rounds x {calls} sequential calls)")
        for name, values in seconds.items():
            print(f"  {name:10} {_percentile(values, 0.5) * 1e6:10.0f} {_percentile(values, 0.99) * 1e6:10.0f}")
        p50 = {name: statistics.median(values) for name, values in seconds.items()}
        print(f"  uncached / cached p50: {p50['uncached'] / p50['cached']:.0f}x")
    finally:
        await store.close()
        await channel.close()


def main(rounds: int = 5, calls: int = 400) -> None:
    print("\n== profile resolution (svc_profiles on PostgreSQL; svc_conversation's cache) ==", flush=True)
    spec = ServiceSpec(
        name="profiles",
        module="svc_profiles",
        port=0,
        health_services=("", "skm.profiles.v1.ModelProfileService"),
        extra_env={"SKM_LOG_LEVEL": "WARNING"},
    )
    with tempfile.TemporaryDirectory(prefix="skm-bench-profiles-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False, components=("postgres",)).start()
        try:
            stack.start_services([spec])
            addr = stack.service_specs[-1].addr
            assert stack.postgres is not None
            configure_mesh_key(stack.mesh_key_file)  # svc_profiles serves callers of the mesh only
            asyncio.run(_against(addr, stack.postgres.dsn, rounds, calls))
        finally:
            stack.stop()
