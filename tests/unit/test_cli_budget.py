"""`skm budget`: the limit read back from its tuple, and what `show` prints."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import struct_pb2

from skm.policy.v1 import access_pb2
from skm_cli import budget
from skm_cli.errors import CliError


def _exhausted(limit: float) -> access_pb2.Relationship:
    context = struct_pb2.Struct()
    context.update({"limit_usd": limit})
    obj = budget.budget_object("t1", "primary")
    return access_pb2.Relationship(
        subject=f"{obj}#spender",
        relation="exhausted",
        object=obj,
        condition=access_pb2.RelationshipCondition(name="budget_exhausted", context=context),
    )


def test_the_limit_is_the_exhausted_tuples_condition() -> None:
    assert budget.limit_of([_exhausted(12.5)]) == 12.5
    assert budget.limit_of([]) is None
    assert budget.limit_of([access_pb2.Relationship(subject="a", relation="exhausted", object="b")]) is None


def _shown(**changes: object) -> dict[str, object]:
    shown: dict[str, object] = {
        "budget": "model_budget:tenants/t1/modelBudgets/primary",
        "exists": True,
        "limit_usd": 10.0,
        "spenders": ["tenant:tenants/t1#member"],
        "spent_usd": 2.5,
        "model_calls": 7,
        "since": "2026-12-01T00:00:00Z",
    }
    return {**shown, **changes}


def test_show_says_how_much_of_the_limit_is_spent() -> None:
    assert budget.render(_shown()) == (
        "model_budget:tenants/t1/modelBudgets/primary: 2.5000 USD in 7 call(s) since 2026-12-01 of 10 USD (25%)\n"
        "  spenders: tenant:tenants/t1#member"
    )
    assert "OVER: the role's calls are refused" in budget.render(_shown(spent_usd=10.5))
    assert "no budget (spends freely)" in budget.render(_shown(exists=False, limit_usd=None))
    assert "no limit set" in budget.render(_shown(limit_usd=None))


def test_set_needs_a_limit() -> None:
    args = argparse.Namespace(tenant="t1", role="primary", limit_usd=None, spender=None)
    with pytest.raises(CliError, match="--limit-usd"):
        budget.set_budget(object(), lambda _: (), args)
    with pytest.raises(CliError, match="--limit-usd"):
        budget.set_budget(object(), lambda _: (), argparse.Namespace(**{**vars(args), "limit_usd": -1.0}))
