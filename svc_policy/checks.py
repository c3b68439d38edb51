"""Deciding one authorization question: ids, tenancy, the decision table, the cache.

A check is answered, in this order:
1. Malformed ids (not "{type}:{id}", or an id outside any tenant) -> INVALID_CHECK.
2. A subject and an object of different tenants -> DENY CROSS_TENANT, without asking
   the engine: no relationship may ever reach across tenants.
3. The decision table names the relations to probe for (object type, relation), in
   order; the first one that holds gives the verdict and reason, none gives DENY.
4. The engine answers all probes in one round trip. When it cannot be reached the check
   fails closed: PolicyBackendUnavailable (UNAVAILABLE), never an ALLOW.

Decisions are cached for `ttl` seconds (per subject, relation, object and context), unless
the caller asks for a fresh one, and reused only while the engine is up: after a check
or the engine probe (`watch_engine`, every second) found it unreachable, no cached decision
answers until it answers again, so an outage fails every check closed within about a
second, cached ALLOWs included. Every relationship write or delete made here, and every one
another svc_policy process announces (skm_runtime/policy_client.py), ends the reuse of the cached
decisions of its tenant, so a decision is never staler than the last change this process
knows of; otherwise the bound is `ttl`. Changes are scoped by tenant because no relationship
may reach across tenants (CROSS_TENANT above, and relationship writes refuse it): a change
in one tenant cannot alter another tenant's decisions.

The engine may cache too (OpenFGA's check iterator cache, `engine_cache_ttl` seconds). For
that long after a change of a tenant, that tenant's checks ask the engine for its most
consistent answer (HIGHER_CONSISTENCY, which skips its caches), so a change made or
announced here is never answered from the engine's older reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from skm_runtime.access import AccessCheck, Decision, Verdict
from skm_runtime.policy_changes import TenantChanges
from svc_policy.decisions import DecisionTable, Rules
from svc_policy.errors import InvalidCheck, PolicyBackendUnavailable, TooManyChecks
from svc_policy.ports import Authorizer

log = logging.getLogger("skm.policy.checks")
MAX_BATCH = 100
# Tenants whose engine-freshness window is tracked before expired windows are swept.
_FRESH_TENANTS = 1024
CROSS_TENANT = "CROSS_TENANT"


def split_id(value: str, *, what: str, userset: bool) -> tuple[str, str, str]:
    """ "type:id" or, when allowed, "type:id#relation" -> (type, id, relation)."""
    head, _, relation = value.partition("#") if userset else (value, "", "")
    object_type, sep, object_id = head.partition(":")
    if not sep or not object_type or not object_id or (userset and "#" in value and not relation):
        raise InvalidCheck(f'{what} must be "{{type}}:{{id}}"', metadata={"field": what})
    if "*" in object_id:
        raise InvalidCheck(f"{what} may not be a wildcard", metadata={"field": what})
    return object_type, object_id, relation


def tenant_of(object_id: str, *, what: str) -> str:
    """The tenant "tenants/{t}" an SKM resource name belongs to."""
    parts = object_id.split("/")
    if len(parts) < 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidCheck(f"{what} must name an SKM resource (tenants/...)", metadata={"field": what})
    return f"tenants/{parts[1]}"


class Checker:
    """Answers AccessChecks with the authorization engine and the decision table."""

    def __init__(
        self,
        authorizer: Authorizer,
        table: DecisionTable,
        *,
        ttl: float = 5.0,
        max_entries: int = 100_000,
        engine_cache_ttl: float = 0.0,
    ) -> None:
        self._authorizer = authorizer
        self._table = table
        self._ttl = ttl
        self._engine_cache_ttl = engine_cache_ttl
        self._max_entries = max_entries
        # key -> (expires at, verdict, reason, the tenant's generation when it was decided)
        self._cache: OrderedDict[tuple[str, str, str, str], tuple[float, Verdict, str, int]] = OrderedDict()
        self._changes = TenantChanges()
        # Until when a tenant's checks skip the engine's caches ("" = every tenant's).
        self._engine_fresh_until: dict[str, float] = {}
        # False from the engine's last failure until its next answer.
        self._engine_up = True

    @property
    def engine_up(self) -> bool:
        return self._engine_up

    async def watch_engine(self, interval: float) -> None:
        """Ask the engine whether it is up every `interval` seconds, forever."""
        while True:
            try:
                await self._authorizer.ping()
            except PolicyBackendUnavailable:
                self._engine_up = False
            except Exception:  # anything else is down too, and the probe goes on
                log.exception("the engine probe failed unexpectedly; treating the engine as down")
                self._engine_up = False
            else:
                self._engine_up = True
            await asyncio.sleep(interval)

    def invalidate(self, tenant: str | None = None) -> None:
        """Forget the cached decisions of `tenant` ("tenants/{t}"), or of every tenant when
        None, after a relationship write or delete."""
        self._changes.changed(tenant)
        if tenant is None:
            self._cache.clear()
        if self._engine_cache_ttl > 0:
            until = time.monotonic() + self._engine_cache_ttl
            if tenant is None:
                self._engine_fresh_until.clear()
            self._engine_fresh_until[tenant or ""] = until
            if len(self._engine_fresh_until) > _FRESH_TENANTS:
                now = time.monotonic()
                self._engine_fresh_until = {t: u for t, u in self._engine_fresh_until.items() if u > now}

    def _engine_fresh(self, tenant: str, now: float) -> bool:
        return now < self._engine_fresh_until.get(tenant, 0.0) or now < self._engine_fresh_until.get("", 0.0)

    async def check(self, check: AccessCheck, *, fresh: bool = False) -> Decision:
        (decision,) = await self.check_many([check], fresh=fresh)
        return decision

    async def check_many(self, checks: Sequence[AccessCheck], *, fresh: bool = False) -> list[Decision]:
        """Decisions in request order (decision ids are the caller's to assign)."""
        if not 1 <= len(checks) <= MAX_BATCH:
            raise TooManyChecks(f"a batch holds 1 to {MAX_BATCH} checks", metadata={"count": str(len(checks))})
        decisions: list[Decision | None] = [None] * len(checks)
        probes: list[AccessCheck] = []
        pending: list[tuple[int, tuple[str, str, str, str], Rules, int, int, str, int]] = []
        now = time.monotonic()
        engine_fresh = fresh
        for index, check in enumerate(checks):
            _, subject_id, _ = split_id(check.subject, what="subject", userset=True)
            object_type, object_id, _ = split_id(check.object, what="object", userset=False)
            if not check.relation:
                raise InvalidCheck("relation is required", metadata={"field": "relation"})
            rules = self._table.rules_for(object_type, check.relation)
            if rules is None:
                raise InvalidCheck(
                    "the authorization model has no such relation on this type",
                    metadata={"type": object_type, "relation": check.relation},
                )
            tenant = tenant_of(object_id, what="object")
            if tenant_of(subject_id, what="subject") != tenant:
                decisions[index] = Decision(Verdict.DENY, CROSS_TENANT)
                continue
            context = json.dumps(check.context, sort_keys=True) if check.context else ""
            key = (check.subject, check.relation, check.object, context)
            generation = self._changes.generation(tenant)
            cached = None if fresh or not self._engine_up else self._cache.get(key)
            if cached is not None and cached[0] > now and cached[3] == generation:
                decisions[index] = Decision(cached[1], cached[2], cached=True)
                continue
            first = len(probes)
            probes.extend(AccessCheck(check.subject, rule.asked, check.object, check.context) for rule in rules.probes)
            pending.append((index, key, rules, first, len(probes), tenant, generation))
            engine_fresh = engine_fresh or self._engine_fresh(tenant, now)
        if probes:
            try:
                answers = await self._authorizer.check(probes, fresh=engine_fresh)
            except PolicyBackendUnavailable:
                self._engine_up = False
                raise
            self._engine_up = True
            for index, key, rules, first, last, tenant, generation in pending:
                verdict, reason = rules.decide(answers[first:last])
                decisions[index] = Decision(verdict, reason)
                # Not when the tenant changed while the engine answered.
                if generation == self._changes.generation(tenant):
                    self._remember(key, verdict, reason, generation)
        return [decision for decision in decisions if decision is not None]

    def _remember(self, key: tuple[str, str, str, str], verdict: Verdict, reason: str, generation: int) -> None:
        self._cache[key] = (time.monotonic() + self._ttl, verdict, reason, generation)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
