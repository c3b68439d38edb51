"""Token deltas coalesced on a tick, at the core over in-memory ports: a model call's first
piece goes out at once, the following ones together (per ``delta_tick_ms`` or
``delta_max_tokens`` pieces); held text goes out before any other event of the turn (the
iteration's end, a failed call, an interrupt), and nothing is left waiting on a timer."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from svc_conversation.errors import ModelCallFailed
from svc_conversation.model import (
    ChatRequest,
    ChatResult,
    Intervention,
    ModelCall,
    ModelTier,
    SessionEvent,
    TokenDelta,
    ToolCallRequested,
    TurnState,
    TurnStateChanged,
)
from svc_conversation.ports import OnCut, OnDelta
from tests.support.conversation_memory import (
    ALICE,
    PRIMARY,
    ScriptedChatModel,
    World,
    answer,
    finished,
    new_session,
    reply,
    settle,
)


def rid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Call:
    """One PRIMARY call: its pieces of text, streamed as fast as they come, a float among
    them a pause of that many seconds; then it hangs until cancelled (``hang``) or fails
    with ``fail`` (after its pieces)."""

    pieces: tuple[str | float, ...]
    hang: bool = False
    fail: str = ""


def one_char_pieces(text: str) -> tuple[str, ...]:
    return tuple(text)


class PiecesModel(ScriptedChatModel):
    """The ChatModel port streaming the pieces of each scripted call; ``after_piece`` holds,
    for every piece, what ``probe`` said right after its on_delta returned."""

    def __init__(self, *calls: Call) -> None:
        super().__init__()
        self.calls = list(calls)
        self.probe: Callable[[], int] = lambda: 0
        self.after_piece: list[int] = []

    async def chat(
        self, tier: ModelTier, request: ChatRequest, on_delta: OnDelta, *, on_cut: OnCut | None = None
    ) -> ChatResult:
        self.requests.append((tier, request))
        call = self.calls.pop(0)
        text = ""
        sent = 0
        try:
            for piece in call.pieces:
                if isinstance(piece, float):
                    await asyncio.sleep(piece)
                    continue
                await on_delta(piece)
                text += piece
                sent += 1
                self.after_piece.append(self.probe())
            if call.hang:
                self.hanging.set()
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            if on_cut is not None:
                on_cut(self._stats(tier, sent))
            raise
        if call.fail:
            raise ModelCallFailed(call.fail, "scripted", self._stats(tier, sent))
        return ChatResult(text, self._stats(tier, sent))


def published(world: World, session: str) -> list[SessionEvent]:
    """Every event the process published for ``session``, in order (what streams get)."""
    return [event for event, _ in world.bus.entries.get(session, [])]


def deltas_of(events: list[SessionEvent]) -> list[TokenDelta]:
    return [e.payload for e in events if isinstance(e.payload, TokenDelta)]


def delta_rows(world: World, session: str) -> list[TokenDelta]:
    """The token deltas the store holds for the session (pending rows of unended turns)."""
    row = world.store._rows[session]  # the fake's own state
    return deltas_of([row.events[s][0] for s in sorted(row.events) if row.events[s][2]])


def _interrupted(event: SessionEvent) -> bool:
    return isinstance(event.payload, TurnStateChanged) and event.payload.state == TurnState.INTERRUPTED


async def test_the_first_piece_goes_out_at_once_and_the_rest_in_few_deltas() -> None:
    text = answer("x" * 300)
    pieces = one_char_pieces(text)
    model = PiecesModel(Call(pieces))
    world = World(model)
    # A tick longer than the test: only the count hands held pieces out before the end.
    process = world.process(delta_tick_ms=1000, delta_max_tokens=32)
    session = await new_session(process)
    model.probe = lambda: len(deltas_of(published(world, session.name)))
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    done = await finished(process, session.name)
    assert done.response_text == "x" * 300
    # Published before the model's next piece, alone: no added delay to the first token.
    assert model.after_piece[0] == 1
    deltas = deltas_of(published(world, session.name))
    assert deltas[0].text == pieces[0]
    # Then one delta per 32 pieces, and one for the rest at the iteration's end.
    assert len(deltas) == 1 + math.ceil((len(pieces) - 1) / 32)
    assert [len(d.text) for d in deltas[1:-1]] == [32] * (len(deltas) - 2)
    assert "".join(d.text for d in deltas) == text
    assert all(d.iteration == 1 for d in deltas)
    await process.close()


async def test_held_pieces_go_out_when_the_tick_passes() -> None:
    model = PiecesModel(Call(("a", "b", "c", "d", 0.15, "e", "f"), hang=True))
    world = World(model)
    process = world.process(delta_tick_ms=20, delta_max_tokens=1000)
    session = await new_session(process)
    model.probe = lambda: len(deltas_of(published(world, session.name)))
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await model.hanging.wait()
    # "a" at once; "bcd" on the tick while the model paused (before "e" came).
    assert model.after_piece[:4] == [1, 1, 1, 1]
    assert model.after_piece[4] == 2
    # "ef" on the next tick, while the model waits.
    await settle(lambda: len(deltas_of(published(world, session.name))) == 3, seconds=2.0)
    assert [d.text for d in deltas_of(published(world, session.name))] == ["a", "bcd", "ef"]
    handle = process._handles[session.name]  # the test looks at what the process holds
    assert handle._timer is None  # nothing held, nothing waiting
    await process.close()


async def test_held_text_goes_out_before_the_iteration_s_own_events() -> None:
    first = reply("echo", value=1)
    second = answer("done")
    world = World(PiecesModel(Call(one_char_pieces(first)), Call(one_char_pieces(second))))
    process = world.process(delta_tick_ms=1000, delta_max_tokens=10_000)
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "go", rid(), "")
    done = await finished(process, session.name)
    assert done.state == TurnState.COMPLETED
    events = published(world, session.name)
    kinds = [type(e.payload).__name__ for e in events]
    # Per iteration: the first piece, the rest as one delta, then the model call's event
    # (and the tool call, or the answer); never a delta after them.
    requested = kinds.index("ToolCallRequested")
    assert kinds[requested - 3 : requested + 1] == ["TokenDelta", "TokenDelta", "ModelCall", "ToolCallRequested"]
    assert kinds[-5:] == ["TokenDelta", "TokenDelta", "ModelCall", "FinalResponse", "TurnStateChanged"]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    texts = [(d.iteration, d.text) for d in deltas_of(events)]
    assert texts == [(1, first[0]), (1, first[1:]), (2, second[0]), (2, second[1:])]
    assert isinstance(events[requested].payload, ToolCallRequested)
    await process.close()


async def test_a_tick_of_zero_makes_every_piece_its_own_delta() -> None:
    text = answer("zero")
    pieces = one_char_pieces(text)
    model = PiecesModel(Call(pieces))
    world = World(model)
    process = world.process(delta_tick_ms=0)
    session = await new_session(process)
    model.probe = lambda: len(deltas_of(published(world, session.name)))
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await finished(process, session.name)
    assert [d.text for d in deltas_of(published(world, session.name))] == list(pieces)
    assert model.after_piece == list(range(1, len(pieces) + 1))
    await process.close()


async def test_a_failed_call_s_held_text_goes_before_its_record_and_the_next_tier_starts_at_once() -> None:
    text = answer("second tier")
    model = PiecesModel(Call(("{", '"th', "ou", "ght"), fail="MODEL_TIMEOUT"), Call(one_char_pieces(text)))
    world = World(model)
    process = world.process(delta_tick_ms=1000)
    session = await new_session(process)
    model.probe = lambda: len(deltas_of(published(world, session.name)))
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    done = await finished(process, session.name)
    assert done.response_text == "second tier"
    events = published(world, session.name)
    failed = next(i for i, e in enumerate(events) if isinstance(e.payload, ModelCall) and e.payload.failure_reason)
    assert [getattr(e.payload, "text", None) for e in events[failed - 2 : failed]] == ["{", '"thought']
    # The next tier's first piece went out alone, before its second piece came.
    assert model.after_piece[4] == 3
    assert deltas_of(events[failed:])[0].text == text[0]
    await process.close()


@pytest.mark.parametrize("tick_ms", [20, 1000])
async def test_an_interrupt_hands_out_held_text_first_and_nothing_after_it(tick_ms: int) -> None:
    streamed = one_char_pieces(answer("a long story, cut short"))[:40]
    model = PiecesModel(Call(streamed, hang=True))
    world = World(model)
    process = world.process(delta_tick_ms=tick_ms, delta_max_tokens=1000)
    session = await new_session(process)
    _, _, stream = await process.attach(ALICE, session.name, 0)
    turn = await process.send_message(ALICE, session.name, "tell me a story", rid(), "")
    await model.hanging.wait()
    handle = process._handles[session.name]  # the test looks at what the process holds
    interrupted = await process.interrupt(ALICE, turn.name, rid())
    assert interrupted.state == TurnState.INTERRUPTED
    seen: list[SessionEvent] = []
    while not seen or not _interrupted(seen[-1]):
        seen.append(await asyncio.wait_for(anext(stream), 1.0))
    # Everything the model streamed reached the stream, in order, before the interrupt.
    assert "".join(d.text for d in deltas_of(seen)) == "".join(streamed)
    assert deltas_of(seen)[0].text == streamed[0]
    assert len(deltas_of(seen)) == 2
    stop = next(i for i, e in enumerate(seen) if isinstance(e.payload, Intervention))
    assert all(not isinstance(e.payload, TokenDelta) for e in seen[stop:])
    # Nothing waits to hand out more: no timer, no task, nothing held.
    assert handle._timer is None
    assert handle._flusher is None or handle._flusher.done()
    assert handle._held == []
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), min(3 * tick_ms / 1000, 0.1) + 0.05)
    assert not isinstance(published(world, session.name)[-1].payload, TokenDelta)
    # Stored compactly with the interrupt's step (the turn has not ended): two rows, not 40.
    assert [d.text for d in delta_rows(world, session.name)] == [d.text for d in deltas_of(seen)]
    [cut] = [e.payload for e in seen if isinstance(e.payload, ModelCall) and e.payload.usage.role == PRIMARY]
    assert cut.interrupted
    await process.close()


async def test_a_process_that_stops_leaves_nothing_held_or_waiting() -> None:
    model = PiecesModel(Call(("a", "b", "c"), hang=True))
    world = World(model)
    process = world.process(delta_tick_ms=1000)
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "hi", rid(), "")
    await model.hanging.wait()
    handle = process._handles[session.name]  # the test looks at what the process holds
    assert handle._held == ["b", "c"]
    assert handle._timer is not None
    await process.close()
    # The turn goes on with its next owner: the held text is dropped with the run.
    assert handle._timer is None
    assert handle._held == []
    assert [d.text for d in deltas_of(published(world, session.name))] == ["a"]
