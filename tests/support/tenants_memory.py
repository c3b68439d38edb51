"""In-memory implementations of the ports of svc_profiles's tenant onboarding (TenantStore,
TenantPolicy, ToolCatalogue), for the core's unit tests. Each behaves as its real adapter
does: svc_policy accepts relationships it already has and compares constitutions by etag;
an unreachable dependency raises ServiceUnavailable."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from skm_runtime.errors import ServiceUnavailable
from svc_profiles.errors import EtagMismatch
from svc_profiles.model import CatalogueTool, Constitution, Relationship, Tenant, TenantState

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class MemoryTenantStore:
    """ports.TenantStore; `events` holds the tenants whose TenantOnboarded event was written."""

    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}
        self.events: list[Tenant] = []

    async def get_tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    async def insert_tenant(self, tenant: Tenant) -> bool:
        if tenant.name in self.tenants:
            return False
        self.tenants[tenant.name] = dataclasses.replace(
            tenant, state=TenantState.PROVISIONING, update_time=tenant.create_time
        )
        return True

    async def activate_tenant(self, tenant: Tenant) -> bool:
        stored = self.tenants.get(tenant.name)
        if stored is None or stored.state is not TenantState.PROVISIONING:
            return False
        self.tenants[tenant.name] = tenant
        self.events.append(tenant)
        return True

    async def list_tenants(self, after: str, limit: int) -> list[Tenant]:
        return [self.tenants[name] for name in sorted(self.tenants) if name > after][:limit]


class MemoryTenantPolicy:
    """ports.TenantPolicy over sets; `reachable` False makes every call fail as svc_policy's
    adapter does when it cannot be reached."""

    def __init__(self) -> None:
        self.relationships: dict[str, set[Relationship]] = {}
        self.constitutions: dict[str, Constitution] = {}
        self.reachable = True
        self.writes = 0

    def _check(self) -> None:
        if not self.reachable:
            raise ServiceUnavailable("svc_policy could not be reached (UNAVAILABLE)", metadata={"dependency": "policy"})

    async def write_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        self._check()
        self.writes += 1
        self.relationships.setdefault(tenant, set()).update(relationships)

    async def delete_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        self._check()
        self.relationships.setdefault(tenant, set()).difference_update(relationships)

    async def read_relationships(
        self, tenant: str, subject: str = "", relation: str = "", object: str = ""
    ) -> list[Relationship]:
        self._check()

        def matches(r: Relationship) -> bool:
            if subject and r.subject != subject:
                return False
            if relation and r.relation != relation:
                return False
            if object.endswith(":"):
                return r.object.startswith(object)
            return not object or r.object == object

        found = [r for r in self.relationships.get(tenant, set()) if matches(r)]
        return sorted(found, key=lambda r: (r.object, r.relation, r.subject))

    async def constitution(self, tenant: str) -> Constitution:
        self._check()
        return self.constitutions.get(tenant, Constitution("", EMPTY_SHA256, ""))

    async def replace_constitution(self, tenant: str, content: str, etag: str) -> Constitution:
        self._check()
        if etag != self.constitutions.get(tenant, Constitution("", EMPTY_SHA256, "")).etag:
            raise EtagMismatch("the constitution changed meanwhile", metadata={"tenant": tenant})
        sha = hashlib.sha256(content.encode()).hexdigest()
        stored = Constitution(content, sha, f"e{len(self.constitutions)}-{sha[:8]}")
        self.constitutions[tenant] = stored
        return stored


class MemoryToolCatalogue:
    """ports.ToolCatalogue: the same tools for every tenant."""

    def __init__(self, tools: Sequence[CatalogueTool]) -> None:
        self.catalogue = list(tools)
        self.reachable = True

    async def tools(self, tenant: str) -> list[CatalogueTool]:
        if not self.reachable:
            raise ServiceUnavailable(
                "svc_tools could not list its tools (UNAVAILABLE)", metadata={"dependency": "tools"}
            )
        return list(self.catalogue)
