"""svc_gateway's domain: who calls, and what a public method demands."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: tenant "tenants/{t}", user "tenants/{t}/users/{u}", roles."""

    tenant: str
    user: str
    roles: tuple[str, ...]
    constitution_sha256: str


@dataclass(frozen=True, slots=True)
class Rule:
    """A public method's authorization rule (the contract's `skm.options.v1.authz` option)."""

    permission: str
    resource_type: str
    resource_field: str
    any_tenant_member: bool = False
    allow_stale_constitution: bool = False
    # REQUIRES_APPROVAL goes on to the owning service, which holds the request.
    forward_requires_approval: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    decision_id: str = ""
    # REQUIRES_APPROVAL (not allowed, not denied outright).
    requires_approval: bool = False
