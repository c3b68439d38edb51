"""svc_gateway's domain: who calls, and what a public method demands."""

from __future__ import annotations

from dataclasses import dataclass

# The authenticated caller (with the constitution digest its token carries).
from skm_runtime.access import Principal

__all__ = ["Admission", "Principal", "Rule"]


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
class Admission:
    """svc_policy's answer to whether a public call may go on to its service."""

    allowed: bool
    reason: str
    decision_id: str = ""
    # REQUIRES_APPROVAL (not allowed, not denied outright).
    requires_approval: bool = False
