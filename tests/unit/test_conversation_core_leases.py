"""Leases at the core, over in-memory ports shared by two "processes": the one that runs a
turn holds and renews its lease; an intervention that reaches the other one goes where the
turn runs; a turn whose runner stopped renewing is taken over and resumed where it
stopped; a restarted runner takes its own turns back at once."""

from __future__ import annotations

import uuid

import pytest

from svc_conversation.errors import TurnOwnerUnreachable
from svc_conversation.model import CommandKind, TurnCommand, TurnState, UserMessage
from tests.support.conversation_memory import (
    ALICE,
    Hang,
    ScriptedChatModel,
    World,
    answer,
    finished,
    new_session,
    payloads,
)

A, B = "10.0.0.1:1", "10.0.0.2:1"


def rid() -> str:
    return str(uuid.uuid4())


async def test_the_process_that_runs_a_turn_holds_its_lease_and_renews_it() -> None:
    world = World(ScriptedChatModel(Hang()))
    a = world.process(A)
    session = await new_session(a)
    turn = await a.send_message(ALICE, session.name, "hi", rid(), "")
    await world.llm.hanging.wait()
    _stored, lease = await world.store.lease(session.name, 1) or (None, None)
    assert lease is not None
    assert (lease.runner, lease.address) == (A, A)
    first_until = lease.until
    world.clock.advance(10)
    await a.maintain()
    _, renewed = await world.store.lease(session.name, 1) or (None, None)
    assert renewed is not None
    assert renewed.until > first_until
    # Another process does not take a live lease.
    b = world.process(B)
    await b.maintain()
    assert b.runner(session.name) is None
    await a.interrupt(ALICE, turn.name, rid())


async def test_an_intervention_that_reaches_another_process_goes_where_the_turn_runs() -> None:
    world = World(ScriptedChatModel(Hang()))
    a, b = world.process(A), world.process(B)
    session = await new_session(a)
    turn = await a.send_message(ALICE, session.name, "hi", rid(), "")
    await world.llm.hanging.wait()
    request = rid()
    interrupted = await b.interrupt(ALICE, turn.name, request)
    assert interrupted.state == TurnState.INTERRUPTED
    assert world.owners.sent == [(A, TurnCommand(CommandKind.INTERRUPT, turn.name, request))]
    runner = a.runner(session.name)
    assert runner is not None
    assert runner.done()


async def test_an_owner_nobody_can_reach_is_unavailable_until_its_lease_runs_out() -> None:
    world = World(ScriptedChatModel(Hang(), answer("resumed elsewhere")))
    a, b = world.process(A), world.process(B)
    session = await new_session(a)
    turn = await a.send_message(ALICE, session.name, "hi", rid(), "")
    await world.llm.hanging.wait()
    # A is gone (its process died: nothing stops its run, nobody answers there).
    del world.owners.processes[A]
    with pytest.raises(TurnOwnerUnreachable):
        await b.nudge(ALICE, turn.name, "go on", rid())
    # Its lease runs out: B takes the turn over and resumes it from its stored events.
    world.clock.advance(16)
    await b.maintain()
    done = await finished(b, session.name)
    assert (done.state, done.response_text) == (TurnState.COMPLETED, "resumed elsewhere")
    _, lease = await world.store.lease(session.name, 1) or (None, None)
    assert lease is not None
    assert lease.runner == B
    assert len(payloads(world.store, session.name, UserMessage)) == 1
    await a.close()


async def test_a_restarted_runner_takes_its_own_turns_back_at_once() -> None:
    world = World(ScriptedChatModel(Hang(), answer("after the restart")))
    before = world.process(A)
    session = await new_session(before)
    await before.send_message(ALICE, session.name, "hi", rid(), "")
    await world.llm.hanging.wait()
    await before.close()  # stops its runner without changing the turn
    assert (await world.store.get_turn(session.name, 1)).state == TurnState.RUNNING  # type: ignore[union-attr]
    after = world.process(A)
    await after.start()
    done = await finished(after, session.name)
    assert (done.state, done.response_text) == (TurnState.COMPLETED, "after the restart")


async def test_idle_sessions_are_dropped_from_memory() -> None:
    world = World(ScriptedChatModel(answer("hi")))
    process = world.process(A, idle_evict_seconds=1.0)
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await finished(process, session.name)
    process._handles[session.name].last_used -= 5  # as if unused for 5 s
    await process.maintain()
    assert process._handles.find(session.name) is None
    assert (await process.get_session(ALICE, session.name)).current_turn.endswith("/turns/1")
