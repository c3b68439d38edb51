"""What admission remembers between calls, and what it never does: verified tokens until
their `exp`, ALLOW decisions for a short TTL; never a refused token, a DENY, a
REQUIRES_APPROVAL, nor a constitution check."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skm.policy.v1 import constitution_pb2, constitution_service_pb2
from skm_runtime.admission import Admission, PolicyAnswer, Principal, Rule
from skm_runtime.admission_errors import ConstitutionHashStale, PermissionDenied, TokenExpired, TokenSignatureInvalid
from skm_runtime.admission_policy import GrpcAdmissionPolicy
from skm_runtime.cache import ExpiringCache
from skm_runtime.server import signed_channel
from skm_runtime.tokens import JwtVerifier

DIGEST = "a" * 64
RULE = Rule("can_read", "session", "name")
RESOURCE = "tenants/t1/sessions/s1"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_expires_at_its_time_and_a_full_cache_drops_the_least_recently_used() -> None:
    clock = _Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(2, clock=clock)
    cache.put("a", 1, clock.now + 10)
    cache.put("b", 2, clock.now + 10)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3, clock.now + 10)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    clock.now += 10
    assert cache.get("a") is None
    cache.put("d", 4, clock.now)  # already expired: not stored
    assert cache.get("d") is None


def _keys() -> tuple[bytes, dict[str, Any]]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return pem, {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k", "alg": "EdDSA"}]}


def _token(pem: bytes, *, exp: float, digest: str = DIGEST) -> str:
    claims = {
        "iss": "skm-dev",
        "aud": "skm",
        "sub": "olga",
        "tenant": "t1",
        "roles": ["member"],
        "constitution_sha256": digest,
        "exp": int(exp),
    }
    return jwt.encode(claims, pem, algorithm="EdDSA", headers={"kid": "k"})


def _verifier(jwks: dict[str, Any], **options: Any) -> JwtVerifier:
    return JwtVerifier(jwks, algorithms=["EdDSA"], issuer="skm-dev", audience="skm", **options)


def test_a_token_is_verified_once_until_its_exp_and_refused_tokens_are_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pem, jwks = _keys()
    clock = _Clock()
    clock.now = time.time()
    verifier = _verifier(jwks, clock=clock)
    decoded: list[str] = []
    verify = verifier._verify

    def counting(token: str) -> Any:
        decoded.append(token)
        return verify(token)

    monkeypatch.setattr(verifier, "_verify", counting)
    token = _token(pem, exp=clock.now + 60)
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    assert len(decoded) == 1
    clock.now += 60  # the token's exp: what was remembered is not used any more
    verifier.verify(token)
    assert len(decoded) == 2
    for _ in range(2):
        with pytest.raises(TokenSignatureInvalid):
            verifier.verify(token[:-4] + "AAAA")  # the signature no longer verifies
    assert len(decoded) == 4


async def test_a_remembered_token_is_refused_once_it_expires() -> None:
    pem, jwks = _keys()
    verifier = _verifier(jwks, leeway=0.0)
    token = _token(pem, exp=time.time() + 1)
    verifier.verify(token)
    await asyncio.sleep(max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()) + 0.1)
    with pytest.raises(TokenExpired):
        verifier.verify(token)


class _Constitutions:
    def __init__(self, digest: str) -> None:
        self.digest = digest

    async def current_sha256(self, tenant: str) -> str:
        return self.digest


class _Limiter:
    async def take(self, buckets: Any) -> tuple[str, float] | None:
        return None


class _Policy:
    def __init__(self, verdict: PolicyAnswer) -> None:
        self.verdict = verdict
        self.asked = 0
        self.along: list[tuple[str, tuple[str, ...]]] = []

    async def allows(
        self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()
    ) -> PolicyAnswer:
        self.asked += 1
        self.along.append((permission, tuple(also)))
        return self.verdict


async def test_a_remembered_token_whose_constitution_changed_is_refused() -> None:
    pem, jwks = _keys()
    constitutions = _Constitutions(DIGEST)
    admission = Admission(_verifier(jwks), constitutions, _Limiter(), _Policy(PolicyAnswer(True, "ROLE_ALLOWS")))
    token = _token(pem, exp=time.time() + 600)
    await admission.admit(admission.authenticate(f"Bearer {token}"), RULE, RESOURCE)
    constitutions.digest = "b" * 64  # the tenant's constitution changed
    with pytest.raises(ConstitutionHashStale):
        await admission.admit(admission.authenticate(f"Bearer {token}"), RULE, RESOURCE)


async def test_a_deny_is_refused_at_admission_every_time() -> None:
    pem, jwks = _keys()
    policy = _Policy(PolicyAnswer(False, "NOT_PERMITTED", "d1"))
    admission = Admission(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), policy)
    principal = admission.authenticate(f"Bearer {_token(pem, exp=time.time() + 600)}")
    for _ in range(2):
        with pytest.raises(PermissionDenied):
            await admission.admit(principal, RULE, RESOURCE)
    assert policy.asked == 2


async def test_policy_is_asked_the_other_permissions_of_the_resource_type_along() -> None:
    pem, jwks = _keys()
    policy = _Policy(PolicyAnswer(True, "SESSION_OWNER", "d1"))
    along = {RULE.resource_type: ["can_delete", RULE.permission, "can_write"], "tool": ["can_execute"]}
    admission = Admission(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), policy, along=along)
    await admission.admit(admission.authenticate(f"Bearer {_token(pem, exp=time.time() + 600)}"), RULE, RESOURCE)
    assert policy.along == [(RULE.permission, ("can_delete", RULE.permission, "can_write"))]


class _ConstitutionReads:
    """svc_policy's ConstitutionService as the admission policy adapter calls it."""

    def __init__(self) -> None:
        self.read: list[str] = []

    async def GetConstitution(self, request: Any, **options: Any) -> Any:
        self.read.append(request.name)
        return constitution_service_pb2.GetConstitutionResponse(
            constitution=constitution_pb2.Constitution(name=request.name, sha256=DIGEST)
        )


async def test_constitution_hashes_are_remembered_for_a_bounded_number_of_tenants() -> None:
    async with signed_channel("127.0.0.1:9") as channel:
        policy = GrpcAdmissionPolicy(channel, constitution_ttl=600.0, max_tenants=2)
        reads = _ConstitutionReads()
        policy._constitutions = reads  # type: ignore[assignment]  # a fake of svc_policy's stub
        for tenant in ("tenants/a", "tenants/b", "tenants/a"):
            assert await policy.current_sha256(tenant) == DIGEST
        assert len(reads.read) == 2  # "a" was remembered
        for index in range(1000):
            await policy.current_sha256(f"tenants/n{index}")
        assert len(policy._hashes) == 2
        await policy.current_sha256("tenants/a")  # pushed out by newer tenants: read again
        assert reads.read[-1] == "tenants/a/constitution"
        assert len(reads.read) == 2 + 1000 + 1
        await policy.close()
