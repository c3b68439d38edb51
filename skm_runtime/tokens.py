"""Bearer tokens: JWTs signed with keys from a JWKS document, algorithms pinned by configuration.

The algorithm is never taken from the token: a token whose header names an algorithm
outside the pinned list ("none", HS256 and any other) or other than its key's is refused
(TOKEN_ALGORITHM_NOT_ALLOWED) before any key is used; one whose signature does not verify
with the key it names, or that names no key of ours, is TOKEN_SIGNATURE_INVALID; one that is
not a signed JWT at all is TOKEN_INVALID. Claims are judged only once the signature verified:
`exp` is required; `nbf`, when present, is honoured; `iss` and `aud` must be the configured
ones; `exp`, `nbf` and `iat` must be JSON numbers (PyJWT would read "1700000000" as one).
Claims SKM reads: `sub` (the user id), `tenant` (the tenant id), `roles` (a list),
`constitution_sha256` (hex SHA-256 of the tenant's constitution the token was issued for).
An absent claim is TOKEN_CLAIM_MISSING, one of the wrong type or form TOKEN_CLAIM_INVALID.

A token that verified is remembered (by the SHA-256 of its exact text, bounded in number)
until its `exp`, so its signature and claims are checked once, not on every call. After
`exp` it is verified again in full, which refuses it once the leeway is spent. Tokens that
fail are never remembered. The keys are read once at start, so a remembered verdict cannot
outlive the key that signed it. Whether the token's constitution hash is still current is
not the verifier's question: admission asks that on every call.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from skm_runtime.access import Principal
from skm_runtime.admission_errors import (
    TokenAlgorithmNotAllowed,
    TokenClaimInvalid,
    TokenClaimMissing,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
    TokenSignatureInvalid,
    TokenWrongAudience,
    TokenWrongIssuer,
)
from skm_runtime.cache import ExpiringCache

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_HEX = set("0123456789abcdefABCDEF")
_TIMES = ("exp", "nbf", "iat")
# First pass: the signature only, with the one algorithm the key allows.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}
# Second pass, over claims whose signature verified and whose types were checked.
_CLAIMS_ONLY: Options = {
    "verify_signature": False,
    "verify_exp": True,
    "verify_nbf": True,
    "verify_iat": True,
    "verify_aud": True,
    "verify_iss": True,
    "verify_sub": True,
    "verify_jti": True,
    "require": ["exp", "sub"],
}


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and set(value) <= _ID_CHARS


def _shown(value: object) -> str:
    """A header value as it may appear in an error's metadata: short, printable."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:32])


def _check_types(claims: dict[str, Any]) -> None:
    """Refuse claims of the wrong JSON type before anything reads them."""
    for claim in _TIMES:
        value = claims.get(claim)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TokenClaimInvalid(
                f"the token's {claim} must be a number (seconds since the epoch)", metadata={"claim": claim}
            )
    for claim in ("sub", "tenant", "constitution_sha256"):
        value = claims.get(claim)
        if value is not None and not isinstance(value, str):
            raise TokenClaimInvalid(f"the token's {claim} must be a string", metadata={"claim": claim})


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
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenAlgorithmNotAllowed(
                "the token's algorithm is not accepted", metadata={"algorithm": _shown(algorithm)}
            )
        kid = header.get("kid")
        if kid:
            key = self._keys.get(kid) if isinstance(kid, str) else None
        else:
            key = next(iter(self._keys.values())) if len(self._keys) == 1 else None
        if key is None:
            raise TokenSignatureInvalid("the token names no key of this platform")
        # The key's own algorithm, never the header's: the header must merely agree with it.
        if not key.algorithm_name or key.algorithm_name != algorithm:
            raise TokenAlgorithmNotAllowed(
                "the token's algorithm is not its key's", metadata={"algorithm": _shown(algorithm)}
            )
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise TokenSignatureInvalid("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenInvalid("the token's claims are not a JSON object") from None
        _check_types(claims)
        try:
            jwt.decode(token, options=_CLAIMS_ONLY, audience=self._audience, issuer=self._issuer, leeway=self._leeway)
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
        except (InvalidSubjectError, jwt.InvalidIssuedAtError, InvalidJTIError) as error:
            raise TokenClaimInvalid(f"a claim of the token is not valid: {error}") from None
        except jwt.PyJWTError:
            raise TokenInvalid("the token is not a valid JWT") from None
        tenant, user, digest = claims.get("tenant"), claims.get("sub"), claims.get("constitution_sha256")
        for claim, value in (("tenant", tenant), ("constitution_sha256", digest)):
            if value is None:
                raise TokenClaimMissing("the token lacks a required claim", metadata={"claim": claim})
        for claim, value in (("tenant", tenant), ("sub", user)):
            if not _valid_id(value):
                raise TokenClaimInvalid(
                    f"the token's {claim} must be 1-128 of [A-Za-z0-9._-]", metadata={"claim": claim}
                )
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise TokenClaimInvalid(
                "the token's constitution_sha256 must be 64 hex digits", metadata={"claim": "constitution_sha256"}
            )
        roles = claims.get("roles") or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenClaimInvalid("the roles claim must be a list of strings", metadata={"claim": "roles"})
        principal = Principal(f"tenants/{tenant}", f"tenants/{tenant}/users/{user}", tuple(roles), digest.lower())
        # As PyJWT reads it (whole seconds).
        return principal, float(int(claims["exp"]))
