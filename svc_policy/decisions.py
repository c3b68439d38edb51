"""The decision table: which relations answer a question, and what each answer means.

For an (object type, relation) a caller may ask, the table lists probes: relations of the
authorization model, in order, each with the verdict and reason it stands for. The engine
answers every probe in one round trip; the first that holds decides, and when none holds
the answer is DENY with the rule's own reason. The table lives in
deploy/openfga/decisions.yaml (read by svc_policy.adapters.decision_file).

A probe may be `asked_as` a cheaper relation together with probes of the same question: it
holds when that relation holds and any of those probes does. This is for a relation the
model defines as such a conjunction (`agitation_escalation: caller_agitated and
(can_execute or ...)`), which the engine would otherwise evaluate by walking the same
grants a second time, inside it, beside the probes that ask for them anyway.
tests/integration/test_policy_asked_as.py checks on the real engine that every
`asked_as` gives what its relation gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skm_runtime.access import Verdict

_REASON = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


class InvalidDecisionTable(ValueError):
    """The table is malformed or names a relation the authorization model lacks."""


@dataclass(frozen=True, slots=True)
class Rule:
    """If `relation` holds, the answer is `verdict` for `reason`.

    The engine is asked `asked` (`relation` itself unless the table says `asked_as`); with
    `and_any_of` (indices of other probes of the same question), the probe holds only
    when `asked` and at least one of those probes hold."""

    relation: str
    verdict: Verdict
    reason: str
    asked: str = ""
    and_any_of: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.asked:
            object.__setattr__(self, "asked", self.relation)


@dataclass(frozen=True, slots=True)
class Rules:
    """How one question is decided: probes in order, then DENY for `deny_reason`."""

    probes: tuple[Rule, ...]
    deny_reason: str

    def decide(self, answers: Sequence[bool]) -> tuple[Verdict, str]:
        """The verdict and reason for the engine's answers, one per probe (to its `asked`
        relation), in order."""
        if len(answers) != len(self.probes):
            raise ValueError(f"expected {len(self.probes)} answers, got {len(answers)}")
        for rule, holds in zip(self.probes, answers, strict=True):
            if holds and (not rule.and_any_of or any(answers[other] for other in rule.and_any_of)):
                return rule.verdict, rule.reason
        return Verdict.DENY, self.deny_reason


class DecisionTable:
    """Rules per (object type, relation asked)."""

    def __init__(self, rules: Mapping[tuple[str, str], Rules]) -> None:
        self._rules = dict(rules)

    @classmethod
    def parse(
        cls, document: Any, *, defines: Callable[[str, str], bool] | None = None, source: str = "table"
    ) -> DecisionTable:
        """Validate a parsed table (svc_policy.adapters.decision_file reads it from YAML). With
        `defines(object_type, relation)` (for instance `Authorizer.defines`), every relation
        asked or probed must exist in the model."""
        document = _mapping(document, source)
        if document.get("version") != 1:
            raise InvalidDecisionTable(f"{source}: version must be 1")
        types = document.get("types")
        rules: dict[tuple[str, str], Rules] = {}
        for object_type, questions in _mapping(types, f"{source}: types").items():
            for relation, spec in _mapping(questions, f"{source}: {object_type}").items():
                where = f"{source}: {object_type}#{relation}"
                rules[(str(object_type), str(relation))] = _rules(spec, where)
        if defines is not None:
            for (object_type, relation), rule in rules.items():
                for name in (relation, *(name for probe in rule.probes for name in {probe.relation, probe.asked})):
                    if not defines(object_type, name):
                        raise InvalidDecisionTable(
                            f"{source}: {object_type}#{relation}: the model has no relation {object_type}#{name}"
                        )
        return cls(rules)

    def rules_for(self, object_type: str, relation: str) -> Rules | None:
        """How to decide `relation` on an object of `object_type`; None if it may not be asked."""
        return self._rules.get((object_type, relation))

    def questions(self) -> list[tuple[str, str]]:
        """Every (object type, relation) the table answers."""
        return sorted(self._rules)


def _rules(spec: Any, where: str) -> Rules:
    spec = _mapping(spec, where)
    unknown = set(spec) - {"probes", "otherwise_deny"}
    if unknown:
        raise InvalidDecisionTable(f"{where}: unknown keys {sorted(unknown)}")
    probes = spec.get("probes")
    if not isinstance(probes, list):
        raise InvalidDecisionTable(f"{where}: probes must be a list")
    rules = [_rule(probe, f"{where}: probe {index + 1}") for index, probe in enumerate(probes)]
    relations = [rule.relation for rule in rules]
    if len(set(relations)) != len(relations):
        raise InvalidDecisionTable(f"{where}: a relation is probed twice")
    for index, probe in enumerate(probes):
        if "asked_as" in probe:
            rules[index] = _asked_as(rules[index], probe["asked_as"], relations, f"{where}: probe {index + 1}")
    asked = [rule.asked for rule in rules]
    if len(set(asked)) != len(asked):
        raise InvalidDecisionTable(f"{where}: a relation is asked twice")
    if any(rules[other].and_any_of for rule in rules for other in rule.and_any_of):
        # The engine's answer for such a probe is to a part of it, not to its relation.
        raise InvalidDecisionTable(f"{where}: asked_as: and_any_of may not name a probe that is asked_as")
    return Rules(tuple(rules), _reason(spec.get("otherwise_deny"), f"{where}: otherwise_deny"))


def _rule(probe: Any, where: str) -> Rule:
    probe = _mapping(probe, where)
    if not {"relation", "verdict", "reason"} <= set(probe) <= {"relation", "verdict", "reason", "asked_as"}:
        raise InvalidDecisionTable(f"{where}: needs exactly relation, verdict and reason (and may say asked_as)")
    relation, verdict = probe["relation"], probe["verdict"]
    if not isinstance(relation, str) or not relation:
        raise InvalidDecisionTable(f"{where}: relation must be a name")
    if verdict not in Verdict.__members__:
        raise InvalidDecisionTable(f"{where}: verdict must be one of {', '.join(Verdict.__members__)}")
    return Rule(relation, Verdict[verdict], _reason(probe["reason"], where))


def _asked_as(rule: Rule, spec: Any, relations: list[str], where: str) -> Rule:
    spec = _mapping(spec, f"{where}: asked_as")
    asked, others = spec.get("relation"), spec.get("and_any_of")
    if set(spec) != {"relation", "and_any_of"} or not isinstance(asked, str) or not asked:
        raise InvalidDecisionTable(f"{where}: asked_as needs a relation and and_any_of")
    if not isinstance(others, list) or not others or any(other not in relations for other in others):
        raise InvalidDecisionTable(f"{where}: asked_as: and_any_of must name other probes of this question")
    if rule.relation in others:
        raise InvalidDecisionTable(f"{where}: asked_as: a probe cannot depend on itself")
    return Rule(rule.relation, rule.verdict, rule.reason, asked, tuple(relations.index(other) for other in others))


def _reason(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _REASON.fullmatch(value):
        raise InvalidDecisionTable(f"{where}: a reason must be UPPER_SNAKE_CASE, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidDecisionTable(f"{where}: expected a non-empty mapping")
    return value
