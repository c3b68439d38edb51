"""svc_tools's execution state machine on in-memory ports (tests/support/tools_memory.py):
allowed, denied and held runs, the approval protocol, cancellation, and what a process
finds after another one died or lost its lease."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from skm_runtime.access import HeldState, Outcome, Principal, Verdict
from skm_runtime.values import FailureReason
from svc_tools.core.tools import Tools
from svc_tools.errors import ExecutionFinished, ExecutionNotFound, PolicyUnavailable, RequestIdReused
from svc_tools.model import (
    Accepted,
    Access,
    Decided,
    ExecuteRequest,
    Execution,
    ExecutionState,
    Failure,
    Finished,
    Output,
    Progressed,
    SandboxEnd,
    Stream,
    Success,
    Update,
)
from tests.support.tools_memory import MemoryExecutionStore, MemoryPolicyGate, ScriptedRunner, ScriptedSandbox

T1 = "tenants/t1"
ALICE = Principal(T1, f"{T1}/users/alice", ("member",))
CODE = f"{T1}/tools/code_execution"
MEMORY_SAVE = f"{T1}/tools/memory_save"
PERSONA = f"{T1}/personas/helper"
NAMESPACE = f"memory_namespace:{T1}/memoryNamespaces/solutions"
LEASE_SECONDS = 30.0
# How long a test waits for something that happens at once on in-memory ports.
SOON = 5.0

T = TypeVar("T")


class Clock:
    """Wall-clock time for executions: one second later at every look."""

    def __init__(self) -> None:
        self.at = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at


class Ticks:
    """The store's clock for leases, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def pass_lease(self) -> None:
        self.now += LEASE_SECONDS + 1


@dataclass
class World:
    store: MemoryExecutionStore
    policy: MemoryPolicyGate
    ticks: Ticks
    processes: list[Tools] = field(default_factory=list)
    sandboxes: list[ScriptedSandbox] = field(default_factory=list)
    runner: ScriptedRunner = field(default_factory=ScriptedRunner)

    async def process(self, sandbox: ScriptedSandbox | None = None) -> Tools:
        """Another copy of svc_tools on the same store and svc_policy, started."""
        sandbox = sandbox or ScriptedSandbox()
        tools = Tools(
            self.store,
            self.policy,
            sandbox,
            now=Clock(),
            max_timeout_seconds=60.0,
            runners=(self.runner,),
            instance=f"tools-{len(self.sandboxes)}",
        )
        await tools.start()
        self.processes.append(tools)
        self.sandboxes.append(sandbox)
        return tools

    def only_execution(self) -> str:
        """The name of the one execution created so far."""
        (name,) = [name for kind, name in self.store.events if kind == "tool_requested"]
        return name

    async def settled(self, name: str) -> Execution:
        """The execution once it has its result."""

        async def result() -> Execution:
            while True:
                execution = await self.store.get(name)
                if execution is not None and execution.state.terminal:
                    return execution
                await asyncio.sleep(0.001)

        return await soon(result())


@pytest.fixture
async def world() -> AsyncIterator[World]:
    ticks = Ticks()
    built = World(MemoryExecutionStore(lease_seconds=LEASE_SECONDS, clock=ticks), MemoryPolicyGate(), ticks)
    yield built
    for tools in built.processes:
        await tools.close()
    await built.policy.close()


async def soon(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, SOON)


def code_request(code: str = "print('hello')", **changes: Any) -> ExecuteRequest:
    values: dict[str, Any] = {
        "tool": CODE,
        "arguments_json": json.dumps({"runtime": "python", "code": code}),
        "request_id": str(uuid.uuid4()),
        **changes,
    }
    return ExecuteRequest(**values)


async def updates_of(tools: Tools, request: ExecuteRequest, principal: Principal = ALICE) -> list[Update]:
    return await soon(_collect(tools, request, principal))


async def _collect(tools: Tools, request: ExecuteRequest, principal: Principal) -> list[Update]:
    return [update async for update in tools.execute(request, principal, trusted_context=True)]


def following(tools: Tools, request: ExecuteRequest) -> asyncio.Task[list[Update]]:
    """A stream following the request's execution in the background."""
    return asyncio.create_task(_collect(tools, request, ALICE))


def result_of(updates: list[Update]) -> Success | Failure:
    last = updates[-1]
    assert isinstance(last, Finished), updates
    return last.result


def name_of(updates: list[Update]) -> str:
    first = updates[0]
    assert isinstance(first, Accepted), updates
    return first.execution


def verdicts_of(updates: list[Update]) -> list[Verdict]:
    return [u.decision.verdict for u in updates if isinstance(u, Decided)]


def hold_code(world: World) -> None:
    world.policy.verdicts[("can_execute", f"tool:{CODE}")] = Verdict.REQUIRES_APPROVAL


# -- runs without a hold --------------------------------------------------------------------


async def test_an_allowed_run_streams_its_decision_output_and_single_result(world: World) -> None:
    tools = await world.process()
    updates = await updates_of(tools, code_request())
    name = name_of(updates)

    assert verdicts_of(updates) == [Verdict.ALLOW]
    assert any(isinstance(u, Progressed) for u in updates)
    assert [u for u in updates if isinstance(u, Output)] == [Output(Stream.STDOUT, b"hello\n", 0)]
    result = result_of(updates)
    assert isinstance(result, Success)
    assert json.loads(result.output_json) == {"exit_code": 0, "stdout": "hello\n", "stderr": ""}
    stored = await world.store.get(name)
    assert stored is not None
    assert stored.state is ExecutionState.SUCCEEDED
    assert stored.start_time is not None
    assert stored.end_time is not None
    assert world.store.driver_of(name) is None
    assert world.store.events == [("tool_requested", name), ("tool_completed", name)]
    assert len(world.sandboxes[0].jobs) == 1


async def test_a_failing_run_says_how_the_sandbox_ended(world: World) -> None:
    tools = await world.process(ScriptedSandbox(end=SandboxEnd.TIMEOUT, exit_code=-1))
    result = result_of(await updates_of(tools, code_request(timeout_seconds=2.5)))
    assert result == Failure(FailureReason.TIMEOUT, "the run exceeded its 2.5 s time limit and was stopped")


async def test_a_denied_run_never_reaches_the_sandbox(world: World) -> None:
    world.policy.verdicts[("can_execute", f"tool:{CODE}")] = Verdict.DENY
    tools = await world.process()
    updates = await updates_of(tools, code_request())

    assert verdicts_of(updates) == [Verdict.DENY]
    assert result_of(updates) == Failure(FailureReason.DENIED, "policy denied the run (NO_RELATION)")
    assert world.sandboxes[0].jobs == []
    assert world.policy.actions == {}


async def test_a_memory_tool_is_checked_for_what_it_touches_as_the_user_and_the_persona(world: World) -> None:
    world.runner.accesses = [Access("can_write", NAMESPACE)]
    world.policy.verdicts[(f"persona:{PERSONA}", "can_write", NAMESPACE)] = Verdict.DENY
    tools = await world.process()
    request = ExecuteRequest(MEMORY_SAVE, json.dumps({"text": "a fact"}), str(uuid.uuid4()), persona=PERSONA)
    updates = await updates_of(tools, request)

    asked = {(c.subject, c.relation, c.object) for c in world.policy.checks}
    assert asked == {
        (f"user:{ALICE.user}", "can_execute", f"tool:{MEMORY_SAVE}"),
        (f"persona:{PERSONA}", "can_execute", f"tool:{MEMORY_SAVE}"),
        (f"user:{ALICE.user}", "can_write", NAMESPACE),
        (f"persona:{PERSONA}", "can_write", NAMESPACE),
    }
    assert result_of(updates) == Failure(FailureReason.DENIED, "policy denied the run (NO_RELATION)")
    assert world.runner.runs == []


async def test_a_memory_tool_runs_through_its_runner(world: World) -> None:
    tools = await world.process()
    updates = await updates_of(tools, ExecuteRequest(MEMORY_SAVE, json.dumps({"text": "a fact"}), str(uuid.uuid4())))
    assert result_of(updates) == Success('{"id": "m1"}')
    assert Progressed("saving") in updates
    assert len(world.runner.runs) == 1


async def test_a_runner_that_breaks_fails_the_run_without_saying_why(world: World) -> None:
    world.runner.fail = True
    tools = await world.process()
    updates = await updates_of(tools, ExecuteRequest(MEMORY_SAVE, json.dumps({"text": "a fact"}), str(uuid.uuid4())))
    assert result_of(updates) == Failure(FailureReason.TOOL_ERROR, "svc_tools failed while running the tool")


async def test_svc_policy_unavailable_fails_closed_and_a_retry_checks_again(world: World) -> None:
    world.policy.unavailable = True
    tools = await world.process()
    request = code_request()
    stream = tools.execute(request, ALICE, trusted_context=True)
    name = name_of([await anext(stream)])
    with pytest.raises(PolicyUnavailable):
        await anext(stream)
    stored = await world.store.get(name)
    assert stored is not None
    assert stored.state is ExecutionState.CHECKING
    assert world.store.driver_of(name) is None
    assert world.sandboxes[0].jobs == []

    world.policy.unavailable = False
    updates = await updates_of(tools, request)
    assert name_of(updates) == name
    assert isinstance(result_of(updates), Success)
    assert len(world.sandboxes[0].jobs) == 1


async def test_the_same_request_id_attaches_to_the_same_execution(world: World) -> None:
    tools = await world.process()
    request = code_request()
    first, second = await soon(asyncio.gather(_collect(tools, request, ALICE), _collect(tools, request, ALICE)))
    assert name_of(first) == name_of(second)
    assert result_of(first) == result_of(second)
    assert len(world.sandboxes[0].jobs) == 1

    again = await updates_of(tools, request)
    assert [type(update) for update in again] == [Accepted, Decided, Finished]
    assert name_of(again) == name_of(first)
    assert result_of(again) == result_of(first)

    with pytest.raises(RequestIdReused):
        await updates_of(tools, code_request("print(2)", request_id=request.request_id))


async def test_get_and_cancel_keep_callers_to_their_tenant_and_to_live_runs(world: World) -> None:
    tools = await world.process()
    name = name_of(await updates_of(tools, code_request()))
    eve = Principal("tenants/t2", "tenants/t2/users/eve")

    assert (await tools.get_execution(name, ALICE)).state is ExecutionState.SUCCEEDED
    with pytest.raises(ExecutionNotFound):
        await tools.get_execution(name, eve)
    with pytest.raises(ExecutionNotFound):
        await tools.get_execution(f"{T1}/executions/{uuid.uuid4()}", ALICE)
    with pytest.raises(ExecutionFinished):
        await tools.cancel_execution(name, ALICE)


# -- held runs ------------------------------------------------------------------------------


async def test_a_held_run_runs_once_after_approval_and_reports_its_outcome(world: World) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request("print('held')\nprint(2)"))
    (action,) = await soon(world.policy.held())
    name = action.payload.name
    stored = await world.store.get(name)
    assert stored is not None
    assert stored.state is ExecutionState.AWAITING_APPROVAL
    assert action.hold.summary == f"code_execution (python, 2 lines) for {ALICE.user}"
    assert world.sandboxes[0].jobs == []

    world.policy.approve(action.name)
    updates = await soon(stream)

    assert verdicts_of(updates) == [Verdict.REQUIRES_APPROVAL]
    assert isinstance(result_of(updates), Success)
    assert len(world.sandboxes[0].jobs) == 1
    assert action.state is HeldState.EXECUTED
    assert action.claim_id == name
    assert action.outcome is not None
    assert action.outcome.succeeded
    done = await world.store.get(name)
    assert done is not None
    assert done.claimed
    assert done.completion_reported


@pytest.mark.parametrize(
    ("resolve", "expected"),
    [
        (
            lambda policy, name: policy.reject(name, "not on a Friday"),
            Failure(FailureReason.REJECTED, "an operator rejected the run: not on a Friday"),
        ),
        (
            lambda policy, name: policy.expire(name),
            Failure(FailureReason.APPROVAL_EXPIRED, "nobody approved the run before its approval expired"),
        ),
        (
            lambda policy, name: policy.forget(name),
            Failure(FailureReason.APPROVAL_EXPIRED, "nobody approved the run before its approval expired"),
        ),
    ],
    ids=["rejected", "expired", "gone"],
)
async def test_a_held_run_that_is_not_approved_never_runs(world: World, resolve: Any, expected: Failure) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())
    resolve(world.policy, action.name)

    assert result_of(await soon(stream)) == expected
    assert world.sandboxes[0].jobs == []


async def test_a_hold_withdrawn_in_svc_policy_fails_the_run_as_cancelled(world: World) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())
    await world.policy.cancel(action.name)

    assert result_of(await soon(stream)) == Failure(FailureReason.CANCELLED, "the held run was withdrawn")


async def test_an_action_claimed_by_another_executor_is_never_run_here(world: World) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())
    world.policy.approve(action.name)
    # Before the drive wakes up: another executor claims the approved action first.
    world.policy.claim_elsewhere(action.name, "someone-else")

    assert result_of(await soon(stream)) == Failure(
        FailureReason.INTERRUPTED, "the approved run was claimed by another executor"
    )
    assert world.sandboxes[0].jobs == []


async def test_an_outcome_svc_policy_did_not_hear_is_kept_and_reported_once_it_is_back(world: World) -> None:
    hold_code(world)
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    tools = await world.process(sandbox)
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())
    world.policy.approve(action.name)
    await soon(sandbox.started.wait())
    # svc_policy goes away after the claim, before the outcome is reported.
    world.policy.unavailable = True
    gate.set()
    assert isinstance(result_of(await soon(stream)), Success)
    assert action.state is HeldState.EXECUTING
    # Handed to the held-action protocol, which owes it to svc_policy.
    assert await world.store.unreported(10) == []
    assert [(r.blocked_action, r.claim_id) for r in await world.policy.reports.due(10)] == [
        (action.name, action.payload.name)
    ]

    world.policy.unavailable = False
    for _ in range(200):
        if action.state is HeldState.EXECUTED:
            break
        await asyncio.sleep(0.005)
    assert action.state is HeldState.EXECUTED
    assert action.outcome == Outcome(succeeded=True)
    assert await world.policy.reports.due(10) == []


async def test_an_outcome_never_handed_over_is_reported_by_maintenance(world: World) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())
    world.policy.approve(action.name)
    assert isinstance(result_of(await soon(stream)), Success)
    assert action.state is HeldState.EXECUTED
    # As if the process had stopped between storing the result and reporting it.
    world.store.forget_reported(action.payload.name)
    action.state, action.outcome = HeldState.EXECUTING, None
    assert [e.name for e in await world.store.unreported(10)] == [action.payload.name]

    await tools.maintain()
    assert action.state is HeldState.EXECUTED
    assert action.outcome == Outcome(succeeded=True)
    assert await world.store.unreported(10) == []


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelling_a_held_run_withdraws_its_blocked_action(world: World) -> None:
    hold_code(world)
    tools = await world.process()
    stream = following(tools, code_request())
    (action,) = await soon(world.policy.held())

    cancelled = await soon(tools.cancel_execution(action.payload.name, ALICE))

    assert cancelled.state is ExecutionState.FAILED
    assert cancelled.result == Failure(FailureReason.CANCELLED, "the run was cancelled")
    assert result_of(await soon(stream)) == cancelled.result
    assert action.state is HeldState.CANCELLED


async def test_cancelling_a_running_run_kills_its_sandbox(world: World) -> None:
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    tools = await world.process(sandbox)
    stream = following(tools, code_request())
    await soon(sandbox.started.wait())
    name = world.only_execution()

    cancelled = await soon(tools.cancel_execution(name, ALICE))

    assert cancelled.result == Failure(FailureReason.CANCELLED, "the run was cancelled while it ran")
    assert sandbox.killed == 1
    updates = await soon(stream)
    assert Output(Stream.STDOUT, b"hello\n", 0) in updates
    assert result_of(updates) == cancelled.result


async def test_a_cancel_asked_of_another_process_stops_the_run_where_it_runs(world: World) -> None:
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    driving = await world.process(sandbox)
    elsewhere = await world.process()
    stream = following(driving, code_request())
    await soon(sandbox.started.wait())
    name = world.only_execution()

    cancelled = await soon(elsewhere.cancel_execution(name, ALICE))

    assert cancelled.result == Failure(FailureReason.CANCELLED, "the run was cancelled while it ran")
    assert sandbox.killed == 1
    assert result_of(await soon(stream)) == cancelled.result
    assert world.sandboxes[1].jobs == []


# -- processes that die, stop or lose their lease -------------------------------------------


async def test_a_run_whose_process_died_while_it_ran_is_interrupted_never_run_again(world: World) -> None:
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    dead = await world.process(sandbox)
    stream = following(dead, code_request())
    await soon(sandbox.started.wait())
    # The process stops renewing its lease (it hangs, or died): another takes over.
    world.ticks.pass_lease()
    survivor = await world.process()
    await survivor.maintain()

    name = world.only_execution()
    done = await world.settled(name)
    assert done.result == Failure(
        FailureReason.INTERRUPTED, "svc_tools restarted while the run was in progress; it was not started again"
    )
    assert world.sandboxes[1].jobs == []
    # The first process comes back to find the result stored: it keeps it.
    gate.set()
    assert result_of(await soon(stream)) == done.result
    assert (await world.store.get(name)) == done


async def test_a_claimed_run_whose_process_died_is_reported_interrupted(world: World) -> None:
    hold_code(world)
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    dead = await world.process(sandbox)
    stream = following(dead, code_request())
    (action,) = await soon(world.policy.held())
    world.policy.approve(action.name)
    await soon(sandbox.started.wait())
    world.ticks.pass_lease()

    survivor = await world.process()
    await survivor.maintain()

    done = await world.settled(action.payload.name)
    assert done.result is not None
    assert isinstance(done.result, Failure)
    assert done.result.reason is FailureReason.INTERRUPTED
    assert action.state is HeldState.EXECUTED
    assert action.outcome is not None
    assert action.outcome.failure_reason == "INTERRUPTED"
    gate.set()
    await soon(stream)


async def test_a_held_run_left_by_a_stopped_process_is_carried_on_and_runs_once(world: World) -> None:
    hold_code(world)
    stopping = await world.process()
    stream = following(stopping, code_request())
    (action,) = await soon(world.policy.held())
    await stopping.close()
    world.processes.remove(stopping)
    # The stopped process let go of the execution (its server ends the stream).
    stream.cancel()
    stored = await world.store.get(action.payload.name)
    assert stored is not None
    assert stored.state is ExecutionState.AWAITING_APPROVAL
    assert world.store.driver_of(action.payload.name) is None

    survivor = await world.process()
    await survivor.maintain()
    assert world.store.driver_of(action.payload.name) == "tools-1"
    world.policy.approve(action.name)

    done = await world.settled(action.payload.name)
    assert isinstance(done.result, Success)
    assert len(world.policy.actions) == 1
    assert [len(s.jobs) for s in world.sandboxes] == [0, 1]
    assert action.claim_id == action.payload.name


async def test_closing_interrupts_the_runs_in_progress(world: World) -> None:
    gate = asyncio.Event()
    sandbox = ScriptedSandbox(gate=gate)
    tools = await world.process(sandbox)
    stream = following(tools, code_request())
    await soon(sandbox.started.wait())

    await tools.close()
    world.processes.remove(tools)

    assert result_of(await soon(stream)) == Failure(
        FailureReason.INTERRUPTED, "svc_tools stopped while the run was in progress"
    )
    assert sandbox.killed == 1


async def test_a_drive_whose_lease_was_taken_over_never_runs_the_tool_twice(world: World) -> None:
    hold_code(world)
    first = await world.process()
    stream = following(first, code_request())
    (action,) = await soon(world.policy.held())
    world.ticks.pass_lease()
    second = await world.process()
    await second.maintain()
    assert world.store.driver_of(action.payload.name) == "tools-1"

    # Both drives wake up to the approval and claim it with the same claim id; only the
    # one holding the lease may record it as RUNNING.
    world.policy.approve(action.name)
    done = await world.settled(action.payload.name)

    assert isinstance(done.result, Success)
    assert sum(len(s.jobs) for s in world.sandboxes) == 1
    assert len(world.sandboxes[1].jobs) == 1
    assert result_of(await soon(stream)) == done.result
