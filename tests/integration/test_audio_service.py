"""svc_audio served in-process with its real engines and stores (Whisper tiny.en, the piper
voice, Silero VAD; PostgreSQL for its outbox, Redis, embedded Qdrant), called through the
generated stub as a caller inside the mesh: StreamingRecognize, StreamingSynthesize,
ListVoices, and every stream rule's own status.

Speech comes from espeak-ng and the piper voice at test time; nothing is recorded.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import tempfile
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from faster_whisper import WhisperModel
from google.protobuf.duration_pb2 import Duration
from scipy.signal import resample_poly

from skm.audio.v1 import audio_service_pb2 as pb
from skm.audio.v1 import audio_service_pb2_grpc, recognition_pb2
from skm.events.v1 import event_pb2
from skm.type.v1 import audio_format_pb2
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.catalogue import installed_path, models_root
from svc_audio.__main__ import build
from svc_audio.settings import AudioSettings
from svc_audio.wer import word_error_rate
from tests.support.runtime import Served, serving

pytestmark = pytest.mark.timeout(300)

RATE = 16_000
LINEAR16 = audio_format_pb2.AUDIO_ENCODING_LINEAR16
TENANT = "tenants/audio-it"
SENTENCES = [
    "The weather is nice today, so we will walk to the park.",
    "Please send me the report before the meeting tomorrow morning.",
    "Turn off the lights when you leave the room.",
]


def espeak(text: str, *, rate: int = RATE, voice: str = "en-us") -> bytes:
    """`text` spoken by espeak-ng, as 16-bit mono PCM at `rate`."""
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        subprocess.run([binary, "-v", voice, "-s", "160", "-w", out.name, text], check=True, timeout=30)
        with wave.open(out.name, "rb") as clip:
            native = clip.getframerate()
            samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2").astype(np.float32) / 32768
    common = math.gcd(native, rate)
    resampled = resample_poly(samples, rate // common, native // common)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int = RATE) -> bytes:
    return bytes(2 * int(seconds * rate))


def chunks(pcm: bytes, size: int = 640) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


@pytest.fixture(scope="module")
def audio_settings(stack: RunningStack) -> Iterator[AudioSettings]:
    folder = Path(tempfile.mkdtemp(prefix="skm-audio-it-"))
    assert stack.redis is not None
    assert stack.kafka is not None
    # The catalogue's speech models, installed when missing.
    installed_path("whisper-tiny.en")
    installed_path("piper-en_US-joe-medium")
    installed_path("silero-vad-v6")
    yield AudioSettings(
        postgres_dsn=stack.postgres_dsn,
        kafka_bootstrap=stack.kafka.bootstrap,
        redis_url=stack.redis.url,
        models_dir=models_root(),
        qdrant_location=str(folder / "qdrant"),
        idle_seconds=2.0,
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def audio(audio_settings: AudioSettings) -> AsyncIterator[Served]:
    async with serving(await build(audio_settings, RuntimeSettings()), record_spans=False) as served:
        yield served


def _metadata() -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(TENANT, f"{TENANT}/users/ann", ("member",)))


def _stub(served: Served) -> tuple[grpc.aio.Channel, audio_service_pb2_grpc.AudioServiceStub]:
    channel = signed_channel(served.target)
    return channel, audio_service_pb2_grpc.AudioServiceStub(channel)


def _config(**fields: Any) -> pb.StreamingRecognizeRequest:
    fmt = fields.pop("format", audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=RATE))
    return pb.StreamingRecognizeRequest(config=recognition_pb2.RecognitionConfig(format=fmt, **fields))


async def _requests(
    first: pb.StreamingRecognizeRequest | None, pcm: bytes, *, pace: float = 0.0, extra: Sequence[Any] = ()
) -> AsyncIterator[pb.StreamingRecognizeRequest]:
    if first is not None:
        yield first
    for chunk in chunks(pcm):
        yield pb.StreamingRecognizeRequest(audio=chunk)
        if pace:
            await asyncio.sleep(pace)
    for item in extra:
        yield item


async def _recognize(stub: audio_service_pb2_grpc.AudioServiceStub, requests: AsyncIterator[Any]) -> list[Any]:
    call = stub.StreamingRecognize(requests, metadata=_metadata(), timeout=120)
    return [response async for response in call]


async def test_three_sentences_come_back_as_three_utterances_with_words_features_and_wer(audio: Served) -> None:
    pcm = silence(0.5) + b"".join(espeak(s) + silence(1.0) for s in SENTENCES)
    channel, stub = _stub(audio)
    async with channel:
        responses = await _recognize(
            stub,
            _requests(
                _config(
                    interim_results=True,
                    enable_audio_features=True,
                    reference_transcript=" ".join(SENTENCES),
                    vad=recognition_pb2.VadConfig(min_silence=Duration(nanos=400_000_000)),
                ),
                pcm,
            ),
        )
    kinds = [r.WhichOneof("response") for r in responses]
    finals = [r.result for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    assert [f.utterance for f in finals] == [1, 2, 3], kinds
    for sentence, final in zip(SENTENCES, finals, strict=True):
        wer = word_error_rate(sentence, final.transcript)
        print(f"utterance {final.utterance}: WER {wer:.3f} {final.transcript!r} confidence {final.confidence:.2f}")
        assert wer <= 0.25, (sentence, final.transcript)
        assert 0.0 < final.confidence <= 1.0
        starts = [w.start_offset.ToNanoseconds() for w in final.words]
        assert starts == sorted(starts)
        assert final.words
        # Whisper places a segment's first word at the start of the audio it was given, which
        # begins the VAD's pad (300 ms by default) before the detected onset.
        assert final.start_offset.ToNanoseconds() - 350_000_000 <= starts[0] <= final.end_offset.ToNanoseconds()
    # Per utterance: started, interims, ended, final, features; quality once, last.
    for number in (1, 2, 3):
        own = [
            r
            for r in responses
            if (r.WhichOneof("response") == "result" and r.result.utterance == number)
            or (r.WhichOneof("response") == "audio_features" and r.audio_features.utterance == number)
        ]
        assert own[-1].WhichOneof("response") == "audio_features"
        assert own[-2].result.is_final
        assert all(not r.result.is_final for r in own[:-2])
    activity = [r.voice_activity.kind for r in responses if r.WhichOneof("response") == "voice_activity"]
    assert (
        activity
        == [recognition_pb2.VoiceActivity.KIND_SPEECH_STARTED, recognition_pb2.VoiceActivity.KIND_SPEECH_ENDED] * 3
    )
    features = [r.audio_features for r in responses if r.WhichOneof("response") == "audio_features"]
    assert all(0 < f.rms < 1 and 0 < f.spectral_entropy < 1 and f.vector_id for f in features)
    assert kinds[-1] == "quality_metrics"
    quality = responses[-1].quality_metrics
    assert quality.HasField("word_error_rate")
    assert quality.word_error_rate <= 0.2
    assert quality.HasField("recognition_real_time_factor")
    print(f"stream WER {quality.word_error_rate:.3f}, RTF {quality.recognition_real_time_factor:.3f}")


async def _quality_event(bootstrap: str, tenant: str, wanted: Callable[[Any], bool]) -> Any:
    """The first AudioQualityMeasured event of `tenant` on topic analytics that is `wanted` (the
    topic also holds the events of this module's other streams)."""
    consumer = AIOKafkaConsumer(
        "analytics", bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = event_pb2.Event.FromString(record.value)
                        if event.tenant == tenant and event.HasField("audio_quality_measured") and wanted(event):
                            return event
    finally:
        await consumer.stop()


async def test_quality_goes_out_as_an_event_on_the_analytics_topic(audio: Served, stack: RunningStack) -> None:
    text = "Turn off the lights when you leave the room."
    reference = f"{text} {uuid.uuid4().hex}"  # a word no recogniser hears: this stream's own WER
    channel, stub = _stub(audio)
    async with channel:
        responses = await _recognize(
            stub, _requests(_config(reference_transcript=reference), espeak(text) + silence(0.8))
        )
    sent = responses[-1].quality_metrics
    assert sent.HasField("word_error_rate")
    assert stack.kafka is not None
    event = await _quality_event(
        stack.kafka.bootstrap,
        TENANT,
        lambda e: e.audio_quality_measured.metrics.word_error_rate == sent.word_error_rate,
    )
    measured = event.audio_quality_measured
    assert event.source == "audio"
    assert measured.recognizer == "faster-whisper/whisper-tiny.en"
    assert measured.metrics.recognition_real_time_factor == sent.recognition_real_time_factor
    assert not measured.metrics.HasField("mean_opinion_score")


async def test_two_voices_get_two_speaker_labels(audio: Served) -> None:
    piper = await asyncio.to_thread(_piper, SENTENCES[1])
    pcm = espeak(SENTENCES[0]) + silence(0.8) + piper + silence(0.8) + espeak(SENTENCES[2]) + silence(0.8)
    channel, stub = _stub(audio)
    async with channel:
        responses = await _recognize(stub, _requests(_config(enable_speaker_labels=True), pcm))
    labels = [r.result.speaker_label for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    print("speaker labels:", labels)
    assert len(labels) == 3
    assert labels[0] == labels[2] == "S1"
    assert labels[1] == "S2"


def _piper(text: str) -> bytes:
    from piper import PiperVoice

    voice = PiperVoice.load(
        installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx"),
        config_path=installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx.json"),
    )
    samples = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text)])
    native = voice.config.sample_rate
    common = math.gcd(native, RATE)
    resampled = resample_poly(samples, RATE // common, native // common)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


async def test_synthesis_streams_format_first_then_audio_then_quality_and_is_understood(audio: Served) -> None:
    text = "Please send me the report before the meeting tomorrow morning. Turn off the lights when you leave."
    channel, stub = _stub(audio)
    async with channel:
        call = stub.StreamingSynthesize(
            pb.StreamingSynthesizeRequest(
                text=text, format=audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=RATE)
            ),
            metadata=_metadata(),
            timeout=60,
        )
        responses = [r async for r in call]
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds[0] == "format"
    assert kinds[-1] == "quality_metrics"
    assert set(kinds[1:-1]) == {"audio"}
    assert responses[0].format.sample_rate_hertz == RATE
    audio_bytes = b"".join(r.audio for r in responses[1:-1])
    assert all(len(r.audio) <= 32 * 1024 for r in responses[1:-1])
    quality = responses[-1].quality_metrics
    assert quality.HasField("synthesis_real_time_factor")
    assert quality.synthesis_latency.ToNanoseconds() > 0
    assert not quality.HasField("mean_opinion_score"), "no MOS predictor is configured: not computed"
    samples = np.frombuffer(audio_bytes, dtype="<i2").astype(np.float32) / 32768
    model = WhisperModel(str(installed_path("whisper-tiny.en")), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(samples, language="en", beam_size=5, temperature=0.0)
    heard = " ".join(s.text.strip() for s in segments)
    assert word_error_rate(text, heard) <= 0.2, heard


async def test_voices_are_listed_by_name_a_page_at_a_time(audio: Served) -> None:
    channel, stub = _stub(audio)
    async with channel:
        everything = await stub.ListVoices(pb.ListVoicesRequest(), metadata=_metadata(), timeout=10)
        names = [v.name for v in everything.voices]
        assert names == sorted(names)
        assert "voices/en_US-joe-medium" in names
        assert "voices/espeak-ng-en-us" in names
        first = await stub.ListVoices(pb.ListVoicesRequest(page_size=1), metadata=_metadata(), timeout=10)
        assert len(first.voices) == 1
        assert first.next_page_token
        rest = await stub.ListVoices(
            pb.ListVoicesRequest(page_size=10, page_token=first.next_page_token), metadata=_metadata(), timeout=10
        )
        assert [v.name for v in first.voices] + [v.name for v in rest.voices] == names
        french = await stub.ListVoices(pb.ListVoicesRequest(language_code="fr-FR"), metadata=_metadata(), timeout=10)
        assert not french.voices
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListVoices(
                pb.ListVoicesRequest(language_code="en-US", page_token=first.next_page_token),
                metadata=_metadata(),
                timeout=10,
            )
        assert error_info_of(refused.value).reason == "INVALID_PAGE_TOKEN"


async def _refusal(stub: audio_service_pb2_grpc.AudioServiceStub, requests: AsyncIterator[Any]) -> tuple[Any, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _recognize(stub, requests)
    info = error_info_of(refused.value)
    return refused.value.code(), info.reason if info else ""


async def test_each_broken_stream_rule_has_its_own_status_and_other_streams_keep_going(audio: Served) -> None:
    speech = espeak(SENTENCES[2]) + silence(0.8)
    channel, stub = _stub(audio)
    async with channel:
        good = asyncio.create_task(_recognize(stub, _requests(_config(), speech, pace=0.005)))
        cases = {
            "audio first": (
                _requests(None, speech[:640]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FIRST_MESSAGE_NOT_CONFIG",
            ),
            "config again": (
                _requests(_config(), speech[:640], extra=[_config()]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNEXPECTED_CONFIG",
            ),
            "11025 Hz": (
                _requests(
                    _config(format=audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=11_025)), b""
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNSUPPORTED_AUDIO_FORMAT",
            ),
            "mu-law at 16 kHz": (
                _requests(
                    _config(
                        format=audio_format_pb2.AudioFormat(
                            encoding=audio_format_pb2.AUDIO_ENCODING_MULAW, sample_rate_hertz=RATE
                        )
                    ),
                    b"",
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNSUPPORTED_AUDIO_FORMAT",
            ),
            "odd bytes": (
                _requests(_config(), b"", extra=[pb.StreamingRecognizeRequest(audio=b"\x01\x02\x03")]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "AUDIO_EMPTY",
            ),
            "over 32 KiB": (
                _requests(_config(), b"", extra=[pb.StreamingRecognizeRequest(audio=bytes(32 * 1024 + 2))]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "AUDIO_CHUNK_TOO_LARGE",
            ),
            "Klingon": (
                _requests(_config(language_code="tlh"), b""),
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNSUPPORTED_LANGUAGE",
            ),
            "silence of 10 s": (
                _requests(_config(vad=recognition_pb2.VadConfig(min_silence=Duration(seconds=10))), b""),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_VAD_CONFIG",
            ),
            "idle client": (_idle(), grpc.StatusCode.DEADLINE_EXCEEDED, "STREAM_IDLE"),
        }
        for name, (requests, code, reason) in cases.items():
            assert await _refusal(stub, requests) == (code, reason), name
        responses = await good
    finals = [r.result for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    assert len(finals) == 1
    assert word_error_rate(SENTENCES[2], finals[0].transcript) <= 0.25


async def _idle() -> AsyncIterator[pb.StreamingRecognizeRequest]:
    yield _config()
    yield pb.StreamingRecognizeRequest(audio=silence(0.02))
    await asyncio.sleep(4)  # past the service's idle limit (2 s here)
    yield pb.StreamingRecognizeRequest(audio=silence(0.02))
