"""The decision table: the first probe that holds decides; malformed tables are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from svc_policy.decisions import DecisionTable, InvalidDecisionTable
from svc_policy.model import Verdict


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
    rules = DecisionTable.load(path).rules_for("tool", "can_execute")
    assert rules is not None
    assert rules.decide([]) == (Verdict.DENY, "NOT_PERMITTED")
    path.write_text("types: [unclosed\n")
    with pytest.raises(InvalidDecisionTable, match=str(path)):
        DecisionTable.load(path)
