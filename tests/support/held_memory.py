"""svc_policy's blocked actions in memory, as the held-action protocol's PolicyCalls port
(skm_runtime.held_actions) sees them: entries held by request id, resolved by an
"operator" (the test), claimed once, completed once per claim. It follows the state rules
of svc_policy's core (PENDING -> APPROVED | REJECTED | EXPIRED | CANCELLED; APPROVED ->
EXECUTING by one claim id -> EXECUTED), not its authorization: `verdicts` says what each
check answers. `away` makes every call fail as if svc_policy were unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from skm_runtime.access import AccessCheck, Decision, HeldState, Hold, Outcome, Principal, Verdict
from skm_runtime.held_actions import GONE_NOTE, ClaimAnswer, HeldEntry, PolicyUnreachable, ReportAnswer


@dataclass
class _Entry:
    entry: HeldEntry
    hold: Hold
    principal: Principal | None
    outcome: Outcome | None = None


@dataclass
class MemoryPolicyCalls:
    """See the module docstring. `calls` counts each method's calls."""

    verdicts: dict[tuple[str, str, str], Verdict] = field(default_factory=dict)
    away: bool = False
    calls: dict[str, int] = field(default_factory=dict)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _by_request: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def _call(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.away:
            raise PolicyUnreachable("UNAVAILABLE")

    def _decide(self, check: AccessCheck) -> Decision:
        verdict = self.verdicts.get((check.subject, check.relation, check.object), Verdict.DENY)
        return Decision(verdict, "RULE" if verdict is not Verdict.DENY else "NO_RELATIONSHIP")

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        self._call("check")
        return [self._decide(c) for c in checks]

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        self._call("hold")
        decision = self._decide(check)
        if decision.verdict is not Verdict.REQUIRES_APPROVAL:
            return decision
        name = self._by_request.get(hold.request_id)
        if name is None:
            tenant = principal.tenant if principal else "tenants/t"
            name = f"{tenant}/blockedActions/{len(self._entries) + 1}"
            self._by_request[hold.request_id] = name
            self._entries[name] = _Entry(HeldEntry(name, HeldState.PENDING), hold, principal)
        return replace(decision, blocked_action=name)

    # -- what an operator (or time) does -----------------------------------------------

    async def resolve(self, name: str, state: HeldState, note: str = "") -> None:
        """An operator approves or rejects it, it expires, or it is withdrawn."""
        async with self._changed:
            held = self._entries[name]
            assert held.entry.state is HeldState.PENDING, "only a PENDING entry is resolved"
            held.entry = replace(held.entry, state=state, note=note)
            self._changed.notify_all()

    def forget(self, name: str) -> None:
        """svc_policy's store no longer has it."""
        self._entries.pop(name, None)

    def state(self, name: str) -> HeldEntry | None:
        held = self._entries.get(name)
        return None if held is None else held.entry

    def outcome(self, name: str) -> Outcome | None:
        held = self._entries.get(name)
        return None if held is None else held.outcome

    # -- the rest of the port ----------------------------------------------------------

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        async with self._changed:
            while True:
                held = self._entries.get(name)
                if held is None:
                    return HeldEntry(name, HeldState.EXPIRED, GONE_NOTE)
                if held.entry.state is not HeldState.PENDING:
                    return held.entry
                await self._changed.wait()

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer:
        try:
            self._call("claim")
        except PolicyUnreachable:
            return ClaimAnswer.AWAY
        held = self._entries.get(name)
        if held is None:
            return ClaimAnswer.GONE
        if held.entry.state is HeldState.EXECUTING and held.entry.claim_id == claim_id:
            return ClaimAnswer.CLAIMED
        if held.entry.state is not HeldState.APPROVED:
            return ClaimAnswer.CHANGED
        held.entry = replace(held.entry, state=HeldState.EXECUTING, claim_id=claim_id)
        return ClaimAnswer.CLAIMED

    async def complete(self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome) -> ReportAnswer:
        try:
            self._call("complete")
        except PolicyUnreachable:
            return ReportAnswer.AWAY
        held = self._entries.get(name)
        if held is None or held.entry.claim_id != claim_id:
            return ReportAnswer.REFUSED
        if held.entry.state is HeldState.EXECUTED:
            return ReportAnswer.TAKEN if held.outcome == outcome else ReportAnswer.REFUSED
        if held.entry.state is not HeldState.EXECUTING:
            return ReportAnswer.REFUSED
        held.entry = replace(held.entry, state=HeldState.EXECUTED)
        held.outcome = outcome
        return ReportAnswer.TAKEN

    async def cancel(self, principal: Principal | None, name: str) -> None:
        self._call("cancel")
        held = self._entries.get(name)
        if held is not None and held.entry.state is HeldState.PENDING:
            await self.resolve(name, HeldState.CANCELLED)
