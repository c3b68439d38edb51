"""Budget crossings: when a tenant's spend on a role's model calls this month passes the
limit of its budget for the role, one ModelBudgetExceeded event says so, at once, before the
next call is refused for it (svc_conversation asks svc_policy, whose budget condition
compares the same spend with the same limit).

Ingestion tells the watch which tenants' model calls it has just written; the watch looks at
each at most once per `interval` (a tenant's budgets, from svc_policy, are reused that long
too), sums its spend per role with a budget, and announces each crossing of (tenant, role,
month, limit) once. The event's id is derived from those four, so an announcement repeated
(after a restart, or by a second process) is the same event, which ingestion counts once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from svc_analytics.errors import AnalyticsError
from svc_analytics.model import Budget, BudgetCrossed
from svc_analytics.ports import Announcements, BudgetSource, WarehouseReader

log = logging.getLogger("skm.analytics.budgets")

_CROSSINGS = uuid.UUID("8f1e6a52-3b0c-4f59-9d0e-6c1b2f7a4e11")


def crossing_id(tenant: str, role: str, since: datetime, limit_usd: float) -> str:
    """The one event id of a crossing: the same wherever and however often it is announced."""
    return str(uuid.uuid5(_CROSSINGS, f"{tenant}|{role}|{since.isoformat()}|{limit_usd!r}"))


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class BudgetWatch:
    """Announces crossings of the tenants' model budgets."""

    def __init__(
        self,
        budgets: BudgetSource,
        reader: WarehouseReader,
        announcements: Announcements,
        *,
        now: Callable[[], datetime],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budgets = budgets
        self._reader = reader
        self._announcements = announcements
        self._now = now
        self._interval = interval
        self._clock = clock
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._known: dict[str, tuple[float, list[Budget]]] = {}
        self._announced: set[str] = set()

    def charged(self, tenants: Iterable[str]) -> None:
        """Model calls of these tenants were just written."""
        before = len(self._pending)
        self._pending.update(tenants)
        if len(self._pending) > before:
            self._wake.set()

    async def run(self) -> None:
        """Looks at the charged tenants until cancelled, at most once per interval."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            tenants, self._pending = self._pending, set()
            for tenant in sorted(tenants):
                try:
                    await self.check(tenant)
                except AnalyticsError as exc:
                    # Looked at again with its next model call.
                    log.warning(
                        "a tenant's budgets could not be checked",
                        extra={"fields": {"tenant": tenant, "error": exc.message}},
                    )
                except Exception:  # the watch goes on for the other tenants
                    log.exception("checking a tenant's budgets failed", extra={"fields": {"tenant": tenant}})
            await asyncio.sleep(self._interval)

    async def check(self, tenant: str) -> list[BudgetCrossed]:
        """Announces the tenant's budgets crossed and not announced yet; returns them."""
        budgets = await self._tenant_budgets(tenant)
        if not budgets:
            return []
        since = month_start(self._now())
        crossed = []
        for budget in budgets:
            event_id = crossing_id(tenant, budget.role, since, budget.limit_usd)
            if event_id in self._announced:
                continue
            spend = await self._reader.model_spend(tenant, budget.role, since)
            if spend.usd > budget.limit_usd:
                crossing = BudgetCrossed(event_id, budget, spend.usd, since, self._now())
                await self._announcements.announce(crossing)
                self._announced.add(event_id)
                crossed.append(crossing)
                log.info(
                    "a model budget was crossed",
                    extra={"fields": {"tenant": tenant, "role": budget.role, "limit_usd": budget.limit_usd}},
                )
        return crossed

    async def _tenant_budgets(self, tenant: str) -> list[Budget]:
        held = self._known.get(tenant)
        now = self._clock()
        if held is not None and held[0] > now:
            return held[1]
        budgets = await self._budgets.budgets(tenant)
        self._known[tenant] = (now + self._interval * 10, budgets)
        return budgets
