"""What the gateway's core needs: token checks, constitutions, rate limits, policy."""

from __future__ import annotations

from typing import Protocol

from svc_gateway.model import Principal, Verdict


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Principal:
        """The principal a bearer token proves; raises a Token* error otherwise."""
        ...


class Constitutions(Protocol):
    async def current_sha256(self, tenant: str) -> str:
        """SHA-256 (hex) of the tenant's current constitution."""
        ...


class RateLimiter(Protocol):
    async def take(self, scope: str, key: str) -> float:
        """Take one call from the budget of `key` in `scope` ("tenant" or "user"); 0 when
        allowed, else the seconds to wait."""
        ...


class Policy(Protocol):
    async def allows(self, principal: Principal, permission: str, object_: str) -> Verdict:
        """Whether policy allows the principal's user `permission` on `object_`."""
        ...
