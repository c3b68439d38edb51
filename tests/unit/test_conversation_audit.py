"""What svc_conversation writes to the audit topic for a turn, at the core: whole turns run
with in-memory stand-ins for Postgres, Redis, svc_profiles and svc_tools and the real engine
client on an engine stand-in (httpx's MockTransport). The audit records are read back from
the writes: their trace ids, the personal data in their texts, and the model call an
interrupt cuts off."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.events.v1 import event_pb2
from skm.type.v1 import model_pb2
from skm_runtime.access import Principal
from skm_runtime.values import ModelRole
from svc_conversation.adapters import audit
from svc_conversation.adapters.openai import OpenAICompatibleClient
from svc_conversation.adapters.records import EncodedSessionStore
from svc_conversation.adapters.records import EncodedWrite as Write
from svc_conversation.core import Conversation
from svc_conversation.model import ModelTier, PersonaBrief, ResolvedProfile, ToolSpec
from svc_conversation.settings import ConversationSettings

NAME = "tenants/t1/sessions/s1"
ALICE = Principal("tenants/t1", "tenants/t1/users/alice", ("member",))
PERSONA = "tenants/t1/personas/default"
TIER = ModelTier("models/tiny", 0, "http://engine.test/v1", "tiny", structured_output=True)
TURN_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
INTERRUPT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
Event = session_event_pb2.SessionEvent
Turn = turn_pb2.Turn


class Store:
    """The session's rows as Postgres has them, and every write made."""

    def __init__(self) -> None:
        self.session = session_pb2.Session(name=NAME, persona=PERSONA, owner=ALICE.user)
        self.events: list[Event] = []
        self.writes: list[Write] = []

    async def session_state(self, name: str) -> tuple[session_pb2.Session, int, Turn | None]:
        copy = session_pb2.Session()
        copy.CopyFrom(self.session)
        return copy, 0, None

    async def turn_by_request(self, name: str, request_id: str) -> Turn | None:
        return None

    async def list_turns(self, name: str, after: int, limit: int) -> list[Turn]:
        return []

    async def list_events(self, name: str, after: int, limit: int, *, turn: int = 0) -> list[Event]:
        found = [e for e in self.events if e.sequence > after and (not turn or e.turn.endswith(f"/turns/{turn}"))]
        return found[:limit]

    async def reserve(self, name: str, upto: int) -> None:
        return None

    async def write(self, write: Write) -> None:
        self.writes.append(write)
        self.events.extend(event for event, _, _ in write.events)


class Profiles:
    async def persona(self, name: str, principal: Principal) -> PersonaBrief:
        return PersonaBrief(name, "You help.", ("response",))

    async def resolve(self, principal: Principal, role: ModelRole, *_: Any) -> ResolvedProfile:
        # No PRE_SLM model: the heuristics alone pre-process.
        tiers = (TIER,) if role is ModelRole.PRIMARY else ()
        return ResolvedProfile(role, tiers, max_output_tokens=256)


class Tools:
    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        return [ToolSpec("response", "answer the user", {"type": "object", "properties": {"text": {"type": "string"}}})]


class Hot:
    async def mirror(self, session: session_pb2.Session) -> None:
        return None


class Engine:
    """Streams ``reply`` a few characters a chunk, without usage (as llama-cpp-python does);
    after ``hang_after`` chunks it sends nothing more until the client goes away."""

    def __init__(self, reply: str, *, hang_after: int | None = None) -> None:
        self.reply = reply
        self.hang_after = hang_after
        # Set once the client asked for more after the chunks before the hang: it has them all.
        self.hanging = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._stream())
        return httpx.Response(404)

    async def _stream(self) -> AsyncIterator[bytes]:
        try:
            for index in range(0, len(self.reply), 8):
                if index // 8 == self.hang_after:
                    self.hanging.set()
                    await asyncio.Event().wait()
                chunk = {"choices": [{"index": 0, "delta": {"content": self.reply[index : index + 8]}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            self.closed.set()


def conversation(store: Store, engine: Engine, settings: ConversationSettings | None = None) -> Conversation:
    llm = OpenAICompatibleClient()
    llm._http = httpx.AsyncClient(transport=httpx.MockTransport(engine.handle))
    return Conversation(
        EncodedSessionStore(cast(Any, store)),
        cast(Any, Hot()),
        cast(Any, Profiles()),
        cast(Any, Tools()),
        cast(Any, None),
        llm,
        settings or ConversationSettings(),
        runner_id="test",
    )


def reply(text: str) -> str:
    return json.dumps({"thoughts": ["answer"], "tool_name": "response", "tool_args": {"text": text}})


@contextmanager
def traced(trace_id: int) -> Iterator[None]:
    """Inside an RPC whose caller sent this trace (what the server interceptor attaches)."""
    span = NonRecordingSpan(SpanContext(trace_id, 0x00F067AA0BA902B7, True, TraceFlags(TraceFlags.SAMPLED)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def audited(writes: list[Write]) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(record.value) for write in writes for record in write.audit]


async def finished(core: Conversation) -> None:
    runner = core._handles[NAME].runner
    assert runner is not None
    await runner


async def test_every_audit_record_of_a_turn_carries_the_trace_of_the_request_that_started_it() -> None:
    store = Store()
    core = conversation(store, Engine(reply("hello")))
    with traced(TURN_TRACE):
        await core.send_message(ALICE, NAME, "hi there", str(uuid.uuid4()), "")
    # The runner goes on after the RPC returned, in the RPC's context.
    await finished(core)
    events = audited(store.writes)
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["turn_started", "model_call_completed", "turn_completed"]
    assert {event.trace_id for event in events} == {format(TURN_TRACE, "032x")}
    await core.llm.close()


async def test_records_built_outside_any_trace_have_none() -> None:
    turn = Turn(name=f"{NAME}/turns/1", first_sequence=1, state=Turn.STATE_RUNNING)
    event = Event(sequence=1, turn=turn.name)
    event.turn_state_changed.state = Turn.STATE_RUNNING
    session = session_pb2.Session(name=NAME, persona=PERSONA)
    [record] = audit.records_for(session, ALICE, turn, [event])
    assert event_pb2.Event.FromString(record.value).trace_id == ""
    with traced(TURN_TRACE):
        [record] = audit.records_for(session, ALICE, turn, [event])
    assert event_pb2.Event.FromString(record.value).trace_id == "0af7651916cd43dd8448eb211c80319c"


async def test_personal_data_is_redacted_in_the_audit_copies_and_kept_in_the_session() -> None:
    store = Store()
    message = "Write to jane.doe@example.com about card 4111 1111 1111 1111"
    core = conversation(store, Engine(reply("Done: I wrote to jane.doe@example.com.")))
    turn = await core.send_message(ALICE, NAME, message, str(uuid.uuid4()), "")
    await finished(core)
    events = audited(store.writes)
    started = next(e.turn_started for e in events if e.HasField("turn_started"))
    completed = next(e.turn_completed for e in events if e.HasField("turn_completed"))
    for copy in (started.turn, completed.turn):
        assert "jane.doe" not in copy.input_text
        assert "4111" not in copy.input_text
        assert copy.input_text == "Write to [email] about card [card]"
    assert completed.turn.response_text == "Done: I wrote to [email]."
    assert all(b"jane.doe" not in record.value for write in store.writes for record in write.audit)
    # The session keeps what was said: the model and the user need it.
    stored = [t for write in store.writes for t in write.turns if t.name == turn.name]
    assert stored[-1].input_text == message
    assert stored[-1].response_text == "Done: I wrote to jane.doe@example.com."
    [user_message] = [e.user_message for e in store.events if e.HasField("user_message")]
    assert user_message.text == message
    await core.llm.close()


async def test_other_audit_texts_are_redacted_too() -> None:
    turn = Turn(name=f"{NAME}/turns/1", first_sequence=1, state=Turn.STATE_RUNNING)
    session = session_pb2.Session(name=NAME, persona=PERSONA)
    requested = Event(sequence=2, turn=turn.name)
    requested.tool_call_requested.tool = "tenants/t1/tools/send_mail"
    requested.tool_call_requested.arguments_json = json.dumps(
        {"to": "jane.doe@example.com", "card": 4111111111111111, "body": "hi", "n": 3}
    )
    nudge = Event(sequence=3, turn=turn.name)
    nudge.intervention.kind = session_event_pb2.Intervention.KIND_NUDGE
    nudge.intervention.text = "use jane.doe@example.com instead"
    records = audit.records_for(session, ALICE, turn, [requested, nudge])
    tool, intervention = (event_pb2.Event.FromString(r.value) for r in records)
    # Still JSON, the values redacted.
    assert json.loads(tool.tool_requested.arguments_json) == {"to": "[email]", "card": "[card]", "body": "hi", "n": 3}
    assert intervention.intervention_applied.intervention.text == "use [email] instead"
    assert nudge.intervention.text == "use jane.doe@example.com instead"  # the session's copy is untouched


async def test_an_interrupt_records_the_model_call_it_cut_off_with_its_own_step() -> None:
    store = Store()
    text = reply("a long answer that the user will not wait for")
    engine = Engine(text, hang_after=3)
    # A tick longer than the test: the pieces after the first are held until the interrupt.
    core = conversation(store, engine, ConversationSettings(delta_tick_ms=1000))
    with traced(TURN_TRACE):
        turn = await core.send_message(ALICE, NAME, "tell me a story", str(uuid.uuid4()), "")
    await engine.hanging.wait()
    # The first piece streamed at once, not stored yet; the next two held.
    assert [s.event.payload.text for s in core._handles[NAME].pending] == [text[:8]]  # type: ignore[union-attr]  # token deltas
    writes_before = len(store.writes)
    with traced(INTERRUPT_TRACE):
        interrupted = await core.interrupt(ALICE, turn.name, str(uuid.uuid4()))
    assert interrupted.state == Turn.STATE_INTERRUPTED
    assert engine.closed.is_set()
    # One write: the cut-off call, then the intervention and the state it puts the turn in,
    # with the deltas streamed before it.
    [write] = store.writes[writes_before:]
    kinds = [event.WhichOneof("event") for event, _, delta in write.events if not delta]
    assert kinds == ["model_call", "intervention", "turn_state_changed"]
    # The pieces held when the interrupt came go out first, as one delta, before the call.
    deltas = sorted((event for event, _, delta in write.events if delta), key=lambda e: e.sequence)
    assert [e.token_delta.text for e in deltas] == [text[:8], text[8:24]]
    assert deltas[-1].sequence < min(event.sequence for event, _, delta in write.events if not delta)
    call = next(event.model_call for event, _, _ in write.events if event.HasField("model_call"))
    assert call.interrupted
    assert call.failure_reason == ""
    assert call.iteration == 1
    assert (call.usage.model, call.usage.role, call.usage.output_tokens) == (
        "models/tiny",
        model_pb2.MODEL_ROLE_PRIMARY,
        3,
    )
    assert call.usage.HasField("time_to_first_token")
    assert list(write.turns[0].model_calls) == [call.usage]
    [completed] = [e.model_call_completed for e in audited([write]) if e.HasField("model_call_completed")]
    assert completed.interrupted
    assert completed.usage == call.usage
    await core.llm.close()
