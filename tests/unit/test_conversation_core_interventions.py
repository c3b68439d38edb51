"""Interventions and the Converse stream at the core, over in-memory ports: interrupt
cuts the model call off (and records what it consumed), resume and nudge go on where the
turn stopped, rerun answers again with the next tier; Converse runs commands as they come
and answers a failed one with a rejection while the events go on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from svc_conversation.errors import (
    FirstMessageNotConfig,
    NoLargerModel,
    RequestIdReused,
    SessionMismatch,
    StreamClosed,
    TurnNotActive,
    TurnNotInterrupted,
)
from svc_conversation.model import (
    Acknowledge,
    Attached,
    CommandKind,
    CommandRejected,
    Configure,
    ConverseCommand,
    ConverseOutput,
    Intervention,
    InterventionKind,
    ModelCall,
    NoCommand,
    SendMessage,
    SessionEvent,
    TurnIntervention,
    TurnState,
    TurnStateChanged,
)
from tests.support.conversation_memory import (
    ALICE,
    PRIMARY,
    Hang,
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


async def test_an_interrupt_cuts_the_model_call_off_and_records_what_it_consumed() -> None:
    world = World(ScriptedChatModel(Hang(answer("a long story")), answer("the end")))
    process = world.process()
    session = await new_session(process)
    turn = await process.send_message(ALICE, session.name, "tell me a story", rid(), "")
    await world.llm.hanging.wait()
    interrupted = await process.interrupt(ALICE, turn.name, rid())
    assert interrupted.state == TurnState.INTERRUPTED
    # The call cut off goes into the interrupt's own write, before the intervention.
    write = world.store.writes[-1]
    assert [type(s.event.payload).__name__ for s in write.events if not s.delta] == [
        "ModelCall",
        "Intervention",
        "TurnStateChanged",
    ]
    cut = write.events[0].event.payload
    assert isinstance(cut, ModelCall)
    assert cut.interrupted
    assert cut.usage.role == PRIMARY
    assert write.turns[0].model_calls[-1] == cut.usage
    # The deltas streamed before it are stored with it (the turn has not ended).
    assert any(s.delta for s in write.events)
    # Interrupting again changes nothing; resuming runs the turn on.
    assert (await process.interrupt(ALICE, turn.name, rid())).state == TurnState.INTERRUPTED
    resumed = await process.resume(ALICE, turn.name, rid())
    assert resumed.state == TurnState.RUNNING
    done = await finished(process, session.name)
    assert (done.state, done.response_text) == (TurnState.COMPLETED, "the end")
    kinds = [i.kind for i in payloads(world.store, session.name, Intervention)]
    assert kinds == [InterventionKind.INTERRUPT, InterventionKind.RESUME]
    with pytest.raises(TurnNotActive):
        await process.interrupt(ALICE, turn.name, rid())
    with pytest.raises(TurnNotInterrupted):
        await process.resume(ALICE, turn.name, rid())


async def test_an_interrupt_stops_the_running_tool() -> None:
    started = asyncio.Event()

    async def slow(arguments: dict[str, object]) -> AsyncIterator[object]:
        started.set()
        await asyncio.Event().wait()
        yield  # an async generator, as the tool scripts are

    world = World(ScriptedChatModel(reply("slow")))
    world.tools.scripts["slow"] = slow  # type: ignore[assignment]  # it never yields an update
    process = world.process()
    session = await new_session(process)
    turn = await process.send_message(ALICE, session.name, "run slow", rid(), "")
    await started.wait()
    await process.interrupt(ALICE, turn.name, rid())
    assert world.tools.cancelled == ["tenants/t1/executions/e1"]


async def test_a_nudge_joins_the_context_where_it_was_given_and_is_idempotent() -> None:
    world = World(ScriptedChatModel(Hang(), answer("shorter now")))
    process = world.process()
    session = await new_session(process)
    turn = await process.send_message(ALICE, session.name, "explain", rid(), "")
    await world.llm.hanging.wait()
    request = rid()
    nudged = await process.nudge(ALICE, turn.name, "be brief", request)
    assert nudged.state == TurnState.RUNNING
    done = await finished(process, session.name)
    assert done.response_text == "shorter now"
    _, last = world.llm.requests[-1]
    assert [m["content"] for m in last.messages[-2:]] == ["explain", "be brief"]
    assert (await process.nudge(ALICE, turn.name, "be brief", request)).name == turn.name
    with pytest.raises(RequestIdReused):
        await process.nudge(ALICE, turn.name, "other guidance", request)
    assert len(payloads(world.store, session.name, Intervention)) == 1


async def test_a_rerun_answers_again_with_the_next_tier_until_there_is_none() -> None:
    world = World(ScriptedChatModel(answer("small answer"), answer("large answer")))
    process = world.process()
    session = await new_session(process)
    first = await process.send_message(ALICE, session.name, "question", rid(), "")
    await finished(process, session.name)
    request = rid()
    rerun = await process.rerun(ALICE, first.name, request)
    assert (rerun.rerun_of, rerun.start_tier) == (first.name, 1)
    done = await finished(process, session.name)
    assert done.response_text == "large answer"
    assert world.llm.requests[-1][0].tier == 1
    [recorded] = [i for i in payloads(world.store, session.name, Intervention) if i.kind == InterventionKind.RERUN]
    assert recorded.rerun_turn == rerun.name
    assert (await process.rerun(ALICE, first.name, request)).name == rerun.name
    with pytest.raises(NoLargerModel):
        await process.rerun(ALICE, rerun.name, rid())


async def test_deleting_a_session_stops_its_turn_and_ends_its_streams() -> None:
    world = World(ScriptedChatModel(Hang()))
    process = world.process()
    session = await new_session(process)
    _, _, events = await process.attach(ALICE, session.name, 0)
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await world.llm.hanging.wait()
    await process.delete_session(ALICE, session.name, "")
    with pytest.raises(StreamClosed) as ended:
        await _drain(events)
    assert ended.value.reason == "DELETED"
    assert session.name not in world.hot.sessions


async def _drain(events: AsyncIterator[SessionEvent]) -> None:
    async for _ in events:
        pass


# -- Converse ----------------------------------------------------------------------------


class Inbox:
    """The client's side of a Converse stream: what it sends, when it sends it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[ConverseCommand | None] = asyncio.Queue()

    def send(self, session: str, command: object) -> None:
        self._queue.put_nowait(ConverseCommand(session, command))  # type: ignore[arg-type]  # the test's commands

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[ConverseCommand]:
        while (item := await self._queue.get()) is not None:
            yield item


async def until(stream: AsyncIterator[ConverseOutput], wanted: type) -> list[ConverseOutput]:
    seen = []
    while True:
        item = await anext(stream)
        seen.append(item)
        if isinstance(item, wanted) or (
            isinstance(item, SessionEvent)
            and isinstance(item.payload, TurnStateChanged)
            and wanted is TurnStateChanged
            and item.payload.state == TurnState.COMPLETED
        ):
            return seen


async def test_converse_runs_commands_and_rejects_a_failed_one_while_events_go_on() -> None:
    world = World(ScriptedChatModel(answer("hi there")))
    process = world.process()
    session = await new_session(process)
    inbox = Inbox()
    inbox.send(session.name, Configure())
    stream = aiter(process.converse(ALICE, aiter(inbox)))
    attached = await anext(stream)
    assert isinstance(attached, Attached)
    assert attached.after_sequence == 0
    inbox.send("", SendMessage("", "hello", rid()))
    seen = await until(stream, TurnStateChanged)
    assert any(isinstance(e, SessionEvent) and isinstance(e.payload, TurnStateChanged) for e in seen)
    bad = rid()
    inbox.send(session.name, TurnIntervention(CommandKind.RESUME, f"{session.name}/turns/1", bad))
    [rejected] = [r for r in await until(stream, CommandRejected) if isinstance(r, CommandRejected)]
    assert (rejected.request_id, rejected.reason) == (bad, "TURN_NOT_INTERRUPTED")
    inbox.send(session.name, NoCommand())
    rejected = (await until(stream, CommandRejected))[-1]
    assert isinstance(rejected, CommandRejected)
    assert rejected.reason == "EMPTY_COMMAND"
    inbox.send(session.name, Acknowledge(3))
    await settle(lambda: world.store._rows[session.name].session.acknowledged_sequence == 3)
    # A command for another session ends the stream with its error.
    inbox.send(session.name, TurnIntervention(CommandKind.INTERRUPT, "tenants/t1/sessions/other/turns/1", rid()))
    with pytest.raises(SessionMismatch):
        await until(stream, CommandRejected)


async def test_converse_starts_with_its_config() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    session = await new_session(process)
    inbox = Inbox()
    inbox.send(session.name, Acknowledge(1))
    with pytest.raises(FirstMessageNotConfig):
        await anext(aiter(process.converse(ALICE, aiter(inbox))))
