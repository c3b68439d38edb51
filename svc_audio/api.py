"""svc_audio's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the audio issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.audio.v1 import audio_service_pb2_grpc


class AudioApi(audio_service_pb2_grpc.AudioServiceServicer):
    """skm.audio.v1.AudioService."""


def register(server: grpc.aio.Server) -> None:
    audio_service_pb2_grpc.add_AudioServiceServicer_to_server(AudioApi(), server)  # type: ignore[abstract]  # not served yet
