"""The decision table: the first probe that holds decides, a probe asked as its parts holds
when they do; malformed tables are refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from skm_runtime.access import AccessCheck, Verdict
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.checks import Checker
from svc_policy.decisions import DecisionTable, InvalidDecisionTable
from svc_policy.model import Relationship


def _table(**rules: Any) -> dict[str, Any]:
    return {"version": 1, "types": {"tool": rules}}


_TOOL = {
    "can_execute": {
        "probes": [
            {"relation": "can_execute", "verdict": "ALLOW", "reason": "ROLE_ALLOWS"},
            {"relation": "with_approval", "verdict": "REQUIRES_APPROVAL", "reason": "HIGH_RISK_TOOL_NEEDS_APPROVAL"},
            {"relation": "over_ceiling", "verdict": "DENY", "reason": "COST_CEILING_EXCEEDED"},
        ],
        "otherwise_deny": "NOT_PERMITTED",
    }
}


def test_the_first_probe_that_holds_decides() -> None:
    rules = DecisionTable.parse(_table(**_TOOL)).rules_for("tool", "can_execute")
    assert rules is not None
    assert [rule.relation for rule in rules.probes] == ["can_execute", "with_approval", "over_ceiling"]
    assert rules.decide([True, True, False]) == (Verdict.ALLOW, "ROLE_ALLOWS")
    assert rules.decide([False, True, True]) == (Verdict.REQUIRES_APPROVAL, "HIGH_RISK_TOOL_NEEDS_APPROVAL")
    assert rules.decide([False, False, True]) == (Verdict.DENY, "COST_CEILING_EXCEEDED")
    assert rules.decide([False, False, False]) == (Verdict.DENY, "NOT_PERMITTED")


def test_answers_must_match_the_probes() -> None:
    rules = DecisionTable.parse(_table(**_TOOL)).rules_for("tool", "can_execute")
    assert rules is not None
    with pytest.raises(ValueError, match="expected 3 answers"):
        rules.decide([True])


def test_a_question_the_table_does_not_list_has_no_rules() -> None:
    table = DecisionTable.parse(_table(**_TOOL))
    assert table.rules_for("tool", "over_ceiling") is None
    assert table.rules_for("session", "can_execute") is None
    assert table.questions() == [("tool", "can_execute")]


def _probe(**change: Any) -> dict[str, Any]:
    return {"relation": "can_execute", "verdict": "ALLOW", "reason": "ROLE_ALLOWS", **change}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"types": {"tool": _TOOL}}, "version must be 1"),
        ({"version": 1}, "types"),
        (_table(can_execute={"probes": [_probe(verdict="MAYBE")], "otherwise_deny": "NO"}), "verdict must be"),
        (_table(can_execute={"probes": [_probe(reason="role allows")], "otherwise_deny": "NO"}), "UPPER_SNAKE"),
        (_table(can_execute={"probes": [_probe()], "otherwise_deny": "Nope"}), "UPPER_SNAKE"),
        (_table(can_execute={"probes": [_probe()]}), "otherwise_deny"),
        (_table(can_execute={"probes": [_probe(), _probe()], "otherwise_deny": "NO"}), "probed twice"),
        (_table(can_execute={"probes": [_probe(extra=1)], "otherwise_deny": "NO"}), "exactly relation"),
        (_table(can_execute={"probes": [_probe(relation="")], "otherwise_deny": "NO"}), "relation must be"),
        (_table(can_execute={"probes": "can_execute", "otherwise_deny": "NO"}), "probes must be a list"),
        (_table(can_execute={"probes": [], "otherwise_deny": "NO", "cache": True}), "unknown keys"),
    ],
)
def test_malformed_tables_are_refused(document: Any, complaint: str) -> None:
    with pytest.raises(InvalidDecisionTable, match=complaint):
        DecisionTable.parse(document)


def test_relations_are_checked_against_the_model() -> None:
    defined = {("tool", "can_execute"), ("tool", "with_approval")}
    with pytest.raises(InvalidDecisionTable, match="no relation tool#over_ceiling"):
        DecisionTable.parse(_table(**_TOOL), defines=lambda t, r: (t, r) in defined)


def test_load_reads_yaml_and_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.yaml"
    path.write_text("version: 1\ntypes: {tool: {can_execute: {probes: [], otherwise_deny: NOT_PERMITTED}}}\n")
    rules = load_decision_table(path).rules_for("tool", "can_execute")
    assert rules is not None
    assert rules.decide([]) == (Verdict.DENY, "NOT_PERMITTED")
    path.write_text("types: [unclosed\n")
    with pytest.raises(InvalidDecisionTable, match=str(path)):
        load_decision_table(path)


_ESCALATED = {
    "probes": [
        {
            "relation": "escalation",
            "verdict": "REQUIRES_APPROVAL",
            "reason": "CALLER_AGITATED",
            "asked_as": {"relation": "agitated", "and_any_of": ["can_execute", "with_approval"]},
        },
        {"relation": "can_execute", "verdict": "ALLOW", "reason": "ROLE_ALLOWS"},
        {"relation": "with_approval", "verdict": "REQUIRES_APPROVAL", "reason": "HIGH_RISK_TOOL_NEEDS_APPROVAL"},
    ],
    "otherwise_deny": "NOT_PERMITTED",
}


def test_a_probe_asked_as_its_parts_holds_when_they_do() -> None:
    rules = DecisionTable.parse(_table(can_execute=_ESCALATED)).rules_for("tool", "can_execute")
    assert rules is not None
    assert [rule.asked for rule in rules.probes] == ["agitated", "can_execute", "with_approval"]
    assert [rule.relation for rule in rules.probes] == ["escalation", "can_execute", "with_approval"]
    assert rules.decide([True, True, False]) == (Verdict.REQUIRES_APPROVAL, "CALLER_AGITATED")
    assert rules.decide([True, False, True]) == (Verdict.REQUIRES_APPROVAL, "CALLER_AGITATED")
    # Agitation alone never turns a denial into an approval.
    assert rules.decide([True, False, False]) == (Verdict.DENY, "NOT_PERMITTED")
    assert rules.decide([False, True, False]) == (Verdict.ALLOW, "ROLE_ALLOWS")


def _escalated(**asked_as: Any) -> dict[str, Any]:
    first = {**_ESCALATED["probes"][0], "asked_as": asked_as}
    return {**_ESCALATED, "probes": [first, *_ESCALATED["probes"][1:]]}


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        (_escalated(relation="agitated"), "needs a relation and and_any_of"),
        (_escalated(relation="agitated", and_any_of=["can_execute"], extra=1), "needs a relation and and_any_of"),
        (_escalated(relation="", and_any_of=["can_execute"]), "needs a relation and and_any_of"),
        (_escalated(relation="agitated", and_any_of=[]), "must name other probes"),
        (_escalated(relation="agitated", and_any_of=["over_ceiling"]), "must name other probes"),
        (_escalated(relation="agitated", and_any_of=["escalation"]), "cannot depend on itself"),
        (_escalated(relation="can_execute", and_any_of=["with_approval"]), "asked twice"),
        (
            {
                **_ESCALATED,
                "probes": [
                    *_ESCALATED["probes"][:2],
                    {**_ESCALATED["probes"][2], "asked_as": {"relation": "x", "and_any_of": ["can_execute"]}},
                ],
            },
            "may not name a probe that is asked_as",
        ),
    ],
)
def test_malformed_asked_as_is_refused(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidDecisionTable, match=complaint):
        DecisionTable.parse(_table(can_execute=spec))


def test_what_is_asked_must_be_in_the_model_too() -> None:
    defined = {("tool", name) for name in ("can_execute", "escalation", "with_approval")}
    with pytest.raises(InvalidDecisionTable, match="no relation tool#agitated"):
        DecisionTable.parse(_table(can_execute=_ESCALATED), defines=lambda t, r: (t, r) in defined)
    DecisionTable.parse(_table(can_execute=_ESCALATED), defines=lambda t, r: (t, r) in defined | {("tool", "agitated")})


class _Engine:
    """Answers by relation; records what it was asked."""

    def __init__(self, holds: set[str]) -> None:
        self.holds = holds
        self.asked: list[str] = []

    def defines(self, object_type: str, relation: str) -> bool:
        return True

    async def check(self, checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        self.asked += [check.relation for check in checks]
        return [check.relation in self.holds for check in checks]

    async def write(self, relationships: Sequence[Relationship]) -> None:
        raise NotImplementedError

    async def delete(self, relationships: Sequence[Relationship]) -> None:
        raise NotImplementedError


async def test_the_checker_asks_the_engine_the_parts() -> None:
    table = DecisionTable.parse(_table(can_execute=_ESCALATED))
    check = AccessCheck("user:tenants/t/users/u", "can_execute", "tool:tenants/t/tools/x")
    engine = _Engine({"agitated", "with_approval"})
    decision = await Checker(engine, table, ttl=0.0).check(check)
    assert engine.asked == ["agitated", "can_execute", "with_approval"]
    assert (decision.verdict, decision.reason) == (Verdict.REQUIRES_APPROVAL, "CALLER_AGITATED")
    engine = _Engine({"agitated"})
    decision = await Checker(engine, table, ttl=0.0).check(check)
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "NOT_PERMITTED")
