"""Each way a bearer token can be bad is refused with its own reason, judged by admission's
pinned algorithms and keys, never by what the token says of itself."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skm_runtime.admission_errors import (
    AdmissionError,
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
from skm_runtime.tokens import JwtVerifier
from tests.unit.test_admission_caches import DIGEST, _keys

PEM, JWKS = _keys()


def _claims(**changed: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "skm-dev",
        "aud": "skm",
        "sub": "olga",
        "tenant": "t1",
        "roles": ["member"],
        "constitution_sha256": DIGEST,
        "iat": now,
        "nbf": now,
        # Hours, not minutes: the cases below are signed when the module is collected, and
        # a whole suite can run for longer than ten minutes before they are checked.
        "exp": now + 6 * 3600,
    }
    claims.update(changed)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(key: bytes = PEM, algorithm: str = "EdDSA", kid: str | None = "k", **changed: Any) -> str:
    return jwt.encode(_claims(**changed), key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def _other_ed25519() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _es256() -> bytes:
    return generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


VERIFIER = JwtVerifier(JWKS, algorithms=["EdDSA", "ES256"], issuer="skm-dev", audience="skm", leeway=0)
NOW = int(time.time())

CASES: list[tuple[str, str, type[AdmissionError], str | None]] = [
    ("not a JWT", "not-a-jwt", TokenInvalid, None),
    ("forged: signed by another key", _signed(_other_ed25519()), TokenSignatureInvalid, None),
    ("a key this platform does not have", _signed(kid="elsewhere"), TokenSignatureInvalid, None),
    ("alg none", jwt.encode(_claims(), None, algorithm="none"), TokenAlgorithmNotAllowed, None),  # type: ignore[arg-type]  # PyJWT signs "none" without a key
    (
        "alg none naming our key",
        jwt.encode(_claims(), None, algorithm="none", headers={"kid": "k"}),
        TokenAlgorithmNotAllowed,
        None,
    ),  # type: ignore[arg-type]  # as above
    (
        "HS256 keyed with the public key",
        _signed(JWKS["keys"][0]["x"].encode() * 2, "HS256"),
        TokenAlgorithmNotAllowed,
        None,
    ),
    ("a pinned algorithm, not the key's", _signed(_es256(), "ES256"), TokenAlgorithmNotAllowed, None),
    ("expired", _signed(exp=NOW - 60), TokenExpired, None),
    ("not yet valid", _signed(nbf=NOW + 3 * 3600), TokenNotYetValid, None),
    ("wrong audience", _signed(aud="someone-else"), TokenWrongAudience, None),
    ("wrong issuer", _signed(iss="evil"), TokenWrongIssuer, None),
    ("no exp", _signed(exp=None), TokenClaimMissing, "exp"),
    ("no tenant", _signed(tenant=None), TokenClaimMissing, "tenant"),
    ("exp as a string", _signed(exp=str(NOW + 600)), TokenClaimInvalid, "exp"),
    ("expired exp as a string", _signed(exp=str(NOW - 600)), TokenClaimInvalid, "exp"),
    ("nbf as a string", _signed(nbf=str(NOW)), TokenClaimInvalid, "nbf"),
    ("iat as a string", _signed(iat=str(NOW)), TokenClaimInvalid, "iat"),
    ("exp as a boolean", _signed(exp=True), TokenClaimInvalid, "exp"),
    ("sub a number", _signed(sub=42), TokenClaimInvalid, "sub"),
    ("sub a list", _signed(sub=["olga"]), TokenClaimInvalid, "sub"),
    ("tenant with a slash", _signed(tenant="t1/users/x"), TokenClaimInvalid, "tenant"),
    ("roles not a list", _signed(roles="admin"), TokenClaimInvalid, "roles"),
    ("hash not hex", _signed(constitution_sha256="z" * 64), TokenClaimInvalid, "constitution_sha256"),
]


@pytest.mark.parametrize(("token", "refused", "claim"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_token_is_refused_with_its_own_reason(
    token: str, refused: type[AdmissionError], claim: str | None
) -> None:
    with pytest.raises(AdmissionError) as raised:
        VERIFIER.verify(token)
    assert type(raised.value) is refused, raised.value.message
    if claim is not None:
        assert raised.value.metadata.get("claim") == claim


def test_the_refusals_forged_expired_alg_none_and_wrong_audience_are_told_apart() -> None:
    reasons = {refused.reason for _, _, refused, _ in CASES}
    assert len(reasons) == len({refused for _, _, refused, _ in CASES})
    assert (
        len(
            {
                TokenSignatureInvalid.reason,
                TokenExpired.reason,
                TokenAlgorithmNotAllowed.reason,
                TokenWrongAudience.reason,
            }
        )
        == 4
    )


def test_a_good_token_proves_its_principal_with_either_pinned_algorithm_its_key_has() -> None:
    principal = VERIFIER.verify(_signed(exp=time.time() + 600.5))
    assert (principal.tenant, principal.user, principal.roles) == ("tenants/t1", "tenants/t1/users/olga", ("member",))
    assert VERIFIER.verify(_signed(kid=None)).user == "tenants/t1/users/olga"  # the one key, unnamed


def test_an_algorithm_the_verifier_does_not_pin_is_refused_even_when_its_key_has_it() -> None:
    only_es256 = JwtVerifier(JWKS, algorithms=["ES256"], issuer="skm-dev", audience="skm")
    with pytest.raises(TokenAlgorithmNotAllowed):
        only_es256.verify(_signed())
