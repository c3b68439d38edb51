"""Subordinate spawns that policy answers REQUIRES_APPROVAL, end to end: the spawn is held in
svc_policy's requeue store, the turn waits AWAITING_APPROVAL, an operator decides through
Envoy and the gateway, and the approved spawn runs once (also across an interrupt and a
restart of svc_conversation); a rejected one fails the tool call with the operator's note.

The tiny untrained models choose freely after the first (forced) tool call: a later
iteration, or the subordinate's own turn, may ask for another spawn. Those are decided by a
stand-in operator in the background, so no turn waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import session_pb2, turn_pb2
from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.tools.v1 import execution_pb2, tool_service_pb2
from skm.type.v1 import policy_decision_pb2
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from tests.e2e.test_conversation import TERMINAL, Client, _grant, _kinds, _read_turn, _sessions

Turn = turn_pb2.Turn
BlockedAction = blocked_action_pb2.BlockedAction
# SendMessage's deadline: a held spawn is decided later than that (a turn is not bound by
# the call that started it).
_SEND_SECONDS = 8.0


class Operator:
    """An operator of the tenant, deciding on its blocked actions through the gateway."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(client.channel)

    async def held(self, session: str, *states: BlockedAction.State.ValueType) -> list[BlockedAction]:
        reply = await self.stub.ListBlockedActions(
            blocked_action_service_pb2.ListBlockedActionsRequest(
                parent=self.client.tenant, session=session, states=list(states), page_size=100
            ),
            metadata=self.client.metadata,
            timeout=10,
        )
        return list(reply.blocked_actions)

    async def get(self, name: str) -> BlockedAction:
        reply = await self.stub.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=name), metadata=self.client.metadata, timeout=10
        )
        return reply.blocked_action

    async def decide(self, action: BlockedAction, *, approve: bool, note: str) -> None:
        if approve:
            await self.stub.ApproveBlockedAction(
                blocked_action_service_pb2.ApproveBlockedActionRequest(name=action.name, etag=action.etag, note=note),
                metadata=self.client.metadata,
                timeout=10,
            )
        else:
            await self.stub.RejectBlockedAction(
                blocked_action_service_pb2.RejectBlockedActionRequest(name=action.name, etag=action.etag, note=note),
                metadata=self.client.metadata,
                timeout=10,
            )

    async def decide_the_rest(self, *, approve: bool, skip: str) -> None:
        """Decides every other PENDING entry of the tenant as it comes (until cancelled)."""
        while True:
            reply = await self.stub.ListBlockedActions(
                blocked_action_service_pb2.ListBlockedActionsRequest(
                    parent=self.client.tenant, states=[BlockedAction.STATE_PENDING], page_size=100
                ),
                metadata=self.client.metadata,
                timeout=10,
            )
            for action in reply.blocked_actions:
                if action.name != skip:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await self.decide(action, approve=approve, note="stand-in operator")
            await asyncio.sleep(0.3)


async def _supervised_tenant(mesh: RunningStack) -> tuple[Client, Operator]:
    """A tenant whose default persona may spawn itself once an operator approves each spawn."""
    tenant = f"c{uuid.uuid4().hex[:8]}"
    await _grant(mesh, tenant, users={"alice": "member", "olga": "operator"})
    persona = f"persona:tenants/{tenant}/personas/default"
    async with signed_channel(mesh.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[access_pb2.Relationship(subject=persona, relation="supervised_spawner", object=persona)],
            ),
            timeout=10,
        )
    return Client(mesh, tenant, "alice"), Operator(Client(mesh, tenant, "olga"))


async def _until_state(stream: AsyncIterator[pb.StreamEventsResponse], turn: str, state: int) -> list[Any]:
    """Events of the stream up to the turn's change to ``state``."""
    events = []
    async for message in stream:
        if not message.HasField("event"):
            continue
        event = message.event
        events.append(event)
        if (
            event.turn == turn
            and event.WhichOneof("event") == "turn_state_changed"
            and event.turn_state_changed.state == state
        ):
            return events
        assert not (event.WhichOneof("event") == "turn_state_changed" and event.turn_state_changed.state in TERMINAL)
    raise AssertionError("the stream ended before the turn reached the state")


async def _held_spawn(
    client: Client, operator: Operator
) -> tuple[session_pb2.Session, Turn, AsyncIterator[pb.StreamEventsResponse], BlockedAction]:
    """A turn asked to spawn a subordinate, waiting for an operator; its blocked action."""
    session = await client.session()
    stream = client.events(session.name)
    await anext(stream)
    sent = time.monotonic()
    reply = await client.stub.SendMessage(
        pb.SendMessageRequest(
            session=session.name, text="Ask a helper.", request_id=str(uuid.uuid4()), tool_choice="call_subordinate"
        ),
        metadata=client.metadata,
        timeout=_SEND_SECONDS,
    )
    turn = reply.turn
    events = await _until_state(stream, turn.name, Turn.STATE_AWAITING_APPROVAL)
    kinds = _kinds(events)
    requested = events[kinds.index("tool_call_requested")].tool_call_requested
    assert requested.tool.endswith("/tools/call_subordinate")
    verdict = events[kinds.index("tool_call_verdict")].tool_call_verdict
    assert verdict.tool_call_id == requested.tool_call_id
    assert verdict.decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL
    assert verdict.decision.reason == "SUBORDINATE_NEEDS_APPROVAL"
    # The verdict names the blocked action and comes with the state change, as a held
    # tool call's does (skm chat prints the name to approve or reject).
    assert kinds[kinds.index("tool_call_verdict") :] == ["tool_call_verdict", "turn_state_changed"]
    got = await client.stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=client.metadata, timeout=10)
    assert got.turn.state == Turn.STATE_AWAITING_APPROVAL
    # Held, with the whole request, for the user it runs for: listed for the operator.
    (action,) = await operator.held(session.name)
    assert action.name == verdict.decision.blocked_action
    assert action.state == BlockedAction.STATE_PENDING
    assert action.principal.user == f"{client.tenant}/users/alice"
    assert action.decision.reason == "SUBORDINATE_NEEDS_APPROVAL"
    assert action.check.relation == "can_spawn"
    payload = tool_service_pb2.ExecuteToolRequest()
    assert action.payload.Unpack(payload)
    assert (payload.tool, payload.turn, payload.tool_call_id) == (requested.tool, turn.name, requested.tool_call_id)
    assert payload.arguments_json == requested.arguments_json
    assert "call_subordinate" in action.summary
    # Nothing is spawned while it waits.
    assert [s.name for s in await _sessions(client)] == [session.name]
    # The operator decides after SendMessage's deadline: the turn outlives that call.
    await asyncio.sleep(max(0.0, sent + _SEND_SECONDS + 1.0 - time.monotonic()))
    return session, turn, stream, action


async def _children(client: Client, session: str) -> list[str]:
    return [s.name for s in await _sessions(client) if s.superior_session == session]


def _results(events: list[Any]) -> list[Any]:
    return [e.tool_call_result for e in events if e.WhichOneof("event") == "tool_call_result"]


async def _approved_spawn_ran_once(
    client: Client, operator: Operator, session: session_pb2.Session, turn: Turn, events: list[Any], name: str
) -> None:
    """The approved spawn made one subordinate session, named by the tool call's result, and
    its blocked action was claimed by the tool call and completed."""
    assert events[-1].turn_state_changed.state in TERMINAL
    first = _results(events)[0]
    assert first.tool_call_id == "call_1"
    assert first.execution.startswith(f"{client.tenant}/sessions/")
    assert first.result.HasField("success") or first.result.failure.reason == execution_pb2.FAILURE_REASON_TOOL_ERROR
    spawned = [r.execution for r in _results(events) if r.execution.startswith(f"{client.tenant}/sessions/")]
    children = await _children(client, session.name)
    # One subordinate per spawn that ran (a later iteration may have asked for another).
    assert sorted(children) == sorted(spawned)
    assert len(set(spawned)) == len(spawned)
    action = await operator.get(name)
    assert action.state == BlockedAction.STATE_EXECUTED
    assert action.claim_id == f"{turn.name}#call_1"
    assert action.outcome.succeeded == first.result.HasField("success")


async def _decided(
    operator: Operator, stream: Any, turn: str, action: BlockedAction, *, approve: bool, note: str
) -> list[Any]:
    """The operator decides on the held spawn (and, the same way, on anything else the turn
    holds meanwhile): the turn's events to its end."""
    await operator.decide(action, approve=approve, note=note)
    others = asyncio.create_task(operator.decide_the_rest(approve=approve, skip=action.name))
    try:
        return await _read_turn(stream, turn)
    finally:
        others.cancel()


async def test_an_approved_spawn_waits_for_the_operator_then_runs_once(mesh: RunningStack) -> None:
    client, operator = await _supervised_tenant(mesh)
    session, turn, stream, action = await _held_spawn(client, operator)
    events = await _decided(operator, stream, turn.name, action, approve=True, note="go ahead")
    # The turn runs on as soon as the spawn is claimed, before the subordinate's answer.
    assert events[0].turn_state_changed.state == Turn.STATE_RUNNING
    await _approved_spawn_ran_once(client, operator, session, turn, events, action.name)


async def test_a_rejected_spawn_fails_the_tool_call_with_the_note_and_spawns_nothing(mesh: RunningStack) -> None:
    client, operator = await _supervised_tenant(mesh)
    session, turn, stream, action = await _held_spawn(client, operator)
    events = await _decided(operator, stream, turn.name, action, approve=False, note="not today")
    assert events[0].turn_state_changed.state == Turn.STATE_RUNNING
    first = _results(events)[0]
    assert first.tool_call_id == "call_1"
    assert first.execution == ""
    assert first.result.failure.reason == execution_pb2.FAILURE_REASON_REJECTED
    assert "not today" in first.result.failure.message
    assert events[-1].turn_state_changed.state in TERMINAL
    assert await _children(client, session.name) == []
    assert (await operator.get(action.name)).state == BlockedAction.STATE_REJECTED


async def test_an_interrupted_wait_leaves_the_spawn_held_and_the_resumed_turn_finds_it(mesh: RunningStack) -> None:
    client, operator = await _supervised_tenant(mesh)
    session, turn, stream, action = await _held_spawn(client, operator)
    await client.stub.InterruptTurn(
        pb.InterruptTurnRequest(name=turn.name, request_id=str(uuid.uuid4())), metadata=client.metadata, timeout=10
    )
    await _until_state(stream, turn.name, Turn.STATE_INTERRUPTED)
    # The entry stays for the operator.
    assert [(a.name, a.state) for a in await operator.held(session.name)] == [
        (action.name, BlockedAction.STATE_PENDING)
    ]
    await client.stub.ResumeTurn(
        pb.ResumeTurnRequest(name=turn.name, request_id=str(uuid.uuid4())), metadata=client.metadata, timeout=10
    )
    events = await _until_state(stream, turn.name, Turn.STATE_AWAITING_APPROVAL)
    # The resumed tool call found the same entry: no second verdict, no second hold.
    assert "tool_call_verdict" not in _kinds(events)
    assert [a.name for a in await operator.held(session.name)] == [action.name]
    await operator.decide(action, approve=True, note="")
    others = asyncio.create_task(operator.decide_the_rest(approve=True, skip=action.name))
    try:
        events = await _read_turn(stream, turn.name)
    finally:
        others.cancel()
    await _approved_spawn_ran_once(client, operator, session, turn, events, action.name)


async def test_a_resumed_spawn_runs_on_its_approval_although_the_spawn_grant_was_revoked(mesh: RunningStack) -> None:
    client, operator = await _supervised_tenant(mesh)
    session, turn, stream, action = await _held_spawn(client, operator)
    await client.stub.InterruptTurn(
        pb.InterruptTurnRequest(name=turn.name, request_id=str(uuid.uuid4())), metadata=client.metadata, timeout=10
    )
    await _until_state(stream, turn.name, Turn.STATE_INTERRUPTED)
    await operator.decide(action, approve=True, note="approved before the revocation")
    # The persona may no longer spawn at all: a fresh check now denies, held or not.
    persona = f"persona:{client.tenant}/personas/default"
    async with signed_channel(mesh.services["policy"].addr) as channel:
        policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        await policy.DeleteRelationships(
            policy_service_pb2.DeleteRelationshipsRequest(
                parent=client.tenant,
                relationships=[access_pb2.Relationship(subject=persona, relation="supervised_spawner", object=persona)],
            ),
            timeout=10,
        )
        fresh = await policy.Check(
            policy_service_pb2.CheckRequest(
                check=access_pb2.AccessCheck(subject=persona, relation="can_spawn", object=persona)
            ),
            timeout=10,
        )
    assert fresh.decision.verdict == policy_decision_pb2.VERDICT_DENY
    await client.stub.ResumeTurn(
        pb.ResumeTurnRequest(name=turn.name, request_id=str(uuid.uuid4())), metadata=client.metadata, timeout=10
    )
    others = asyncio.create_task(operator.decide_the_rest(approve=True, skip=action.name))
    try:
        events = await _read_turn(stream, turn.name)
    finally:
        others.cancel()
    # The resumed tool call went by the operator's approval of the entry it held, not by a
    # fresh check: it claimed the entry, spawned once and completed the entry.
    assert "tool_call_verdict" not in _kinds(events[: _kinds(events).index("tool_call_result")])
    first = _results(events)[0]
    assert first.result.failure.reason != execution_pb2.FAILURE_REASON_DENIED
    await _approved_spawn_ran_once(client, operator, session, turn, events, action.name)
    assert len(await _children(client, session.name)) == 1


async def test_a_spawn_approved_while_svc_conversation_restarts_runs_once(mesh: RunningStack) -> None:
    client, operator = await _supervised_tenant(mesh)
    session, turn, _, action = await _held_spawn(client, operator)
    # Killed while the turn waits (no drain); the restarted process resumes the turn.
    await asyncio.to_thread(mesh.restart_service, "conversation", kill=True)
    await operator.decide(action, approve=True, note="approved during the restart")
    others = asyncio.create_task(operator.decide_the_rest(approve=True, skip=action.name))
    try:
        events = await _follow_across_restarts(client, session.name, turn.name)
    finally:
        others.cancel()
    await _approved_spawn_ran_once(client, operator, session, turn, events, action.name)


async def _follow_across_restarts(client: Client, session: str, turn: str) -> list[Any]:
    """The turn's events from its start to its end, re-attaching (after the last event seen)
    whenever the stream ends on the server's side or cannot be opened yet."""
    events: list[Any] = []
    for _ in range(60):
        stream = client.events(session, after=events[-1].sequence if events else 0)
        try:
            await anext(stream)
            async for message in stream:
                if not message.HasField("event"):
                    continue
                event = message.event
                events.append(event)
                if (
                    event.turn == turn
                    and event.WhichOneof("event") == "turn_state_changed"
                    and event.turn_state_changed.state in TERMINAL
                ):
                    return [e for e in events if e.turn == turn]
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.5)
    raise AssertionError("the turn did not end")
