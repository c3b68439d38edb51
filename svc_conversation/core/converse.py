"""The Converse stream: one session's events out, the user's commands in, both at once.

The first message configures the stream (the session, and where its replay starts); the
events follow as StreamEvents would send them. Each later message is a command, run as
its own RPC would run it: one that fails is answered with a CommandRejected (its request
id, code and reason) and the stream goes on. A message that breaks the stream's own rules
(another session, a second config) ends the stream with its error, as does an event
stream that ends on the server's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from skm_runtime.access import Principal
from skm_runtime.errors import SkmError
from svc_conversation.errors import (
    DependencyUnavailable,
    EmptyCommand,
    FirstMessageNotConfig,
    SessionMismatch,
    SessionNotFound,
    StreamClosed,
    UnexpectedConfig,
)
from svc_conversation.model import (
    Acknowledge,
    Attached,
    CommandKind,
    CommandRejected,
    Configure,
    ConverseCommand,
    ConverseOutput,
    NoCommand,
    SendMessage,
    Session,
    SessionEvent,
    Turn,
    TurnIntervention,
)


class ConverseUseCases(Protocol):
    """The use cases a Converse stream runs (the Conversation's own)."""

    async def attach(
        self, principal: Principal | None, name: str, after: int | None
    ) -> tuple[Session, int, AsyncIterator[SessionEvent]]: ...

    async def send_message(
        self,
        principal: Principal | None,
        session_name: str,
        text: str,
        request_id: str,
        tool_choice: str,
        *,
        policy_context: Mapping[str, object] | None = None,
    ) -> Turn: ...

    async def acknowledge(self, principal: Principal | None, session_name: str, sequence: int) -> None: ...

    async def interrupt(self, principal: Principal | None, name: str, request_id: str) -> Turn: ...

    async def resume(self, principal: Principal | None, name: str, request_id: str) -> Turn: ...

    async def nudge(self, principal: Principal | None, name: str, text: str, request_id: str) -> Turn: ...

    async def rerun(self, principal: Principal | None, name: str, request_id: str) -> Turn: ...


def closed_error(error: StreamClosed) -> SkmError:
    """What a client is told when its stream ended on the server's side."""
    if error.reason == "DELETED":
        return SessionNotFound("the session was deleted")
    return DependencyUnavailable("the stream ended on the server's side; re-attach with after_sequence")


async def stream_events(
    use_cases: ConverseUseCases, principal: Principal | None, name: str, after: int | None
) -> AsyncIterator[Attached | SessionEvent]:
    """StreamEvents: where the replay starts, then the session's events."""
    session, start, events = await use_cases.attach(principal, name, after)
    yield Attached(session, start)
    try:
        async for event in events:
            yield event
    except StreamClosed as closed:
        raise closed_error(closed) from None


async def converse(
    use_cases: ConverseUseCases, principal: Principal | None, messages: AsyncIterator[ConverseCommand]
) -> AsyncIterator[ConverseOutput]:
    """Converse: what goes out, in order, for the messages that come in."""
    try:
        first = await anext(messages)
    except StopAsyncIteration:
        return
    if not isinstance(first.command, Configure) or not first.session:
        raise FirstMessageNotConfig("the first message of Converse must carry session and config")
    session_name = first.session
    session, start, events = await use_cases.attach(principal, session_name, first.command.after_sequence)
    yield Attached(session, start)
    out: asyncio.Queue[ConverseOutput | BaseException] = asyncio.Queue()

    async def commands() -> None:
        try:
            async for message in messages:
                rejected = await _run(use_cases, principal, session_name, message)
                if rejected is not None:
                    out.put_nowait(rejected)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001  # ends the stream with its status, never silently
            out.put_nowait(error)

    async def pump() -> None:
        try:
            async for event in events:
                out.put_nowait(event)
        except StreamClosed as closed:
            out.put_nowait(closed_error(closed))

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
            await events.aclose()  # type: ignore[attr-defined]  # an async generator, typed as an iterator


async def _run(
    use_cases: ConverseUseCases, principal: Principal | None, session: str, message: ConverseCommand
) -> CommandRejected | None:
    """Runs one command of the stream; its rejection, if it fails."""
    command = message.command
    if isinstance(command, Configure):
        raise UnexpectedConfig("config is only allowed in the first message")
    if message.session and message.session != session:
        raise SessionMismatch("a command names another session", metadata={"session": message.session})
    request_id = ""
    try:
        if isinstance(command, NoCommand):
            raise EmptyCommand("a Converse message after the first must carry a command")
        if isinstance(command, SendMessage):
            request_id = command.request_id
            if command.session and command.session != session:
                raise SessionMismatch("send_message names another session")
            await use_cases.send_message(
                principal,
                session,
                command.text,
                command.request_id,
                command.tool_choice,
                policy_context=command.policy_context,
            )
        elif isinstance(command, Acknowledge):
            await use_cases.acknowledge(principal, session, command.sequence)
        elif isinstance(command, TurnIntervention):
            request_id = command.request_id
            await _intervene(use_cases, principal, session, command)
    except SessionMismatch:
        raise
    except SkmError as error:
        return CommandRejected(request_id, error.code.value, error.reason, error.message)
    return None


async def _intervene(
    use_cases: ConverseUseCases, principal: Principal | None, session: str, command: TurnIntervention
) -> None:
    if not command.turn.startswith(session + "/turns/"):
        raise SessionMismatch("the command names a turn of another session")
    if command.kind == CommandKind.INTERRUPT:
        await use_cases.interrupt(principal, command.turn, command.request_id)
    elif command.kind == CommandKind.RESUME:
        await use_cases.resume(principal, command.turn, command.request_id)
    elif command.kind == CommandKind.NUDGE:
        await use_cases.nudge(principal, command.turn, command.text, command.request_id)
    else:
        await use_cases.rerun(principal, command.turn, command.request_id)
