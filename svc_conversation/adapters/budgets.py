"""The tenants' model budgets as svc_conversation's core asks them (the Budgets port):
which exist, from svc_policy's relationships (a budget is a model_budget object with a
`tenant` tuple, "model_budget:tenants/{t}/modelBudgets/{role}", the role in lower case),
and what has been spent, from svc_analytics (GetModelSpend).

Both answers are reused for `cache_seconds`, per tenant and per (tenant, role): a budget
check costs no call most of the time, and a budget written or removed counts within that
bound. svc_analytics unreachable leaves the spend unknown (the check then fails closed in
svc_policy); svc_policy unreachable is DependencyUnavailable, never a silent allow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from skm.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from skm.policy.v1 import policy_service_pb2, policy_service_pb2_grpc
from skm_runtime.access import Principal
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.values import ModelRole
from skm_runtime.values_wire import role_to
from svc_conversation.errors import DependencyUnavailable
from svc_conversation.model import Budget

log = logging.getLogger("skm.conversation.budgets")
_CALL_SECONDS = 5.0


def budget_object(tenant: str, role: ModelRole) -> str:
    return f"model_budget:{tenant}/modelBudgets/{role.name.lower()}"


class GrpcBudgets:
    """svc_policy for which budgets exist, svc_analytics for the spend."""

    def __init__(
        self,
        policy: grpc.aio.Channel,
        analytics: grpc.aio.Channel,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(policy)
        self._analytics = analytics_service_pb2_grpc.AnalyticsServiceStub(analytics)
        self._ttl = cache_seconds
        self._clock = clock
        self._budgets: dict[str, tuple[float, frozenset[str]]] = {}
        self._spent: dict[tuple[str, ModelRole], tuple[float, float]] = {}

    async def budget(self, principal: Principal, role: ModelRole) -> Budget | None:
        obj = budget_object(principal.tenant, role)
        if obj not in await self._existing(principal):
            return None
        return Budget(obj, await self._spent_usd(principal, role))

    def _metadata(self, principal: Principal) -> tuple[tuple[str, bytes], ...]:
        return principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))

    async def _existing(self, principal: Principal) -> frozenset[str]:
        now = self._clock()
        held = self._budgets.get(principal.tenant)
        if held is not None and held[0] > now:
            return held[1]
        found: set[str] = set()
        token = ""
        try:
            while True:
                reply = await self._policy.ReadRelationships(
                    policy_service_pb2.ReadRelationshipsRequest(
                        parent=principal.tenant,
                        subject=f"tenant:{principal.tenant}",
                        relation="tenant",
                        object="model_budget:",
                        page_size=1000,
                        page_token=token,
                    ),
                    metadata=self._metadata(principal),
                    timeout=_CALL_SECONDS,
                )
                found.update(r.object for r in reply.relationships)
                token = reply.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            raise DependencyUnavailable(
                f"svc_policy is unavailable ({error.code().name})", retry_after_seconds=1.0
            ) from None
        budgets = frozenset(found)
        self._budgets[principal.tenant] = (now + self._ttl, budgets)
        return budgets

    async def _spent_usd(self, principal: Principal, role: ModelRole) -> float | None:
        now = self._clock()
        key = (principal.tenant, role)
        held = self._spent.get(key)
        if held is not None and held[0] > now:
            return held[1]
        try:
            reply = await self._analytics.GetModelSpend(
                analytics_service_pb2.GetModelSpendRequest(tenant=principal.tenant, role=role_to(role)),
                metadata=self._metadata(principal),
                timeout=_CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("svc_analytics cannot say what is spent", extra={"fields": {"code": error.code().name}})
            return None
        spent = reply.spent.units + reply.spent.nanos / 1e9
        self._spent[key] = (now + self._ttl, spent)
        return spent
