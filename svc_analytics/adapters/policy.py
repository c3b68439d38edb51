"""The tenants' model budgets as svc_policy holds them (ports.BudgetSource): each budget's
`exhausted` tuple, model_budget:tenants/{t}/modelBudgets/{role} with the budget_exhausted
condition, whose `limit_usd` is the limit (svc_conversation asks the same tuples before a
call, skm_cli.budget writes them)."""

from __future__ import annotations

import grpc

from skm.policy.v1 import policy_service_pb2, policy_service_pb2_grpc
from svc_analytics.errors import PolicyUnavailable
from svc_analytics.model import Budget

_ROLES = {"primary": "PRIMARY", "utility": "UTILITY", "pre_slm": "PRE_SLM", "embedding": "EMBEDDING"}
_CALL_SECONDS = 5.0


class GrpcBudgetSource:
    """svc_policy's ReadRelationships, as this service (the channel signs its calls)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)

    async def budgets(self, tenant: str) -> list[Budget]:
        found: list[Budget] = []
        token = ""
        try:
            while True:
                reply = await self._stub.ReadRelationships(
                    policy_service_pb2.ReadRelationshipsRequest(
                        parent=tenant, relation="exhausted", object="model_budget:", page_size=1000, page_token=token
                    ),
                    timeout=_CALL_SECONDS,
                )
                for r in reply.relationships:
                    role = _ROLES.get(r.object.rsplit("/", 1)[-1])
                    limit = r.condition.context.fields.get("limit_usd")
                    if role is None or r.condition.name != "budget_exhausted" or limit is None:
                        continue
                    found.append(Budget(tenant, role, float(limit.number_value)))
                token = reply.next_page_token
                if not token:
                    return found
        except grpc.aio.AioRpcError as error:
            raise PolicyUnavailable(f"svc_policy cannot say the budgets ({error.code().name})") from None
