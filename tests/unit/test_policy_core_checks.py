"""svc_policy's decisions through its core, over in-memory ports: the regression cases,
batches, the decision cache, failing closed, and relationship changes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from skm_runtime.access import AccessCheck, Principal, Verdict
from svc_policy.adapters.openfga import MODEL_JSON
from svc_policy.errors import (
    CrossTenantRelationship,
    InvalidCheck,
    PolicyBackendUnavailable,
    PolicyError,
    TooManyChecks,
    TooManyRelationships,
    WildcardNotAllowed,
)
from svc_policy.model import Condition, Relationship
from tests.support.policy_memory import MemoryPolicy, memory_policy

OPENFGA = MODEL_JSON.parent
FIXTURE = yaml.safe_load((OPENFGA / "model.fga.yaml").read_text())
CASES = yaml.safe_load((Path(__file__).parents[1] / "integration" / "policy_cases.yaml").read_text())["cases"]

T = "tenants/t1"
MIKE = Principal(T, f"{T}/users/mike", ("member",))


def fixture_relationships() -> list[Relationship]:
    """The tuples of deploy/openfga/model.fga.yaml (tenants acme and globex)."""
    return [
        Relationship(
            item["user"],
            item["relation"],
            item["object"],
            Condition(item["condition"]["name"], item["condition"].get("context", {})) if "condition" in item else None,
        )
        for item in FIXTURE["tuples"]
    ]


@pytest.fixture
async def core() -> MemoryPolicy:
    """The core with the model's fixture tuples and tenant t1: olga operator, mike member,
    tool `search` low risk."""
    core = memory_policy()
    await core.authorizer.write(fixture_relationships())
    await core.policy.write_relationships(
        T,
        [
            Relationship(f"user:{T}/users/olga", "operator", f"tenant:{T}"),
            Relationship(f"user:{T}/users/mike", "member", f"tenant:{T}"),
            Relationship(f"tenant:{T}", "tenant", f"tool:{T}/tools/search"),
            Relationship(f"tenant:{T}", "low_risk", f"tool:{T}/tools/search"),
        ],
    )
    return core


def converse(user: str, tenant: str = T) -> AccessCheck:
    return AccessCheck(f"user:{tenant}/users/{user}", "can_converse", f"tenant:{tenant}")


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
async def test_policy_case(case: dict[str, Any], core: MemoryPolicy) -> None:
    """The regression suite that tests/integration/test_policy_regression.py runs on OpenFGA."""
    subject, relation, object_ = case["check"]
    check = AccessCheck(subject, relation, object_, case.get("context", {}))
    if "error" in case:
        with pytest.raises(PolicyError) as raised:
            await core.policy.check(check, fresh=False, hold=None, principal=None)
        assert raised.value.reason == case["error"]
        return
    decision = await core.policy.check(check, fresh=False, hold=None, principal=None)
    assert (decision.verdict.value, decision.reason) == tuple(case["expect"])


@pytest.mark.parametrize("test", FIXTURE["tests"], ids=[test["name"] for test in FIXTURE["tests"]])
async def test_the_memory_authorizer_answers_the_model_tests(test: dict[str, Any], core: MemoryPolicy) -> None:
    """The assertions of deploy/openfga/model.fga.yaml, relation by relation, on the fake."""
    checks = [
        (AccessCheck(item["user"], relation, item["object"], item.get("context", {})), expected)
        for item in test.get("check", [])
        for relation, expected in item["assertions"].items()
    ]
    answers = await core.authorizer.check([check for check, _ in checks], fresh=False)
    assert [(check, answer) for (check, _), answer in zip(checks, answers, strict=True)] == checks


async def test_every_decision_gets_its_own_id_and_is_audited(core: MemoryPolicy) -> None:
    first = await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)
    second = await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)
    assert (first.verdict, first.reason) == (Verdict.ALLOW, "ROLE_ALLOWS")
    assert first.decision_id
    assert first.decision_id != second.decision_id
    assert core.audit.decisions == [(converse("mike"), first, T, MIKE), (converse("mike"), second, T, MIKE)]


async def test_a_batch_answers_in_request_order(core: MemoryPolicy) -> None:
    checks = [
        converse("mike"),
        converse("nobody"),
        AccessCheck(f"user:{T}/users/mike", "can_converse", "tenant:tenants/acme"),
        AccessCheck(f"user:{T}/users/mike", "can_operate", f"tenant:{T}"),
        AccessCheck(f"user:{T}/users/olga", "can_operate", f"tenant:{T}"),
    ]
    decisions = await core.policy.check_many(checks, fresh=False, principal=MIKE)
    assert [(d.verdict, d.reason) for d in decisions] == [
        (Verdict.ALLOW, "ROLE_ALLOWS"),
        (Verdict.DENY, "NOT_A_TENANT_MEMBER"),
        (Verdict.DENY, "CROSS_TENANT"),
        (Verdict.DENY, "ROLE_INSUFFICIENT"),
        (Verdict.ALLOW, "ROLE_ALLOWS"),
    ]
    assert len({d.decision_id for d in decisions}) == len(checks)
    assert [(check, tenant) for check, _, tenant, _ in core.audit.decisions] == [
        (check, "tenants/acme" if check.object == "tenant:tenants/acme" else T) for check in checks
    ]
    # The cross-tenant question never reached the engine.
    asked, _ = core.authorizer.asked[-1]
    assert all(probe.object != "tenant:tenants/acme" for probe in asked)


@pytest.mark.parametrize("count", [0, 101])
async def test_a_batch_holds_1_to_100_checks(core: MemoryPolicy, count: int) -> None:
    with pytest.raises(TooManyChecks):
        await core.policy.check_many([converse("mike")] * count, fresh=False, principal=MIKE)


async def test_a_malformed_question_is_refused_before_the_engine(core: MemoryPolicy) -> None:
    asked = len(core.authorizer.asked)
    for check in (
        AccessCheck("mike", "can_converse", f"tenant:{T}"),
        AccessCheck(f"user:{T}/users/mike", "can_converse", "tenant:*"),
        AccessCheck(f"user:{T}/users/mike", "", f"tenant:{T}"),
        AccessCheck(f"user:{T}/users/mike", "member", f"tenant:{T}"),  # a relation the table does not ask
    ):
        with pytest.raises(InvalidCheck):
            await core.policy.check(check, fresh=False, hold=None, principal=MIKE)
    assert len(core.authorizer.asked) == asked
    assert core.audit.decisions == []


async def test_a_decision_is_reused_until_fresh_is_asked_for(core: MemoryPolicy) -> None:
    assert not (await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)).cached
    asked = len(core.authorizer.asked)
    assert (await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)).cached
    assert len(core.authorizer.asked) == asked
    fresh = await core.policy.check(converse("mike"), fresh=True, hold=None, principal=MIKE)
    assert not fresh.cached
    assert core.authorizer.asked[-1][1] is True


async def test_an_unreachable_engine_fails_every_check_closed(core: MemoryPolicy) -> None:
    core.authorizer.down = True
    with pytest.raises(PolicyBackendUnavailable):
        await core.policy.check(converse("olga"), fresh=False, hold=None, principal=MIKE)
    with pytest.raises(PolicyBackendUnavailable):
        await core.policy.check_many([converse("olga"), converse("mike")], fresh=False, principal=MIKE)
    assert core.audit.decisions == []


async def test_a_cached_allow_is_not_reused_once_the_engine_is_found_down(core: MemoryPolicy) -> None:
    assert (await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)).verdict is Verdict.ALLOW
    core.authorizer.down = True
    # Another question finds the engine down ...
    with pytest.raises(PolicyBackendUnavailable):
        await core.policy.check(converse("olga"), fresh=False, hold=None, principal=MIKE)
    # ... and from then on the cached ALLOW answers no more.
    with pytest.raises(PolicyBackendUnavailable):
        await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)
    core.authorizer.down = False
    assert (await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)).verdict is Verdict.ALLOW


async def test_the_engine_probe_ends_the_reuse_of_cached_decisions(core: MemoryPolicy) -> None:
    await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)

    async def probed() -> None:
        core.authorizer.pinged.clear()
        await core.authorizer.pinged.wait()

    probe = asyncio.create_task(core.checker.watch_engine(0.001))
    try:
        core.authorizer.down = True
        await probed()
        assert not core.checker.engine_up
        with pytest.raises(PolicyBackendUnavailable):
            await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)
        core.authorizer.down = False
        await probed()
        assert core.checker.engine_up
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    assert (await core.policy.check(converse("mike"), fresh=False, hold=None, principal=MIKE)).cached


async def test_a_relationship_change_applies_at_once_and_is_announced(core: MemoryPolicy) -> None:
    newcomer = converse("nina")
    assert (await core.policy.check(newcomer, fresh=False, hold=None, principal=MIKE)).reason == "NOT_A_TENANT_MEMBER"
    membership = Relationship(f"user:{T}/users/nina", "member", f"tenant:{T}")
    core.changes.announced.clear()

    await core.policy.write_relationships(T, [membership])
    assert (await core.policy.check(newcomer, fresh=False, hold=None, principal=MIKE)).verdict is Verdict.ALLOW
    await core.policy.delete_relationships(T, [membership])
    assert (await core.policy.check(newcomer, fresh=False, hold=None, principal=MIKE)).verdict is Verdict.DENY
    assert core.changes.announced == [T, T]


@pytest.mark.parametrize(
    ("relationships", "error"),
    [
        ([Relationship("user:tenants/acme/users/ada", "member", f"tenant:{T}")], CrossTenantRelationship),
        ([Relationship(f"user:{T}/users/mike", "member", "tenant:tenants/acme")], CrossTenantRelationship),
        ([Relationship("user:*", "member", f"tenant:{T}")], WildcardNotAllowed),
        ([Relationship(f"user:{T}/users/u{n}", "member", f"tenant:{T}") for n in range(101)], TooManyRelationships),
        ([], TooManyRelationships),
    ],
    ids=["foreign-subject", "foreign-object", "wildcard", "too-many", "none"],
)
async def test_a_refused_write_changes_nothing(
    core: MemoryPolicy, relationships: list[Relationship], error: type[PolicyError]
) -> None:
    core.changes.announced.clear()
    with pytest.raises(error):
        await core.policy.write_relationships(T, relationships)
    assert core.changes.announced == []
    found, _ = await core.policy.read_relationships(T, "", "member", f"tenant:{T}", 100, "")
    assert [r.subject for r in found] == [f"user:{T}/users/mike"]


async def test_a_type_wide_read_keeps_the_tenants_own(core: MemoryPolicy) -> None:
    found, token = await core.policy.read_relationships(T, "", "", "tool:", 100, "")
    assert token == ""
    assert {(r.relation, r.object) for r in found} == {
        ("tenant", f"tool:{T}/tools/search"),
        ("low_risk", f"tool:{T}/tools/search"),
    }
    with pytest.raises(CrossTenantRelationship):
        await core.policy.read_relationships(T, "", "", "tool:tenants/acme/tools/web_search", 100, "")
