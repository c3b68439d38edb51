"""svc_conversation and svc_profiles as a voice stream uses them (ports.Conversations,
ports.Personas): every call carries the stream's user as a principal signed with the mesh key,
so svc_conversation applies that user's own access to the session."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from google.protobuf.struct_pb2 import Struct

from skm.conversation.v1 import conversation_service_pb2 as conv_pb
from skm.conversation.v1 import conversation_service_pb2_grpc, session_event_pb2, session_pb2, turn_pb2
from skm.profiles.v1 import persona_service_pb2, persona_service_pb2_grpc
from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.principal import principal_message, principal_metadata
from svc_audio.errors import SessionNotFound
from svc_audio.model import AgentEvent, AgentEventKind, PersonaVoice, SessionView

log = logging.getLogger("skm.audio.conversation")

_CALL_SECONDS = 10.0
_NOT_THERE = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


def _metadata(principal: Principal) -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))


def _state_name(state: int) -> str:
    return turn_pb2.Turn.State.Name(state).removeprefix("STATE_")  # type: ignore[arg-type]  # an enum number


def agent_event(event: session_event_pb2.SessionEvent) -> AgentEvent:
    """The session event as the voice loop reads it; the wire event rides along untouched."""
    kind = event.WhichOneof("event")
    if kind == "turn_state_changed":
        return AgentEvent(
            event.sequence,
            event.turn,
            AgentEventKind.TURN_STATE,
            event,
            state=_state_name(event.turn_state_changed.state),
        )
    if kind == "token_delta":
        return AgentEvent(
            event.sequence,
            event.turn,
            AgentEventKind.TOKEN,
            event,
            text=event.token_delta.text,
            iteration=event.token_delta.iteration,
        )
    if kind == "final_response":
        return AgentEvent(
            event.sequence, event.turn, AgentEventKind.FINAL_RESPONSE, event, text=event.final_response.text
        )
    if kind == "user_message":
        return AgentEvent(
            event.sequence,
            event.turn,
            AgentEventKind.USER_MESSAGE,
            event,
            text=event.user_message.text,
            request_id=event.user_message.request_id,
        )
    return AgentEvent(event.sequence, event.turn, AgentEventKind.OTHER, event)


def _unavailable(error: grpc.aio.AioRpcError, what: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"svc_conversation could not {what} ({error.code().name})",
        metadata={"dependency": "conversation", "code": error.code().name},
    )


class GrpcConversations:
    """svc_conversation's ConversationService over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)

    async def session_view(self, principal: Principal, session: str) -> SessionView:
        try:
            found = await self._stub.GetSession(
                conv_pb.GetSessionRequest(name=session), metadata=_metadata(principal), timeout=_CALL_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _NOT_THERE:
                raise SessionNotFound("no such session", metadata={"session": session[:300]}) from None
            raise _unavailable(error, "read the session") from None
        s = found.session
        running = s.current_turn if s.state == session_pb2.Session.STATE_RUNNING else ""
        return SessionView(persona=s.persona, last_sequence=s.last_sequence, running_turn=running)

    async def send_message(
        self, principal: Principal, session: str, text: str, request_id: str, policy_context: Mapping[str, float]
    ) -> str:
        context = Struct()
        context.update(dict(policy_context))
        request = conv_pb.SendMessageRequest(session=session, text=text, request_id=request_id, policy_context=context)
        try:
            sent = await self._stub.SendMessage(request, metadata=_metadata(principal), timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise SessionNotFound("the session is gone", metadata={"session": session[:300]}) from None
            raise _unavailable(error, "take the message") from None
        return sent.turn.name

    async def events(self, principal: Principal, session: str, after_sequence: int | None) -> AsyncIterator[AgentEvent]:
        request = conv_pb.StreamEventsRequest(session=session)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        call = self._stub.StreamEvents(request, metadata=_metadata(principal))
        try:
            async for response in call:
                if response.WhichOneof("response") == "event":
                    yield agent_event(response.event)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise SessionNotFound("the session is gone", metadata={"session": session[:300]}) from None
            raise _unavailable(error, "stream the session's events") from None
        finally:
            call.cancel()

    async def interrupt(self, principal: Principal, turn: str, request_id: str) -> None:
        try:
            await self._stub.InterruptTurn(
                conv_pb.InterruptTurnRequest(name=turn, request_id=request_id),
                metadata=_metadata(principal),
                timeout=_CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return  # the turn ended on its own meanwhile
            raise _unavailable(error, "interrupt the turn") from None


class GrpcPersonas:
    """svc_profiles's PersonaService: a persona's voice and tone."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = persona_service_pb2_grpc.PersonaServiceStub(channel)

    async def voice_of(self, principal: Principal, persona: str) -> PersonaVoice:
        try:
            found = await self._stub.GetPersona(
                persona_service_pb2.GetPersonaRequest(name=persona),
                metadata=_metadata(principal),
                timeout=_CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _NOT_THERE:
                return PersonaVoice()  # no persona to shape the voice: the deployment's default
            raise ServiceUnavailable(
                f"svc_profiles could not read the persona ({error.code().name})",
                metadata={"dependency": "profiles", "code": error.code().name},
            ) from None
        return PersonaVoice(voice=found.persona.voice, tone=found.persona.tone)
