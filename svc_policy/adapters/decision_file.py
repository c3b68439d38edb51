"""The decision table from its YAML file (deploy/openfga/decisions.yaml)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from svc_policy.decisions import DecisionTable, InvalidDecisionTable


def load_decision_table(path: Path, *, defines: Callable[[str, str], bool] | None = None) -> DecisionTable:
    """Read and validate a table (see DecisionTable.parse)."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidDecisionTable(f"{path}: not YAML: {error}") from error
    return DecisionTable.parse(document, defines=defines, source=str(path))
