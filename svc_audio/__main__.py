"""svc_audio: voice: VAD, ASR, TTS and audio features over bidirectional streams.

Composition root: settings -> engines (Silero VAD, faster-whisper, piper voices, espeak-ng) and
adapters (svc_conversation and svc_profiles clients, Qdrant, the outbox, the Redis directory,
the relay to other replicas) -> core -> servicers -> server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from opentelemetry import metrics

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from skm_runtime.settings import SettingsError
from svc_audio import api
from svc_audio.adapters.conversation import GrpcConversations, GrpcPersonas
from svc_audio.adapters.events import OutboxQualityLog, open_outbox
from svc_audio.adapters.qdrant import QdrantFeatureStore
from svc_audio.adapters.redis import RedisStreamDirectory
from svc_audio.adapters.relay import GrpcRelay
from svc_audio.core.engines import Recognition, SpeechDetection, Synthesis
from svc_audio.core.speech import Speech
from svc_audio.core.streams import VoiceStreams
from svc_audio.core.voice import VoiceConversations
from svc_audio.engines.espeak import EspeakSynthesizer
from svc_audio.engines.off import NoRecognizer
from svc_audio.engines.piper_voice import load_piper_voices
from svc_audio.engines.silero import SileroSpeechDetector
from svc_audio.engines.whisper import WhisperRecognizer
from svc_audio.model import VadParams
from svc_audio.ports import Recognizer, Synthesizer
from svc_audio.settings import AudioSettings

log = logging.getLogger("skm.audio")


def _engines(settings: AudioSettings) -> tuple[SileroSpeechDetector, Recognizer, dict[str, Synthesizer]]:
    recognition_off = settings.asr_model == "off"
    asr_dir = settings.model_path(settings.asr_model)
    vad_path = settings.model_path(settings.vad_model)
    for what, path in (
        ("SKM_AUDIO_ASR_MODEL", None if recognition_off else asr_dir),
        ("SKM_AUDIO_VAD_MODEL", vad_path),
    ):
        if path is not None and not path.exists():
            raise SettingsError([f"{what}: {path} does not exist (`python -m skm_stack models` installs it)"])
    detector = SileroSpeechDetector(vad_path)
    recognizer: Recognizer = (
        NoRecognizer()
        if recognition_off
        else WhisperRecognizer(asr_dir, device=settings.asr_device, beam_size=settings.asr_beam_size)
    )
    voices: dict[str, Synthesizer] = {}
    for folder in settings.voice_dirs:
        for synthesizer in load_piper_voices(settings.model_path(folder)):
            voices[synthesizer.voice.name] = synthesizer
    espeak = EspeakSynthesizer()
    voices[espeak.voice.name] = espeak
    if settings.default_voice not in voices:
        raise SettingsError([f"SKM_AUDIO_DEFAULT_VOICE: {settings.default_voice} is not among {sorted(voices)}"])
    return detector, recognizer, voices


async def build(settings: AudioSettings, runtime: RuntimeSettings) -> ServiceSpec:
    detector, recognizer, voices = await asyncio.to_thread(_engines, settings)
    detection = SpeechDetection(detector)
    recognition = Recognition(recognizer, settings.asr_threads)
    synthesis = Synthesis(voices, settings.default_voice, settings.tts_threads)
    resources = contextlib.AsyncExitStack()
    try:
        outbox = await open_outbox(settings.postgres_dsn, settings.kafka_bootstrap)
        resources.push_async_callback(outbox.pool.close)
        store = (
            await QdrantFeatureStore.open(settings.qdrant_location, api_key=settings.qdrant_api_key)
            if settings.qdrant_location
            else None
        )
        if store is not None:
            resources.push_async_callback(store.close)
        directory = RedisStreamDirectory.connect(settings.redis_url)
        resources.push_async_callback(directory.close)
    except BaseException:
        await resources.aclose()
        raise
    conversation_channel = open_channel(settings.conversation_addr, runtime)
    profiles_channel = open_channel(settings.profiles_addr, runtime)
    relay = GrpcRelay(lambda holder: open_channel(holder, runtime))
    quality_log = OutboxQualityLog(outbox.outbox)
    personas = GrpcPersonas(profiles_channel)
    vad = VadParams(
        settings.vad_threshold,
        settings.min_silence_ms / 1000,
        settings.min_speech_ms / 1000,
        settings.speech_pad_ms / 1000,
    )
    # Each audio chunk's wait from arrival to its speech decision: what keeps a stream real time.
    frame_lag = metrics.get_meter("skm.audio").create_histogram(
        "audio.frame.lag", unit="ms", description="From a chunk's arrival to its voice activity decision"
    )

    def observe_lag(seconds: float) -> None:
        frame_lag.record(seconds * 1000.0)

    speech = Speech(
        detection,
        recognition,
        synthesis,
        personas,
        quality_log,
        vad_defaults=vad,
        idle_seconds=settings.idle_seconds,
        store=store,
        observe_lag=observe_lag,
    )
    voices_core = VoiceConversations(
        detection,
        recognition,
        synthesis,
        GrpcConversations(conversation_channel),
        personas,
        quality_log,
        vad_defaults=vad,
        idle_seconds=settings.idle_seconds,
        store=store,
        observe_lag=observe_lag,
    )
    streams = VoiceStreams(voices_core, directory, relay, settings.advertise_addr or settings.addr)
    if settings.mos_model is not None:
        log.warning("a MOS predictor is configured but not wired in this build; MOS stays not computed")

    async def start() -> None:
        outbox.outbox.start()
        outbox.relay.start()

    async def stop() -> None:
        await outbox.outbox.close()
        await outbox.relay.close()
        await relay.close()
        await conversation_channel.close()
        await profiles_channel.close()
        await detection.close()
        recognition.close()
        synthesis.close()
        await resources.aclose()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, speech, voices_core, streams)

    return ServiceSpec(name="audio", service_names=services_of("audio"), register=register, start=start, stop=stop)


if __name__ == "__main__":
    raise SystemExit(run("audio", AudioSettings, build))
