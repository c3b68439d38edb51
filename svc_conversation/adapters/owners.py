"""Interventions forwarded to the svc_conversation process that runs a turn.

A turn runs in the one process that holds its lease. An intervention (InterruptTurn,
ResumeTurn, NudgeTurn, RerunTurn) that reaches another process is sent on to the address
stored with the lease, carrying the caller's principal as the gateway forwards it and
`ROUTED_KEY`, which tells the receiving process to act itself and never forward again.
The call's deadline is what is left of the inbound call's (the runtime's channels pass it on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

import grpc

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc, turn_pb2
from skm_runtime.access import Principal
from skm_runtime.errors import Code
from skm_runtime.principal import FORWARDED_BY_KEY, principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, open_channel
from skm_runtime.status import error_info_of
from svc_conversation import convert
from svc_conversation.convert import ROUTED_KEY
from svc_conversation.errors import OwnerRefused, TurnOwnerChanged, TurnOwnerUnreachable
from svc_conversation.model import CommandKind, Turn, TurnCommand

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# An evicted channel's calls in flight get this long to finish.
_CLOSE_GRACE = 5.0


class GrpcTurnOwners:
    """Channels to the processes that run turns: one per address, the least recently used
    closed past ``limit``; a channel whose peer could not be reached is dropped (a process
    restarted on the address is dialled afresh, not after the old channel's backoff)."""

    def __init__(self, runtime: RuntimeSettings, *, limit: int) -> None:
        self._runtime = runtime
        self._limit = limit
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def _stub(self, address: str) -> conversation_service_pb2_grpc.ConversationServiceAsyncStub:
        channel = self._channels.pop(address, None)
        if channel is None:
            channel = open_channel(address, self._runtime)
        self._channels[address] = channel
        while len(self._channels) > self._limit:
            _, oldest = self._channels.popitem(last=False)
            self._close_soon(oldest)
        return conversation_service_pb2_grpc.ConversationServiceStub(channel)

    def _close_soon(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.create_task(channel.close(grace=_CLOSE_GRACE))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def intervene(self, address: str, principal: Principal, command: TurnCommand) -> Turn:
        """Sends ``command`` to the process at ``address`` and returns its answer."""
        return convert.turn_of(await self._send(address, principal, command))

    async def _send(self, address: str, principal: Principal, command: TurnCommand) -> turn_pb2.Turn:
        metadata: tuple[tuple[str, str | bytes], ...] = (
            *principal_metadata(principal_message(principal.tenant, principal.user, principal.roles)),
            (FORWARDED_BY_KEY, "gateway"),
            (ROUTED_KEY, "1"),
        )
        stub = self._stub(address)
        channel = self._channels[address]
        try:
            if command.kind == CommandKind.INTERRUPT:
                return (
                    await stub.InterruptTurn(
                        pb.InterruptTurnRequest(name=command.turn, request_id=command.request_id), metadata=metadata
                    )
                ).turn
            if command.kind == CommandKind.RESUME:
                return (
                    await stub.ResumeTurn(
                        pb.ResumeTurnRequest(name=command.turn, request_id=command.request_id), metadata=metadata
                    )
                ).turn
            if command.kind == CommandKind.NUDGE:
                return (
                    await stub.NudgeTurn(
                        pb.NudgeTurnRequest(name=command.turn, text=command.text, request_id=command.request_id),
                        metadata=metadata,
                    )
                ).turn
            return (
                await stub.RerunTurn(
                    pb.RerunTurnRequest(name=command.turn, request_id=command.request_id), metadata=metadata
                )
            ).turn
        except grpc.aio.AioRpcError as error:
            info = error_info_of(error)
            if info is None:
                if error.code() in _UNREACHABLE:
                    if self._channels.get(address) is channel:
                        del self._channels[address]
                        self._close_soon(channel)
                    raise TurnOwnerUnreachable(
                        "the process that runs the turn cannot be reached; retry",
                        metadata={"turn": command.turn},
                        retry_after_seconds=1.0,
                    ) from None
                raise OwnerRefused(
                    Code.INTERNAL, "INTERNAL", "runtime.skm", "internal error", {"turn": command.turn}
                ) from None
            if info.reason == TurnOwnerChanged.reason and info.domain == TurnOwnerChanged.domain:
                raise TurnOwnerChanged("the turn left that process", metadata={"turn": command.turn}) from None
            code = Code(error.code().value[0])
            raise OwnerRefused(code, info.reason, info.domain, error.details() or "", dict(info.metadata)) from None

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=_CLOSE_GRACE + 1)
