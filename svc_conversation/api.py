"""svc_conversation's servicers: request in, one core call, response out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc
from skm_runtime.errors import SkmError
from skm_runtime.principal import principal_from, role_names
from svc_conversation.adapters.owners import ROUTED_KEY
from svc_conversation.core import Conversation, StreamClosed
from svc_conversation.errors import (
    DependencyUnavailable,
    EmptyCommand,
    FirstMessageNotConfig,
    SessionMismatch,
    SessionNotFound,
    UnexpectedConfig,
)
from svc_conversation.model import Principal

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = principal_from(context.invocation_metadata())
    if message is None:
        return None
    return Principal(message.tenant, message.user, role_names(message))


def _routed(context: Context) -> bool:
    """Whether the call is an intervention another svc_conversation process forwarded here."""
    return any(key == ROUTED_KEY for key, _ in context.invocation_metadata() or ())


def _closed(error: StreamClosed) -> SkmError:
    if error.reason == "DELETED":
        return SessionNotFound("the session was deleted")
    return DependencyUnavailable("the stream ended on the server's side; re-attach with after_sequence")


class ConversationApi(conversation_service_pb2_grpc.ConversationServiceServicer):
    """skm.conversation.v1.ConversationService."""

    def __init__(self, conversation: Conversation) -> None:
        self._c = conversation

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.CreateSessionResponse:
        session = await self._c.create_session(_principal(context), request.parent, request.session, request.request_id)
        return pb.CreateSessionResponse(session=session)

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(session=await self._c.get_session(_principal(context), request.name))

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Context) -> pb.ListSessionsResponse:
        sessions, token = await self._c.list_sessions(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListSessionsResponse(sessions=sessions, next_page_token=token)

    async def UpdateSession(self, request: pb.UpdateSessionRequest, context: Context) -> pb.UpdateSessionResponse:
        session = await self._c.update_session(_principal(context), request.session, list(request.update_mask.paths))
        return pb.UpdateSessionResponse(session=session)

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: Context) -> pb.DeleteSessionResponse:
        await self._c.delete_session(_principal(context), request.name, request.etag)
        return pb.DeleteSessionResponse()

    async def ListTurns(self, request: pb.ListTurnsRequest, context: Context) -> pb.ListTurnsResponse:
        turns, token = await self._c.list_turns(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListTurnsResponse(turns=turns, next_page_token=token)

    async def GetTurn(self, request: pb.GetTurnRequest, context: Context) -> pb.GetTurnResponse:
        return pb.GetTurnResponse(turn=await self._c.get_turn(_principal(context), request.name))

    async def ListTurnEvents(self, request: pb.ListTurnEventsRequest, context: Context) -> pb.ListTurnEventsResponse:
        events, token = await self._c.list_turn_events(
            _principal(context), request.parent, request.page_size, request.page_token
        )
        return pb.ListTurnEventsResponse(events=events, next_page_token=token)

    async def SendMessage(self, request: pb.SendMessageRequest, context: Context) -> pb.SendMessageResponse:
        turn = await self._c.send_message(
            _principal(context), request.session, request.text, request.request_id, request.tool_choice
        )
        return pb.SendMessageResponse(turn=turn)

    async def InterruptTurn(self, request: pb.InterruptTurnRequest, context: Context) -> pb.InterruptTurnResponse:
        return pb.InterruptTurnResponse(
            turn=await self._c.interrupt(_principal(context), request.name, request.request_id, routed=_routed(context))
        )

    async def ResumeTurn(self, request: pb.ResumeTurnRequest, context: Context) -> pb.ResumeTurnResponse:
        turn = await self._c.resume(_principal(context), request.name, request.request_id, routed=_routed(context))
        return pb.ResumeTurnResponse(turn=turn)

    async def NudgeTurn(self, request: pb.NudgeTurnRequest, context: Context) -> pb.NudgeTurnResponse:
        turn = await self._c.nudge(
            _principal(context), request.name, request.text, request.request_id, routed=_routed(context)
        )
        return pb.NudgeTurnResponse(turn=turn)

    async def RerunTurn(self, request: pb.RerunTurnRequest, context: Context) -> pb.RerunTurnResponse:
        turn = await self._c.rerun(_principal(context), request.name, request.request_id, routed=_routed(context))
        return pb.RerunTurnResponse(turn=turn)

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        after = request.after_sequence if request.HasField("after_sequence") else None
        session, start, events = await self._c.attach(_principal(context), request.session, after)
        yield pb.StreamEventsResponse(attached=pb.SessionAttached(session=session, after_sequence=start))
        try:
            async for event in events:
                yield pb.StreamEventsResponse(event=event)
        except StreamClosed as closed:
            raise _closed(closed) from None

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: Context
    ) -> AsyncIterator[pb.ConverseResponse]:
        principal = _principal(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if first.WhichOneof("request") != "config" or not first.session:
            raise FirstMessageNotConfig("the first message of Converse must carry session and config")
        after = first.config.after_sequence if first.config.HasField("after_sequence") else None
        session, start, events = await self._c.attach(principal, first.session, after)
        yield pb.ConverseResponse(attached=pb.SessionAttached(session=session, after_sequence=start))
        out: asyncio.Queue[pb.ConverseResponse | BaseException] = asyncio.Queue()

        async def commands() -> None:
            try:
                async for message in request_iterator:
                    await self._command(principal, first.session, message, out)
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # noqa: BLE001  # ends the stream with its status, never silently
                out.put_nowait(error)

        async def pump() -> None:
            try:
                async for event in events:
                    out.put_nowait(pb.ConverseResponse(event=event))
            except StreamClosed as closed:
                out.put_nowait(_closed(closed))

        tasks = [asyncio.create_task(commands()), asyncio.create_task(pump())]
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    async def _command(
        self,
        principal: Principal | None,
        session: str,
        message: pb.ConverseRequest,
        out: asyncio.Queue[pb.ConverseResponse | BaseException],
    ) -> None:
        kind = message.WhichOneof("request")
        if kind == "config":
            raise UnexpectedConfig("config is only allowed in the first message")
        if message.session and message.session != session:
            raise SessionMismatch("a command names another session", metadata={"session": message.session})
        request_id = ""
        try:
            if kind is None:
                raise EmptyCommand("a Converse message after the first must carry a command")
            if kind == "send_message":
                command = message.send_message
                request_id = command.request_id
                if command.session and command.session != session:
                    raise SessionMismatch("send_message names another session")
                await self._c.send_message(principal, session, command.text, command.request_id, command.tool_choice)
            elif kind == "ack":
                await self._c.acknowledge(principal, session, message.ack.sequence)
            else:
                command = getattr(message, kind)
                request_id = command.request_id
                if not command.name.startswith(session + "/turns/"):
                    raise SessionMismatch("the command names a turn of another session")
                if kind == "interrupt_turn":
                    await self._c.interrupt(principal, command.name, command.request_id)
                elif kind == "resume_turn":
                    await self._c.resume(principal, command.name, command.request_id)
                elif kind == "nudge_turn":
                    await self._c.nudge(principal, command.name, command.text, command.request_id)
                elif kind == "rerun_turn":
                    await self._c.rerun(principal, command.name, command.request_id)
        except SessionMismatch:
            raise
        except SkmError as error:
            out.put_nowait(
                pb.ConverseResponse(
                    rejected=pb.CommandRejected(
                        request_id=request_id, code=error.code.value, reason=error.reason, message=error.message
                    )
                )
            )


def register(server: grpc.aio.Server, conversation: Conversation) -> None:
    conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationApi(conversation), server)
