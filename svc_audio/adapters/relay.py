"""Hands a PushAudio chunk to the svc_audio replica that holds the voice stream (ports.Relay).

The call carries the pushing user as a principal signed with the mesh key, and the mark
`x-skm-forwarded-by: audio`, so the holder takes it as a relayed chunk and never relays it on.
The holder's refusal comes back as the same domain error; a holder that cannot be reached has
lost the stream (it died with it), which the client learns as VOICE_STREAM_NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from skm.audio.v1 import audio_service_pb2, audio_service_pb2_grpc
from skm_runtime.access import Principal
from skm_runtime.principal import FORWARDED_BY_KEY, principal_message, principal_metadata
from skm_runtime.status import error_info_of
from svc_audio.convert import RELAYED_BY
from svc_audio.errors import (
    AudioAfterEnd,
    AudioChunkTooLarge,
    AudioEmpty,
    AudioError,
    AudioSequenceGap,
    VoiceStreamNotFound,
)

_CALL_SECONDS = 5.0
_MAX_CHANNELS = 64
_ERRORS: dict[str, type[AudioError]] = {
    error.reason: error
    for error in (AudioAfterEnd, AudioChunkTooLarge, AudioEmpty, AudioSequenceGap, VoiceStreamNotFound)
}


class GrpcRelay:
    """One channel per holder address (at most `_MAX_CHANNELS`, the least recently used one
    closed beyond that), made by `open_channel` (the runtime's: deadlines, trace context)."""

    def __init__(self, open_channel: Callable[[str], grpc.aio.Channel]) -> None:
        self._open = open_channel
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _stub(self, holder: str) -> audio_service_pb2_grpc.AudioServiceAsyncStub:
        channel = self._channels.pop(holder, None)
        if channel is None:
            if len(self._channels) >= _MAX_CHANNELS:
                self._close(self._channels.pop(next(iter(self._channels))))
            channel = self._open(holder)
        self._channels[holder] = channel  # most recently used last
        return audio_service_pb2_grpc.AudioServiceStub(channel)

    def _close(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def push(
        self, holder: str, principal: Principal, voice_stream: str, sequence: int, audio: bytes, last: bool
    ) -> int:
        metadata: tuple[tuple[str, str | bytes], ...] = (
            *principal_metadata(principal_message(principal.tenant, principal.user, principal.roles)),
            (FORWARDED_BY_KEY, RELAYED_BY),
        )
        request = audio_service_pb2.PushAudioRequest(
            voice_stream=voice_stream, sequence=sequence, audio=audio, last=last
        )
        try:
            reply = await self._stub(holder).PushAudio(request, metadata=metadata, timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            info = error_info_of(error)
            known = _ERRORS.get(info.reason) if info is not None and info.domain == "audio.skm" else None
            if info is not None and known is not None:
                raise known(error.details() or known.reason, metadata=dict(info.metadata)) from None
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                gone = self._channels.pop(holder, None)  # the holder died, and its streams with it
                if gone is not None:
                    self._close(gone)
            # Whatever else went wrong there, the stream cannot be fed: the client opens a new one.
            raise VoiceStreamNotFound(
                "no such voice stream, or it has ended", metadata={"voice_stream": voice_stream[:300]}
            ) from None
        return int(reply.accepted_sequence)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
        for task in list(self._closing):
            await task
