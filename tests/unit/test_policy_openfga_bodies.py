"""The BatchCheck bodies the OpenFGA adapter writes out by hand are the JSON json.dumps would
write: every id escaped, contexts as given, batches split at the server's limit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from skm_runtime.access import AccessCheck
from svc_policy.adapters.openfga import OpenFgaAuthorizer
from svc_policy.errors import InvalidCheck

STORE, MODEL = "01HZZZZZZZZZZZZZZZZZZZZZZ0", "01HZZZZZZZZZZZZZZZZZZZZZZ1"


def _expected(checks: list[AccessCheck], first: int, consistency: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for index, check in enumerate(checks, start=first):
        item: dict[str, Any] = {
            "tuple_key": {"user": check.subject, "relation": check.relation, "object": check.object},
            "correlation_id": str(index),
        }
        if check.context:
            item["context"] = check.context
        items.append(item)
    return {"authorization_model_id": MODEL, "checks": items, "consistency": consistency}


def test_bodies_are_the_json_of_the_checks() -> None:
    authorizer = OpenFgaAuthorizer("http://127.0.0.1:1", "", STORE, MODEL, max_checks_per_batch=2)
    checks = [
        AccessCheck("user:tenants/t/users/a", "can_execute", "tool:tenants/t/tools/x"),
        AccessCheck('user:tenants/t/users/"q"\\b', "member", "tenant:tenants/t"),
        AccessCheck("user:tenants/t/users/ünï\u2028", "can_read", "session:tenants/t/sessions/s", {"cost_usd": 0.5}),
        AccessCheck(
            "user:tenants/t/users/c",
            "can_spend",
            "model_budget:tenants/t/modelBudgets/primary",
            {"spent_usd": 1, "nested": {"list": [1, "two", None, True]}},
        ),
        AccessCheck("user:tenants/t/users/d", "member", "tenant:tenants/t"),
    ]
    for fresh, consistency in ((False, "MINIMIZE_LATENCY"), (True, "HIGHER_CONSISTENCY")):
        bodies = authorizer._batch_check_bodies(checks, fresh)
        assert [json.loads(body) for body in bodies] == [
            _expected(checks[0:2], 0, consistency),
            _expected(checks[2:4], 2, consistency),
            _expected(checks[4:5], 4, consistency),
        ]
        assert all(body.isascii() for body in bodies)


@pytest.mark.parametrize("context", [{"cost_usd": float("nan")}, {"cost_usd": float("inf")}, {"when": object()}])
def test_a_context_that_is_not_json_is_an_invalid_check(context: dict[str, Any]) -> None:
    authorizer = OpenFgaAuthorizer("http://127.0.0.1:1", "", STORE, MODEL)
    check = AccessCheck("user:tenants/t/users/a", "can_execute", "tool:tenants/t/tools/x", context)
    with pytest.raises(InvalidCheck, match="not JSON"):
        authorizer._batch_check_bodies([check], False)
