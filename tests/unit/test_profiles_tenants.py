"""Tenant onboarding's use cases (svc_profiles.core.tenants) over in-memory ports: what a
create writes, in which state it leaves the tenant, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from svc_profiles.core.tenants import Tenants, onboarding_relationships
from svc_profiles.errors import InvalidPageToken, InvalidTenant, TenantAlreadyExists, TenantNotFound
from svc_profiles.model import BuiltInPersona, CatalogueTool, Relationship, Tenant, TenantState, ToolRisk
from tests.support.tenants_memory import MemoryTenantPolicy, MemoryTenantStore, MemoryToolCatalogue

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DEFAULT_CONSTITUTION = "# Be kind\n"
TOOLS = [
    CatalogueTool("code_execution", ToolRisk.HIGH),
    CatalogueTool("memory_load", ToolRisk.LOW),
    CatalogueTool("memory_save", ToolRisk.MEDIUM),
    CatalogueTool("response", ToolRisk.LOW),
]
PERSONAS = [
    BuiltInPersona(
        "default",
        "Agent",
        "prompt",
        # `browser` is not in the catalogue: no permission is written for it.
        tool_ids=("code_execution", "response", "memory_save", "browser"),
        memory_namespaces=("main", "solutions"),
    ),
    BuiltInPersona("coder", "Coder", "prompt", tool_ids=("code_execution",)),
]


class World:
    def __init__(self) -> None:
        self.store = MemoryTenantStore()
        self.policy = MemoryTenantPolicy()
        self.catalogue = MemoryToolCatalogue(TOOLS)
        self.tenants = Tenants(self.store, self.policy, self.catalogue, PERSONAS, DEFAULT_CONSTITUTION, now=lambda: NOW)

    def written(self, tenant: str = "tenants/t1") -> set[tuple[str, str, str]]:
        return {(r.subject, r.relation, r.object) for r in self.policy.relationships.get(tenant, set())}


def draft(*admins: str, display_name: str = "") -> Tenant:
    return Tenant(name="", display_name=display_name, admins=admins)


EXPECTED_T1 = {
    ("user:tenants/t1/users/alice", "admin", "tenant:tenants/t1"),
    ("tenant:tenants/t1", "tenant", "tool:tenants/t1/tools/code_execution"),
    ("tenant:tenants/t1", "high_risk", "tool:tenants/t1/tools/code_execution"),
    ("tenant:tenants/t1", "tenant", "tool:tenants/t1/tools/memory_load"),
    ("tenant:tenants/t1", "low_risk", "tool:tenants/t1/tools/memory_load"),
    ("tenant:tenants/t1", "tenant", "tool:tenants/t1/tools/memory_save"),
    ("tenant:tenants/t1", "low_risk", "tool:tenants/t1/tools/memory_save"),
    ("tenant:tenants/t1", "tenant", "tool:tenants/t1/tools/response"),
    ("tenant:tenants/t1", "low_risk", "tool:tenants/t1/tools/response"),
    ("tenant:tenants/t1", "tenant", "persona:tenants/t1/personas/default"),
    ("persona:tenants/t1/personas/default", "persona_user", "tool:tenants/t1/tools/code_execution"),
    ("persona:tenants/t1/personas/default", "persona_user", "tool:tenants/t1/tools/response"),
    ("persona:tenants/t1/personas/default", "persona_user", "tool:tenants/t1/tools/memory_save"),
    ("tenant:tenants/t1", "tenant", "memory_namespace:tenants/t1/users/alice/memoryNamespaces/main"),
    ("user:tenants/t1/users/alice", "owner", "memory_namespace:tenants/t1/users/alice/memoryNamespaces/main"),
    (
        "persona:tenants/t1/personas/default",
        "persona_writer",
        "memory_namespace:tenants/t1/users/alice/memoryNamespaces/main",
    ),
    ("tenant:tenants/t1", "tenant", "memory_namespace:tenants/t1/memoryNamespaces/solutions"),
    ("tenant:tenants/t1", "shared_with", "memory_namespace:tenants/t1/memoryNamespaces/solutions"),
    ("persona:tenants/t1/personas/default", "persona_writer", "memory_namespace:tenants/t1/memoryNamespaces/solutions"),
    ("tenant:tenants/t1", "tenant", "persona:tenants/t1/personas/coder"),
    ("persona:tenants/t1/personas/coder", "persona_user", "tool:tenants/t1/tools/code_execution"),
}


async def test_create_writes_constitution_admins_tools_and_personas_and_ends_active() -> None:
    world = World()
    tenant = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice", display_name="T one"), "")
    assert world.written() == EXPECTED_T1
    assert tenant.state is TenantState.ACTIVE
    assert tenant.name == "tenants/t1"
    assert tenant.display_name == "T one"
    assert tenant.admins == ("tenants/t1/users/alice",)
    assert tenant.personas == ("tenants/t1/personas/default", "tenants/t1/personas/coder")
    assert tenant.relationship_count == len(EXPECTED_T1)
    assert world.policy.constitutions["tenants/t1"].content == DEFAULT_CONSTITUTION
    assert tenant.constitution_sha256 == world.policy.constitutions["tenants/t1"].sha256
    assert (tenant.create_time, tenant.update_time) == (NOW, NOW)
    assert world.store.events == [tenant]
    assert await world.tenants.get_tenant("tenants/t1", None) == tenant


async def test_the_callers_constitution_is_written_when_the_tenant_has_none() -> None:
    world = World()
    await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "# Ours\n")
    assert world.policy.constitutions["tenants/t1"].content == "# Ours\n"


async def test_a_constitution_the_tenant_has_is_kept() -> None:
    world = World()
    own = await world.policy.replace_constitution("tenants/t1", "# Own\n", "")
    tenant = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "# Other\n")
    assert world.policy.constitutions["tenants/t1"] == own
    assert tenant.constitution_sha256 == own.sha256


async def test_a_tools_risk_level_chosen_by_the_tenant_is_kept() -> None:
    world = World()
    chosen = Relationship("tenant:tenants/t1", "low_risk", "tool:tenants/t1/tools/code_execution")
    await world.policy.write_relationships("tenants/t1", [chosen])
    await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    written = world.written()
    assert ("tenant:tenants/t1", "low_risk", "tool:tenants/t1/tools/code_execution") in written
    assert ("tenant:tenants/t1", "high_risk", "tool:tenants/t1/tools/code_execution") not in written


async def test_creating_an_active_tenant_again_returns_it_and_writes_nothing() -> None:
    world = World()
    first = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    writes = world.policy.writes
    again = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "# Other\n")
    assert again == first
    assert world.policy.writes == writes
    assert len(world.store.events) == 1


async def test_other_admins_for_an_existing_tenant_are_refused() -> None:
    world = World()
    await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    with pytest.raises(TenantAlreadyExists):
        await world.tenants.create_tenant("t1", draft("tenants/t1/users/bob"), "")


async def test_a_create_stopped_by_svc_policy_leaves_provisioning_and_a_second_call_finishes_it() -> None:
    world = World()
    world.policy.reachable = False
    with pytest.raises(ServiceUnavailable):
        await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    left = await world.tenants.get_tenant("tenants/t1", None)
    assert left.state is TenantState.PROVISIONING
    assert world.store.events == []
    world.policy.reachable = True
    done = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    assert done.state is TenantState.ACTIVE
    assert world.written() == EXPECTED_T1
    assert len(world.store.events) == 1


async def test_a_create_stopped_by_svc_tools_is_finished_by_a_second_call() -> None:
    world = World()
    world.catalogue.reachable = False
    with pytest.raises(ServiceUnavailable):
        await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    assert (await world.tenants.get_tenant("tenants/t1", None)).state is TenantState.PROVISIONING
    world.catalogue.reachable = True
    done = await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    assert done.state is TenantState.ACTIVE
    assert done.relationship_count == len(EXPECTED_T1)


@pytest.mark.parametrize(
    ("tenant_id", "admins", "constitution", "field"),
    [
        ("T1", ("tenants/T1/users/alice",), "", "tenant_id"),
        ("1t", ("tenants/1t/users/alice",), "", "tenant_id"),
        ("", ("tenants//users/alice",), "", "tenant_id"),
        ("a" * 64, (f"tenants/{'a' * 64}/users/alice",), "", "tenant_id"),
        ("t1", (), "", "tenant.admins"),
        ("t1", ("tenants/t2/users/alice",), "", "tenant.admins[0]"),
        ("t1", ("alice",), "", "tenant.admins[0]"),
        ("t1", ("tenants/t1/users/a/b",), "", "tenant.admins[0]"),
        # Not a user id a token's `sub` may carry: such an admin could never sign in.
        ("t1", ("tenants/t1/users/alice@example.com",), "", "tenant.admins[0]"),
        ("t1", ("tenants/t1/users/alice", "tenants/t1/users/alice"), "", "tenant.admins[1]"),
        ("t1", ("tenants/t1/users/alice",), "x" * (256 * 1024 + 1), "constitution"),
    ],
)
async def test_invalid_requests_are_refused_and_nothing_is_written(
    tenant_id: str, admins: tuple[str, ...], constitution: str, field: str
) -> None:
    world = World()
    with pytest.raises(InvalidTenant) as refused:
        await world.tenants.create_tenant(tenant_id, draft(*admins), constitution)
    assert field in [v.field for v in refused.value.violations]
    assert world.store.tenants == {}
    assert world.policy.relationships == {}


async def test_a_long_display_name_is_refused() -> None:
    world = World()
    with pytest.raises(InvalidTenant) as refused:
        await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice", display_name="x" * 201), "")
    assert [v.field for v in refused.value.violations] == ["tenant.display_name"]


async def test_a_member_sees_only_their_own_tenant() -> None:
    world = World()
    await world.tenants.create_tenant("t1", draft("tenants/t1/users/alice"), "")
    await world.tenants.create_tenant("t2", draft("tenants/t2/users/bob"), "")
    alice = Principal("tenants/t1", "tenants/t1/users/alice", ("member",))
    assert (await world.tenants.get_tenant("tenants/t1", alice)).name == "tenants/t1"
    with pytest.raises(TenantNotFound):
        await world.tenants.get_tenant("tenants/t2", alice)
    with pytest.raises(TenantNotFound):
        await world.tenants.get_tenant("tenants/t3", None)


async def test_tenants_are_listed_by_name_page_by_page() -> None:
    world = World()
    for tenant_id in ("c", "a", "b"):
        await world.tenants.create_tenant(tenant_id, draft(f"tenants/{tenant_id}/users/u"), "")
    first, token = await world.tenants.list_tenants(2, "")
    assert [t.name for t in first] == ["tenants/a", "tenants/b"]
    rest, last = await world.tenants.list_tenants(2, token)
    assert ([t.name for t in rest], last) == (["tenants/c"], "")
    with pytest.raises(InvalidPageToken):
        await world.tenants.list_tenants(2, "not-a-token")


def test_persona_permissions_name_only_the_catalogues_tools() -> None:
    tenant = Tenant("tenants/t1", "", ("tenants/t1/users/alice",))
    relationships = onboarding_relationships(tenant, TOOLS, PERSONAS)
    assert not [r for r in relationships if r.object.endswith("/tools/browser")]
