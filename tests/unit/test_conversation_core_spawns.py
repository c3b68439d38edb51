"""Held approvals and subordinate spawns at the core, over in-memory ports: a tool call
svc_tools holds leaves the turn AWAITING_APPROVAL until it runs; a spawn svc_policy holds
waits for the operator, runs the subordinate once claimed and reports the outcome; a
rejected or denied one fails the tool call, and the turn goes on."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

from skm_runtime.access import Decision, HeldState, Outcome, Verdict
from skm_runtime.values import FailureReason
from svc_conversation.model import (
    ExecutionDecided,
    ExecutionFinished,
    ExecutionProgressed,
    ExecutionUpdate,
    Progress,
    SessionState,
    ToolCallResult,
    ToolCallVerdict,
    ToolFailure,
    ToolSuccess,
    TurnState,
    TurnStateChanged,
)
from tests.support.conversation_memory import (
    ALICE,
    ScriptedChatModel,
    World,
    answer,
    finished,
    new_session,
    payloads,
    reply,
    settle,
)


def rid() -> str:
    return str(uuid.uuid4())


async def test_a_tool_call_held_for_approval_waits_then_runs_on() -> None:
    approve = asyncio.Event()

    async def held(arguments: dict[str, object]) -> AsyncIterator[ExecutionUpdate]:
        yield ExecutionDecided(Decision(Verdict.REQUIRES_APPROVAL, "NEEDS_APPROVAL", blocked_action="b1"))
        await approve.wait()
        yield ExecutionProgressed(Progress("approved, running"))
        yield ExecutionFinished(ToolSuccess('{"ok": true}'))

    world = World(ScriptedChatModel(reply("echo"), answer("done")))
    world.tools.scripts["echo"] = held
    process = world.process()
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "do it", rid(), "")
    await settle(
        lambda: (
            world.hot.sessions.get(session.name) is not None
            and world.hot.sessions[session.name].state == SessionState.AWAITING_APPROVAL
        )
    )
    approve.set()
    done = await finished(process, session.name)
    assert done.state == TurnState.COMPLETED
    states = [s.state for s in payloads(world.store, session.name, TurnStateChanged)]
    assert states == [TurnState.RUNNING, TurnState.AWAITING_APPROVAL, TurnState.RUNNING, TurnState.COMPLETED]


async def test_a_held_spawn_runs_the_subordinate_once_approved_and_reports_the_outcome() -> None:
    world = World(ScriptedChatModel(reply("call_subordinate", message="sum 2+2"), answer("4"), answer("It is 4.")))
    world.policy.rules["can_spawn"] = Verdict.REQUIRES_APPROVAL
    process = world.process()
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "delegate", rid(), "")
    held = await world.policy.pending()
    assert held.hold.session == session.name
    assert held.hold.summary.startswith("call_subordinate")
    [verdict] = payloads(world.store, session.name, ToolCallVerdict)
    assert verdict.decision.blocked_action == held.name
    await world.policy.decide(held.name, HeldState.APPROVED)
    done = await finished(process, session.name)
    assert (done.state, done.response_text) == (TurnState.COMPLETED, "It is 4.")
    [result] = payloads(world.store, session.name, ToolCallResult)
    assert result.result == ToolSuccess(json.dumps({"response": "4"}))
    assert world.policy.held[held.name].outcome == Outcome(True, "")
    # The subordinate is a session of its own, under its superior.
    subordinate, _ = await world.store.get_session(result.execution) or (None, 0)
    assert subordinate is not None
    assert subordinate.superior_session == session.name
    sub_turn = await world.store.get_turn(subordinate.name, 1)
    assert sub_turn is not None
    assert sub_turn.input_text == "sum 2+2"
    states = [s.state for s in payloads(world.store, session.name, TurnStateChanged)]
    assert states == [TurnState.RUNNING, TurnState.AWAITING_APPROVAL, TurnState.RUNNING, TurnState.COMPLETED]


async def test_a_rejected_spawn_fails_the_tool_call_with_the_operator_s_note() -> None:
    world = World(ScriptedChatModel(reply("call_subordinate", message="x"), answer("I may not.")))
    world.policy.rules["can_spawn"] = Verdict.REQUIRES_APPROVAL
    process = world.process()
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "delegate", rid(), "")
    held = await world.policy.pending()
    await world.policy.decide(held.name, HeldState.REJECTED, "not today")
    done = await finished(process, session.name)
    assert done.state == TurnState.COMPLETED
    [result] = payloads(world.store, session.name, ToolCallResult)
    assert result.result == ToolFailure(
        FailureReason.REJECTED, "an operator rejected spawning a subordinate: not today"
    )


async def test_a_denied_spawn_fails_at_once_and_no_subordinate_exists() -> None:
    world = World(ScriptedChatModel(reply("call_subordinate", message="x"), answer("ok")))
    world.policy.rules["can_spawn"] = Verdict.DENY
    process = world.process()
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "delegate", rid(), "")
    await finished(process, session.name)
    [result] = payloads(world.store, session.name, ToolCallResult)
    assert isinstance(result.result, ToolFailure)
    assert result.result.reason == FailureReason.DENIED
    assert len(world.policy.owners) == 1  # only the superior's session


async def test_a_session_as_deep_as_allowed_is_not_offered_call_subordinate() -> None:
    world = World(ScriptedChatModel(answer("ok")))
    process = world.process(max_subordinate_depth=0)
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await finished(process, session.name)
    _, request = world.llm.requests[-1]
    assert "call_subordinate" not in json.dumps(request.json_schema)
