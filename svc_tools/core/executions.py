"""The execution state machine: one drive takes an execution from CHECKING to its result.

code_execution runs in the Sandbox; every other tool the service runs (memory, knowledge)
through its ToolRunner, which also names what the run touches, so that policy is asked
about that too (e.g. can_write on a memory namespace) before anything runs.

An execution's life (ExecutionState):

    CHECKING --ALLOW--> RUNNING --result--> SUCCEEDED | FAILED
       |  \\--REQUIRES_APPROVAL, held--> AWAITING_APPROVAL --approved, claimed--> RUNNING
       |                                    \\--rejected | expired | withdrawn--> FAILED
       \\--DENY--> FAILED (DENIED)
    CHECKING | AWAITING_APPROVAL | RUNNING --CancelExecution--> FAILED (CANCELLED)
    RUNNING whose process died --> FAILED (INTERRUPTED); it is never started again

Every transition is a compare-and-set in the store by the process that holds the lease
(svc_tools.core.leases); a process that lost its lease stops driving (`_Lost`). Runs that
need approval follow svc_policy's exactly-once protocol (svc_tools.core.approvals): the
approved action is claimed before the execution is recorded as RUNNING, so a restart
before that point claims again (same claim id) and runs it, and after it never does; a run
whose process died while RUNNING is reported INTERRUPTED, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from skm_runtime.access import ApprovalState, Decision, Verdict
from skm_runtime.values import FailureReason
from svc_tools.catalogue import CODE_EXECUTION
from svc_tools.core.approvals import Approvals
from svc_tools.core.leases import Leases
from svc_tools.core.live import MOVED, Run
from svc_tools.errors import PolicyUnavailable
from svc_tools.model import (
    Access,
    Decided,
    Execution,
    ExecutionState,
    Failure,
    Finished,
    Progressed,
    Result,
    Runtime,
    SandboxEnd,
    SandboxJob,
    SandboxOutcome,
    Success,
)
from svc_tools.ports import ExecutionStore, Sandbox, ToolRunner

log = logging.getLogger("skm.tools")

# How much of stderr a failure message quotes.
FAILURE_EXCERPT_CHARS = 2000


class _Lost(Exception):
    """Another process drives the execution now (this one's lease ran out)."""


class Executions:
    """Drives executions through their states, one Run at a time."""

    def __init__(
        self,
        store: ExecutionStore,
        approvals: Approvals,
        sandbox: Sandbox,
        leases: Leases,
        *,
        now: Callable[[], datetime],
        runners: Sequence[ToolRunner] = (),
    ) -> None:
        self._store = store
        self._approvals = approvals
        self._sandbox = sandbox
        self._leases = leases
        self._now = now
        # Who runs each tool other than code_execution (memory, knowledge).
        self._runners = {tool_id: runner for runner in runners for tool_id in runner.tool_ids}

    async def drive(self, run: Run) -> None:
        """Move the run's execution on until it has its result, or its drive ends here
        (lease lost, svc_policy unavailable, process stopping) and any process may carry it on."""
        try:
            await self._drive_steps(run)
        except _Lost:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("an execution's drive failed", extra={"fields": {"execution": run.name}})
        finally:
            if not run.ended:
                # Ended without a result here: let any process carry it on.
                if not run.execution.state.terminal:
                    await self._leases.release(run)
                run.end(MOVED)

    async def report(self, execution: Execution) -> None:
        """Hand the outcome of a claimed execution to the held-action protocol (which keeps
        it until svc_policy takes it), and remember that it was handed over; a process that
        stops in between leaves it unreported, for a maintenance pass to hand over again."""
        await self._approvals.report(execution)
        await self._store.mark_reported(execution.name)

    async def _drive_steps(self, run: Run) -> None:
        run.started = True
        if self._leases.stopping:
            await self._leases.release(run)
            run.end(MOVED)
            return
        try:
            if run.execution.state is ExecutionState.RUNNING:
                # Taken over from a process that died while the tool ran: never run it twice.
                await self._finish(
                    run,
                    Failure(
                        FailureReason.INTERRUPTED,
                        "svc_tools restarted while the run was in progress; it was not started again",
                    ),
                )
                return
            if run.cancel_requested:
                await self._cancelled(run)
                return
            # Each step moves the execution on (or ends it); the next one looks again.
            if run.state() is ExecutionState.CHECKING:
                await self._check(run)
            if run.state() is ExecutionState.AWAITING_APPROVAL:
                await self._await_approval(run)
            if run.state() is ExecutionState.RUNNING:
                await self._finish(run, await self._run_tool(run))
        except PolicyUnavailable as exc:
            # Fail closed: nothing ran; a retry with the same request_id checks again.
            log.warning("svc_policy unavailable", extra={"fields": {"execution": run.name}})
            await self._leases.release(run)
            run.end(exc)
        except _Lost:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if run.cancel_requested:
                await self._cancelled(run)
            else:
                await self._stopped(run)
                raise
        except Exception:
            log.exception("an execution failed unexpectedly", extra={"fields": {"execution": run.name}})
            if not run.finishing:
                await self._finish(run, Failure(FailureReason.TOOL_ERROR, "svc_tools failed while handling the run"))

    async def _check(self, run: Run) -> None:
        execution = run.execution
        # The tool, then what the run touches (e.g. a memory namespace).
        accesses = [Access("can_execute", f"tool:{execution.tool}")]
        runner = self._runners.get(execution.tool_id)
        if runner is not None:
            accesses.extend(await runner.access(execution))
        decision = await self._approvals.decide(execution, accesses)
        if decision.verdict is Verdict.DENY:
            await self._finish(
                run, Failure(FailureReason.DENIED, f"policy denied the run ({decision.reason})"), decision=decision
            )
        elif decision.verdict is Verdict.REQUIRES_APPROVAL:
            await self._save(run, state=ExecutionState.AWAITING_APPROVAL, decision=decision)
            run.publish(Decided(decision))
        else:
            await self._save(run, state=ExecutionState.RUNNING, decision=decision, start_time=self._now())
            run.publish(Decided(decision))

    async def _await_approval(self, run: Run) -> None:
        approval = await self._approvals.await_approval(run.execution)
        if approval.state is ApprovalState.CLAIMED:
            # Recorded as started only once the claim is ours: a restart before this
            # point claims again (same claim id) and runs it; after it, never.
            await self._save(run, state=ExecutionState.RUNNING, start_time=self._now(), claimed=True)
        elif approval.state is ApprovalState.REJECTED:
            note = f": {approval.note}" if approval.note else ""
            await self._finish(run, Failure(FailureReason.REJECTED, f"an operator rejected the run{note}"))
        elif approval.state is ApprovalState.EXPIRED:
            await self._finish(
                run, Failure(FailureReason.APPROVAL_EXPIRED, "nobody approved the run before its approval expired")
            )
        elif approval.state is ApprovalState.CANCELLED:
            await self._finish(run, Failure(FailureReason.CANCELLED, "the held run was withdrawn"))
        else:
            await self._finish(
                run, Failure(FailureReason.INTERRUPTED, "the approved run was claimed by another executor")
            )

    async def _run_tool(self, run: Run) -> Result:
        execution = run.execution
        if execution.tool_id != CODE_EXECUTION.id:
            return await self._run_other(run)
        arguments = json.loads(execution.arguments_json)
        runtime = Runtime(arguments["runtime"])
        run.publish(Progressed(f"running {runtime.value} code in the sandbox"))
        job = SandboxJob(runtime, arguments["code"], execution.timeout_seconds)
        outcome = await self._sandbox.run(job, run.output)
        return code_result(outcome, execution.timeout_seconds)

    async def _run_other(self, run: Run) -> Result:
        runner = self._runners.get(run.execution.tool_id)
        if runner is None:
            return Failure(FailureReason.TOOL_ERROR, "this tool is not available in this deployment")

        def committing() -> None:
            # From here on the tool changes things: too late to cancel (see ToolRunner).
            run.finishing = True

        try:
            return await runner.run(run.execution, lambda message: run.publish(Progressed(message)), committing)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a tool failed unexpectedly", extra={"fields": {"execution": run.name}})
            return Failure(FailureReason.TOOL_ERROR, "svc_tools failed while running the tool")

    async def _cancelled(self, run: Run) -> None:
        execution = run.execution
        if execution.state is ExecutionState.AWAITING_APPROVAL and execution.decision is not None:
            await self._approvals.withdraw(execution)
        message = "the run was cancelled" + (" while it ran" if execution.state is ExecutionState.RUNNING else "")
        await self._finish(run, Failure(FailureReason.CANCELLED, message))

    async def _stopped(self, run: Run) -> None:
        """This process is stopping: a running tool was killed; anything else waits for
        another process (or this one, restarted)."""
        if run.execution.state is ExecutionState.RUNNING:
            with contextlib.suppress(_Lost):
                await self._finish(
                    run, Failure(FailureReason.INTERRUPTED, "svc_tools stopped while the run was in progress")
                )
        else:
            await self._leases.release(run)
            run.end(MOVED)

    async def _save(self, run: Run, **changes: Any) -> None:
        before = run.execution
        after = dataclasses.replace(before, **changes)
        if not await self._store.save(before, after, self._leases.me):
            raise _Lost
        run.execution = after

    async def _finish(self, run: Run, result: Result, *, decision: Decision | None = None) -> None:
        """Store the single result (with its audit event), tell the streams, and report
        the outcome of a claimed blocked action."""
        run.finishing = True
        before = run.execution
        after = dataclasses.replace(
            before,
            state=ExecutionState.SUCCEEDED if isinstance(result, Success) else ExecutionState.FAILED,
            result=result,
            end_time=self._now(),
            decision=decision or before.decision,
        )
        if not await self._store.save(before, after, self._leases.me):
            stored = await self._store.get(before.name)
            if stored is None or not stored.state.terminal:
                raise _Lost
            after = stored
        run.execution = after
        if decision is not None:
            run.publish(Decided(decision))
        assert after.result is not None  # terminal executions have their result
        run.end(Finished(after.result))
        if after.claimed and not after.completion_reported:
            await self.report(after)


def code_result(outcome: SandboxOutcome, timeout_seconds: float) -> Result:
    """The result of a code_execution run, from how its sandbox ended."""
    if outcome.end is SandboxEnd.EXITED and outcome.exit_code == 0:
        payload = {"exit_code": 0, "stdout": _text(outcome.stdout_tail), "stderr": _text(outcome.stderr_tail)}
        return Success(json.dumps(payload, ensure_ascii=False))
    if outcome.end is SandboxEnd.EXITED:
        return Failure(FailureReason.TOOL_ERROR, f"the code exited with status {outcome.exit_code}{_excerpt(outcome)}")
    if outcome.end is SandboxEnd.TIMEOUT:
        return Failure(FailureReason.TIMEOUT, f"the run exceeded its {timeout_seconds:g} s time limit and was stopped")
    if outcome.end is SandboxEnd.OUTPUT_LIMIT:
        return Failure(
            FailureReason.OUTPUT_LIMIT,
            f"the run wrote more than {outcome.detail} of output; it was stopped and the rest discarded",
        )
    if outcome.end is SandboxEnd.RESOURCE_LIMIT:
        return Failure(
            FailureReason.RESOURCE_LIMIT,
            f"the run reached the sandbox's {outcome.detail} limit and was stopped{_excerpt(outcome)}",
        )
    return Failure(FailureReason.TOOL_ERROR, f"the code was killed by {outcome.detail}{_excerpt(outcome)}")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _excerpt(outcome: SandboxOutcome) -> str:
    text = _text(outcome.stderr_tail or outcome.stdout_tail).strip()
    if not text:
        return ""
    if len(text) > FAILURE_EXCERPT_CHARS:
        text = "..." + text[-FAILURE_EXCERPT_CHARS:]
    which = "stderr" if outcome.stderr_tail.strip() else "stdout"
    return f"; end of {which}:\n{text}"
