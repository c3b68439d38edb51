"""Tenant onboarding: what a new tenant needs before its first user can talk to an agent.

A tenant exists for svc_policy as soon as a relationship names it; what makes it usable is
the set of relationships that let its users, the built-in personas and the catalogue's tools
meet, plus a constitution whose digest its tokens carry. `create_tenant` writes all of them,
in the contract's order (skm.profiles.v1.Tenant):

1. the record, PROVISIONING (so a create that stops half way is visible and resumable);
2. the constitution, only when the tenant has none (a tenant's own document is never
   replaced; the caller's, else the deployment's default);
3. the first admins: `user:tenants/t/users/u admin tenant:tenants/t`;
4. the default risk level of each catalogue tool: `tenant:T tenant tool:...` and one risk
   link, `low_risk` for LOW and MEDIUM, `high_risk` for HIGH, unless the tenant already links
   that tool to a risk level (its own choice is kept: the model wants exactly one);
5. the built-in personas' permissions: `tenant:T tenant persona:...`, `persona_user` on each
   allowed tool of the catalogue, and `persona_writer` on each memory namespace the persona
   names: a shared area ("solutions") as "tenants/t/memoryNamespaces/{area}", shared with the
   tenant; the private area "main" for each first admin, whom onboarding also makes its owner
   (later members' private namespaces are not known here);
6. the record, ACTIVE, with its TenantOnboarded event in the same transaction.

Why MEDIUM is `low_risk`: svc_tools' MEDIUM tools (memory_save, memory_forget, call_subordinate)
change the tenant's data, and each such change is checked again on its own object (a member's
write to shared memory needs approval, a spawn needs `spawner`); only HIGH tools (code
execution) run what the model wrote, so only they are for operators, members asking an
operator's approval.

Every step is idempotent (svc_policy accepts relationships it already has), so a create that
svc_policy or svc_tools interrupted (UNAVAILABLE, the tenant left PROVISIONING) is finished by
calling it again. An ACTIVE tenant created again with the same admins is returned unchanged,
with nothing written.

Tenancy: CreateTenant and ListTenants are internal (the mesh's operators); GetTenant is for
the tenant's members, and another tenant does not exist for them (TENANT_NOT_FOUND).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import datetime

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation
from svc_profiles import checks
from svc_profiles.errors import EtagMismatch, InvalidPageToken, InvalidTenant, TenantAlreadyExists, TenantNotFound
from svc_profiles.model import (
    BuiltInPersona,
    CatalogueTool,
    Relationship,
    Tenant,
    TenantState,
    ToolRisk,
)
from svc_profiles.ports import TenantPolicy, TenantStore, ToolCatalogue

TENANT_PAGE = 50
MAX_DISPLAY_NAME_CHARS = 200
MAX_CONSTITUTION_BYTES = 256 * 1024
MAX_ADMINS = 100

_TENANT_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
# A user id as admission accepts it in a token's `sub` (skm_runtime.tokens): an admin named
# otherwise could never sign in.
_USER_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def tenant_name(tenant_id: str) -> str:
    return f"tenants/{tenant_id}"


def user_name(tenant: str, user: str) -> str:
    """ "tenants/{t}/users/{u}" from a tenant's name and a user's id or full name."""
    return user if user.startswith("tenants/") else f"{tenant}/users/{user}"


def _risk_relation(risk: ToolRisk) -> str:
    return "high_risk" if risk is ToolRisk.HIGH else "low_risk"


def onboarding_relationships(
    tenant: Tenant,
    tools: Sequence[CatalogueTool],
    personas: Sequence[BuiltInPersona],
    *,
    risk_links: Sequence[Relationship] = (),
) -> list[Relationship]:
    """Every relationship onboarding writes for `tenant`, in the contract's order (admins,
    tool risk levels, personas' permissions). `risk_links`: the tenant's existing risk links
    of tools; a tool linked to another level than its default keeps that one."""
    t = f"tenant:{tenant.name}"
    linked = {r.object for r in risk_links}
    out = [Relationship(f"user:{admin}", "admin", t) for admin in tenant.admins]
    catalogue = {tool.tool_id for tool in tools}
    for tool in tools:
        obj = f"tool:{tenant.name}/tools/{tool.tool_id}"
        out.append(Relationship(t, "tenant", obj))
        default = Relationship(t, _risk_relation(tool.risk), obj)
        if obj not in linked or default in risk_links:
            out.append(default)
    namespaces_done: set[str] = set()
    for persona in personas:
        subject = f"persona:{tenant.name}/personas/{persona.persona_id}"
        out.append(Relationship(t, "tenant", subject))
        out += [
            Relationship(subject, "persona_user", f"tool:{tenant.name}/tools/{tool_id}")
            for tool_id in persona.tool_ids
            if tool_id in catalogue
        ]
        for area in persona.memory_namespaces:
            if area == "main":
                owned = [(f"{admin}/memoryNamespaces/main", f"user:{admin}") for admin in tenant.admins]
            else:
                owned = [(f"{tenant.name}/memoryNamespaces/{area}", "")]
            for namespace, owner in owned:
                obj = f"memory_namespace:{namespace}"
                if namespace not in namespaces_done:
                    namespaces_done.add(namespace)
                    out.append(Relationship(t, "tenant", obj))
                    out.append(Relationship(owner, "owner", obj) if owner else Relationship(t, "shared_with", obj))
                out.append(Relationship(subject, "persona_writer", obj))
    return out


class Tenants:
    """The tenant use cases over the tenant store, svc_policy and svc_tools' catalogue."""

    def __init__(
        self,
        store: TenantStore,
        policy: TenantPolicy,
        catalogue: ToolCatalogue,
        personas: Sequence[BuiltInPersona],
        default_constitution: str,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._policy = policy
        self._catalogue = catalogue
        self._personas = tuple(personas)
        self._default_constitution = default_constitution
        self._now = now

    async def create_tenant(self, tenant_id: str, draft: Tenant, constitution: str) -> Tenant:
        """Create and onboard a tenant, or finish onboarding one left PROVISIONING."""
        name = tenant_name(tenant_id)
        admins = self._checked(tenant_id, name, draft, constitution)
        tenant = await self._recorded(
            Tenant(name=name, display_name=draft.display_name, admins=admins, create_time=self._now())
        )
        if tenant.state is TenantState.ACTIVE:
            return tenant
        sha256 = await self._constitution(name, constitution or self._default_constitution)
        tools = await self._catalogue.tools(name)
        risk_links = await self._risk_links(name)
        relationships = onboarding_relationships(tenant, tools, self._personas, risk_links=risk_links)
        await self._policy.write_relationships(name, relationships)
        active = dataclasses.replace(
            tenant,
            state=TenantState.ACTIVE,
            constitution_sha256=sha256,
            personas=tuple(f"{name}/personas/{p.persona_id}" for p in self._personas),
            relationship_count=len(relationships),
            update_time=self._now(),
        )
        if await self._store.activate_tenant(active):
            return active
        # Another create finished it meanwhile: theirs is the record.
        return await self._found(name)

    async def get_tenant(self, name: str, principal: Principal | None) -> Tenant:
        checks.tenant_of_parent(name)
        if principal is not None and principal.tenant != name:
            raise TenantNotFound("no such tenant", metadata={"tenant": name})
        return await self._found(name)

    async def list_tenants(self, page_size: int, page_token: str) -> tuple[list[Tenant], str]:
        size = checks.page_size_of(page_size, TENANT_PAGE)
        after = checks.position_of(page_token, "tenants")
        if after is not None and not isinstance(after, str):
            raise InvalidPageToken("page_token is not one this service issued")
        found = await self._store.list_tenants(after or "", size + 1)
        page = found[:size]
        return page, checks.token_of("tenants", page[-1].name) if len(found) > size else ""

    # -- steps -----------------------------------------------------------------------------

    @staticmethod
    def _checked(tenant_id: str, name: str, draft: Tenant, constitution: str) -> tuple[str, ...]:
        """The admins' full names, once the request is valid; INVALID_TENANT with every
        problem otherwise."""
        problems: list[FieldViolation] = []
        if not _TENANT_ID.fullmatch(tenant_id):
            problems.append(FieldViolation("tenant_id", "1-63 characters of [a-z0-9-], starting with a letter"))
        if len(draft.display_name) > MAX_DISPLAY_NAME_CHARS:
            problems.append(FieldViolation("tenant.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} characters"))
        if len(constitution.encode()) > MAX_CONSTITUTION_BYTES:
            problems.append(FieldViolation("constitution", f"at most {MAX_CONSTITUTION_BYTES} bytes"))
        if not draft.admins:
            problems.append(FieldViolation("tenant.admins", "at least one admin is required"))
        if len(draft.admins) > MAX_ADMINS:
            problems.append(FieldViolation("tenant.admins", f"at most {MAX_ADMINS} admins"))
        admins: list[str] = []
        for index, admin in enumerate(draft.admins):
            parts = admin.split("/")
            if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "users" or not _USER_ID.fullmatch(parts[3]):
                problems.append(FieldViolation(f"tenant.admins[{index}]", "expected tenants/{tenant}/users/{user}"))
            elif parts[1] != tenant_id:
                problems.append(FieldViolation(f"tenant.admins[{index}]", f"a user of another tenant, not of {name}"))
            elif admin in admins:
                problems.append(FieldViolation(f"tenant.admins[{index}]", "named twice"))
            else:
                admins.append(admin)
        if problems:
            raise InvalidTenant("the tenant is invalid", metadata={"tenant": name[:80]}, violations=problems)
        return tuple(admins)

    async def _recorded(self, new: Tenant) -> Tenant:
        """The stored tenant: `new`, inserted PROVISIONING, or the one already there when it
        has the same admins (TENANT_ALREADY_EXISTS otherwise)."""
        existing = await self._store.get_tenant(new.name)
        if existing is None:
            if await self._store.insert_tenant(new):
                return new
            existing = await self._found(new.name)  # a concurrent create won
        if set(existing.admins) != set(new.admins):
            raise TenantAlreadyExists(
                "the tenant exists with other admins (later admins are relationships)",
                metadata={"tenant": new.name},
            )
        return existing

    async def _risk_links(self, tenant: str) -> list[Relationship]:
        """The tenant's tools already linked to a risk level (by an earlier onboarding or by
        its admins)."""
        low = await self._policy.read_relationships(tenant, relation="low_risk", object="tool:")
        return low + await self._policy.read_relationships(tenant, relation="high_risk", object="tool:")

    async def _constitution(self, tenant: str, content: str) -> str:
        """The digest of the tenant's constitution, after writing `content` if it has none."""
        current = await self._policy.constitution(tenant)
        if current.content:
            return current.sha256
        try:
            return (await self._policy.replace_constitution(tenant, content, current.etag)).sha256
        except EtagMismatch:
            # Someone wrote one meanwhile; that one stands.
            return (await self._policy.constitution(tenant)).sha256

    async def _found(self, name: str) -> Tenant:
        found = await self._store.get_tenant(name)
        if found is None:
            raise TenantNotFound("no such tenant", metadata={"tenant": name})
        return found
