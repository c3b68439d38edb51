"""What the gateway's core needs: token checks, constitutions, rate limits, policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from svc_gateway.model import Admission, Principal


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
    async def allows(self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()) -> Admission:
        """Whether policy allows the principal's user `permission` on `object_`. `also`:
        other permissions on the same object the user is likely to need next, which policy
        may decide in the same round trip and remember. Raises ResourceNameInvalid when
        policy cannot read `object_` (it is made from the client's resource name), and
        PolicyUnavailable when policy cannot answer."""
        ...
