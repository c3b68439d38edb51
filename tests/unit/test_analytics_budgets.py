"""Budget crossings (svc_analytics.core.budgets): each crossing of a tenant's budget for a role
announced once, with an id that is the same however often it is announced."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from svc_analytics.core.budgets import BudgetWatch, crossing_id
from svc_analytics.model import AuditEvent, AuditRead, Budget, BudgetCrossed, Series, SeriesRead, Spend

NOW = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
MONTH = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class _Spend:
    """A warehouse reader that knows only spend: USD per (tenant, role) this month."""

    usd: dict[tuple[str, str], float] = field(default_factory=dict)
    asked: list[tuple[str, str, datetime]] = field(default_factory=list)

    async def model_spend(self, tenant: str, role: str, since: datetime) -> Spend:
        self.asked.append((tenant, role, since))
        return Spend(since, self.usd.get((tenant, role), 0.0), 1)

    async def series(self, read: SeriesRead) -> list[Series]:
        raise AssertionError("not asked")

    async def audit_events(self, read: AuditRead) -> list[AuditEvent]:
        raise AssertionError("not asked")


@dataclass
class _Budgets:
    limits: dict[str, list[Budget]] = field(default_factory=dict)
    asked: int = 0

    async def budgets(self, tenant: str) -> list[Budget]:
        self.asked += 1
        return self.limits.get(tenant, [])


@dataclass
class _Announced:
    crossings: list[BudgetCrossed] = field(default_factory=list)

    async def announce(self, crossing: BudgetCrossed) -> None:
        self.crossings.append(crossing)


def _watch(budgets: _Budgets, spend: _Spend, announced: _Announced) -> BudgetWatch:
    return BudgetWatch(budgets, spend, announced, now=lambda: NOW, clock=lambda: 0.0)


async def test_a_spend_past_the_limit_is_announced_once() -> None:
    budgets = _Budgets({"tenants/t1": [Budget("tenants/t1", "PRIMARY", 10.0), Budget("tenants/t1", "UTILITY", 5.0)]})
    spend = _Spend({("tenants/t1", "PRIMARY"): 10.5, ("tenants/t1", "UTILITY"): 5.0})
    announced = _Announced()
    watch = _watch(budgets, spend, announced)
    crossed = await watch.check("tenants/t1")
    assert [(c.budget.role, c.spent_usd, c.since) for c in crossed] == [("PRIMARY", 10.5, MONTH)]
    assert ("tenants/t1", "UTILITY", MONTH) in spend.asked  # at the limit is not past it
    assert await watch.check("tenants/t1") == []
    assert len(announced.crossings) == 1
    assert budgets.asked == 1  # the tenant's budgets are reused


async def test_the_crossing_id_is_the_same_for_the_same_crossing_and_only_for_it() -> None:
    first = crossing_id("tenants/t1", "PRIMARY", MONTH, 10.0)
    assert first == crossing_id("tenants/t1", "PRIMARY", MONTH, 10.0)
    others = {
        crossing_id("tenants/t2", "PRIMARY", MONTH, 10.0),
        crossing_id("tenants/t1", "UTILITY", MONTH, 10.0),
        crossing_id("tenants/t1", "PRIMARY", datetime(2027, 1, 1, tzinfo=UTC), 10.0),
        crossing_id("tenants/t1", "PRIMARY", MONTH, 20.0),
    }
    assert first not in others
    assert len(others) == 4


async def test_a_tenant_without_budgets_costs_no_spend_query() -> None:
    spend, announced = _Spend(), _Announced()
    assert await _watch(_Budgets(), spend, announced).check("tenants/t9") == []
    assert spend.asked == []
    assert announced.crossings == []


async def test_a_raised_limit_is_a_new_crossing_once_passed_again() -> None:
    budgets = _Budgets({"tenants/t1": [Budget("tenants/t1", "PRIMARY", 1.0)]})
    spend, announced = _Spend({("tenants/t1", "PRIMARY"): 2.0}), _Announced()
    watch = BudgetWatch(budgets, spend, announced, now=lambda: NOW, interval=1.0, clock=lambda: clock[0])
    clock = [0.0]
    await watch.check("tenants/t1")
    budgets.limits["tenants/t1"] = [Budget("tenants/t1", "PRIMARY", 5.0)]
    clock[0] = 100.0  # the budgets are read again
    assert await watch.check("tenants/t1") == []
    spend.usd[("tenants/t1", "PRIMARY")] = 6.0
    assert [c.budget.limit_usd for c in await watch.check("tenants/t1")] == [5.0]
    assert [c.budget.limit_usd for c in announced.crossings] == [1.0, 5.0]
