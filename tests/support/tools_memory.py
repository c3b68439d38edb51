"""In-memory implementations of svc_tools's ports, for its unit tests.

`MemoryExecutionStore` really implements ExecutionStore with the Postgres adapter's
semantics (tests/integration/test_tools_ports.py runs one behaviour suite over both):
create is idempotent per (tenant, request_id), a driver's lease runs out on the store's
clock, save is a compare-and-set on the stored state and the driver, and the change feed
carries saves and cancel requests to every open feed. What Postgres keeps of an execution
is its wire form and the request as accepted, so a saved execution keeps the request's
fields as created (and loses what the wire cannot carry).

`MemoryPolicyGate` holds, approves, rejects and expires blocked actions as svc_policy does
(one entry per hold request_id, claims bound to one claim id, outcomes reported once).
`ScriptedSandbox` and `ScriptedRunner` stand in for bubblewrap and the memory tools.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from skm_runtime.access import AccessCheck, Approval, Decision, HeldState, Hold, Outcome, Principal, Verdict
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.held_actions import (
    GONE_NOTE,
    ClaimAnswer,
    HeldActions,
    HeldEntry,
    MemoryPendingReports,
    ReportAnswer,
)
from svc_tools.errors import PolicyUnavailable
from svc_tools.model import (
    Access,
    Change,
    Execution,
    HoldRequest,
    Result,
    SandboxEnd,
    SandboxJob,
    SandboxOutcome,
    Stream,
    Success,
)
from svc_tools.ports import OutputSink, Progress

_LIVE_STATES = ("CHECKING", "AWAITING_APPROVAL", "RUNNING")
_ORPHAN_STATES = ("AWAITING_APPROVAL", "RUNNING")

# -- the execution store ------------------------------------------------------------------


@dataclass
class _Row:
    execution: Execution
    driver: str | None
    lease_until: float | None
    # Order of the last write, as Postgres's update_time orders `unreported`.
    updated: int


def as_stored(execution: Execution) -> Execution:
    """`execution` as the store gives it back: what skm.tools.v1.Execution cannot carry is lost."""
    principal = Principal(execution.principal.tenant, execution.principal.user, execution.principal.roles)
    decision = execution.decision
    if decision is not None:
        decision = Decision(decision.verdict, decision.reason, decision.decision_id, decision.blocked_action)
    return dataclasses.replace(execution, principal=principal, decision=decision)


class MemoryExecutionStore:
    """ExecutionStore in a dict; leases run on `clock` (seconds, monotonic by default)."""

    def __init__(self, *, lease_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease = lease_seconds
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._by_request: dict[tuple[str, str], str] = {}
        self._feeds: set[asyncio.Queue[Change | None]] = set()
        self._writes = 0
        # The audit events the outbox would carry: ("tool_requested" | "tool_completed", name).
        self.events: list[tuple[str, str]] = []
        # Set to make every call fail as an unreachable database does.
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise ServiceUnavailable("the tool service's database cannot be reached")

    def _expired(self, row: _Row) -> bool:
        return row.lease_until is not None and row.lease_until < self._clock()

    def _notify(self, change: Change) -> None:
        for queue in self._feeds:
            queue.put_nowait(change)

    def _written(self) -> int:
        self._writes += 1
        return self._writes

    def driver_of(self, name: str) -> str | None:
        """Who drives `name` now (for tests: Postgres's `driver` column)."""
        row = self._rows.get(name)
        return None if row is None else row.driver

    def lose_connection(self) -> None:
        """End every open change feed as a dropped LISTEN connection does."""
        for queue in self._feeds:
            queue.put_nowait(None)

    async def create(self, execution: Execution, driver: str) -> tuple[Execution, bool]:
        self._up()
        key = (execution.tenant, execution.request_id)
        if key in self._by_request:
            return as_stored(self._rows[self._by_request[key]].execution), False
        # What Postgres's columns default to, whatever `execution` says.
        stored = as_stored(
            dataclasses.replace(execution, claimed=False, completion_reported=False, cancel_requested=False)
        )
        self._rows[execution.name] = _Row(stored, driver, self._clock() + self._lease, self._written())
        self._by_request[key] = execution.name
        if not execution.turn:
            self.events.append(("tool_requested", execution.name))
        return execution, True

    async def get(self, name: str) -> Execution | None:
        self._up()
        row = self._rows.get(name)
        return None if row is None else row.execution

    async def take(self, name: str, driver: str) -> Execution | None:
        self._up()
        row = self._rows.get(name)
        if row is None or row.execution.state.value not in _LIVE_STATES:
            return None
        if row.driver is not None and row.driver != driver and not self._expired(row):
            return None
        row.driver, row.lease_until = driver, self._clock() + self._lease
        return row.execution

    async def save(self, before: Execution, after: Execution, driver: str) -> bool:
        self._up()
        row = self._rows.get(after.name)
        if row is None or row.execution.state is not before.state or row.driver != driver:
            return False
        kept = row.execution
        # Postgres writes the body and the protocol flags; the request as accepted and
        # cancel_requested stay as they are.
        row.execution = as_stored(
            dataclasses.replace(
                after,
                request_id=kept.request_id,
                fingerprint=kept.fingerprint,
                timeout_seconds=kept.timeout_seconds,
                policy_context=kept.policy_context,
                trace_id=kept.trace_id,
                cancel_requested=kept.cancel_requested,
            )
        )
        row.updated = self._written()
        if after.state.terminal:
            row.driver, row.lease_until = None, None
            self.events.append(("tool_completed", after.name))
        else:
            row.lease_until = self._clock() + self._lease
        self._notify(Change(after.name))
        return True

    async def release(self, name: str, driver: str) -> None:
        self._up()
        row = self._rows.get(name)
        if row is not None and row.driver == driver:
            row.driver, row.lease_until = None, None

    async def renew(self, driver: str, names: Sequence[str]) -> None:
        self._up()
        for name in names:
            row = self._rows.get(name)
            if row is not None and row.driver == driver and row.execution.state.value in _LIVE_STATES:
                row.lease_until = self._clock() + self._lease

    async def orphans(self, limit: int) -> list[Execution]:
        self._up()
        found = [
            row.execution
            for row in self._rows.values()
            if row.execution.state.value in _ORPHAN_STATES and (row.driver is None or self._expired(row))
        ]
        return sorted(found, key=lambda e: e.create_time)[:limit]

    async def unreported(self, limit: int) -> list[Execution]:
        self._up()
        found = [
            row
            for row in self._rows.values()
            if row.execution.claimed and not row.execution.completion_reported and row.execution.state.terminal
        ]
        return [row.execution for row in sorted(found, key=lambda r: r.updated)][:limit]

    async def mark_reported(self, name: str) -> None:
        self._up()
        row = self._rows.get(name)
        if row is not None:
            row.execution = dataclasses.replace(row.execution, completion_reported=True)

    def forget_reported(self, name: str) -> None:
        """Test setup: the outcome of `name` was never handed to svc_policy."""
        row = self._rows[name]
        row.execution = dataclasses.replace(row.execution, completion_reported=False)

    async def request_cancel(self, name: str) -> None:
        self._up()
        row = self._rows.get(name)
        if row is not None and row.execution.state.value in _LIVE_STATES:
            row.execution = dataclasses.replace(row.execution, cancel_requested=True)
        self._notify(Change(name, cancel_requested=True))

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[Change]]:
        self._up()
        queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._feeds.add(queue)
        try:
            yield _feed(queue)
        finally:
            self._feeds.discard(queue)


async def _feed(queue: asyncio.Queue[Change | None]) -> AsyncIterator[Change]:
    while True:
        change = await queue.get()
        if change is None:
            raise ServiceUnavailable("lost the connection that carried change notices")
        yield change


# -- svc_policy -----------------------------------------------------------------------------


@dataclass
class HeldAction:
    """A blocked action as svc_policy keeps it."""

    name: str
    check: AccessCheck
    principal: Principal
    hold: HoldRequest
    payload: Execution
    decision: Decision
    state: HeldState = HeldState.PENDING
    note: str = ""
    claim_id: str = ""
    outcome: Outcome | None = None


@dataclass
class MemoryPolicyGate:
    """PolicyGate with svc_policy's verdicts and requeue store in memory.

    `verdicts` maps (relation, object) or (subject, relation, object) to a verdict; anything
    else is allowed. The operator's side is `approve`, `reject`, `expire`; `unavailable`
    makes every call fail as an unreachable svc_policy does. The wait, claim and outcome go
    through the shared protocol (skm_runtime.held_actions.HeldActions) over this store, with
    owed outcomes in `reports`, as the real adapter does over gRPC and PostgreSQL.
    """

    verdicts: dict[tuple[str, ...], Verdict] = field(default_factory=dict)
    actions: dict[str, HeldAction] = field(default_factory=dict)
    checks: list[AccessCheck] = field(default_factory=list)
    unavailable: bool = False
    reports: MemoryPendingReports = field(default_factory=MemoryPendingReports)
    _by_request: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _held: HeldActions | None = None

    @property
    def held_actions(self) -> HeldActions:
        if self._held is None:
            self._held = HeldActions(_MemoryPolicyCalls(self), self.reports, first_backoff=0.001, max_backoff=0.01)
        return self._held

    async def close(self) -> None:
        if self._held is not None:
            await self._held.close()

    def _up(self) -> None:
        if self.unavailable:
            raise PolicyUnavailable("svc_policy cannot be reached; nothing was run")

    def _touch(self) -> None:
        # Wake every waiter; each looks again at what it waits for.
        self._changed.set()
        self._changed = asyncio.Event()

    def _verdict(self, check: AccessCheck) -> Verdict:
        return self.verdicts.get(
            (check.subject, check.relation, check.object),
            self.verdicts.get((check.relation, check.object), Verdict.ALLOW),
        )

    def _decision(self, check: AccessCheck) -> Decision:
        verdict = self._verdict(check)
        reason = {Verdict.ALLOW: "ALLOWED", Verdict.DENY: "NO_RELATION", Verdict.REQUIRES_APPROVAL: "HIGH_RISK"}
        return Decision(verdict, reason[verdict], decision_id=f"d{len(self.checks)}")

    async def check(self, checks: Sequence[AccessCheck], principal: Principal) -> list[Decision]:
        self._up()
        self.checks.extend(checks)
        return [self._decision(check) for check in checks]

    async def hold(self, check: AccessCheck, principal: Principal, hold: HoldRequest, execution: Execution) -> Decision:
        self._up()
        self.checks.append(check)
        decision = self._decision(check)
        if decision.verdict is not Verdict.REQUIRES_APPROVAL:
            return decision
        name = self._by_request.get(hold.request_id)
        if name is None:
            name = f"{principal.tenant}/blockedActions/b{len(self.actions) + 1}"
            held = dataclasses.replace(decision, blocked_action=name)
            self.actions[name] = HeldAction(name, check, principal, hold, execution, held)
            self._by_request[hold.request_id] = name
            self._touch()
        return self.actions[name].decision

    async def approval(self, blocked_action: str, claim_id: str) -> Approval:
        return await self.held_actions.approval(None, blocked_action, claim_id)

    async def complete(self, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        await self.held_actions.complete(None, blocked_action, claim_id, outcome)

    async def cancel(self, blocked_action: str) -> None:
        self._up()
        action = self.actions.get(blocked_action)
        if action is not None and action.state is HeldState.PENDING:
            action.state = HeldState.CANCELLED
            self._touch()

    # -- the operator's side --------------------------------------------------------------

    def _decide(self, name: str, to: HeldState, note: str) -> None:
        action = self.actions[name]
        assert action.state is HeldState.PENDING, action.state
        action.state, action.note = to, note
        self._touch()

    def claim_elsewhere(self, name: str, claim_id: str) -> None:
        """Another executor claims the approved action first."""
        action = self.actions[name]
        assert action.state is HeldState.APPROVED, action.state
        action.state, action.claim_id = HeldState.EXECUTING, claim_id
        self._touch()

    def approve(self, name: str, note: str = "") -> None:
        self._decide(name, HeldState.APPROVED, note)

    def reject(self, name: str, note: str = "") -> None:
        self._decide(name, HeldState.REJECTED, note)

    def expire(self, name: str) -> None:
        self._decide(name, HeldState.EXPIRED, "")

    def forget(self, name: str) -> None:
        """The entry is gone from svc_policy's store (e.g. a store lost and rebuilt)."""
        del self.actions[name]
        self._touch()

    async def held(self, count: int = 1) -> list[HeldAction]:
        """The first `count` actions held, once they are (waits for them)."""
        while len(self.actions) < count:
            await self._changed.wait()
        return list(self.actions.values())[:count]


class _MemoryPolicyCalls:
    """The held-action protocol's PolicyCalls port over MemoryPolicyGate's store: svc_policy's
    answers to a wait, a claim and an outcome."""

    def __init__(self, gate: MemoryPolicyGate) -> None:
        self._gate = gate

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        raise NotImplementedError("checks go through MemoryPolicyGate.check")

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        raise NotImplementedError("holds go through MemoryPolicyGate.hold")

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        while True:
            action = self._gate.actions.get(name)
            if action is None:
                return HeldEntry(name, HeldState.EXPIRED, GONE_NOTE)
            if action.state is not HeldState.PENDING:
                return HeldEntry(name, action.state, action.note, action.claim_id)
            await self._gate._changed.wait()

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer:
        if self._gate.unavailable:
            return ClaimAnswer.AWAY
        action = self._gate.actions.get(name)
        if action is None:
            return ClaimAnswer.GONE
        if action.state in (HeldState.EXECUTING, HeldState.EXECUTED) and action.claim_id == claim_id:
            return ClaimAnswer.CLAIMED
        if action.state is not HeldState.APPROVED:
            return ClaimAnswer.CHANGED
        action.state, action.claim_id = HeldState.EXECUTING, claim_id
        self._gate._touch()
        return ClaimAnswer.CLAIMED

    async def complete(self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome) -> ReportAnswer:
        if self._gate.unavailable:
            return ReportAnswer.AWAY
        action = self._gate.actions.get(name)
        if (
            action is None
            or action.claim_id != claim_id
            or action.state
            not in (
                HeldState.EXECUTING,
                HeldState.EXECUTED,
            )
        ):
            return ReportAnswer.REFUSED
        action.state, action.outcome = HeldState.EXECUTED, outcome
        self._gate._touch()
        return ReportAnswer.TAKEN

    async def cancel(self, principal: Principal | None, name: str) -> None:
        raise NotImplementedError("withdrawals go through MemoryPolicyGate.cancel")


# -- the sandbox and the other tools ----------------------------------------------------------


@dataclass
class ScriptedSandbox:
    """A Sandbox that writes `stdout` and ends with `end`/`exit_code`; while `gate` is set
    to an unset event, runs wait for it (so that a test can cancel them mid-run)."""

    stdout: bytes = b"hello\n"
    end: SandboxEnd = SandboxEnd.EXITED
    exit_code: int = 0
    gate: asyncio.Event | None = None
    jobs: list[SandboxJob] = field(default_factory=list)
    killed: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, job: SandboxJob, sink: OutputSink) -> SandboxOutcome:
        self.jobs.append(job)
        self.started.set()
        sink(Stream.STDOUT, self.stdout)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.killed += 1
                raise
        return SandboxOutcome(self.end, self.exit_code, self.stdout, b"")


@dataclass
class ScriptedRunner:
    """A ToolRunner for `tool_ids` that needs `accesses` and returns `result`, committing
    (too late to cancel) before it does."""

    tool_ids: tuple[str, ...] = ("memory_save",)
    accesses: list[Access] = field(default_factory=list)
    result: Result = field(default_factory=lambda: Success('{"id": "m1"}'))
    fail: bool = False
    runs: list[Execution] = field(default_factory=list)

    async def access(self, execution: Execution) -> list[Access]:
        return list(self.accesses)

    async def run(self, execution: Execution, progress: Progress, committing: Callable[[], None]) -> Result:
        self.runs.append(execution)
        progress("saving")
        if self.fail:
            raise RuntimeError("the runner broke")
        committing()
        return self.result
