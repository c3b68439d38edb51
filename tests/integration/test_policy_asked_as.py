"""Every probe the decision table asks `asked_as` its parts gives, on the real OpenFGA, what
asking its own relation gives (svc_policy/decisions.py).

On a store holding the regression fixture (deploy/openfga/model.fga.yaml's tuples), for
each question with such a probe: every subject and object of one tenant that the fixture or
the regression cases name; with no context, with each context the cases give, and with
each of their agitations together with each of their calls' costs; asked both ways and
read as svc_policy reads answers (a condition that cannot be evaluated is "no").
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from skm_runtime.access import AccessCheck
from skm_stack import RunningStack
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import OpenFgaAuthorizer, bootstrap
from svc_policy.decisions import Rule, Rules
from svc_policy.model import Condition, Relationship

OPENFGA = Path(__file__).resolve().parents[2] / "deploy" / "openfga"
FIXTURE = yaml.safe_load((OPENFGA / "model.fga.yaml").read_text())["tuples"]
CASES = yaml.safe_load((Path(__file__).parent / "policy_cases.yaml").read_text())["cases"]
TABLE = load_decision_table(OPENFGA / "decisions.yaml")
ASKED_AS = [
    (object_type, relation, rules, index)
    for object_type, relation in TABLE.questions()
    if (rules := TABLE.rules_for(object_type, relation)) is not None
    for index, rule in enumerate(rules.probes)
    if rule.and_any_of
]


def _tenant(name: str) -> str:
    return name.split(":", 1)[1].split("#")[0].split("/")[1]


@pytest.fixture(scope="module")
async def authorizer(stack: RunningStack) -> AsyncIterator[OpenFgaAuthorizer]:
    token = stack.openfga_token_file.read_text().strip()
    store_id, model_id = await bootstrap(
        stack.openfga_api_url, token, f"skm-test-{uuid.uuid4().hex[:12]}", OPENFGA / "model.json"
    )
    async with OpenFgaAuthorizer(stack.openfga_api_url, token, store_id, model_id) as authorizer:
        relationships = [
            Relationship(
                item["user"],
                item["relation"],
                item["object"],
                Condition(item["condition"]["name"], item["condition"].get("context", {}))
                if "condition" in item
                else None,
            )
            for item in FIXTURE
        ]
        for start in range(0, len(relationships), 100):
            await authorizer.write(relationships[start : start + 100])
        yield authorizer


def test_the_table_asks_some_probe_as_its_parts() -> None:
    # Otherwise this file tests nothing: keep it in step with decisions.yaml.
    assert {(object_type, relation) for object_type, relation, _, _ in ASKED_AS} == {
        ("tool", "can_execute"),
        ("memory_namespace", "can_write"),
    }


@pytest.mark.parametrize(
    ("object_type", "relation", "rules", "index"),
    ASKED_AS,
    ids=[
        f"{object_type}#{relation}#{rules.probes[index].relation}" for object_type, relation, rules, index in ASKED_AS
    ],
)
async def test_a_probe_asked_as_its_parts_answers_as_its_relation(
    object_type: str, relation: str, rules: Rules, index: int, authorizer: OpenFgaAuthorizer
) -> None:
    rule: Rule = rules.probes[index]
    parts = [rules.probes[other].asked for other in rule.and_any_of]
    named = [item[key] for item in FIXTURE for key in ("user", "object")]
    named += [name for case in CASES for name in (case["check"][0], case["check"][2])]
    subjects = sorted({name for name in named if name.startswith(("user:", "persona:")) and "#" not in name})
    objects = sorted({name for name in named if name.startswith(f"{object_type}:")})
    # Contexts of the wrong type (a cost of "cheap") are refused before OpenFGA is asked, for
    # both forms alike: every condition parameter of the model is a number.
    given = [
        case["context"]
        for case in CASES
        if case.get("context")
        and all(isinstance(value, int | float) and not isinstance(value, bool) for value in case["context"].values())
    ]
    # Each context the cases give, and each agitation with each call's cost (an agitated
    # caller's costly call).
    agitated = [context for context in given if "agitation_score" in context]
    costs = [context for context in given if "cost_usd" in context and "spent_usd" not in context]
    merged = [{**one, **other} for one in agitated for other in costs]
    contexts: list[dict[str, Any]] = [{}]
    for context in [*given, *merged]:
        if context not in contexts:
            contexts.append(context)
    questions = [
        (subject, object_, context)
        for subject, object_, context in itertools.product(subjects, objects, contexts)
        if _tenant(subject) == _tenant(object_)
    ]
    assert len(questions) > 50
    asked = [
        AccessCheck(subject, name, object_, context)
        for subject, object_, context in questions
        for name in (rule.relation, rule.asked, *parts)
    ]
    answers = []
    for start in range(0, len(asked), 250):  # each request well within the adapter's deadline
        answers += await authorizer.check(asked[start : start + 250], fresh=False)
    width = 2 + len(parts)
    differ = []
    held = 0
    for n, question in enumerate(questions):
        own, part, *others = answers[n * width : (n + 1) * width]
        held += own
        if own != (part and any(others)):
            differ.append((question, own, part, others))
    assert not differ, json.dumps(differ[:5], default=str)
    assert held > 0  # some question escalates, so the comparison can fail
