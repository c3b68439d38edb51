"""svc_policy as the gateway sees it: decisions and tenant constitutions, over gRPC.

Both fail closed: when svc_policy cannot answer, the call is refused (POLICY_UNAVAILABLE).
Constitution hashes are cached for `constitution_ttl` seconds per tenant, so a changed
constitution turns old tokens stale within that bound.

ALLOW decisions are remembered for `decision_ttl` seconds per (user, permission, object),
so a burst of calls on one resource asks svc_policy once. Nothing else is remembered: DENY,
REQUIRES_APPROVAL and every failure are asked again on the next call. A revoked
relationship therefore stops calls within svc_policy's own cache TTL plus `decision_ttl`
(within `decision_ttl` alone when the revocation went through the svc_policy process that
decided, since its writes empty its cache). A remembered ALLOW is not audited again by
svc_policy: its audit trail holds the decision that was remembered, with its decision id.
"""

from __future__ import annotations

import time

import grpc

from skm.policy.v1 import (
    access_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.principal import principal_message as wire_principal
from skm_runtime.principal import principal_metadata
from svc_gateway.cache import ExpiringCache
from svc_gateway.errors import PolicyUnavailable
from svc_gateway.model import Principal, Verdict


def principal_message(principal: Principal) -> principal_pb2.Principal:
    return wire_principal(principal.tenant, principal.user, principal.roles)


class GrpcPolicy:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        constitution_ttl: float,
        decision_ttl: float = 0.0,
        max_decisions: int = 10_000,
    ) -> None:
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        self._ttl = constitution_ttl
        self._hashes: dict[str, tuple[float, str]] = {}
        self._decision_ttl = decision_ttl
        self._allowed: ExpiringCache[tuple[str, str, str], Verdict] = ExpiringCache(max_decisions)

    async def allows(self, principal: Principal, permission: str, object_: str) -> Verdict:
        key = (principal.user, permission, object_)
        remembered = self._allowed.get(key)
        if remembered is not None:
            return remembered
        verdict = await self._ask(principal, permission, object_)
        if verdict.allowed and self._decision_ttl > 0:
            self._allowed.put(key, verdict, time.monotonic() + self._decision_ttl)
        return verdict

    async def _ask(self, principal: Principal, permission: str, object_: str) -> Verdict:
        request = policy_service_pb2.CheckRequest(
            check=access_pb2.AccessCheck(subject=f"user:{principal.user}", relation=permission, object=object_)
        )
        try:
            reply = await self._policy.Check(request, metadata=principal_metadata(principal_message(principal)))
        except grpc.aio.AioRpcError as error:
            raise PolicyUnavailable(
                "the policy service cannot decide; the call is refused", metadata={"code": error.code().name}
            ) from None
        decision = reply.decision
        allowed = decision.verdict == policy_decision_pb2.VERDICT_ALLOW
        return Verdict(allowed, decision.reason, decision.decision_id)

    async def current_sha256(self, tenant: str) -> str:
        cached = self._hashes.get(tenant)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        request = constitution_service_pb2.GetConstitutionRequest(name=f"{tenant}/constitution")
        try:
            reply = await self._constitutions.GetConstitution(request)
        except grpc.aio.AioRpcError as error:
            raise PolicyUnavailable(
                "the tenant's constitution cannot be read; the call is refused", metadata={"code": error.code().name}
            ) from None
        digest = reply.constitution.sha256
        self._hashes[tenant] = (now + self._ttl, digest)
        return digest
