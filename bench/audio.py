"""Voice: what svc_audio holds in real time, what it adds to the engines, and how fast it turns.

One run starts PostgreSQL, Redis and Kafka (svc_audio's outbox and stream directory) and
svc_audio processes on them, called as a caller inside the mesh (a signed principal):

  streams     N StreamingRecognize streams at once (audio features on), each sending 20 ms
              chunks of 16 kHz speech in real time, on ONE svc_audio process with recognition
              off (SKM_AUDIO_ASR_MODEL=off: voice activity, utterances and features only). The
              figure is the service's own `audio.frame.lag` histogram (Prometheus): from a
              chunk's arrival to its voice-activity decision, read as bucket bounds; with the
              process's CPU per stream and how late the client's sends were (the client shares
              the machine's cores).
  engines     the same speech through StreamingRecognize (Whisper tiny.en, beam 5, sent as
              fast as it is taken) against WhisperModel.transcribe of the same utterances in this
              process; the same sentences through StreamingSynthesize against PiperVoice
              directly: real-time factors and their ratio, rounds alternated.
  turn        the svc_audio share of voice to voice, real time: the last speech sample sent
              -> SPEECH_ENDED -> final transcript (min_silence 500 and 300 ms), then
              StreamingSynthesize of a short first sentence -> its first audio byte.
  barge-in    the first speech sample sent after silence -> SPEECH_STARTED received: the
              detection part of barge-in (InterruptTurn's own time is in the e2e figure).

Usage: python -m bench audio [--streams 50,100,250] [--seconds 15]
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from skm.audio.v1 import audio_service_pb2 as pb
from skm.audio.v1 import audio_service_pb2_grpc, recognition_pb2
from skm.type.v1 import audio_format_pb2
from skm_runtime.principal import configure_mesh_key, principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_stack import EPHEMERAL_PORTS, Stack
from skm_stack.catalogue import installed_path, models_root
from skm_stack.services import ServiceProcess, ServiceSpec, start_service
from tests.support.ports import free_port

RATE = 16_000
CHUNK = 640
TENANT = "tenants/bench"
LINEAR16 = audio_format_pb2.AUDIO_ENCODING_LINEAR16
FORMAT = audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=RATE)
SENTENCES = [
    "The weather is nice today, so we will walk to the park.",
    "Please send me the report before the meeting tomorrow morning.",
    "Turn off the lights when you leave the room.",
    "Can you tell me how to get to the train station?",
    "The children are reading books in the quiet library.",
]


def _espeak(text: str) -> bytes:
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        subprocess.run([binary, "-v", "en-us", "-s", "160", "-w", out.name, text], check=True, timeout=30)
        with wave.open(out.name, "rb") as clip:
            native = clip.getframerate()
            samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2").astype(np.float32) / 32768
    g = math.gcd(native, RATE)
    return bytes((np.clip(resample_poly(samples, RATE // g, native // g), -1, 1) * 32767).astype("<i2").tobytes())


def _silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def _metadata() -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(TENANT, f"{TENANT}/users/bench", ("member",)))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _histogram(url: str) -> dict[float, float]:
    """The cumulative buckets of svc_audio's frame-lag histogram (upper bound in ms -> count)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("audio_frame_lag") and "_bucket{" in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[math.inf if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def _bucket_percentile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, int]:
    delta = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in after}
    total = delta.get(math.inf, 0.0)
    for bound in sorted(delta):
        if total and delta[bound] >= q * total:
            return bound, int(total)
    return math.inf, int(total)


def _service(stack: Any, name: str, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    spec = ServiceSpec(
        name="audio",
        module="svc_audio",
        port=port,
        health_services=("", "skm.audio.v1.AudioService"),
        extra_env={
            "SKM_LOG_LEVEL": "WARNING",
            "SKM_AUDIO_ADDR": f"127.0.0.1:{port}",
            "SKM_AUDIO_MODELS_DIR": str(models_root()),
            "SKM_AUDIO_QDRANT_LOCATION": str(stack.state_dir / f"qdrant-{name}"),
            **env,
        },
    )
    return start_service(spec, stack.state_dir, stack.service_env())


# -- streams ------------------------------------------------------------------------------


async def _stream(stub: Any, audio: bytes, seconds: float, lateness: list[float]) -> None:
    offset = random.randrange(0, len(audio) // CHUNK) * CHUNK
    frames = int(seconds / 0.02)

    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        yield pb.StreamingRecognizeRequest(
            config=recognition_pb2.RecognitionConfig(format=FORMAT, enable_audio_features=True)
        )
        started = time.monotonic()
        for n in range(frames):
            at = (offset + n * CHUNK) % len(audio)
            yield pb.StreamingRecognizeRequest(audio=audio[at : at + CHUNK])
            due = started + (n + 1) * 0.02
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lateness.append(-delay)

    async for _ in stub.StreamingRecognize(requests(), metadata=_metadata(), timeout=seconds + 60):
        pass


async def _streams(addr: str, metrics: str, pid: int, counts: Sequence[int], seconds: float) -> None:
    audio = b"".join(_espeak(s) + _silence(0.8) for s in SENTENCES)
    print(f"  {'streams':>7} {'lag p50':>9} {'lag p99':>9} {'frames':>8} {'CPU/stream':>11} {'client late p99':>16}")
    for count in counts:
        channel = signed_channel(addr)
        stub = audio_service_pb2_grpc.AudioServiceStub(channel)
        lateness: list[float] = []
        before, cpu0, wall0 = _histogram(metrics), _cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(_stream(stub, audio, seconds, lateness) for _ in range(count)))
        after, cpu1, wall1 = _histogram(metrics), _cpu_seconds(pid), time.monotonic()
        await channel.close()
        p50, frames = _bucket_percentile(before, after, 0.5)
        p99, _ = _bucket_percentile(before, after, 0.99)
        cpu = (cpu1 - cpu0) / (wall1 - wall0) / count
        late = _percentile(lateness, 0.99) * 1000 if lateness else 0.0
        print(
            f"  {count:>7} {'<=' + format(p50, 'g') + ' ms':>9} {'<=' + format(p99, 'g') + ' ms':>9} {frames:>8} "
            f"{cpu * 100:>9.1f} % {late:>13.1f} ms",
            flush=True,
        )
    print("  (lag: bucket upper bounds of svc_audio's audio.frame.lag; goal >= 250 streams at p99 <= 10 ms;")
    print("   CPU/stream: svc_audio's process, % of one core; the client runs on the same 2 cores)")


# -- engines ------------------------------------------------------------------------------


async def _service_recognition(stub: Any, audio: bytes) -> tuple[float, float]:
    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        yield pb.StreamingRecognizeRequest(config=recognition_pb2.RecognitionConfig(format=FORMAT))
        for at in range(0, len(audio), 3200):
            yield pb.StreamingRecognizeRequest(audio=audio[at : at + 3200])

    started = time.monotonic()
    rtf = 0.0
    async for response in stub.StreamingRecognize(requests(), metadata=_metadata(), timeout=300):
        if response.HasField("quality_metrics"):
            rtf = response.quality_metrics.recognition_real_time_factor
    wall = time.monotonic() - started
    return rtf, wall / (len(audio) / 2 / RATE)


def _direct_recognition(model: Any, utterances: Sequence[bytes]) -> float:
    compute = seconds = 0.0
    for pcm in utterances:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
        began = time.perf_counter()
        segments, _ = model.transcribe(
            samples,
            language="en",
            beam_size=5,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        list(segments)
        compute += time.perf_counter() - began
        seconds += len(samples) / RATE
    return compute / seconds


async def _service_synthesis(stub: Any, text: str) -> float:
    rtf = 0.0
    async for response in stub.StreamingSynthesize(
        pb.StreamingSynthesizeRequest(text=text), metadata=_metadata(), timeout=60
    ):
        if response.HasField("quality_metrics"):
            rtf = response.quality_metrics.synthesis_real_time_factor
    return rtf


def _direct_synthesis(voice: Any, text: str) -> float:
    began = time.perf_counter()
    samples = sum(len(chunk.audio_float_array) for chunk in voice.synthesize(text))
    return float((time.perf_counter() - began) / (samples / voice.config.sample_rate))


async def _engines(addr: str, rounds: int) -> None:
    from faster_whisper import WhisperModel
    from piper import PiperVoice

    model = WhisperModel(str(installed_path("whisper-tiny.en")), device="cpu", compute_type="int8")
    voice = PiperVoice.load(
        installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx"),
        config_path=installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx.json"),
    )
    utterances = [_espeak(s) for s in SENTENCES]
    audio = b"".join(_silence(0.5) + u for u in utterances) + _silence(1.0)
    text = " ".join(SENTENCES)
    channel = signed_channel(addr)
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    figures: dict[str, list[float]] = {
        k: [] for k in ("asr service", "asr service wall", "asr direct", "tts service", "tts direct")
    }
    for _ in range(rounds):
        rtf, wall = await _service_recognition(stub, audio)
        figures["asr service"].append(rtf)
        figures["asr service wall"].append(wall)
        figures["asr direct"].append(await asyncio.to_thread(_direct_recognition, model, utterances))
        figures["tts service"].append(await _service_synthesis(stub, text))
        figures["tts direct"].append(await asyncio.to_thread(_direct_synthesis, voice, text))
    await channel.close()
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(
        f"  ASR real-time factor: in svc_audio {median['asr service']:.3f} (engine time in the service), "
        f"direct {median['asr direct']:.3f}: ratio {median['asr service'] / median['asr direct']:.2f}x (goal <= 1.1x)"
    )
    print(f"    whole stream, wall clock / audio (VAD, decoding, gRPC): {median['asr service wall']:.3f}")
    print(
        f"  TTS real-time factor: in svc_audio {median['tts service']:.3f}, direct {median['tts direct']:.3f}: "
        f"ratio {median['tts service'] / median['tts direct']:.2f}x (goal <= 1.1x)"
    )
    print(f"  ({rounds} rounds, medians, service and direct alternated)")


# -- turn and barge-in --------------------------------------------------------------------


async def _paced(
    pcm: bytes, marks: dict[str, float], speech: tuple[int, int]
) -> AsyncIterator[pb.StreamingRecognizeRequest]:
    yield pb.StreamingRecognizeRequest(config=recognition_pb2.RecognitionConfig(format=FORMAT))
    started = time.monotonic()
    for n, at in enumerate(range(0, len(pcm), CHUNK)):
        if at <= speech[0] < at + CHUNK:
            marks["speech start"] = time.monotonic()
        if at <= speech[1] < at + CHUNK:
            marks["speech end"] = time.monotonic()
        yield pb.StreamingRecognizeRequest(audio=pcm[at : at + CHUNK])
        delay = started + (n + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _speech_bounds(pcm: bytes) -> tuple[int, int]:
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 300)[0]
    return int(loud[0]) * 2, int(loud[-1]) * 2


async def _turns(addr: str, count: int) -> None:
    channel = signed_channel(addr)
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    stages: dict[str, list[float]] = {k: [] for k in ("ended", "final", "first audio", "onset")}
    for n in range(count):
        speech = _espeak(SENTENCES[n % len(SENTENCES)])
        pcm = _silence(0.6) + speech + _silence(1.2)
        start, end = _speech_bounds(speech)
        marks: dict[str, float] = {}
        async for response in stub.StreamingRecognize(
            _paced(pcm, marks, (start + len(_silence(0.6)), end + len(_silence(0.6)))), metadata=_metadata(), timeout=60
        ):
            kind = response.WhichOneof("response")
            if (
                kind == "voice_activity"
                and response.voice_activity.kind == recognition_pb2.VoiceActivity.KIND_SPEECH_STARTED
            ):
                stages["onset"].append(time.monotonic() - marks["speech start"])
            elif kind == "voice_activity":
                stages["ended"].append(time.monotonic() - marks["speech end"])
            elif kind == "result" and response.result.is_final:
                stages["final"].append(time.monotonic() - marks["speech end"])
                began = time.monotonic()
                async for said in stub.StreamingSynthesize(
                    pb.StreamingSynthesizeRequest(text="The capital of France is Paris."),
                    metadata=_metadata(),
                    timeout=60,
                ):
                    if said.HasField("audio"):
                        stages["first audio"].append(time.monotonic() - began)
                        break
    await channel.close()
    p50 = {k: statistics.median(v) * 1000 for k, v in stages.items() if v}
    print(f"  speech end -> SPEECH_ENDED p50 {p50['ended']:.0f} ms (min_silence 500 ms of it)")
    print(f"  speech end -> final transcript p50 {p50['final']:.0f} ms (tiny.en, beam 5)")
    print(f"  synthesis start -> first audio byte p50 {p50['first audio']:.0f} ms (piper, a short first sentence)")
    own = p50["final"] + p50["first audio"]
    print(f"  svc_audio's part of voice to voice (final + first audio): p50 {own:.0f} ms; the agent's first")
    print("    words come between them (bench conversation: time to first token of the model)")
    onset = [v * 1000 for v in stages["onset"]]
    print(
        f"  barge-in detection: first speech sample sent -> SPEECH_STARTED p50 {statistics.median(onset):.0f} ms,"
        f" max {max(onset):.0f} ms over {len(onset)} onsets (min_speech 150 ms of it)"
    )


def main(counts: Sequence[int] = (50, 100, 250), seconds: float = 15.0, rounds: int = 3) -> None:
    print("\n== voice (svc_audio: VAD, features, Whisper tiny.en, piper) ==", flush=True)
    for asset in ("whisper-tiny.en", "piper-en_US-joe-medium", "silero-vad-v6"):
        installed_path(asset)
    with tempfile.TemporaryDirectory(prefix="skm-bench-audio-") as state:
        Path(state).chmod(0o755)
        stack = Stack(
            state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False, components=("postgres", "redis", "kafka")
        ).start()
        processes: list[ServiceProcess] = []
        try:
            configure_mesh_key(stack.mesh_key_file)
            metrics_port = free_port()
            vad_only = _service(
                stack,
                "vad",
                {"SKM_AUDIO_ASR_MODEL": "off", "SKM_AUDIO_METRICS_ADDR": f"127.0.0.1:{metrics_port}"},
            )
            processes.append(vad_only)
            print(f"-- {seconds:.0f} s of real-time 20 ms streams, one process, VAD + features, ASR off", flush=True)
            asyncio.run(
                _streams(
                    vad_only.spec.addr,
                    f"http://127.0.0.1:{metrics_port}/metrics",
                    vad_only.process.record.pid,
                    counts,
                    seconds,
                )
            )
            vad_only.stop()
            processes.remove(vad_only)
            full = _service(stack, "full", {})
            processes.append(full)
            print("-- engines inside svc_audio against the engines called directly", flush=True)
            asyncio.run(_engines(full.spec.addr, rounds))
            print("-- the turn, in real time", flush=True)
            asyncio.run(_turns(full.spec.addr, 10))
        finally:
            for process in processes:
                process.stop()
            stack.stop()
