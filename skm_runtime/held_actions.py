"""The one protocol for actions svc_policy holds for an operator: hold -> wait -> claim -> complete.

A service asks svc_policy whether it may act (`check`); where the answer is
REQUIRES_APPROVAL and the service wants the action run once an operator approves, it asks
with a `Hold` (`hold`), and svc_policy keeps the request as a blocked action. The service
then waits for the operator (`approval`): an approved entry is claimed with the service's
claim id before the wait answers CLAIMED, so exactly one caller runs it; a claim repeated
with the same id (a lost reply, a restart) is CLAIMED again. Once run, the outcome is
reported (`complete`). svc_policy may be away at that moment: the action has run either way,
so the outcome is kept in a durable store (`PendingReports`) and reported again in the
background, with backoff, until svc_policy takes it or refuses it for good; a restart of
the service picks the pending reports up again. An entry is never left EXECUTING for good
because a process forgot what it owed.

No grpc here: `PolicyCalls` is the port to svc_policy (skm_runtime.policy_calls implements it
over gRPC), `PendingReports` the port to the durable store (skm_runtime.pending_reports
implements it on PostgreSQL; `MemoryPendingReports` below is its in-memory twin, proven
by one behaviour suite over both).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from skm_runtime.access import (
    AccessCheck,
    Approval,
    ApprovalState,
    Decision,
    HeldState,
    Hold,
    Outcome,
    Principal,
)

log = logging.getLogger("skm.runtime.held_actions")

# While svc_policy cannot be reached, look again this often, doubling up to the maximum.
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
# A pending report is given up after this long (the entry stays EXECUTING; logged as an
# error): by then svc_policy has long expired what it held.
REPORT_FOR_SECONDS = 7 * 24 * 3600.0
# How many pending reports one round of the background reporter sends.
_REPORT_BATCH = 100
# The note of an entry svc_policy no longer has.
GONE_NOTE = "the held action is gone from svc_policy's store"


class PolicyUnreachable(Exception):
    """svc_policy gave no answer (unreachable, timed out, failed): fail closed."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"svc_policy cannot be reached ({code})")
        self.code = code  # the gRPC status code's name, e.g. "UNAVAILABLE"
        self.reason = reason  # the ErrorInfo reason svc_policy gave, if any


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """A held action as svc_policy has it now (the fields the protocol needs)."""

    name: str
    state: HeldState
    note: str = ""
    claim_id: str = ""


class ClaimAnswer(enum.Enum):
    """svc_policy's answer to a claim."""

    CLAIMED = "CLAIMED"  # the entry is EXECUTING under this claim id
    GONE = "GONE"  # svc_policy no longer has it
    CHANGED = "CHANGED"  # it is not APPROVED (any more): look at it again
    AWAY = "AWAY"  # no answer for now: try again with the same claim id


class ReportAnswer(enum.Enum):
    """svc_policy's answer to an outcome."""

    TAKEN = "TAKEN"  # recorded (or recorded before: reporting is idempotent)
    REFUSED = "REFUSED"  # refused for good (gone, or not this claim's): never retried
    AWAY = "AWAY"  # no answer for now: report it again later


class PolicyCalls(Protocol):
    """svc_policy's checks and blocked-action calls, as the protocol needs them.

    `principal` is the caller's (sent signed, so svc_policy holds and shows the action as
    theirs); None calls as the service itself (a signed mesh caller)."""

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        """One decision per check, in order; raises PolicyUnreachable."""
        ...

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        """The decision; a REQUIRES_APPROVAL one names the blocked action it holds (the same
        one for the same `hold.request_id`). Raises PolicyUnreachable."""
        ...

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        """The entry once it has left PENDING; one svc_policy no longer has (or refuses to
        this caller for good) reads as EXPIRED with GONE_NOTE. Outlasts svc_policy being away."""
        ...

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer: ...

    async def complete(
        self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome
    ) -> ReportAnswer: ...

    async def cancel(self, principal: Principal | None, name: str) -> None:
        """Withdraw a PENDING entry; one resolved already or gone is left as it is.
        Raises PolicyUnreachable."""
        ...


@dataclass(frozen=True, slots=True)
class PendingReport:
    """An outcome svc_policy has not taken yet."""

    blocked_action: str
    claim_id: str
    outcome: Outcome
    principal: Principal | None
    # When it was first owed; it is given up REPORT_FOR_SECONDS later.
    since: datetime


class PendingReports(Protocol):
    """Outcomes owed to svc_policy, kept across restarts."""

    async def add(self, report: PendingReport) -> None:
        """Keep it; a report for the same blocked action and claim id replaces the old one
        but keeps its `since`."""
        ...

    async def due(self, limit: int) -> list[PendingReport]:
        """Up to `limit` reports, oldest first."""
        ...

    async def remove(self, blocked_action: str, claim_id: str) -> None:
        """Forget one (taken or refused); forgetting an unknown one does nothing."""
        ...


class MemoryPendingReports:
    """PendingReports in this process's memory: for tests, and for a caller that holds
    nothing it must not forget (it loses what is pending when the process ends)."""

    def __init__(self) -> None:
        self._reports: dict[tuple[str, str], PendingReport] = {}

    async def add(self, report: PendingReport) -> None:
        key = (report.blocked_action, report.claim_id)
        known = self._reports.get(key)
        if known is not None:
            report = PendingReport(
                report.blocked_action, report.claim_id, report.outcome, report.principal, known.since
            )
        self._reports[key] = report

    async def due(self, limit: int) -> list[PendingReport]:
        return sorted(self._reports.values(), key=lambda r: (r.since, r.blocked_action))[:limit]

    async def remove(self, blocked_action: str, claim_id: str) -> None:
        self._reports.pop((blocked_action, claim_id), None)


# What a wait ends with for an entry that will not run here.
_NOT_RUN = {
    HeldState.REJECTED: ApprovalState.REJECTED,
    HeldState.EXPIRED: ApprovalState.EXPIRED,
    HeldState.CANCELLED: ApprovalState.CANCELLED,
}


class HeldActions:
    """A service's side of the protocol: checks, holds, the wait and claim, and outcomes
    reported until svc_policy takes them. `start()` begins reporting what is pending (from
    before a restart too); `close()` stops it (what is pending stays in the store)."""

    def __init__(
        self,
        api: PolicyCalls,
        reports: PendingReports,
        *,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        report_for_seconds: float = REPORT_FOR_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self._reports = reports
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._report_for = timedelta(seconds=report_for_seconds)
        self._now = now
        self._sleep = sleep
        self._reporter: asyncio.Task[None] | None = None
        self._owed = asyncio.Event()

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        return await self._api.check(principal, checks)

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        return await self._api.hold(principal, check, hold)

    async def cancel(self, principal: Principal | None, blocked_action: str) -> None:
        await self._api.cancel(principal, blocked_action)

    async def approval(self, principal: Principal | None, blocked_action: str, claim_id: str) -> Approval:
        """Waits for the operator's decision and claims an approved entry with `claim_id`
        before answering CLAIMED: from then on the caller runs it, once. One claimed with
        this id before is CLAIMED again; one claimed with another is TAKEN. Cancel the wait
        to stop waiting: the entry stays for the operator."""
        backoff = self._first_backoff
        while True:
            entry = await self._api.resolved(principal, blocked_action)
            if entry.state in (HeldState.EXECUTING, HeldState.EXECUTED):
                mine = entry.claim_id == claim_id
                return Approval(ApprovalState.CLAIMED if mine else ApprovalState.TAKEN, entry.note)
            if entry.state is not HeldState.APPROVED:
                return Approval(_NOT_RUN.get(entry.state, ApprovalState.EXPIRED), entry.note)
            answer = await self._api.claim(principal, blocked_action, claim_id)
            if answer is ClaimAnswer.CLAIMED:
                return Approval(ApprovalState.CLAIMED, entry.note)
            if answer is ClaimAnswer.GONE:
                return Approval(ApprovalState.EXPIRED, GONE_NOTE)
            # CHANGED: look again (expired, withdrawn, claimed by another meanwhile). AWAY:
            # the approval waits for its claim (the same claim id) until it expires.
            log.info(
                "could not claim an approved action yet",
                extra={"fields": {"blocked_action": blocked_action, "answer": answer.value}},
            )
            await self._sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def complete(self, principal: Principal | None, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        """Reports the outcome of a claimed action; returns at once where svc_policy cannot
        take it now, which is then owed durably and reported again in the background."""
        answer = await self._api.complete(principal, blocked_action, claim_id, outcome)
        if answer is not ReportAnswer.AWAY:
            return
        log.warning(
            "could not report the outcome of a claimed action; it is kept and reported again",
            extra={"fields": {"blocked_action": blocked_action}},
        )
        await self._reports.add(PendingReport(blocked_action, claim_id, outcome, principal, self._now()))
        self._owed.set()
        self.start()  # a caller that never started the reporter still gets its outcome reported

    def start(self) -> None:
        """Begin reporting pending outcomes in the background (idempotent)."""
        if self._reporter is None:
            self._owed.set()  # what a previous process left is due now
            self._reporter = asyncio.get_running_loop().create_task(self._report_owed())

    async def close(self) -> None:
        """Stop the background reporter; what is pending stays in the store."""
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def report_pending(self) -> int:
        """One round: reports what is due; returns how many are still owed (AWAY)."""
        owed = 0
        for report in await self._reports.due(_REPORT_BATCH):
            if self._now() - report.since > self._report_for:
                log.error(
                    "gave up reporting the outcome of a claimed action: its entry stays EXECUTING",
                    extra={"fields": {"blocked_action": report.blocked_action}},
                )
                await self._reports.remove(report.blocked_action, report.claim_id)
                continue
            answer = await self._api.complete(report.principal, report.blocked_action, report.claim_id, report.outcome)
            if answer is ReportAnswer.AWAY:
                owed += 1
                continue
            if answer is ReportAnswer.TAKEN:
                log.info(
                    "reported the outcome of a claimed action",
                    extra={"fields": {"blocked_action": report.blocked_action}},
                )
            await self._reports.remove(report.blocked_action, report.claim_id)
        return owed

    async def _report_owed(self) -> None:
        backoff = self._first_backoff
        while True:
            await self._owed.wait()
            self._owed.clear()
            try:
                owed = await self.report_pending()
            except Exception:  # the store failed for a moment: the reports are still there
                log.exception("could not read the pending outcomes; trying again")
                owed = 1
            if owed:
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                self._owed.set()
            else:
                backoff = self._first_backoff
