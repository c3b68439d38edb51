"""svc_policy's decision cache: a change of one tenant ends the reuse of that tenant's
decisions only, and sends that tenant's next checks past the engine's caches.

The engine is an in-memory Authorizer (a set of relationships, no rewrites): enough to see
which questions reach it and with which consistency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from skm_runtime.access import AccessCheck, Verdict
from skm_runtime.policy_changes import TenantChanges, changed_tenant, object_tenant
from svc_policy.checks import Checker
from svc_policy.decisions import DecisionTable
from svc_policy.errors import PolicyBackendUnavailable
from svc_policy.model import Relationship

TABLE = DecisionTable.parse(
    {
        "version": 1,
        "types": {
            "tenant": {
                "can_converse": {
                    "probes": [{"relation": "member", "verdict": "ALLOW", "reason": "ROLE_ALLOWS"}],
                    "otherwise_deny": "NOT_A_TENANT_MEMBER",
                }
            }
        },
    }
)


class MemoryAuthorizer:
    """Holds relationships; a probe holds when its (subject, relation, object) was written."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str, str]] = set()
        self.asked: list[tuple[str, bool]] = []  # (object, fresh) of every probe sent

    def defines(self, object_type: str, relation: str) -> bool:
        return True

    down = False

    async def ping(self) -> None:
        if self.down:
            raise PolicyBackendUnavailable("down")

    async def check(self, checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        if self.down:
            raise PolicyBackendUnavailable("down")
        self.asked.extend((check.object, fresh) for check in checks)
        return [(check.subject, check.relation, check.object) in self.held for check in checks]

    async def write(self, relationships: Sequence[Relationship]) -> None:
        self.held.update((r.subject, r.relation, r.object) for r in relationships)

    async def delete(self, relationships: Sequence[Relationship]) -> None:
        self.held.difference_update((r.subject, r.relation, r.object) for r in relationships)


def converse(tenant: str, user: str) -> AccessCheck:
    return AccessCheck(f"user:{tenant}/users/{user}", "can_converse", f"tenant:{tenant}")


async def test_a_change_ends_reuse_in_its_own_tenant_only() -> None:
    engine = MemoryAuthorizer()
    engine.held |= {("user:tenants/a/users/u", "member", "tenant:tenants/a")}
    checker = Checker(engine, TABLE, ttl=600.0, engine_cache_ttl=600.0)
    a, b = converse("tenants/a", "u"), converse("tenants/b", "u")
    assert (await checker.check(a)).verdict is Verdict.ALLOW
    assert (await checker.check(b)).verdict is Verdict.DENY
    assert (await checker.check(a)).cached
    assert (await checker.check(b)).cached

    engine.held.clear()  # a revocation in tenant a, announced for tenant a
    checker.invalidate("tenants/a")
    after = await checker.check(a)
    assert (after.verdict, after.cached) == (Verdict.DENY, False)
    assert (await checker.check(b)).cached, "tenant b's decision is still reused"
    assert engine.asked[-1] == ("tenant:tenants/a", True), "tenant a now skips the engine's caches"

    checker.invalidate(None)  # e.g. a lost subscription: every tenant
    assert not (await checker.check(b)).cached
    assert engine.asked[-1] == ("tenant:tenants/b", True)


async def test_a_decision_made_across_a_change_is_not_remembered() -> None:
    engine = MemoryAuthorizer()
    checker = Checker(engine, TABLE, ttl=600.0)
    check = converse("tenants/a", "u")
    original = engine.check

    async def changing(checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        answers = await original(checks, fresh=fresh)
        checker.invalidate("tenants/a")  # the change lands while the engine answers
        return answers

    engine.check = changing  # type: ignore[method-assign]
    await checker.check(check)
    engine.check = original  # type: ignore[method-assign]
    assert not (await checker.check(check)).cached


def test_tenant_generations_and_messages() -> None:
    changes = TenantChanges()
    a, b = changes.generation("tenants/a"), changes.generation("tenants/b")
    changes.changed("tenants/a")
    assert changes.generation("tenants/a") != a
    assert changes.generation("tenants/b") == b
    before = changes.generation("tenants/a")
    changes.changed(None)
    assert changes.generation("tenants/a") not in (a, before)
    assert changes.generation("tenants/b") != b
    assert changed_tenant("relationships tenants/t1") == "tenants/t1"
    assert changed_tenant(b"relationships tenants/t1") == "tenants/t1"
    for unreadable in ("relationships", "relationships tenants/", "relationships tenants/t1/x", "x y z"):
        assert changed_tenant(unreadable) is None, unreadable
    assert object_tenant("session:tenants/t1/sessions/s") == "tenants/t1"
    assert object_tenant("tenant:tenants/t1") == "tenants/t1"
    assert object_tenant("tool:nowhere") == ""


async def test_no_cached_decision_answers_while_the_engine_is_down() -> None:
    """Fail closed, cached ALLOWs included: once a check or the probe finds the engine
    unreachable, every check fails until the engine answers again."""
    engine = MemoryAuthorizer()
    engine.held |= {("user:tenants/a/users/u", "member", "tenant:tenants/a")}
    checker = Checker(engine, TABLE, ttl=600.0)
    allowed = await checker.check(converse("tenants/a", "u"))
    assert (await checker.check(converse("tenants/a", "u"))).cached
    engine.down = True
    # The probe notices (here one round of it), or any check that reaches the engine does.
    watch = asyncio.create_task(checker.watch_engine(0.01))
    await asyncio.sleep(0.05)
    assert not checker.engine_up
    with pytest.raises(PolicyBackendUnavailable):
        await checker.check(converse("tenants/a", "u"))
    engine.down = False
    await asyncio.sleep(0.05)
    watch.cancel()
    assert checker.engine_up
    assert (await checker.check(converse("tenants/a", "u"))).verdict is allowed.verdict

    # A failed check alone is enough, without the probe.
    engine.down = True
    with pytest.raises(PolicyBackendUnavailable):
        await checker.check(converse("tenants/a", "other"))
    with pytest.raises(PolicyBackendUnavailable):
        await checker.check(converse("tenants/a", "u"))
