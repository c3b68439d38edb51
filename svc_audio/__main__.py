"""svc_audio: voice: VAD, ASR, TTS and audio features over bidirectional streams.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_audio import api
from svc_audio.settings import AudioSettings


async def build(settings: AudioSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="audio", service_names=services_of("audio"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("audio", AudioSettings, build))
