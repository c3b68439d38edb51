"""svc_conversation's servicer: request in, one core call, response out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc
from skm_runtime.access import Principal
from skm_runtime.interceptors import admitted_from_outside, call_principal
from skm_runtime.principal import FORWARDED_BY_KEY
from svc_conversation import convert
from svc_conversation.core import Conversation
from svc_conversation.model import Attached, ConverseCommand

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = call_principal(context)
    return None if message is None else convert.principal_of(message)


def _routed(context: Context) -> bool:
    """Whether the call is an intervention another svc_conversation process forwarded here
    (never a public call: a client's own metadata says nothing about where it came from)."""
    if admitted_from_outside():
        return False
    return any(key == convert.ROUTED_KEY for key, _ in context.invocation_metadata() or ())


def _from_inside_the_mesh(context: Context) -> bool:
    # Facts for policy conditions (SendMessageRequest.policy_context) are honoured only on
    # calls from inside the mesh: never on a public call (admitted by its token), nor on one
    # another service makes on a client's behalf (marked as forwarded). The rule is
    # svc_tools.api's, which honours ExecuteToolRequest.policy_context the same way.
    if admitted_from_outside():
        return False
    return not any(key == FORWARDED_BY_KEY for key, _ in context.invocation_metadata() or ())


def _policy_context(message: struct_pb2.Struct, context: Context) -> dict[str, object]:
    """The policy facts the core gets: a public (or forwarded) call's are dropped silently,
    neither checked nor stored, so a client cannot talk its way past a policy condition."""
    return convert.policy_context_of(message) if _from_inside_the_mesh(context) else {}


async def _commands(
    requests: AsyncIterator[pb.ConverseRequest], *, trusted_context: bool
) -> AsyncIterator[ConverseCommand]:
    async for request in requests:
        yield convert.converse_command_of(request, trusted_context=trusted_context)


class ConversationApi(conversation_service_pb2_grpc.ConversationServiceServicer):
    """skm.conversation.v1.ConversationService."""

    def __init__(self, conversation: Conversation) -> None:
        self._conversation = conversation

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.CreateSessionResponse:
        session = await self._conversation.create_session(
            _principal(context), request.parent, convert.session_of(request.session), request.request_id
        )
        return pb.CreateSessionResponse(session=convert.session_to(session))

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.GetSessionResponse:
        session = await self._conversation.get_session(_principal(context), request.name)
        return pb.GetSessionResponse(session=convert.session_to(session))

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Context) -> pb.ListSessionsResponse:
        sessions, token = await self._conversation.list_sessions(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListSessionsResponse(sessions=[convert.session_to(s) for s in sessions], next_page_token=token)

    async def UpdateSession(self, request: pb.UpdateSessionRequest, context: Context) -> pb.UpdateSessionResponse:
        session = await self._conversation.update_session(
            _principal(context), convert.session_of(request.session), list(request.update_mask.paths)
        )
        return pb.UpdateSessionResponse(session=convert.session_to(session))

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: Context) -> pb.DeleteSessionResponse:
        await self._conversation.delete_session(_principal(context), request.name, request.etag)
        return pb.DeleteSessionResponse()

    async def ListTurns(self, request: pb.ListTurnsRequest, context: Context) -> pb.ListTurnsResponse:
        turns, token = await self._conversation.list_turns(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListTurnsResponse(turns=[convert.turn_to(t) for t in turns], next_page_token=token)

    async def GetTurn(self, request: pb.GetTurnRequest, context: Context) -> pb.GetTurnResponse:
        turn = await self._conversation.get_turn(_principal(context), request.name)
        return pb.GetTurnResponse(turn=convert.turn_to(turn))

    async def ListTurnEvents(self, request: pb.ListTurnEventsRequest, context: Context) -> pb.ListTurnEventsResponse:
        events, token = await self._conversation.list_turn_events(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListTurnEventsResponse(events=[convert.event_to(e) for e in events], next_page_token=token)

    async def SendMessage(self, request: pb.SendMessageRequest, context: Context) -> pb.SendMessageResponse:
        turn = await self._conversation.send_message(
            _principal(context),
            request.session,
            request.text,
            request.request_id,
            request.tool_choice,
            policy_context=_policy_context(request.policy_context, context),
        )
        return pb.SendMessageResponse(turn=convert.turn_to(turn))

    async def InterruptTurn(self, request: pb.InterruptTurnRequest, context: Context) -> pb.InterruptTurnResponse:
        turn = await self._conversation.interrupt(
            _principal(context), request.name, request.request_id, routed=_routed(context)
        )
        return pb.InterruptTurnResponse(turn=convert.turn_to(turn))

    async def ResumeTurn(self, request: pb.ResumeTurnRequest, context: Context) -> pb.ResumeTurnResponse:
        turn = await self._conversation.resume(
            _principal(context), request.name, request.request_id, routed=_routed(context)
        )
        return pb.ResumeTurnResponse(turn=convert.turn_to(turn))

    async def NudgeTurn(self, request: pb.NudgeTurnRequest, context: Context) -> pb.NudgeTurnResponse:
        turn = await self._conversation.nudge(
            _principal(context), request.name, request.text, request.request_id, routed=_routed(context)
        )
        return pb.NudgeTurnResponse(turn=convert.turn_to(turn))

    async def RerunTurn(self, request: pb.RerunTurnRequest, context: Context) -> pb.RerunTurnResponse:
        turn = await self._conversation.rerun(
            _principal(context), request.name, request.request_id, routed=_routed(context)
        )
        return pb.RerunTurnResponse(turn=convert.turn_to(turn))

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        after = request.after_sequence if request.HasField("after_sequence") else None
        async for item in self._conversation.stream_events(_principal(context), request.session, after):
            if isinstance(item, Attached):
                yield pb.StreamEventsResponse(attached=convert.attached_to(item))
            else:
                yield pb.StreamEventsResponse(event=convert.event_to(item))

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: Context
    ) -> AsyncIterator[pb.ConverseResponse]:
        # Whether a send_message's policy_context counts is the stream's, as for SendMessage.
        commands = _commands(request_iterator, trusted_context=_from_inside_the_mesh(context))
        async for output in self._conversation.converse(_principal(context), commands):
            yield convert.converse_output_to(output)


def register(server: grpc.aio.Server, conversation: Conversation) -> None:
    conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationApi(conversation), server)
