"""Public calls admitted by the service that owns them: settings, adapters and rules.

Envoy routes each public method straight to its owner (deploy/envoy/envoy.yaml, generated
from the contract); no Python process forwards the bytes. The owner's server interceptor
(skm_runtime.interceptors) asks this gate, once per call, whether the call may be served:
the caller's bearer token, the tenant's constitution hash and the rate limits as the call
opens (`admit_caller`, metadata only), then the contract's authz rule on the resource the
request names (`authorize`: the unary request, or a client stream's first message). What
admission decides and in which order is skm_runtime.admission; this module builds it from
SKM_ADMISSION_* settings, with every cache it keeps: verified tokens until their `exp`,
constitution hashes for a few seconds, policy's decisions through the shared policy client,
rate-limit leases taken from Redis a few at a time.

A process admits public calls only when it has a gate (`skm_runtime.server.run` opens one
for every service that owns a public method); without one, as in tests that call a service
directly, every call must come from inside the mesh (a signed principal or caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from skm.type.v1 import principal_pb2
from skm_runtime.access import Principal
from skm_runtime.admission import MEMBERSHIP, Admission, Rule
from skm_runtime.admission_errors import ResourceNameInvalid
from skm_runtime.admission_policy import GrpcAdmissionPolicy, wire_principal
from skm_runtime.contract import Method, methods
from skm_runtime.ratelimit import RedisRateLimiter
from skm_runtime.settings import address, bounded
from skm_runtime.tokens import JwtVerifier

log = logging.getLogger("skm.admission")

__all__ = ["AdmissionSettings", "Gate", "public_rules"]


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """SKM_ADMISSION_* (and the shared SKM_POLICY_ADDR, SKM_REDIS_URL): how every service
    admits the public calls it owns. The same values everywhere: one platform, one door."""

    # The JWKS document (JSON) whose keys sign tokens. No keys: every public call is refused.
    jwks_file: str = ""
    # Signing algorithms accepted; never taken from a token.
    jwt_algorithms: tuple[str, ...] = ("EdDSA", "ES256")
    jwt_issuer: str = "skm-dev"
    jwt_audience: str = "skm"
    # Token buckets: calls per second and burst, per tenant and per user, shared in Redis by
    # every process that admits calls (each service's each copy).
    tenant_rate_per_second: float = bounded(200.0, low=0.001, high=1e6)
    tenant_burst: float = bounded(400.0, low=1.0, high=1e6)
    user_rate_per_second: float = bounded(50.0, low=0.001, high=1e6)
    user_burst: float = bounded(100.0, low=1.0, high=1e6)
    # Tokens a process leases from a bucket at once and spends without asking Redis (at
    # most a tenth of the bucket's burst; 1: every call asks Redis), and how long a lease
    # lasts: another process's unspent lease keeps at most that many tokens from this one
    # for at most that long.
    rate_lease_tokens: int = bounded(20, low=1, high=10_000)
    rate_lease_seconds: float = bounded(1.0, low=0.01, high=60.0)
    # How long a tenant's constitution hash is trusted before it is read again.
    constitution_ttl_seconds: float = bounded(2.0, low=0.0, high=3600.0)
    # How many tenants' constitution hashes are remembered at most (least recently used out).
    constitution_cache_tenants: int = bounded(10_000, low=1, high=10_000_000)
    # How long svc_policy's ALLOW for (user, permission, resource) is reused without asking
    # again (0: ask on every call). A revocation stops calls within this plus svc_policy's
    # SKM_POLICY_CACHE_TTL_SECONDS. DENY and REQUIRES_APPROVAL are never reused.
    decision_ttl_seconds: float = bounded(1.0, low=0.0, high=10.0)
    # The largest message a caller may send, each message of a stream included; a larger
    # one is refused with INVALID_ARGUMENT / MESSAGE_TOO_LARGE (metadata: limit, size).
    max_message_bytes: int = bounded(4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024)
    # gRPC's own receive limit on a server that admits public calls, above
    # `max_message_bytes` so that messages between the two are answered with an ErrorInfo;
    # gRPC refuses larger ones itself (RESOURCE_EXHAUSTED, no details).
    max_receive_bytes: int = bounded(64 * 1024 * 1024, low=1024, high=256 * 1024 * 1024)
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    redis_url: str = field(default="redis://127.0.0.1:56379/0", metadata={"env": "SKM_REDIS_URL"})


def _rule(method: Method) -> Rule:
    rule = method.authz
    assert rule is not None  # public methods only
    return Rule(
        rule.permission,
        rule.resource_type,
        rule.resource_field,
        rule.any_tenant_member,
        rule.allow_stale_constitution,
        rule.forward_requires_approval,
    )


def public_rules(contract: Mapping[str, Method] | None = None) -> dict[str, Rule]:
    """Every public method's rule, by path (a method without the authz option is internal)."""
    return {path: _rule(method) for path, method in (contract or methods()).items() if method.authz is not None}


def _along(rules: Iterable[Rule]) -> dict[str, list[str]]:
    """Per resource type, every permission some public method asks on it (see Admission)."""
    along: dict[str, set[str]] = {}
    for rule in rules:
        if rule.any_tenant_member:
            along.setdefault("tenant", set()).add(MEMBERSHIP)
        elif rule.permission:
            along.setdefault(rule.resource_type, set()).add(rule.permission)
    return {kind: sorted(permissions) for kind, permissions in along.items()}


class Gate:
    """The admission of the public calls one server owns, as its interceptor asks it."""

    def __init__(
        self,
        admission: Admission,
        rules: Mapping[str, Rule],
        *,
        max_message_bytes: int,
        max_receive_bytes: int,
        closing: Iterable[Any] = (),
    ) -> None:
        self._admission = admission
        self._rules = dict(rules)
        self.max_message_bytes = max_message_bytes
        self.max_receive_bytes = max(max_receive_bytes, max_message_bytes)
        self._closing = tuple(closing)

    @classmethod
    async def open(cls, settings: AdmissionSettings, policy: grpc.aio.Channel) -> Gate:
        """The gate over `policy` (a channel to svc_policy, owned by the caller) and Redis."""
        jwks = await asyncio.to_thread(Path(settings.jwks_file).read_text) if settings.jwks_file else '{"keys": []}'
        verifier = JwtVerifier.from_json(
            jwks, algorithms=settings.jwt_algorithms, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        if not settings.jwks_file:
            log.warning("no SKM_ADMISSION_JWKS_FILE: no token can verify, every public call is refused")
        limiter = RedisRateLimiter.connect(
            settings.redis_url,
            {
                "tenant": (settings.tenant_rate_per_second, settings.tenant_burst),
                "user": (settings.user_rate_per_second, settings.user_burst),
            },
            lease_tokens=settings.rate_lease_tokens,
            lease_seconds=settings.rate_lease_seconds,
        )
        answers = GrpcAdmissionPolicy(
            policy,
            constitution_ttl=settings.constitution_ttl_seconds,
            max_tenants=settings.constitution_cache_tenants,
            decision_ttl=settings.decision_ttl_seconds,
            redis_url=settings.redis_url,
        )
        rules = public_rules()
        admission = Admission(verifier, answers, limiter, answers, along=_along(rules.values()))
        return cls(
            admission,
            rules,
            max_message_bytes=settings.max_message_bytes,
            max_receive_bytes=settings.max_receive_bytes,
            closing=(answers, limiter),
        )

    async def close(self) -> None:
        for adapter in self._closing:
            await adapter.close()

    def rule(self, path: str) -> Rule | None:
        """The authz rule of a public method; None for any other path."""
        return self._rules.get(path)

    async def admit_caller(self, metadata: Iterable[Any] | None, rule: Rule) -> Principal:
        """The caller's principal, from its bearer token; raises unless the token, the
        constitution hash and the rate limits admit the call (no message needed)."""
        authorization: str | None = None
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
                break
        principal = self._admission.authenticate(authorization)
        await self._admission.admit_caller(principal, rule)
        return principal

    async def authorize(self, principal: Principal, rule: Rule, request: Any | None) -> principal_pb2.Principal:
        """Raise unless policy allows the rule on the resource `request` names (a client
        stream's first message: None when the stream ended before one); the principal as
        servicers read it."""
        await self._admission.authorize(principal, rule, _resource(rule, request))
        return wire_principal(principal)


def _resource(rule: Rule, request: Any | None) -> str:
    if not rule.resource_field:
        return ""
    if request is None:
        raise ResourceNameInvalid("the first message must name the resource", metadata={"field": rule.resource_field})
    value: Any = request
    for part in rule.resource_field.split("."):
        value = getattr(value, part, None)
    if not isinstance(value, str) or not value:
        raise ResourceNameInvalid(
            f"{rule.resource_field} is required: the resource this call acts on",
            metadata={"field": rule.resource_field},
        )
    return value
