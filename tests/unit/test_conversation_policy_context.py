"""A message's policy_context (facts for the policy conditions of its turn's tool calls, e.g.
the voice channel's agitation score): kept only from a caller inside the mesh, checked,
stored with the message, and passed on with every ExecuteTool call of the turn, a resumed
one included."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import grpc
import pytest
from google.protobuf import struct_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.type.v1 import principal_pb2
from skm_runtime import interceptors
from skm_runtime.errors import InvalidArgument
from skm_runtime.principal import FORWARDED_BY_KEY, principal_message, principal_metadata
from svc_conversation import convert
from svc_conversation.adapters.mesh import _request_to
from svc_conversation.api import ConversationApi
from svc_conversation.core import Conversation
from svc_conversation.core.turns import MAX_POLICY_FACTS, policy_facts
from svc_conversation.model import (
    Configure,
    ConverseCommand,
    ExecutionFinished,
    ExecutionUpdate,
    SendMessage,
    SessionEvent,
    ToolRequest,
    ToolSuccess,
    Turn,
    TurnState,
    UserMessage,
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

AGITATED = {"agitation_score": 0.9}
SESSION = "tenants/t1/sessions/s1"


def rid() -> str:
    return str(uuid.uuid4())


def struct(facts: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(dict(facts))
    return message


# -- the servicer: whose facts count ---------------------------------------------------------


class _Context:
    """The part of a grpc.aio.ServicerContext the servicer reads."""

    def __init__(self, *metadata: tuple[str, str | bytes]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata


class _RecordingConversation:
    """The core as the servicer calls it: what each send_message was given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_message(
        self,
        principal: Any,
        session: str,
        text: str,
        request_id: str,
        tool_choice: str,
        *,
        policy_context: Mapping[str, object] | None = None,
    ) -> Turn:
        self.sent.append({"session": session, "tool_choice": tool_choice, "policy_context": policy_context})
        return Turn(name=f"{session}/turns/1", state=TurnState.RUNNING)

    async def converse(self, principal: Any, commands: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for command in commands:
            if isinstance(command.command, SendMessage):
                self.sent.append({"session": command.session, "policy_context": command.command.policy_context})
        return
        yield  # an async generator, as the core's is


def _api() -> tuple[ConversationApi, _RecordingConversation]:
    recording = _RecordingConversation()
    return ConversationApi(cast(Conversation, recording)), recording


def _mesh_metadata() -> tuple[tuple[str, str | bytes], ...]:
    return tuple(principal_metadata(principal_message("tenants/t1", "tenants/t1/users/alice", ("member",))))


@contextmanager
def _admitted_by_token() -> Iterator[None]:
    """The call is served as a public one the gate admitted by its token."""
    token = interceptors._admitted.set(principal_pb2.Principal(tenant="tenants/t1", user="tenants/t1/users/alice"))
    try:
        yield
    finally:
        interceptors._admitted.reset(token)


def _send_request() -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        session=SESSION, text="help", request_id=rid(), tool_choice="echo", policy_context=struct(AGITATED)
    )


async def _send(api: ConversationApi, context: _Context) -> None:
    await api.SendMessage(_send_request(), cast(grpc.aio.ServicerContext[Any, Any], context))


async def test_a_mesh_callers_policy_context_reaches_the_core() -> None:
    api, core = _api()
    await _send(api, _Context(*_mesh_metadata()))
    [sent] = core.sent
    assert sent["policy_context"] == AGITATED
    assert sent["tool_choice"] == "echo"


async def test_a_public_calls_policy_context_is_dropped_silently() -> None:
    api, core = _api()
    with _admitted_by_token():
        await _send(api, _Context(("authorization", "Bearer t")))
    assert core.sent[0]["policy_context"] == {}


async def test_a_forwarded_calls_policy_context_is_dropped_silently() -> None:
    api, core = _api()
    await _send(api, _Context(*_mesh_metadata(), (FORWARDED_BY_KEY, "gateway")))
    assert core.sent[0]["policy_context"] == {}


async def _converse(api: ConversationApi, context: _Context) -> None:
    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(session=SESSION, config=pb.ConverseConfig())
        yield pb.ConverseRequest(session=SESSION, send_message=_send_request())

    stream = api.Converse(requests(), cast(grpc.aio.ServicerContext[Any, Any], context))
    async for _ in stream:
        pass


async def test_a_converse_send_message_follows_the_same_rule() -> None:
    api, core = _api()
    await _converse(api, _Context(*_mesh_metadata()))
    assert core.sent[-1]["policy_context"] == AGITATED
    api, core = _api()
    with _admitted_by_token():
        await _converse(api, _Context(("authorization", "Bearer t")))
    assert core.sent[-1]["policy_context"] == {}
    api, core = _api()
    await _converse(api, _Context(*_mesh_metadata(), (FORWARDED_BY_KEY, "gateway")))
    assert core.sent[-1]["policy_context"] == {}


# -- the wire and back -------------------------------------------------------------------------


def test_policy_context_is_read_as_sent_numbers_as_floats() -> None:
    read = convert.policy_context_of(struct({"score": 1, "channel": "voice", "flagged": True, "bad": [1]}))
    assert read == {"score": 1.0, "channel": "voice", "flagged": True, "bad": [1.0]}
    assert isinstance(read["score"], float)


def test_the_converse_command_keeps_policy_context_only_when_trusted() -> None:
    message = pb.ConverseRequest(session=SESSION, send_message=_send_request())
    trusted = convert.converse_command_of(message, trusted_context=True).command
    assert isinstance(trusted, SendMessage)
    assert trusted.policy_context == AGITATED
    untrusted = convert.converse_command_of(message).command
    assert isinstance(untrusted, SendMessage)
    assert untrusted.policy_context == {}


def test_a_user_message_keeps_its_policy_context_through_the_wire() -> None:
    event = SessionEvent(7, f"{SESSION}/turns/1", UserMessage("help", "r1", "echo", {"agitation_score": 0.9, "x": "y"}))
    message = convert.event_to(event)
    assert dict(message.user_message.policy_context) == {"agitation_score": 0.9, "x": "y"}
    assert convert.event_of(message) == event
    plain = SessionEvent(8, f"{SESSION}/turns/2", UserMessage("hi"))
    assert not convert.event_to(plain).user_message.HasField("policy_context")
    assert convert.event_of(convert.event_to(plain)) == plain


def test_the_execute_tool_request_carries_the_facts() -> None:
    request = ToolRequest("tenants/t1/tools/echo", "{}", rid(), "tenants/t1/personas/p", "t", "call_1")
    assert not _request_to(request).HasField("policy_context")
    message = _request_to(dataclasses.replace(request, policy_context=AGITATED))
    assert dict(message.policy_context) == AGITATED


# -- the core's check --------------------------------------------------------------------------


def test_facts_are_numbers_strings_or_bools() -> None:
    assert policy_facts({"a": 1, "b": 0.5, "c": "x", "d": False}) == {"a": 1.0, "b": 0.5, "c": "x", "d": False}
    for bad in ([1], {"n": 1}, None, math.nan, math.inf):
        with pytest.raises(InvalidArgument) as raised:
            policy_facts({"agitation_score": bad})
        assert [v.field for v in raised.value.violations] == ["policy_context.agitation_score"]


def test_at_most_sixteen_facts() -> None:
    policy_facts({f"k{n}": n for n in range(MAX_POLICY_FACTS)})
    with pytest.raises(InvalidArgument) as raised:
        policy_facts({f"k{n}": n for n in range(MAX_POLICY_FACTS + 1)})
    assert raised.value.violations[0].field == "policy_context"
    assert raised.value.metadata == {"limit": str(MAX_POLICY_FACTS)}


async def test_a_message_with_bad_facts_starts_no_turn() -> None:
    world = World(ScriptedChatModel(answer("never")))
    process = world.process()
    session = await new_session(process)
    with pytest.raises(InvalidArgument):
        await process.send_message(ALICE, session.name, "hi", rid(), "", policy_context={"score": [1]})
    assert payloads(world.store, session.name, UserMessage) == []
    await process.close()


# -- the loop: every tool call of the turn carries the facts -------------------------------------


async def test_the_facts_are_stored_with_the_message_and_go_with_every_tool_call() -> None:
    world = World(ScriptedChatModel(reply("echo", value=1), reply("echo", value=2), answer("done")))
    process = world.process()
    session = await new_session(process)
    await process.send_message(ALICE, session.name, "echo twice", rid(), "echo", policy_context=AGITATED)
    done = await finished(process, session.name)
    assert done.state == TurnState.COMPLETED
    [message] = payloads(world.store, session.name, UserMessage)
    assert (message.tool_choice, message.policy_context) == ("echo", AGITATED)
    assert [r.policy_context for r in world.tools.requests] == [AGITATED, AGITATED]
    # The next message, sent without facts, does not inherit them.
    world.llm.script = [reply("echo", value=3), answer("done")]
    await process.send_message(ALICE, session.name, "again", rid(), "")
    await finished(process, session.name)
    assert world.tools.requests[-1].policy_context == {}
    await process.close()


async def test_a_converse_send_message_carries_its_facts_into_the_turn() -> None:
    world = World(ScriptedChatModel(reply("echo", value=1), answer("done")))
    process = world.process()
    session = await new_session(process)

    async def commands() -> AsyncIterator[Any]:
        yield ConverseCommand(session.name, Configure())
        yield ConverseCommand(session.name, SendMessage(session.name, "echo", rid(), "", {"agitation_score": 0.2}))
        await asyncio.Event().wait()  # the client keeps the stream open

    async def read() -> None:
        async for _ in process.converse(ALICE, commands()):
            pass

    reader = asyncio.create_task(read())
    await settle(lambda: bool(world.tools.requests))
    assert world.tools.requests[0].policy_context == {"agitation_score": 0.2}
    reader.cancel()
    await finished(process, session.name)
    await process.close()


async def test_a_resumed_tool_call_asks_again_with_the_same_facts() -> None:
    calls = 0
    released = asyncio.Event()

    async def slow(arguments: dict[str, Any]) -> AsyncIterator[ExecutionUpdate]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # left running when its process stops
        await released.wait()
        yield ExecutionFinished(ToolSuccess(json.dumps({"slow": True})))

    world = World(ScriptedChatModel(reply("slow"), answer("resumed")))
    world.tools.scripts["slow"] = slow
    before = world.process("10.0.0.1:1")
    session = await new_session(before)
    await before.send_message(ALICE, session.name, "go slow", rid(), "slow", policy_context=AGITATED)
    await settle(lambda: calls == 1)
    await before.close()  # stops its runner; the turn stays RUNNING, its tool call open
    after = world.process("10.0.0.1:1")
    released.set()
    await after.start()
    done = await finished(after, session.name)
    assert (done.state, done.response_text) == (TurnState.COMPLETED, "resumed")
    first, again = world.tools.requests
    assert first.request_id == again.request_id
    assert again.policy_context == AGITATED
    await after.close()
