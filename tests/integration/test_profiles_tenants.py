"""Tenant onboarding through svc_profiles's TenantService on the real servers: svc_policy on
OpenFGA, svc_tools' catalogue, PostgreSQL (the tenants table and the outbox)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs

from skm.events.v1 import event_pb2
from skm.policy.v1 import (
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.profiles.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from skm.tools.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import details_of, error_info_of
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from svc_profiles.__main__ import build
from svc_profiles.adapters.postgres_scoring import PostgresScoringStore
from svc_profiles.adapters.postgres_tenants import PostgresTenantStore
from svc_profiles.model import Tenant, TenantState
from svc_profiles.ports import TenantStore
from svc_profiles.settings import CONSTITUTION_FILE, ProfilesSettings
from tests.support.ports import free_port
from tests.support.runtime import Served, serving
from tests.support.tenants_memory import MemoryTenantStore
from tests.support.tools import ToolsServer, policy_settings, serving_tools, tools_settings

ACTIVE = tenant_pb2.Tenant.STATE_ACTIVE
PROVISIONING = tenant_pb2.Tenant.STATE_PROVISIONING
# deploy/profiles/defaults.yaml's built-in personas: their tools and memory areas.
PERSONAS = ("default", "coder")
PERSONA_TOOLS = ("code_execution", "response", "call_subordinate", "memory_save", "memory_load")
SHARED_AREAS = ("fragments", "solutions")


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


@pytest.fixture(scope="module")
async def tools(stack: RunningStack, policy: Served) -> AsyncIterator[ToolsServer]:
    async with serving_tools(tools_settings(stack, policy.target, slot_group=9)) as served:
        yield served


def _settings(stack: RunningStack, policy_addr: str, tools_addr: str) -> ProfilesSettings:
    return ProfilesSettings(
        addr="127.0.0.1:0",
        postgres_dsn=stack.postgres_dsn,
        kafka_bootstrap=stack.kafka_bootstrap,
        policy_addr=policy_addr,
        tools_addr=tools_addr,
    )


@pytest.fixture(scope="module")
async def profiles(stack: RunningStack, policy: Served, tools: ToolsServer) -> AsyncIterator[Served]:
    spec = await build(_settings(stack, policy.target, tools.target), RuntimeSettings())
    async with serving(spec, record_spans=False) as served:
        yield served


@pytest.fixture
async def stub(profiles: Served) -> AsyncIterator[tenant_service_pb2_grpc.TenantServiceAsyncStub]:
    async with signed_channel(profiles.target) as channel:
        yield tenant_service_pb2_grpc.TenantServiceStub(channel)


def _new_id() -> str:
    return f"o{uuid.uuid4().hex[:10]}"


def _create_request(tenant_id: str, *admins: str, constitution: str = "") -> tenant_service_pb2.CreateTenantRequest:
    return tenant_service_pb2.CreateTenantRequest(
        tenant_id=tenant_id,
        tenant=tenant_pb2.Tenant(display_name="Onboarded", admins=list(admins)),
        constitution=constitution,
    )


async def _relationships(policy: Served, tenant: str) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    async with signed_channel(policy.target) as channel:
        stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        for object_type in ("tenant:", "tool:", "persona:", "memory_namespace:"):
            token = ""
            while True:
                reply = await stub.ReadRelationships(
                    policy_service_pb2.ReadRelationshipsRequest(
                        parent=tenant, object=object_type, page_size=1000, page_token=token
                    ),
                    timeout=10,
                )
                found |= {(r.subject, r.relation, r.object) for r in reply.relationships}
                token = reply.next_page_token
                if not token:
                    break
    return found


async def _catalogue(tools: ToolsServer, tenant: str) -> list[tool_pb2.Tool]:
    async with signed_channel(tools.target) as channel:
        reply = await tool_service_pb2_grpc.ToolServiceStub(channel).ListTools(
            tool_service_pb2.ListToolsRequest(parent=tenant, page_size=1000), timeout=10
        )
    return list(reply.tools)


def _expected(tenant: str, admin: str, catalogue: list[tool_pb2.Tool]) -> set[tuple[str, str, str]]:
    """What onboarding must write, spelled out from the model's relations."""
    t = f"tenant:{tenant}"
    user = f"{tenant}/users/{admin}"
    out = {(f"user:{user}", "admin", t)}
    for tool in catalogue:
        risk = "high_risk" if tool.risk_level == tool_pb2.RISK_LEVEL_HIGH else "low_risk"
        out |= {(t, "tenant", f"tool:{tool.name}"), (t, risk, f"tool:{tool.name}")}
    main = f"memory_namespace:{user}/memoryNamespaces/main"
    out |= {(t, "tenant", main), (f"user:{user}", "owner", main)}
    for area in SHARED_AREAS:
        shared = f"memory_namespace:{tenant}/memoryNamespaces/{area}"
        out |= {(t, "tenant", shared), (t, "shared_with", shared)}
    for persona_id in PERSONAS:
        persona = f"persona:{tenant}/personas/{persona_id}"
        out.add((t, "tenant", persona))
        out |= {(persona, "persona_user", f"tool:{tenant}/tools/{tool}") for tool in PERSONA_TOOLS}
        out.add((persona, "persona_writer", main))
        out |= {
            (persona, "persona_writer", f"memory_namespace:{tenant}/memoryNamespaces/{area}") for area in SHARED_AREAS
        }
    return out


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a BadRequest detail of the error names."""
    status = details_of(error.trailing_metadata())
    assert status is not None
    fields: list[str] = []
    for holder in status.details:
        if holder.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            holder.Unpack(bad)
            fields += [violation.field for violation in bad.field_violations]
    return fields


async def _onboarded_events(stack: RunningStack, tenant: str) -> list[event_pb2.Event]:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT value FROM profiles.outbox WHERE topic = 'profiles' AND key = $1", tenant.encode()
        )
    finally:
        await conn.close()
    events = [event_pb2.Event.FromString(row["value"]) for row in rows]
    return [e for e in events if e.WhichOneof("payload") == "tenant_onboarded"]


async def test_onboarding_writes_exactly_the_tuples_constitution_and_event(
    stack: RunningStack,
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub,
    policy: Served,
    tools: ToolsServer,
) -> None:
    tenant_id = _new_id()
    tenant = f"tenants/{tenant_id}"
    reply = await stub.CreateTenant(_create_request(tenant_id, f"{tenant}/users/alice"), timeout=60)
    made = reply.tenant
    assert made.name == tenant
    assert made.state == ACTIVE
    assert list(made.admins) == [f"{tenant}/users/alice"]
    assert list(made.personas) == [f"{tenant}/personas/{p}" for p in PERSONAS]
    expected = _expected(tenant, "alice", await _catalogue(tools, tenant))
    assert await _relationships(policy, tenant) == expected
    assert made.relationship_count == len(expected)
    async with signed_channel(policy.target) as channel:
        constitution = (
            await constitution_service_pb2_grpc.ConstitutionServiceStub(channel).GetConstitution(
                constitution_service_pb2.GetConstitutionRequest(name=f"{tenant}/constitution"), timeout=10
            )
        ).constitution
    assert constitution.content == CONSTITUTION_FILE.read_text(encoding="utf-8")
    assert made.constitution_sha256 == constitution.sha256
    events = await _onboarded_events(stack, tenant)
    assert [e.tenant_onboarded.tenant for e in events] == [made]
    assert events[0].source == "profiles"
    got = await stub.GetTenant(tenant_service_pb2.GetTenantRequest(name=tenant), timeout=10)
    assert got.tenant == made


async def test_creating_again_is_idempotent(
    stack: RunningStack, stub: tenant_service_pb2_grpc.TenantServiceAsyncStub, policy: Served
) -> None:
    tenant_id = _new_id()
    tenant = f"tenants/{tenant_id}"
    first = (await stub.CreateTenant(_create_request(tenant_id, f"{tenant}/users/alice"), timeout=60)).tenant
    written = await _relationships(policy, tenant)
    again = (
        await stub.CreateTenant(_create_request(tenant_id, f"{tenant}/users/alice", constitution="# Other"), timeout=60)
    ).tenant
    assert again == first
    assert await _relationships(policy, tenant) == written
    assert len(await _onboarded_events(stack, tenant)) == 1


async def test_the_callers_constitution_is_written(stub: tenant_service_pb2_grpc.TenantServiceAsyncStub) -> None:
    tenant_id = _new_id()
    made = (
        await stub.CreateTenant(
            _create_request(tenant_id, f"tenants/{tenant_id}/users/alice", constitution="# Ours\n"), timeout=60
        )
    ).tenant
    assert made.constitution_sha256 == hashlib.sha256(b"# Ours\n").hexdigest()


async def test_a_tenant_left_provisioning_by_an_unreachable_policy_is_finished_by_a_second_call(
    stack: RunningStack,
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub,
    policy: Served,
    tools: ToolsServer,
) -> None:
    tenant_id = _new_id()
    tenant = f"tenants/{tenant_id}"
    nowhere = f"127.0.0.1:{free_port()}"
    cut_off = await build(_settings(stack, nowhere, tools.target), RuntimeSettings())
    async with serving(cut_off, record_spans=False) as broken, signed_channel(broken.target) as channel:
        broken_stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await broken_stub.CreateTenant(_create_request(tenant_id, f"{tenant}/users/alice"), timeout=60)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        left = (await broken_stub.GetTenant(tenant_service_pb2.GetTenantRequest(name=tenant), timeout=10)).tenant
        assert left.state == PROVISIONING
    assert await _relationships(policy, tenant) == set()
    assert await _onboarded_events(stack, tenant) == []
    done = (await stub.CreateTenant(_create_request(tenant_id, f"{tenant}/users/alice"), timeout=60)).tenant
    assert done.state == ACTIVE
    assert done.create_time == left.create_time
    assert await _relationships(policy, tenant) == _expected(tenant, "alice", await _catalogue(tools, tenant))
    assert len(await _onboarded_events(stack, tenant)) == 1


@pytest.mark.parametrize(
    ("tenant_id", "admins", "field"),
    [
        ("Bad_Id", ("tenants/Bad_Id/users/alice",), "tenant_id"),
        ("ok-{}", (), "tenant.admins"),
        ("ok-{}", ("tenants/someone-else/users/alice",), "tenant.admins[0]"),
        ("ok-{}", ("alice",), "tenant.admins[0]"),
    ],
)
async def test_invalid_tenants_are_refused(
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub,
    policy: Served,
    tenant_id: str,
    admins: tuple[str, ...],
    field: str,
) -> None:
    tenant_id = tenant_id.format(uuid.uuid4().hex[:8])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateTenant(_create_request(tenant_id, *admins), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(refused.value)
    assert info is not None
    assert (info.reason, info.domain) == ("INVALID_TENANT", "profiles.skm")
    assert field in _violations(refused.value)
    if tenant_id.startswith("ok-"):
        assert await _relationships(policy, f"tenants/{tenant_id}") == set()


async def test_other_admins_for_an_existing_tenant_are_refused(
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub,
) -> None:
    tenant_id = _new_id()
    await stub.CreateTenant(_create_request(tenant_id, f"tenants/{tenant_id}/users/alice"), timeout=60)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateTenant(_create_request(tenant_id, f"tenants/{tenant_id}/users/bob"), timeout=60)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    info = error_info_of(refused.value)
    assert info is not None
    assert info.reason == "TENANT_ALREADY_EXISTS"


async def test_a_member_of_another_tenant_gets_not_found(
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub,
) -> None:
    tenant_id = _new_id()
    await stub.CreateTenant(_create_request(tenant_id, f"tenants/{tenant_id}/users/alice"), timeout=60)
    stranger = principal_metadata(principal_message("tenants/elsewhere", "tenants/elsewhere/users/eve", ["admin"]))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetTenant(
            tenant_service_pb2.GetTenantRequest(name=f"tenants/{tenant_id}"), metadata=stranger, timeout=10
        )
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    info = error_info_of(refused.value)
    assert info is not None
    assert info.reason == "TENANT_NOT_FOUND"
    member = principal_metadata(
        principal_message(f"tenants/{tenant_id}", f"tenants/{tenant_id}/users/alice", ["member"])
    )
    got = await stub.GetTenant(
        tenant_service_pb2.GetTenantRequest(name=f"tenants/{tenant_id}"), metadata=member, timeout=10
    )
    assert got.tenant.state == ACTIVE


async def test_tenants_are_listed_by_name(stub: tenant_service_pb2_grpc.TenantServiceAsyncStub) -> None:
    ids = sorted(_new_id() for _ in range(2))
    for tenant_id in ids:
        await stub.CreateTenant(_create_request(tenant_id, f"tenants/{tenant_id}/users/alice"), timeout=60)
    names: list[str] = []
    token = ""
    while True:
        reply = await stub.ListTenants(tenant_service_pb2.ListTenantsRequest(page_size=1, page_token=token), timeout=10)
        assert len(reply.tenants) <= 1
        names += [t.name for t in reply.tenants]
        token = reply.next_page_token
        if not token:
            break
    assert names == sorted(names)
    assert {f"tenants/{i}" for i in ids} <= set(names)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListTenants(tenant_service_pb2.ListTenantsRequest(page_token="bogus"), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# -- the tenant store: one behaviour, the Postgres adapter and the unit tests' in-memory one ----


@pytest.fixture(params=["postgres", "memory"])
async def store(request: pytest.FixtureRequest, stack: RunningStack) -> AsyncIterator[TenantStore]:
    if request.param == "memory":
        yield MemoryTenantStore()
        return
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=2)
    try:
        postgres = PostgresTenantStore(pool)
        await postgres.migrate()
        yield postgres
    finally:
        await pool.close()


async def test_a_tenant_store_inserts_once_and_activates_once(store: TenantStore) -> None:
    name = f"tenants/{_new_id()}"
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    new = Tenant(name=name, display_name="S", admins=(f"{name}/users/alice",), create_time=at)
    assert await store.get_tenant(name) is None
    assert await store.insert_tenant(new)
    assert not await store.insert_tenant(dataclasses.replace(new, display_name="other"))
    stored = await store.get_tenant(name)
    assert stored == dataclasses.replace(new, state=TenantState.PROVISIONING, update_time=at)
    active = dataclasses.replace(
        new,
        state=TenantState.ACTIVE,
        constitution_sha256="ab" * 32,
        personas=(f"{name}/personas/default",),
        relationship_count=7,
        update_time=at + timedelta(seconds=1),
    )
    assert await store.activate_tenant(active)
    assert not await store.activate_tenant(dataclasses.replace(active, relationship_count=8))
    assert await store.get_tenant(name) == active
    listed = await store.list_tenants(name[:-1], 1000)
    assert active in listed
    assert [t.name for t in listed] == sorted(t.name for t in listed)
    assert await store.list_tenants(name, 1000) == [t for t in listed if t.name > name]


async def test_the_scoring_job_scores_every_onboarded_tenant(
    stub: tenant_service_pb2_grpc.TenantServiceAsyncStub, stack: RunningStack
) -> None:
    """An ACTIVE tenant without a model profile of its own is scored against the deployment
    defaults (its recommendations say what to choose); one left PROVISIONING is not yet."""
    tenant_id = _new_id()
    await stub.CreateTenant(_create_request(tenant_id, f"tenants/{tenant_id}/users/alice"), timeout=60)
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=2)
    try:
        scoring = PostgresScoringStore(pool)
        await scoring.migrate()
        assert f"tenants/{tenant_id}" in await scoring.scoring_tenants()
        half = f"tenants/{_new_id()}"
        await PostgresTenantStore(pool).insert_tenant(
            Tenant(
                name=half,
                display_name="",
                admins=(f"{half}/users/a",),
                state=TenantState.PROVISIONING,
                create_time=datetime.now(UTC),
                update_time=datetime.now(UTC),
            )
        )
        assert half not in await scoring.scoring_tenants()
    finally:
        await pool.close()
