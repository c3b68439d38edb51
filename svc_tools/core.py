"""svc_tools's use cases: the catalogue, policy-gated tool executions, cancellation.

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

Each execution is driven by one task of one process (the store's lease says which; a lease
that runs out lets another process take over). The drive is not tied to the ExecuteTool
stream that started it: streams subscribe to it, and a caller that comes back with the same
request_id attaches to the same execution instead of starting a second one.

Runs that need approval follow svc_policy's exactly-once protocol: the execution is stored
(its name is the claim id) before it is held; the hold's request_id is derived from it, so
a retried check returns the same blocked action; the approved action is claimed before the
execution is recorded as RUNNING, and the outcome is reported once the result is stored. A
run whose process died while RUNNING is reported INTERRUPTED, never retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # jsonschema ships no type information

from skm_runtime.errors import FieldViolation, InvalidArgument
from svc_tools.catalogue import CODE_EXECUTION, DEFAULT_AREAS, TOOLS
from svc_tools.errors import (
    ArgumentsInvalid,
    ArgumentsTooLarge,
    ClaimRefused,
    ExecutionFinished,
    ExecutionNotFound,
    InvalidPageToken,
    InvalidResourceName,
    PolicyUnavailable,
    PrincipalMissing,
    RequestIdReused,
    ToolNotExecutable,
    ToolNotFound,
)
from svc_tools.model import (
    RESTRICTIVENESS,
    Accepted,
    Access,
    AccessCheck,
    BlockedState,
    Decided,
    Decision,
    ExecuteRequest,
    Execution,
    ExecutionSide,
    ExecutionState,
    Failure,
    FailureReason,
    Finished,
    HoldRequest,
    Output,
    Principal,
    Progressed,
    Result,
    Runtime,
    SandboxEnd,
    SandboxJob,
    SandboxOutcome,
    Stream,
    Success,
    Tool,
    Update,
    Verdict,
)
from svc_tools.ports import ExecutionStore, PolicyGate, Sandbox, ToolRunner

log = logging.getLogger("skm.tools")

MAX_ARGUMENTS_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 16 * 1024
MAX_SUMMARY_CHARS = 300
MAX_TOOL_CALL_ID_CHARS = 200
# How much of stderr a failure message quotes.
FAILURE_EXCERPT_CHARS = 2000
# How long CancelExecution waits for another process to stop an execution it drives.
CANCEL_WAIT_SECONDS = 10.0
# How often a stream following an execution driven elsewhere looks at it without a notice.
FOLLOW_POLL_SECONDS = 1.0
# Hold request ids are derived from execution names in this UUID namespace.
_HOLD_NAMESPACE = uuid.UUID("5d0c7f64-3c1e-4b7a-9a53-1f0a4c2b7e11")


class _Moved:
    """Sent to a run's subscribers when its drive ended here without a result (another
    process drives it now, or this one is stopping)."""


_MOVED = _Moved()
_QueueItem = Update | BaseException | _Moved


class _Run:
    """One execution being driven by this process, and the streams that follow it."""

    def __init__(self, execution: Execution, *, cancel: bool = False) -> None:
        self.execution = execution
        self.cancel_requested = execution.cancel_requested or cancel
        # Set by the drive's first step; until then a cancel request is only recorded
        # (cancelling a task that has not started would skip its handlers).
        self.started = False
        # Set while the result is being stored: too late to cancel.
        self.finishing = False
        self.task: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[_QueueItem]] = set()
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._ended: _QueueItem | None = None
        self._done = asyncio.Event()

    def subscribe(self) -> tuple[Decision | None, asyncio.Queue[_QueueItem]]:
        """The decision so far and a queue of everything after it (no await in between)."""
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        if self._ended is not None:
            queue.put_nowait(self._ended)
        else:
            self._subscribers.add(queue)
        decided = self.execution.decision if self.execution.state is not ExecutionState.CHECKING else None
        return decided, queue

    def unsubscribe(self, queue: asyncio.Queue[_QueueItem]) -> None:
        self._subscribers.discard(queue)

    def publish(self, update: Update) -> None:
        for queue in self._subscribers:
            queue.put_nowait(update)

    def output(self, stream: Stream, data: bytes) -> None:
        for start in range(0, len(data), MAX_CHUNK_BYTES):
            piece = data[start : start + MAX_CHUNK_BYTES]
            self.publish(Output(stream, piece, self._offsets[stream]))
            self._offsets[stream] += len(piece)

    def end(self, last: _QueueItem) -> None:
        """The drive is over: `last` is a Finished, an error, or _MOVED."""
        self._ended = last
        for queue in self._subscribers:
            queue.put_nowait(last)
        self._subscribers.clear()
        self._done.set()

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.started and self.task is not None and not self.task.done() and not self.finishing:
            self.task.cancel()

    def state(self) -> ExecutionState:
        return self.execution.state

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()


class Tools:
    """The tool service's use cases over its ports."""

    def __init__(
        self,
        store: ExecutionStore,
        policy: PolicyGate,
        sandbox: Sandbox,
        *,
        now: Callable[[], datetime],
        max_timeout_seconds: float = 300.0,
        catalogue: Sequence[Tool] = TOOLS,
        runners: Sequence[ToolRunner] = (),
        instance: str = "",
    ) -> None:
        self._store = store
        self._policy = policy
        self._sandbox = sandbox
        self._now = now
        self._max_timeout = max_timeout_seconds
        self._catalogue = tuple(sorted(catalogue, key=lambda tool: tool.id))
        self._by_id = {tool.id: tool for tool in self._catalogue}
        self._validators = {tool.id: jsonschema.Draft202012Validator(tool.arguments_schema) for tool in self._catalogue}
        # Who runs each tool other than code_execution (memory, knowledge).
        self._runners = {tool_id: runner for runner in runners for tool_id in runner.tool_ids}
        # Which process drives an execution: this one, for as long as it lives.
        self._me = instance or f"tools-{uuid.uuid4()}"
        self._runs: dict[str, _Run] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for changes made by other processes (cancel requests, results)."""
        self._listener = asyncio.create_task(self._listen(), name="tools-changes")

    async def close(self) -> None:
        """Stop every drive of this process: running sandboxes are killed and their
        executions end INTERRUPTED; held and checking ones are left for any process."""
        self._stopping = True
        runs = list(self._runs.values())
        for run in runs:
            # A drive that has not started yet sees `_stopping` at its first step.
            if run.task is not None and run.started and not run.finishing:
                run.task.cancel()
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def maintain(self) -> None:
        """One pass of housekeeping: renew this process's leases, take over executions
        whose process died, and report outcomes svc_policy has not heard of yet."""
        await self._store.renew(self._me, list(self._runs))
        for orphan in await self._store.orphans(100):
            if orphan.name not in self._runs:
                await self._adopt(orphan.name)
        for finished in await self._store.unreported(100):
            await self._report(finished)

    # -- the catalogue ---------------------------------------------------------------

    def list_tools(self, parent: str, page_size: int, page_token: str) -> tuple[list[Tool], str]:
        _tenant_of(parent)
        size = 100 if page_size <= 0 else min(page_size, 1000)
        offset = _offset_of(page_token, parent)
        page = list(self._catalogue[offset : offset + size])
        more = offset + size < len(self._catalogue)
        return page, _token_of(parent, offset + size) if more else ""

    # -- executions ------------------------------------------------------------------

    async def execute(
        self, request: ExecuteRequest, principal: Principal | None, *, trusted_context: bool, trace_id: str = ""
    ) -> AsyncIterator[Update]:
        """Accept (or attach to) an execution and follow it to its single result."""
        execution = self._accept(request, principal, trusted_context=trusted_context, trace_id=trace_id)
        stored, created = await self._store.create(execution, self._me)
        if not created:
            if stored.fingerprint != execution.fingerprint:
                raise RequestIdReused(
                    "this request_id was used for another request", metadata={"request_id": request.request_id}
                )
            log.info("attached to an execution", extra={"fields": {"execution": stored.name}})
        else:
            # Started before anything is sent: the run does not depend on the stream.
            self._start(stored)
        yield Accepted(stored.name)
        async for update in self._follow(stored):
            yield update

    async def get_execution(self, name: str, principal: Principal | None) -> Execution:
        execution = await self._store.get(_own_execution(name, principal))
        if execution is None:
            raise ExecutionNotFound("no such execution", metadata={"name": name})
        return execution

    async def cancel_execution(self, name: str, principal: Principal | None) -> Execution:
        execution = await self.get_execution(name, principal)
        if execution.state.terminal:
            raise ExecutionFinished("the execution already has its result", metadata={"name": name})
        run = self._runs.get(name) or await self._adopt(name, cancel=True)
        if run is not None:
            run.cancel()
            await run.wait()
        else:
            # Driven by another process: ask it, and wait for the outcome.
            await self._store.request_cancel(name)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANCEL_WAIT_SECONDS
            while not execution.state.terminal and loop.time() < deadline:
                await self._changed(name, min(FOLLOW_POLL_SECONDS, deadline - loop.time()))
                execution = await self._store.get(name) or execution
                if not execution.state.terminal and (run := await self._adopt(name, cancel=True)) is not None:
                    run.cancel()
                    await run.wait()
        return await self._store.get(name) or execution

    # -- accepting -------------------------------------------------------------------

    def _accept(
        self, request: ExecuteRequest, principal: Principal | None, *, trusted_context: bool, trace_id: str
    ) -> Execution:
        """Validate the request (nothing is stored or run when it fails) and build the
        execution it asks for."""
        tenant, tool_id = _split(request.tool, "tools")
        if principal is None or not principal.tenant or not principal.user.startswith(f"{principal.tenant}/users/"):
            raise PrincipalMissing("running a tool needs the principal it runs for")
        tool = self._by_id.get(tool_id)
        if tool is None or principal.tenant != tenant:
            # Another tenant's tools do not exist for this caller.
            raise ToolNotFound("no such tool", metadata={"tool": request.tool[:200]})
        if tool.side is ExecutionSide.CONVERSATION:
            raise ToolNotExecutable(
                "this tool is handled by the conversation, not by the tool service", metadata={"tool": tool.id}
            )
        violations: list[FieldViolation] = []
        try:
            uuid.UUID(request.request_id)
        except ValueError:
            violations.append(FieldViolation("request_id", "required: a UUID"))
        if request.persona and _parts(request.persona, tenant, "personas") is None:
            violations.append(
                FieldViolation("persona", "expected tenants/{tenant}/personas/{persona} of the tool's tenant")
            )
        if request.turn and _turn_parts(request.turn, tenant) is None:
            violations.append(
                FieldViolation("turn", "expected tenants/{tenant}/sessions/{session}/turns/{turn} of the tool's tenant")
            )
        if len(request.tool_call_id) > MAX_TOOL_CALL_ID_CHARS:
            violations.append(FieldViolation("tool_call_id", f"longer than {MAX_TOOL_CALL_ID_CHARS} characters"))
        timeout = tool.default_timeout_seconds if request.timeout_seconds is None else request.timeout_seconds
        if timeout <= 0:
            violations.append(FieldViolation("timeout", "must be positive"))
        if violations:
            raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations=violations)
        self._check_arguments(tool, request.arguments_json)
        context = dict(request.policy_context) if trusted_context else {}
        timeout = min(timeout, self._max_timeout)
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    request.tool,
                    request.arguments_json,
                    request.persona,
                    request.turn,
                    request.tool_call_id,
                    timeout,
                    context,
                    principal.user,
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        return Execution(
            name=f"{tenant}/executions/{uuid.uuid4()}",
            tool=request.tool,
            arguments_json=request.arguments_json,
            principal=principal,
            request_id=request.request_id,
            fingerprint=fingerprint,
            state=ExecutionState.CHECKING,
            create_time=self._now(),
            persona=request.persona,
            turn=request.turn,
            tool_call_id=request.tool_call_id,
            timeout_seconds=timeout,
            policy_context=context,
            trace_id=trace_id,
        )

    def _check_arguments(self, tool: Tool, arguments_json: str) -> None:
        size = len(arguments_json.encode())
        if size > MAX_ARGUMENTS_BYTES:
            raise ArgumentsTooLarge(
                f"arguments are larger than {MAX_ARGUMENTS_BYTES} bytes",
                metadata={"limit_bytes": str(MAX_ARGUMENTS_BYTES), "size_bytes": str(size)},
            )
        try:
            arguments = json.loads(arguments_json)
        except ValueError:
            raise ArgumentsInvalid(
                "arguments_json is not JSON",
                violations=[FieldViolation("arguments_json", "not valid JSON")],
                metadata={"tool": tool.id},
            ) from None
        if not isinstance(arguments, dict):
            raise ArgumentsInvalid(
                "arguments_json must be a JSON object",
                violations=[FieldViolation("arguments_json", "not a JSON object")],
                metadata={"tool": tool.id},
            )
        errors = sorted(self._validators[tool.id].iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            violations = [
                FieldViolation(_argument_path(error.absolute_path), _schema_problem(error)) for error in errors[:20]
            ]
            raise ArgumentsInvalid(
                f"arguments do not match the schema of {tool.id}: {violations[0].description}",
                violations=violations,
                metadata={"tool": tool.id},
            )

    # -- following -------------------------------------------------------------------

    async def _follow(self, execution: Execution) -> AsyncIterator[Update]:
        """The decision (once) and the result of an execution, with live output when this
        process drives it; takes it over when nobody does."""
        sent_decision = False
        while True:
            if execution.decision is not None and execution.state is not ExecutionState.CHECKING and not sent_decision:
                sent_decision = True
                yield Decided(execution.decision)
            if execution.state.terminal:
                assert execution.result is not None  # terminal executions have their result
                yield Finished(execution.result)
                return
            run = self._runs.get(execution.name) or await self._adopt(execution.name)
            if run is not None:
                async for update in self._relay(run, sent_decision):
                    if isinstance(update, Decided):
                        sent_decision = True
                    yield update
                    if isinstance(update, Finished):
                        return
            else:
                await self._changed(execution.name, FOLLOW_POLL_SECONDS)
            execution = await self._store.get(execution.name) or execution

    async def _relay(self, run: _Run, sent_decision: bool) -> AsyncIterator[Update]:
        decided, queue = run.subscribe()
        try:
            if decided is not None and not sent_decision:
                sent_decision = True
                yield Decided(decided)
            while True:
                item = await queue.get()
                if isinstance(item, _Moved):
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Decided):
                    if sent_decision:
                        continue
                    sent_decision = True
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            run.unsubscribe(queue)

    async def _changed(self, name: str, wait_seconds: float) -> None:
        """Wait until the store reports a change of `name`, or `wait_seconds`."""
        event = asyncio.Event()
        self._watchers.setdefault(name, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(wait_seconds, 0.0))
        finally:
            watchers = self._watchers.get(name)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[name]

    async def _listen(self) -> None:
        while True:
            try:
                async with self._store.changes() as feed:
                    async for change in feed:
                        for event in self._watchers.get(change.name, ()):
                            event.set()
                        run = self._runs.get(change.name)
                        if run is not None and change.cancel_requested:
                            run.cancel()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the change feed; listening again")
                await asyncio.sleep(1.0)

    # -- driving ---------------------------------------------------------------------

    async def _adopt(self, name: str, *, cancel: bool = False) -> _Run | None:
        """Drive an execution nobody drives; None when another process does, or it ended."""
        if self._stopping:
            return None
        taken = await self._store.take(name, self._me)
        if taken is None:
            return self._runs.get(name)
        return self._start(taken, cancel=cancel)

    def _start(self, execution: Execution, *, cancel: bool = False) -> _Run:
        run = _Run(execution, cancel=cancel)
        self._runs[execution.name] = run
        # A fresh context: the drive outlives the call that started it, so it must not
        # inherit that call's deadline.
        run.task = asyncio.create_task(self._drive(run), name=f"drive {execution.name}", context=contextvars.Context())
        run.task.add_done_callback(lambda _: self._runs.pop(execution.name, None))
        return run

    async def _drive(self, run: _Run) -> None:
        try:
            await self._drive_steps(run)
        except _Lost:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("an execution's drive failed", extra={"fields": {"execution": run.execution.name}})
        finally:
            if not run.ended:
                # Ended without a result here: let any process carry it on.
                if not run.execution.state.terminal:
                    await self._release(run)
                run.end(_MOVED)

    async def _drive_steps(self, run: _Run) -> None:
        run.started = True
        if self._stopping:
            await self._release(run)
            run.end(_MOVED)
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
                await self._run_tool(run)
        except PolicyUnavailable as exc:
            # Fail closed: nothing ran; a retry with the same request_id checks again.
            log.warning("svc_policy unavailable", extra={"fields": {"execution": run.execution.name}})
            await self._release(run)
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
            log.exception("an execution failed unexpectedly", extra={"fields": {"execution": run.execution.name}})
            if not run.finishing:
                await self._finish(run, Failure(FailureReason.TOOL_ERROR, "svc_tools failed while handling the run"))

    async def _check(self, run: _Run) -> None:
        execution = run.execution
        context = execution.policy_context
        runner = self._runners.get(execution.tool_id)
        # The tool, then what the run touches (e.g. a memory namespace), for the user and
        # the persona alike: the most restrictive decision wins.
        accesses = [Access("can_execute", f"tool:{execution.tool}")]
        if runner is not None:
            accesses.extend(await runner.access(execution))
        subjects = [f"user:{execution.principal.user}"]
        if execution.persona:
            subjects.append(f"persona:{execution.persona}")
        checks = [
            AccessCheck(subject, access.relation, access.object, context) for access in accesses for subject in subjects
        ]
        decisions = await self._policy.check(checks, execution.principal)
        decision = _most_restrictive(decisions)
        if decision.verdict is Verdict.REQUIRES_APPROVAL:
            held_check = checks[decisions.index(decision)]
            held = await self._policy.hold(held_check, execution.principal, self._hold_of(execution), execution)
            others = [d for d, c in zip(decisions, checks, strict=True) if c is not held_check]
            decision = _most_restrictive([held, *others])
            if decision.verdict is Verdict.REQUIRES_APPROVAL and not decision.blocked_action:
                decision = dataclasses.replace(decision, verdict=Verdict.DENY, reason="NOT_HELD")
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

    def _hold_of(self, execution: Execution) -> HoldRequest:
        summary = f"{execution.tool_id}{_code_shape(execution)} for {execution.principal.user}"
        if execution.persona:
            summary += f" as {execution.persona}"
        session = "/".join(execution.turn.split("/")[:4]) if execution.turn else ""
        return HoldRequest(
            request_id=str(uuid.uuid5(_HOLD_NAMESPACE, execution.name)),
            summary=summary[:MAX_SUMMARY_CHARS],
            session=session,
        )

    async def _await_approval(self, run: _Run) -> None:
        execution = run.execution
        assert execution.decision is not None  # held executions have their decision
        blocked = execution.decision.blocked_action
        backoff = 0.2
        while True:
            resolution = await self._policy.wait_resolution(blocked)
            state = resolution.state
            mine = resolution.claim_id == execution.name
            if state is not BlockedState.APPROVED and not (state is BlockedState.EXECUTING and mine):
                break
            try:
                await self._policy.claim(blocked, execution.name)
            except PolicyUnavailable:
                # Approved, but svc_policy is gone for a moment: claim again (same claim id).
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except ClaimRefused as refused:
                state = BlockedState(refused.state) if refused.state in BlockedState.__members__ else state
                if state in (BlockedState.PENDING, BlockedState.APPROVED):
                    await asyncio.sleep(1.0)  # it changed under us; look again
                    continue
                break
            # Recorded as started only once the claim is ours: a restart before this
            # point claims again (same claim id) and runs it; after it, never.
            await self._save(run, state=ExecutionState.RUNNING, start_time=self._now(), claimed=True)
            return
        if state is BlockedState.REJECTED:
            note = f": {resolution.note}" if resolution.note else ""
            await self._finish(run, Failure(FailureReason.REJECTED, f"an operator rejected the run{note}"))
        elif state is BlockedState.EXPIRED:
            await self._finish(
                run, Failure(FailureReason.APPROVAL_EXPIRED, "nobody approved the run before its approval expired")
            )
        elif state is BlockedState.CANCELLED:
            await self._finish(run, Failure(FailureReason.CANCELLED, "the held run was withdrawn"))
        else:
            await self._finish(
                run, Failure(FailureReason.INTERRUPTED, "the approved run was claimed by another executor")
            )

    async def _run_tool(self, run: _Run) -> None:
        execution = run.execution
        if execution.tool_id != CODE_EXECUTION.id:
            await self._finish(run, await self._run_other(run))
            return
        arguments = json.loads(execution.arguments_json)
        runtime = Runtime(arguments["runtime"])
        run.publish(Progressed(f"running {runtime.value} code in the sandbox"))
        job = SandboxJob(runtime, arguments["code"], execution.timeout_seconds)
        outcome = await self._sandbox.run(job, run.output)
        await self._finish(run, code_result(outcome, execution.timeout_seconds))

    async def _run_other(self, run: _Run) -> Result:
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
            log.exception("a tool failed unexpectedly", extra={"fields": {"execution": run.execution.name}})
            return Failure(FailureReason.TOOL_ERROR, "svc_tools failed while running the tool")

    async def _cancelled(self, run: _Run) -> None:
        execution = run.execution
        if execution.state is ExecutionState.AWAITING_APPROVAL and execution.decision is not None:
            try:
                await self._policy.cancel(execution.decision.blocked_action)
            except PolicyUnavailable:
                # Nobody will claim it: it expires in svc_policy's store.
                log.warning("could not withdraw a held run", extra={"fields": {"execution": execution.name}})
        message = "the run was cancelled" + (" while it ran" if execution.state is ExecutionState.RUNNING else "")
        await self._finish(run, Failure(FailureReason.CANCELLED, message))

    async def _stopped(self, run: _Run) -> None:
        """This process is stopping: a running tool was killed; anything else waits for
        another process (or this one, restarted)."""
        if run.execution.state is ExecutionState.RUNNING:
            with contextlib.suppress(_Lost):
                await self._finish(
                    run, Failure(FailureReason.INTERRUPTED, "svc_tools stopped while the run was in progress")
                )
        else:
            await self._release(run)
            run.end(_MOVED)

    async def _release(self, run: _Run) -> None:
        try:
            await self._store.release(run.execution.name, self._me)
        except Exception:
            log.exception("could not release an execution", extra={"fields": {"execution": run.execution.name}})

    async def _save(self, run: _Run, **changes: Any) -> None:
        before = run.execution
        after = dataclasses.replace(before, **changes)
        if not await self._store.save(before, after, self._me):
            raise _Lost
        run.execution = after

    async def _finish(self, run: _Run, result: Result, *, decision: Decision | None = None) -> None:
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
        if not await self._store.save(before, after, self._me):
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
            await self._report(after)

    async def _report(self, execution: Execution) -> None:
        assert execution.decision is not None  # claimed executions were held
        result = execution.result
        failure = result.reason.value if isinstance(result, Failure) else ""
        try:
            await self._policy.complete(
                execution.decision.blocked_action, execution.name, isinstance(result, Success), failure
            )
        except PolicyUnavailable:
            log.warning("outcome not reported to svc_policy yet", extra={"fields": {"execution": execution.name}})
            return
        await self._store.mark_reported(execution.name)


class _Lost(Exception):
    """Another process drives the execution now (this one's lease ran out)."""


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


def _most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """DENY > REQUIRES_APPROVAL > ALLOW; the first of equals."""
    worst = decisions[0]
    for decision in decisions[1:]:
        if RESTRICTIVENESS[decision.verdict] > RESTRICTIVENESS[worst.verdict]:
            worst = decision
    return worst


def _code_shape(execution: Execution) -> str:
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


def _argument_path(path: Sequence[object]) -> str:
    field = "arguments_json"
    for part in path:
        field += f"[{part}]" if isinstance(part, int) else f".{part}"
    return field


def _schema_problem(error: Any) -> str:
    # jsonschema's messages quote the offending value, which may be huge or personal:
    # say which rule failed, not what the value was.
    keyword = str(error.validator)
    if keyword == "required":
        missing = [name for name in error.validator_value if name not in (error.instance or {})]
        return f"missing required property: {', '.join(missing)}"
    if keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(name for name in (error.instance or {}) if name not in allowed)
        return f"unknown properties: {', '.join(extra)[:200]}"
    if keyword == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}"
    if keyword == "type":
        return f"must be of type {error.validator_value}"
    if keyword in ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems"):
        return f"violates {keyword} {error.validator_value}"
    return f"violates {keyword}"


def _split(name: str, collection: str) -> tuple[str, str]:
    """ "tenants/{t}/{collection}/{id}" -> ("tenants/{t}", id)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or not parts[1] or parts[2] != collection or not parts[3]:
        raise InvalidResourceName(f"expected tenants/{{tenant}}/{collection}/{{id}}", metadata={"name": name[:200]})
    return f"tenants/{parts[1]}", parts[3]


def _parts(name: str, tenant: str, collection: str) -> str | None:
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != tenant or parts[2] != collection or not parts[3]:
        return None
    return parts[3]


def _turn_parts(name: str, tenant: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if (
        len(parts) != 6
        or "/".join(parts[:2]) != tenant
        or parts[2] != "sessions"
        or not parts[3]
        or parts[4] != "turns"
        or not parts[5]
    ):
        return None
    return parts[3], parts[5]


def _tenant_of(parent: str) -> str:
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidResourceName("expected tenants/{tenant}", metadata={"name": parent[:200]})
    return parent


def _own_execution(name: str, principal: Principal | None) -> str:
    tenant, _ = _split(name, "executions")
    if principal is not None and principal.tenant and principal.tenant != tenant:
        # Another tenant's executions do not exist for this caller.
        raise ExecutionNotFound("no such execution", metadata={"name": name})
    return name


def _offset_of(token: str, parent: str) -> int:
    if not token:
        return 0
    try:
        owner, _, offset = base64.urlsafe_b64decode(token.encode()).decode().rpartition("|")
        value = int(offset)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if owner != parent or value < 0:
        raise InvalidPageToken("page_token was issued for other parameters")
    return value


def _token_of(parent: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{parent}|{offset}".encode()).decode()
