"""svc_policy as admission sees it: decisions and tenant constitutions, over gRPC.

Both fail closed: when svc_policy cannot answer, the call is refused (POLICY_UNAVAILABLE).
A check svc_policy refuses as malformed (INVALID_ARGUMENT) was made from the client's
resource name, so it is the client's error: RESOURCE_NAME_INVALID, never UNAVAILABLE.
Constitution hashes are cached for `constitution_ttl` seconds per tenant, so a changed
constitution turns old tokens stale within that bound, for at most `max_tenants` tenants
(the least recently used go first), so tokens of ever new tenants cost reads, never memory.

Decisions go through the shared policy client (skm_runtime/policy_client.py): ALLOW and DENY are
reused for `decision_ttl` seconds per (user, permission, object), so a burst of calls on one
resource asks svc_policy once; REQUIRES_APPROVAL and every failure are asked again on the next
call. Every relationship change made through svc_policy ends the reuse as soon as its Redis
announcement arrives, and nothing is reused while the process is not subscribed to those
announcements (`redis_url` empty, Redis down): the client's docstring states the bounds. A
reused verdict is not audited again by svc_policy: its audit trail holds the decision that
was reused, with its decision id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache

import grpc

from skm.policy.v1 import (
    access_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
)
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.access import Principal
from skm_runtime.admission import PolicyAnswer
from skm_runtime.admission_errors import PolicyUnavailable, ResourceNameInvalid
from skm_runtime.cache import ExpiringCache
from skm_runtime.policy_client import PolicyClient
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.status import error_info_of


@lru_cache(maxsize=4096)
def wire_principal(principal: Principal) -> principal_pb2.Principal:
    """A principal as it goes on the wire (skm.type.v1.Principal): what servicers read and
    what policy is asked as; made once per principal."""
    return principal_message(principal.tenant, principal.user, principal.roles)


class GrpcAdmissionPolicy:
    """The Policy and Constitutions ports of admission, on svc_policy."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        constitution_ttl: float,
        decision_ttl: float = 0.0,
        redis_url: str = "",
        max_decisions: int = 10_000,
        max_tenants: int = 10_000,
    ) -> None:
        self._decisions = PolicyClient(channel, redis_url=redis_url, ttl=decision_ttl, max_entries=max_decisions)
        self._constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        self._ttl = constitution_ttl
        self._hashes: ExpiringCache[str, str] = ExpiringCache(max_tenants)

    async def close(self) -> None:
        await self._decisions.close()

    async def allows(
        self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()
    ) -> PolicyAnswer:
        subject = f"user:{principal.user}"
        decision = self._decisions.remembered(subject, permission, object_)
        if decision is None:
            decision = await self._ask(principal, subject, permission, object_, also)
        allowed = decision.verdict == policy_decision_pb2.VERDICT_ALLOW
        held = decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
        return PolicyAnswer(allowed, decision.reason, decision.decision_id, requires_approval=held)

    async def _ask(
        self, principal: Principal, subject: str, permission: str, object_: str, also: Sequence[str]
    ) -> policy_decision_pb2.PolicyDecision:
        request = policy_service_pb2.CheckRequest(
            check=access_pb2.AccessCheck(subject=subject, relation=permission, object=object_)
        )
        try:
            return await self._decisions.check(
                request, metadata=principal_metadata(wire_principal(principal)), also=also
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # svc_policy could not read the question, and admission wrote it from the
                # client's resource name: the name is at fault, not svc_policy.
                info = error_info_of(error)
                raise ResourceNameInvalid(
                    "the resource name is not one policy can decide on",
                    metadata={"policy_reason": info.reason if info is not None else ""},
                ) from None
            raise PolicyUnavailable(
                "the policy service cannot decide; the call is refused", metadata={"code": error.code().name}
            ) from None

    async def current_sha256(self, tenant: str) -> str:
        cached = self._hashes.get(tenant)
        if cached is not None:
            return cached
        asked = time.monotonic()
        request = constitution_service_pb2.GetConstitutionRequest(name=f"{tenant}/constitution")
        try:
            reply = await self._constitutions.GetConstitution(request)
        except grpc.aio.AioRpcError as error:
            raise PolicyUnavailable(
                "the tenant's constitution cannot be read; the call is refused", metadata={"code": error.code().name}
            ) from None
        digest = reply.constitution.sha256
        self._hashes.put(tenant, digest, asked + self._ttl)
        return digest
