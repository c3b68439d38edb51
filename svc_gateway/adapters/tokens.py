"""Bearer tokens: JWTs signed with keys from a JWKS document, algorithms pinned by configuration.

The algorithm is never taken from the token: a token whose header names an algorithm
outside the pinned list ("none" included) or other than its key's is refused. `exp` is
required; `nbf`, when present, is honoured; `iss` and `aud` must be the configured ones.
Claims SKM reads: `sub` (the user id), `tenant` (the tenant id), `roles` (a list),
`constitution_sha256` (hex SHA-256 of the tenant's constitution the token was issued for).

A token that verified is remembered (by the SHA-256 of its exact text, bounded in number)
until its `exp`, so its signature and claims are checked once, not on every call. After
`exp` it is verified again in full, which refuses it once the leeway is spent. Tokens that
fail are never remembered. The keys are read once at start, so a remembered verdict cannot
outlive the key that signed it. Whether the token's constitution hash is still current is
not the verifier's question: the gateway asks that on every call.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from svc_gateway.cache import ExpiringCache
from svc_gateway.errors import (
    TokenClaimMissing,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
    TokenWrongAudience,
    TokenWrongIssuer,
)
from svc_gateway.model import Principal

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and set(value) <= _ID_CHARS


class JwtVerifier:
    def __init__(
        self,
        jwks: dict[str, Any],
        *,
        algorithms: Sequence[str],
        issuer: str,
        audience: str,
        leeway: float = 5.0,
        max_remembered: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`leeway`: seconds of clock skew allowed on `exp` and `nbf`."""
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("pin at least one real signing algorithm")
        self._algorithms = list(algorithms)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        keys = jwks.get("keys") or []
        self._keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys} if keys else {}
        # Wall-clock time, as `exp` is.
        self._verified: ExpiringCache[bytes, Principal] = ExpiringCache(max_remembered, clock=clock)

    @classmethod
    def from_json(cls, text: str, **options: Any) -> JwtVerifier:
        return cls(json.loads(text), **options)

    def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._verified.get(digest)
        if principal is None:
            principal, expires = self._verify(token)
            self._verified.put(digest, principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal a token proves and its `exp` (seconds since the epoch)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("the token is not a JWT") from None
        algorithm = header.get("alg")
        key = self._keys.get(header.get("kid")) if len(self._keys) > 1 or header.get("kid") else None
        if key is None and len(self._keys) == 1 and not header.get("kid"):
            key = next(iter(self._keys.values()))
        if algorithm not in self._algorithms or key is None or (key.algorithm_name and key.algorithm_name != algorithm):
            raise TokenInvalid("the token's algorithm or key is not accepted")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenNotYetValid("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise TokenWrongIssuer("the token's issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise TokenWrongAudience("the token is not for this platform") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenClaimMissing("the token lacks a required claim", metadata={"claim": error.claim}) from None
        except jwt.PyJWTError:
            raise TokenInvalid("the token's signature does not verify") from None
        tenant, user, digest = claims.get("tenant"), claims.get("sub"), claims.get("constitution_sha256")
        if not _valid_id(tenant) or not _valid_id(user) or not isinstance(digest, str) or len(digest) != 64:
            raise TokenClaimMissing("the token needs tenant, sub and constitution_sha256 claims")
        roles = claims.get("roles") or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenInvalid("the roles claim must be a list of strings")
        principal = Principal(f"tenants/{tenant}", f"tenants/{tenant}/users/{user}", tuple(roles), digest.lower())
        # As PyJWT reads it (decode checked that it reads).
        return principal, float(int(claims["exp"]))
