"""svc_audio's servicer: request in, one core call, response out.

A stream's requests are converted one by one as the core reads them; the stream rules
(configuration first, audio after, sizes, idle time) are the core's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm.audio.v1 import audio_service_pb2 as pb
from skm.audio.v1 import audio_service_pb2_grpc
from skm_runtime.access import Principal
from skm_runtime.interceptors import call_principal
from skm_runtime.principal import FORWARDED_BY_KEY
from svc_audio import convert
from svc_audio.convert import RELAYED_BY
from svc_audio.core.speech import Speech
from svc_audio.core.streams import VoiceStreams
from svc_audio.core.voice import VoiceConversations
from svc_audio.errors import FirstMessageNotConfig
from svc_audio.model import ClientMessage

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal:
    message = call_principal(context)
    # Admission lets no call through without one; an empty principal owns nothing.
    return Principal("") if message is None else convert.principal_of(message)


def _relayed(context: Context) -> bool:
    return any(
        key == FORWARDED_BY_KEY and value in (RELAYED_BY, RELAYED_BY.encode())
        for key, value in context.invocation_metadata() or ()
    )


async def _recognize_messages(requests: AsyncIterator[pb.StreamingRecognizeRequest]) -> AsyncIterator[ClientMessage]:
    async for request in requests:
        yield convert.recognize_message(request)


async def _conversation_messages(requests: AsyncIterator[pb.StreamConversationRequest]) -> AsyncIterator[ClientMessage]:
    async for request in requests:
        yield convert.conversation_message(request)


class AudioApi(audio_service_pb2_grpc.AudioServiceServicer):
    """skm.audio.v1.AudioService."""

    def __init__(self, speech: Speech, voices: VoiceConversations, streams: VoiceStreams) -> None:
        self._speech = speech
        self._voices = voices
        self._streams = streams

    async def StreamConversation(
        self, request_iterator: AsyncIterator[pb.StreamConversationRequest], context: Context
    ) -> AsyncIterator[pb.StreamConversationResponse]:
        async for output in self._voices.converse(_principal(context), _conversation_messages(request_iterator)):
            yield pb.StreamConversationResponse(event=convert.voice_event(output))

    async def StreamVoiceEvents(
        self, request: pb.StreamVoiceEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamVoiceEventsResponse]:
        if not request.HasField("config"):
            raise FirstMessageNotConfig("StreamVoiceEvents needs the voice configuration")
        setup = convert.voice_setup(request.config)
        async for output in self._streams.open(_principal(context), request.session, setup):
            yield pb.StreamVoiceEventsResponse(event=convert.voice_event(output))

    async def PushAudio(self, request: pb.PushAudioRequest, context: Context) -> pb.PushAudioResponse:
        accepted = await self._streams.push(
            _principal(context),
            request.voice_stream,
            request.sequence,
            request.audio,
            request.last,
            relayed=_relayed(context),
        )
        return pb.PushAudioResponse(accepted_sequence=accepted)

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[pb.StreamingRecognizeRequest], context: Context
    ) -> AsyncIterator[pb.StreamingRecognizeResponse]:
        async for output in self._speech.recognize(_principal(context), _recognize_messages(request_iterator)):
            yield convert.recognize_response(output)

    async def StreamingSynthesize(
        self, request: pb.StreamingSynthesizeRequest, context: Context
    ) -> AsyncIterator[pb.StreamingSynthesizeResponse]:
        wire = convert.wire_format(request.format) if request.HasField("format") else None
        outputs = self._speech.synthesize(
            _principal(context), request.text, request.voice, request.persona, wire, request.speaking_rate
        )
        async for output in outputs:
            yield convert.synthesize_response(output)

    async def ListVoices(self, request: pb.ListVoicesRequest, context: Context) -> pb.ListVoicesResponse:
        voices, token = self._speech.list_voices(request.language_code, request.page_size, request.page_token)
        return pb.ListVoicesResponse(voices=[convert.voice_to(v) for v in voices], next_page_token=token)


def register(server: grpc.aio.Server, speech: Speech, voices: VoiceConversations, streams: VoiceStreams) -> None:
    audio_service_pb2_grpc.add_AudioServiceServicer_to_server(AudioApi(speech, voices, streams), server)
