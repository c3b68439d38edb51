"""Model budgets: before a PRIMARY model call, the tenant's budget for the role is asked of
svc_policy (``can_spend`` on the budget's model_budget object, its ``budget_exhausted``
condition comparing what svc_analytics says is spent with the limit on the tuple).

A tenant without a budget for the role spends freely. With one, the check fails closed: a
spend svc_analytics cannot report leaves ``spent_usd`` out of the context, and svc_policy
answers CONTEXT_MISSING. The call's own cost is not known before it runs (prices are per
token); it is counted once spent, so ``cost_usd`` is 0 and the call is refused once what
is already spent is past the limit.
"""

from __future__ import annotations

from skm_runtime.access import AccessCheck, Decision, Principal, Verdict
from skm_runtime.values import ModelRole
from svc_conversation.ports import Budgets, PolicyGate


class BudgetGuard:
    """The budget check of a model call."""

    def __init__(self, budgets: Budgets, policy: PolicyGate) -> None:
        self._budgets = budgets
        self._policy = policy

    async def refusal(self, principal: Principal, role: ModelRole) -> Decision | None:
        """svc_policy's refusal of a call of this role for the principal, or None."""
        budget = await self._budgets.budget(principal, role)
        if budget is None:
            return None
        context: dict[str, float] = {"cost_usd": 0.0}
        if budget.spent_usd is not None:
            context["spent_usd"] = budget.spent_usd
        check = AccessCheck(f"user:{principal.user}", "can_spend", budget.object, context)
        decision = await self._policy.check(principal, check)
        return None if decision.verdict is Verdict.ALLOW else decision
