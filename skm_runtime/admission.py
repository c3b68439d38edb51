"""Admitting a public call: who it is, whether the tenant's rules hold, whether policy allows.

Runs once per call in the service that owns the method (skm_runtime.gate wires it into the
runtime's server interceptor); Envoy only carries the bytes there. In order, for every
public call:
1. the bearer token proves a principal (pinned algorithms, issuer, audience, times, claims);
2. the token's constitution hash is the SHA-256 of the tenant's current constitution
   (except for the one method that lets a client read it with a stale token);
3. the tenant's and the user's rate limits have room;
4. the resource the rule names is a well-formed name of the caller's tenant;
5. policy allows the user the rule's permission on it; for a method any member of the
   tenant may call, the permission is membership itself (`can_converse` on the tenant),
   so a user removed from the tenant is refused as soon as policy knows, not when the
   token expires.
Only then is the call served, with the principal. Steps 1-3 (`authenticate`,
`admit_caller`) need only the call's metadata: a client stream passes them as it opens;
steps 4-5 (`authorize`) need the resource, which a stream's first message carries.

When policy is asked, the other permissions the contract declares on the same type of
resource go along (`along`): a client that attaches to a session's events and then sends a
message is decided once, in one round trip, instead of once per permission.

Pure: no grpc, no generated code, no drivers; the ports below are what it needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from skm_runtime.access import Principal
from skm_runtime.admission_errors import (
    ConstitutionHashStale,
    CrossTenantResource,
    PermissionDenied,
    RateLimited,
    ResourceNameInvalid,
    TokenMissing,
)

__all__ = [
    "MEMBERSHIP",
    "Admission",
    "Constitutions",
    "Policy",
    "PolicyAnswer",
    "Principal",
    "RateLimiter",
    "Rule",
    "TokenVerifier",
    "object_of",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """A public method's authorization rule (the contract's `skm.options.v1.authz` option)."""

    permission: str
    resource_type: str
    resource_field: str
    any_tenant_member: bool = False
    allow_stale_constitution: bool = False
    # REQUIRES_APPROVAL goes on to the method's servicer, which holds the request.
    forward_requires_approval: bool = False


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    """svc_policy's answer to whether a public call may be served."""

    allowed: bool
    reason: str
    decision_id: str = ""
    # REQUIRES_APPROVAL (not allowed, not denied outright).
    requires_approval: bool = False


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal:
        """The principal a bearer token proves; raises a Token* error otherwise."""
        ...


class Constitutions(Protocol):
    async def current_sha256(self, tenant: str) -> str:
        """SHA-256 (hex) of the tenant's current constitution."""
        ...


class RateLimiter(Protocol):
    async def take(self, buckets: Sequence[tuple[str, str]]) -> tuple[str, float] | None:
        """Take one call from each bucket, given as (scope, key) with scope "tenant" or
        "user", all or none: None when every bucket had room, else the scope of the first
        that had none and the seconds to wait."""
        ...


class Policy(Protocol):
    async def allows(
        self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()
    ) -> PolicyAnswer:
        """Whether policy allows the principal's user `permission` on `object_`. `also`:
        other permissions on the same object the user is likely to need next, which policy
        may decide in the same round trip and remember. Raises ResourceNameInvalid when
        policy cannot read `object_` (it is made from the client's resource name), and
        PolicyUnavailable when policy cannot answer."""
        ...


# What policy is asked for a method any member of the tenant may call: the OpenFGA
# model's membership question (deploy/openfga/model.fga: tenant can_converse = member).
MEMBERSHIP = "can_converse"
# OpenFGA's limit on an object ("{type}:{id}"); longer ones it refuses as malformed.
_MAX_OBJECT_CHARS = 256
# A revision at the end of a versioned resource's name, "tenants/t1/personas/p@3".
_REVISION = re.compile(r"(?<=[^/])@[1-9][0-9]{0,17}\Z")
# A segment without white space or a character OpenFGA reads as syntax in an object (type,
# relation, user, wildcard); one regular expression, as it is asked on every public call.
_SEGMENT = re.compile(r"[^\s#:*@]+")


def _well_formed(segment: str) -> bool:
    """A name segment policy can be asked about: printable, no white space, no OpenFGA syntax."""
    return segment.isprintable() and _SEGMENT.fullmatch(segment) is not None


def object_of(rule: Rule, resource: str, tenant: str) -> str:
    """The OpenFGA object a rule names in a resource: "{type}:{name cut after that type}".

    "tenants/t1/sessions/s1/turns/4" with type "session" -> "session:tenants/t1/sessions/s1";
    with type "tenant" -> "tenant:tenants/t1". An empty field means the caller's own tenant.
    A name with an empty segment, white space (a trailing "\n" included), a control
    character or one of OpenFGA's "#:*@" is refused here, before policy is asked. The one
    exception is a revision of a versioned resource, "{name}@{revision_id}" (AIP-162; a
    positive number): it is judged as the resource itself.
    """
    name = _REVISION.sub("", resource) if resource else tenant
    parts = name.split("/")
    # Collections alternate with ids; a singleton ("tenants/t1/constitution") ends odd.
    if len(parts) < 2 or parts[0] != "tenants" or not all(_well_formed(part) for part in parts):
        raise ResourceNameInvalid(
            f"{rule.resource_field or 'resource'} must be a resource name (tenants/...)",
            metadata={"field": rule.resource_field},
        )
    if f"{parts[0]}/{parts[1]}" != tenant:
        raise CrossTenantResource("the resource belongs to another tenant", metadata={"field": rule.resource_field})
    collection = f"{rule.resource_type}s"
    for index in range(0, len(parts) - 1, 2):
        if parts[index] == collection:
            object_ = f"{rule.resource_type}:{'/'.join(parts[: index + 2])}"
            if len(object_) > _MAX_OBJECT_CHARS:
                raise ResourceNameInvalid(f"{rule.resource_field} is too long", metadata={"field": rule.resource_field})
            return object_
    raise ResourceNameInvalid(
        f"{rule.resource_field} names no {rule.resource_type}", metadata={"field": rule.resource_field}
    )


class Admission:
    """The admission of public calls, over its four ports."""

    def __init__(
        self,
        tokens: TokenVerifier,
        constitutions: Constitutions,
        limiter: RateLimiter,
        policy: Policy,
        *,
        along: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        # resource type -> every permission some public method asks on it
        self._along = dict(along or {})
        self._tokens = tokens
        self._constitutions = constitutions
        self._limiter = limiter
        self._policy = policy

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenMissing("send `authorization: Bearer <token>`")
        return self._tokens.verify(token.strip())

    async def admit(self, principal: Principal, rule: Rule, resource: str) -> None:
        """Raise unless this principal may make this call on `resource` now."""
        await self.admit_caller(principal, rule)
        await self.authorize(principal, rule, resource)

    async def admit_caller(self, principal: Principal, rule: Rule) -> None:
        """The checks that need no resource: the constitution hash and the rate limits."""
        if not rule.allow_stale_constitution:
            current = await self._constitutions.current_sha256(principal.tenant)
            if principal.constitution_sha256 != current:
                raise ConstitutionHashStale(
                    "the token's constitution hash is stale: read the constitution and get a new token",
                    metadata={"tenant": principal.tenant},
                )
        refused = await self._limiter.take((("tenant", principal.tenant), ("user", principal.user)))
        if refused is not None:
            scope, wait = refused
            raise RateLimited(f"the {scope}'s rate limit is spent", metadata={"scope": scope}, retry_after_seconds=wait)

    async def authorize(self, principal: Principal, rule: Rule, resource: str) -> None:
        """Raise unless `resource` is the caller's tenant's and policy allows the rule on it."""
        object_ = object_of(rule, resource, principal.tenant)
        if rule.any_tenant_member:
            permission, object_, along = MEMBERSHIP, f"tenant:{principal.tenant}", self._along.get("tenant", ())
        else:
            permission, along = rule.permission, self._along.get(rule.resource_type, ())
        try:
            verdict = await self._policy.allows(principal, permission, object_, along)
        except ResourceNameInvalid as error:
            # Policy could not read the object: the name is the client's, never a policy outage.
            raise ResourceNameInvalid(
                error.message, metadata={**error.metadata, "field": rule.resource_field}
            ) from None
        if not verdict.allowed and not (rule.forward_requires_approval and verdict.requires_approval):
            raise PermissionDenied(
                "policy does not allow this call",
                metadata={
                    "permission": permission,
                    "decision_reason": verdict.reason,
                    "decision_id": verdict.decision_id,
                },
            )
