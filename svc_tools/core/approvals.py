"""What svc_policy says about an execution, and the wait for an operator when it holds one.

Runs that need approval follow svc_policy's exactly-once protocol: the execution is stored
(its name is the claim id) before it is held; the hold's request_id is derived from it, so
a retried check returns the same blocked action; the approved action is claimed before the
execution is recorded as RUNNING, and the outcome is reported once the result is stored.

Nothing here touches the execution store: the state machine (svc_tools.core.executions)
records what these answers mean.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Sequence

from skm_runtime.access import (
    RESTRICTIVENESS,
    AccessCheck,
    Approval,
    Decision,
    Outcome,
    Verdict,
)
from svc_tools.catalogue import CODE_EXECUTION, DEFAULT_AREAS
from svc_tools.core.names import session_of
from svc_tools.errors import PolicyUnavailable
from svc_tools.model import Access, Execution, Failure, HoldRequest, Success
from svc_tools.ports import PolicyGate

log = logging.getLogger("skm.tools")

MAX_SUMMARY_CHARS = 300
# Hold request ids are derived from execution names in this UUID namespace.
HOLD_NAMESPACE = uuid.UUID("5d0c7f64-3c1e-4b7a-9a53-1f0a4c2b7e11")


class Approvals:
    """svc_policy's decisions on executions, and the hold -> wait -> claim -> complete protocol."""

    def __init__(self, policy: PolicyGate) -> None:
        self._policy = policy

    async def decide(self, execution: Execution, accesses: Sequence[Access]) -> Decision:
        """The most restrictive decision on every access, for the user and the persona
        alike; a REQUIRES_APPROVAL one is held (with the execution as its payload), and
        one that could not be held becomes DENY (NOT_HELD)."""
        subjects = [f"user:{execution.principal.user}"]
        if execution.persona:
            subjects.append(f"persona:{execution.persona}")
        checks = [
            AccessCheck(subject, access.relation, access.object, execution.policy_context)
            for access in accesses
            for subject in subjects
        ]
        decisions = await self._policy.check(checks, execution.principal)
        decision = most_restrictive(decisions)
        if decision.verdict is Verdict.REQUIRES_APPROVAL:
            held_check = checks[decisions.index(decision)]
            held = await self._policy.hold(held_check, execution.principal, hold_of(execution), execution)
            others = [d for d, c in zip(decisions, checks, strict=True) if c is not held_check]
            decision = most_restrictive([held, *others])
            if decision.verdict is Verdict.REQUIRES_APPROVAL and not decision.blocked_action:
                decision = dataclasses.replace(decision, verdict=Verdict.DENY, reason="NOT_HELD")
        return decision

    async def await_approval(self, execution: Execution) -> Approval:
        """Wait for the operator's decision on a held execution; CLAIMED means the approved
        action is bound to this execution (its name is the claim id): run it, once."""
        assert execution.decision is not None  # held executions have their decision
        return await self._policy.approval(execution.decision.blocked_action, execution.name)

    async def withdraw(self, execution: Execution) -> None:
        """Withdraw a held execution's blocked action (it was cancelled while waiting)."""
        assert execution.decision is not None  # held executions have their decision
        try:
            await self._policy.cancel(execution.decision.blocked_action)
        except PolicyUnavailable:
            # Nobody will claim it: it expires in svc_policy's store.
            log.warning("could not withdraw a held run", extra={"fields": {"execution": execution.name}})

    async def report(self, execution: Execution) -> None:
        """Tell svc_policy how a claimed execution ended (kept and reported again where it
        cannot take it now: see skm_runtime.held_actions)."""
        assert execution.decision is not None  # claimed executions were held
        result = execution.result
        failure = result.reason.value if isinstance(result, Failure) else ""
        await self._policy.complete(
            execution.decision.blocked_action, execution.name, Outcome(isinstance(result, Success), failure)
        )


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """DENY > REQUIRES_APPROVAL > ALLOW; the first of equals."""
    worst = decisions[0]
    for decision in decisions[1:]:
        if RESTRICTIVENESS[decision.verdict] > RESTRICTIVENESS[worst.verdict]:
            worst = decision
    return worst


def hold_of(execution: Execution) -> HoldRequest:
    """What svc_policy keeps for an operator: a one-line summary without personal data,
    and a request_id derived from the execution, so that a retried hold finds the same entry."""
    summary = f"{execution.tool_id}{_arguments_shape(execution)} for {execution.principal.user}"
    if execution.persona:
        summary += f" as {execution.persona}"
    return HoldRequest(
        request_id=str(uuid.uuid5(HOLD_NAMESPACE, execution.name)),
        summary=summary[:MAX_SUMMARY_CHARS],
        session=session_of(execution.turn),
    )


def _arguments_shape(execution: Execution) -> str:
    """What an operator needs to see of the arguments in a hold's summary (never texts)."""
    try:
        arguments = json.loads(execution.arguments_json)
        if execution.tool_id == CODE_EXECUTION.id:
            lines = len(str(arguments["code"]).splitlines())
            return f" ({arguments['runtime']}, {lines} line{'s' if lines != 1 else ''})"
        if execution.tool_id == "memory_save":
            return f" (area {str(arguments.get('area', 'main'))[:64]})"
        if execution.tool_id in ("memory_load", "memory_forget"):
            areas = arguments.get("areas", DEFAULT_AREAS)
            return f" (areas {', '.join(str(a)[:64] for a in areas[:16])})"
        if "ids" in arguments:
            return f" ({len(arguments['ids'])} memories)"
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return ""
