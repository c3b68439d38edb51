"""The voice channel's agitation reaching a turn's tool calls, end to end.

svc_audio sends a final transcript to svc_conversation from inside the mesh (the user's
signed principal, straight to svc_conversation's address) with the caller's agitation as
SendMessageRequest.policy_context. The turn stores it with the message and passes it on
with each ExecuteTool call; svc_policy's `agitation_escalation` holds the tool call of a
tenant that watches for agitation when the score is above its threshold. A client's own
policy_context, sent through Envoy with its token, counts for nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import struct_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc, turn_pb2
from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.type.v1 import policy_decision_pb2
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from tests.e2e.test_conversation import TERMINAL, Client, _kinds, _tenant

Turn = turn_pb2.Turn
TOOL = "code_execution"
THRESHOLD = 0.7


def _facts(agitation_score: float) -> struct_pb2.Struct:
    facts = struct_pb2.Struct()
    facts.update({"agitation_score": agitation_score})
    return facts


async def _watch_agitation(mesh: RunningStack, tenant: str) -> None:
    """The tenant holds its agitated callers' tool calls for approval (model.fga.yaml's tuple)."""
    t = f"tenant:tenants/{tenant}"
    watch = access_pb2.Relationship(subject=f"{t}#member", relation="agitation_watch", object=t)
    watch.condition.name = "caller_agitated"
    watch.condition.context.update({"agitation_threshold": THRESHOLD})
    async with signed_channel(mesh.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(parent=f"tenants/{tenant}", relationships=[watch]),
            timeout=10,
        )


class Voice:
    """svc_audio as it sends a transcript: the user's signed principal, straight to
    svc_conversation (not through Envoy), not marked as forwarded."""

    def __init__(self, mesh: RunningStack, client: Client, user: str = "alice") -> None:
        principal = principal_message(client.tenant, f"{client.tenant}/users/{user}", ("member",))
        self.metadata = principal_metadata(principal)
        self.channel = signed_channel(mesh.services["conversation"].addr)
        self.stub = conversation_service_pb2_grpc.ConversationServiceStub(self.channel)

    async def send(self, session: str, text: str, agitation_score: float) -> Turn:
        reply = await self.stub.SendMessage(
            pb.SendMessageRequest(
                session=session,
                text=text,
                request_id=str(uuid.uuid4()),
                tool_choice=TOOL,
                policy_context=_facts(agitation_score),
            ),
            metadata=self.metadata,
            timeout=30,
        )
        return reply.turn


async def _until_held_or_ended(stream: AsyncIterator[pb.StreamEventsResponse], turn: str) -> list[Any]:
    """The turn's events until it waits for approval or ends."""
    events = []
    async for message in stream:
        if not message.HasField("event") or message.event.turn != turn:
            continue
        events.append(message.event)
        if message.event.WhichOneof("event") == "turn_state_changed":
            state = message.event.turn_state_changed.state
            if state in TERMINAL or state in (Turn.STATE_AWAITING_APPROVAL, Turn.STATE_INTERRUPTED):
                return events
    raise AssertionError("the stream ended before the turn was held or ended")


def _verdicts(events: list[Any]) -> list[policy_decision_pb2.PolicyDecision]:
    return [e.tool_call_verdict.decision for e in events if e.WhichOneof("event") == "tool_call_verdict"]


def _forced_call_ran(events: list[Any]) -> None:
    """The first iteration's call, of the forced tool, was allowed and ran without a hold
    (later iterations call what the untrained model picks: their verdicts say nothing here)."""
    requested = next(e.tool_call_requested for e in events if e.WhichOneof("event") == "tool_call_requested")
    assert requested.tool.endswith(f"/tools/{TOOL}")
    verdict = next(
        e.tool_call_verdict.decision
        for e in events
        if e.WhichOneof("event") == "tool_call_verdict" and e.tool_call_verdict.tool_call_id == requested.tool_call_id
    )
    assert verdict.verdict == policy_decision_pb2.VERDICT_ALLOW
    assert not verdict.blocked_action
    assert any(
        e.WhichOneof("event") == "tool_call_result" and e.tool_call_result.tool_call_id == requested.tool_call_id
        for e in events
    )
    states = [e.turn_state_changed.state for e in events if e.WhichOneof("event") == "turn_state_changed"]
    assert Turn.STATE_AWAITING_APPROVAL not in states
    assert states[-1] in TERMINAL


def _user_message(events: list[Any]) -> Any:
    return next(e.user_message for e in events if e.WhichOneof("event") == "user_message")


@pytest.fixture
async def watched(mesh: RunningStack) -> AsyncIterator[tuple[Client, Voice]]:
    """A tenant that watches for agitation, alice (a member) on it, code_execution low risk
    and allowed to the default persona; its Envoy client and its voice channel."""
    tenant, client = await _tenant(mesh, low_risk=True)
    await _watch_agitation(mesh, tenant)
    voice = Voice(mesh, client)
    yield client, voice
    await voice.channel.close()


async def test_an_agitated_voice_caller_s_tool_call_is_held_for_approval(watched: tuple[Client, Voice]) -> None:
    client, voice = watched
    session = await client.session()
    stream = client.events(session.name)
    assert (await anext(stream)).HasField("attached")
    turn = await voice.send(session.name, "Run this for me, now!", agitation_score=0.9)
    events = await _until_held_or_ended(stream, turn.name)
    assert dict(_user_message(events).policy_context) == {"agitation_score": 0.9}
    verdict, *later = _verdicts(events)
    assert verdict.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
    assert verdict.reason == "CALLER_AGITATED"
    assert verdict.blocked_action.startswith(f"{client.tenant}/blockedActions/")
    assert later == []
    assert events[-1].turn_state_changed.state == Turn.STATE_AWAITING_APPROVAL
    assert "tool_call_result" not in _kinds(events)
    got = await client.stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=client.metadata, timeout=10)
    assert got.turn.state == Turn.STATE_AWAITING_APPROVAL
    # Nobody approves here: the user stops the turn.
    await client.stub.InterruptTurn(
        pb.InterruptTurnRequest(name=turn.name, request_id=str(uuid.uuid4())), metadata=client.metadata, timeout=10
    )


async def test_a_calm_voice_caller_s_tool_call_runs(watched: tuple[Client, Voice]) -> None:
    client, voice = watched
    session = await client.session()
    stream = client.events(session.name)
    await anext(stream)
    turn = await voice.send(session.name, "Run this for me, please.", agitation_score=0.2)
    events = await _until_held_or_ended(stream, turn.name)
    assert dict(_user_message(events).policy_context) == {"agitation_score": 0.2}
    _forced_call_ran(events)


async def test_a_client_s_own_policy_context_through_envoy_is_ignored(watched: tuple[Client, Voice]) -> None:
    client, _ = watched
    session = await client.session()
    stream = client.events(session.name)
    await anext(stream)
    reply = await client.stub.SendMessage(
        pb.SendMessageRequest(
            session=session.name,
            text="Run this for me, now!",
            request_id=str(uuid.uuid4()),
            tool_choice=TOOL,
            policy_context=_facts(0.9),
        ),
        metadata=client.metadata,
        timeout=30,
    )
    events = await _until_held_or_ended(stream, reply.turn.name)
    # Dropped before the turn: not stored, not passed on.
    assert not _user_message(events).HasField("policy_context")
    _forced_call_ran(events)
