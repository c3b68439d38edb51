"""Voice: what svc_audio holds in real time, what it adds to the engines, and how fast it turns.

One run starts PostgreSQL, Redis and Kafka (svc_audio's outbox and stream directory) and two
svc_audio processes on them, one after the other, called as a caller inside the mesh (a
principal signed with the mesh key):

  streams     N StreamingRecognize streams at once (audio features on), each sending 20 ms
              chunks of 16 kHz LINEAR16 espeak-ng speech with pauses, looped from a random
              offset, paced in real time, on ONE svc_audio process with recognition off
              (SKM_AUDIO_ASR_MODEL=off: voice activity, utterances and features only). After a
              ramp, for `seconds`: the service's own frame-lag histogram (Prometheus, scraped
              before and after; the delta's buckets, so p50/p99 are bucket upper bounds), the
              process's CPU per stream (/proc/<pid>/stat), and how late the client's sends
              were (the client runs in its own asyncio process on the same cores).
  engines     five espeak-ng sentences through StreamingRecognize (Whisper tiny.en, beam 1,
              sent as fast as the service takes them) against WhisperModel.transcribe in this
              process with the same options on the same cut of the audio; the same sentences
              through StreamingSynthesize against PiperVoice.synthesize: real-time factors and
              their ratio, the two sides alternated in rounds, medians.
  turn        the svc_audio share of voice to voice, paced in real time: the last speech
              sample sent -> SPEECH_ENDED -> final transcript (min_silence 500 and 300 ms),
              then StreamingSynthesize of a typical first sentence -> its first audio byte.
              The LLM's first token is NOT in it (bench conversation measures it).
  barge-in    the first speech sample sent after silence -> SPEECH_STARTED received: the
              detection part of barge-in (InterruptTurn's own time is in the e2e figure).

Usage: python -m bench audio [--streams 50,100,250] [--stream-seconds 20] [--stream-clients 1]
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.duration_pb2 import Duration
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
CHUNK = 640  # 20 ms of 16 kHz LINEAR16
TENANT = "tenants/bench"
FORMAT = audio_format_pb2.AudioFormat(encoding=audio_format_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE)
# No commas: a comma's pause may pass for the end of an utterance at min_silence 300 ms.
SENTENCES = [
    "The weather is nice today so we will walk to the park.",
    "Please send me the report before the meeting tomorrow morning.",
    "Turn off the lights when you leave the room.",
    "Can you tell me how to get to the train station?",
    "The children are reading books in the quiet library.",
]
FIRST_SENTENCE = "The capital of France is Paris."
# How svc_audio cuts an utterance for its final decode: its speech_pad_ms default before the
# onset, 0.15 s after the last speech window. The direct decode gets the same samples.
PAD_SECONDS, TAIL_SECONDS = 0.3, 0.15
# Streams per client connection: one HTTP/2 connection per this many streams, as many
# callers would have, rather than every stream on one connection.
STREAMS_PER_CHANNEL = 25
RAMP_SECONDS, SETTLE_SECONDS, DRAIN_SECONDS = 3.0, 1.0, 10.0
# |sample| above this (about -40 dBFS) counts as speech when marking where speech starts and
# ends in the clips.
SPEECH_LEVEL = 300


def _espeak(text: str) -> bytes:
    """`text` spoken by espeak-ng, as 16 kHz LINEAR16."""
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        subprocess.run([binary, "-v", "en-us", "-s", "160", "-w", out.name, text], check=True, timeout=30)
        with wave.open(out.name, "rb") as clip:
            native = clip.getframerate()
            samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2").astype(np.float32) / 32768
    g = math.gcd(native, RATE)
    resampled = np.asarray(resample_poly(samples, RATE // g, native // g), dtype=np.float32)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def _silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def _seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


def _metadata() -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(TENANT, f"{TENANT}/users/bench", ("member",)))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _service(stack: Any, name: str, env: dict[str, str]) -> ServiceProcess:
    """One svc_audio process on the stack, with `env` on top of the stack's variables."""
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
            # Embedded Qdrant takes one process per folder.
            "SKM_AUDIO_QDRANT_LOCATION": str(stack.state_dir / f"qdrant-{name}"),
            **env,
        },
    )
    return start_service(spec, stack.state_dir, stack.service_env(), timeout=120)


# -- streams ------------------------------------------------------------------------------

_BUCKET = re.compile(r'^(\w*frame_lag\w*)_bucket\{(?:.*,)?le="([^"]+)"(?:,.*)?\} (\S+)$')


def _histogram(url: str) -> tuple[str, dict[float, float]]:
    """svc_audio's frame-lag histogram: its exported name and its cumulative buckets (upper
    bound in ms -> count), summed over label sets."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    name, buckets = "", dict[float, float]()
    for line in text.splitlines():
        found = _BUCKET.match(line)
        if found:
            name = found.group(1)
            bound = math.inf if found.group(2) == "+Inf" else float(found.group(2))
            buckets[bound] = buckets.get(bound, 0.0) + float(found.group(3))
    return name, buckets


def _bucket_percentile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of what was observed in between."""
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = delta.get(math.inf, 0.0)
    for bound in sorted(delta):
        if total and delta[bound] >= q * total:
            return bound
    return math.nan


@dataclass(frozen=True)
class _ClientJob:
    """What one client process sends: `count` streams from `t0` (monotonic, shared by every
    process on the machine) spread over the ramp, measured within [window_start, window_end)."""

    addr: str
    key_file: str
    audio: bytes
    count: int
    t0: float
    window_start: float
    window_end: float
    seed: int


@dataclass
class _ClientResult:
    lateness_ms: list[float] = field(default_factory=list)  # one per frame sent in the window
    cpu_seconds: float = 0.0  # the client process's CPU within the window
    failures: list[str] = field(default_factory=list)
    cut: int = 0  # streams still running DRAIN_SECONDS after the window, cancelled


def _run_client(job: _ClientJob) -> _ClientResult:
    """A client process's body (ProcessPoolExecutor): its streams on its own event loop."""
    configure_mesh_key(Path(job.key_file))
    return asyncio.run(_client(job))


def _warm() -> None:
    """Nothing: makes a pool start its processes (and import this module) before a step."""
    time.sleep(0.5)


async def _client(job: _ClientJob) -> _ClientResult:
    result = _ClientResult()
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, not one shared
    channels = [signed_channel(job.addr, options=options) for _ in range(math.ceil(job.count / STREAMS_PER_CHANNEL))]
    stubs = [audio_service_pb2_grpc.AudioServiceStub(channel) for channel in channels]
    rng = random.Random(job.seed)

    async def cpu_in_window() -> None:
        await asyncio.sleep(max(0.0, job.window_start - time.monotonic()))
        began = time.process_time()
        await asyncio.sleep(max(0.0, job.window_end - time.monotonic()))
        result.cpu_seconds = time.process_time() - began

    async def stream(index: int) -> None:
        offset = rng.randrange(0, len(job.audio) // CHUNK) * CHUNK
        begin = job.t0 + rng.uniform(0.0, RAMP_SECONDS)
        stop = job.window_end + 0.5
        await asyncio.sleep(max(0.0, begin - time.monotonic()))

        async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
            config = recognition_pb2.RecognitionConfig(format=FORMAT, enable_audio_features=True)
            yield pb.StreamingRecognizeRequest(config=config)
            n = 0
            # Until the window's end by the clock, not a number of chunks: a client that fell
            # behind stops with the others instead of draining its backlog for minutes.
            while (now := time.monotonic()) < stop:
                due = begin + n * 0.02
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                if job.window_start <= now < job.window_end:
                    result.lateness_ms.append((now - due) * 1000)
                at = (offset + n * CHUNK) % len(job.audio)
                yield pb.StreamingRecognizeRequest(audio=job.audio[at : at + CHUNK])
                n += 1

        call = stubs[index // STREAMS_PER_CHANNEL].StreamingRecognize(requests(), metadata=_metadata())
        try:
            # An overloaded service may hold minutes of queued chunks: what it does after the
            # window is not measured, so its streams are cut after a grace.
            async with asyncio.timeout_at(stop + DRAIN_SECONDS):  # the loop's clock is time.monotonic
                async for _ in call:
                    pass
        except TimeoutError:
            call.cancel()
            result.cut += 1
        except Exception as error:  # noqa: BLE001  # counted and reported, the other streams go on
            result.failures.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")

    await asyncio.gather(cpu_in_window(), *(stream(i) for i in range(job.count)))
    for channel in channels:
        await channel.close()
    return result


def _streams(
    pool: ProcessPoolExecutor,
    clients: int,
    addr: str,
    key_file: Path,
    metrics: str,
    pid: int,
    counts: Sequence[int],
    seconds: float,
) -> None:
    audio = b"".join(_espeak(s) + _silence(0.8) for s in SENTENCES)
    print(
        f"  {'streams':>7} {'lag p50':>9} {'lag p99':>9} {'decisions':>9} {'of sent':>7} {'svc CPU':>7} "
        f"{'per stream':>10} {'client CPU':>10} {'late p50':>9} {'p99':>8} {'max':>8}"
    )
    name = ""
    for count in counts:
        t0 = time.monotonic() + 1.0
        window_start = t0 + RAMP_SECONDS + SETTLE_SECONDS
        window_end = window_start + seconds
        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        futures = [
            pool.submit(
                _run_client,
                _ClientJob(addr, str(key_file), audio, share, t0, window_start, window_end, seed=count * 31 + i),
            )
            for i, share in enumerate(shares)
            if share
        ]
        time.sleep(max(0.0, window_start - time.monotonic()))
        name, before = _histogram(metrics)
        cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(max(0.0, window_end - time.monotonic()))
        exported, after = _histogram(metrics)
        name = name or exported  # a histogram appears once it has observed something
        cpu1, wall1 = _cpu_seconds(pid), time.monotonic()
        results = [future.result() for future in futures]
        lateness = [v for r in results for v in r.lateness_ms]
        failures = [f for r in results for f in r.failures]
        cut = sum(r.cut for r in results)
        service_cpu = (cpu1 - cpu0) / (wall1 - wall0)
        client_cpu = sum(r.cpu_seconds for r in results) / seconds
        decisions = int(after.get(math.inf, 0.0) - before.get(math.inf, 0.0))
        p50, p99 = (f"<={_bucket_percentile(before, after, q):g} ms" for q in (0.5, 0.99))
        print(
            f"  {count:>7} {p50:>9} {p99:>9} {decisions:>9} {decisions / max(1, len(lateness)):>7.0%} "
            f"{service_cpu:>7.0%} {service_cpu / count:>10.2%} {client_cpu:>10.0%} "
            f"{_percentile(lateness, 0.5):>6.1f} ms {_percentile(lateness, 0.99):>5.0f} ms {max(lateness):>5.0f} ms"
            + (f"   {cut} streams not done {DRAIN_SECONDS:.0f} s after the window, cancelled" if cut else "")
            + (f"   {len(failures)} streams failed: {failures[0]}" if failures else ""),
            flush=True,
        )
    window = f"the delta over each {seconds:.0f} s window after a {RAMP_SECONDS + SETTLE_SECONDS:.0f} s ramp"
    print(
        f"  lag: svc_audio's histogram `{name}` (each audio chunk's arrival -> its voice-activity decision),\n"
        f"    {window}; p50/p99 are bucket UPPER BOUNDS.\n"
        "  decisions: chunks the service observed in the window; of sent: their share of the chunks sent in\n"
        "    it. Under 100 % the service fell behind: chunks waited before it read them, and that wait is NOT\n"
        "    in its lag.\n"
        "  svc CPU: the svc_audio process (/proc/<pid>/stat), in cores, and per stream. client CPU: the\n"
        f"    {clients} asyncio client process(es), sharing the same {os.cpu_count()} cores. late: how long after "
        "its 20 ms slot each\n    chunk was handed to gRPC (the client kept real time when p99 is a few ms).\n"
        f"  Goal: >= 250 streams at p99 <= 10 ms on this {os.cpu_count()}-core box."
    )


# -- engines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recognized:
    rtf: float  # the service's recognition_real_time_factor: decode time / utterance audio
    wall_rtf: float  # stream start -> last final, over the stream's audio
    cuts: tuple[tuple[float, float], ...]  # each final's (start, end) in the stream, seconds
    finals: int


async def _service_recognition(stub: Any, audio: bytes) -> _Recognized:
    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        yield pb.StreamingRecognizeRequest(config=recognition_pb2.RecognitionConfig(format=FORMAT, language_code="en"))
        for at in range(0, len(audio), 3200):  # 100 ms chunks, as fast as they are taken
            yield pb.StreamingRecognizeRequest(audio=audio[at : at + 3200])

    started = time.monotonic()
    last_final, rtf, cuts = started, math.nan, []
    async for response in stub.StreamingRecognize(requests(), metadata=_metadata(), timeout=300):
        if response.HasField("result") and response.result.is_final:
            last_final = time.monotonic()
            result = response.result
            cuts.append(
                (result.start_offset.ToTimedelta().total_seconds(), result.end_offset.ToTimedelta().total_seconds())
            )
        elif response.HasField("quality_metrics"):
            rtf = response.quality_metrics.recognition_real_time_factor
    return _Recognized(rtf, (last_final - started) / _seconds(audio), tuple(cuts), len(cuts))


def _direct_recognition(model: Any, utterances: Sequence[np.ndarray]) -> float:
    """Decode time over audio time, the service's decode options (beam 1, temperature 0, int8,
    word timestamps, no conditioning on earlier text, no VAD of its own)."""
    compute = seconds = 0.0
    for samples in utterances:
        began = time.perf_counter()
        segments, _ = model.transcribe(
            samples,
            language="en",
            beam_size=1,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        list(segments)  # decoding happens as the segments are read
        compute += time.perf_counter() - began
        seconds += len(samples) / RATE
    return compute / seconds


async def _service_synthesis(stub: Any, sentences: Sequence[str]) -> tuple[float, float]:
    """(engine RTF from quality_metrics, wall-clock RTF) over the sentences, one call each."""
    compute = audio = wall = 0.0
    for text in sentences:
        began = time.monotonic()
        async for response in stub.StreamingSynthesize(
            pb.StreamingSynthesizeRequest(text=text), metadata=_metadata(), timeout=60
        ):
            if response.HasField("quality_metrics"):
                quality = response.quality_metrics
                spoken = quality.synthesized_duration.ToTimedelta().total_seconds()
                compute += quality.synthesis_real_time_factor * spoken
                audio += spoken
        wall += time.monotonic() - began
    return compute / audio, wall / audio


def _direct_synthesis(voice: Any, sentences: Sequence[str]) -> float:
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=voice.config.length_scale)  # the voice's own rate, as the service
    compute = samples = 0.0
    for text in sentences:
        began = time.perf_counter()
        samples += sum(len(chunk.audio_float_array) for chunk in voice.synthesize(text, syn_config=config))
        compute += time.perf_counter() - began
    return compute / (samples / float(voice.config.sample_rate))


async def _engines(addr: str, rounds: int) -> None:
    from faster_whisper import WhisperModel
    from piper import PiperVoice

    model = WhisperModel(
        str(installed_path("whisper-tiny.en")), device="cpu", compute_type="int8", cpu_threads=0, local_files_only=True
    )
    voice = PiperVoice.load(
        installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx"),
        config_path=installed_path("piper-en_US-joe-medium", "en_US-joe-medium.onnx.json"),
        use_cuda=False,
    )
    audio = b"".join(_silence(0.6) + _espeak(s) for s in SENTENCES) + _silence(1.0)
    stream = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    channel = signed_channel(addr)
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    warm = await _service_recognition(stub, audio)  # and the cuts the direct side decodes
    utterances = [
        stream[int(max(0.0, start - PAD_SECONDS) * RATE) : int(min(_seconds(audio), end + TAIL_SECONDS) * RATE)]
        for start, end in warm.cuts
    ]
    await asyncio.to_thread(_direct_recognition, model, utterances[:1])
    await _service_synthesis(stub, SENTENCES[:1])
    await asyncio.to_thread(_direct_synthesis, voice, SENTENCES[:1])
    figures: dict[str, list[float]] = {
        k: [] for k in ("asr svc", "asr svc wall", "asr direct", "tts svc", "tts svc wall", "tts direct")
    }

    async def service_side() -> None:
        recognized = await _service_recognition(stub, audio)
        figures["asr svc"].append(recognized.rtf)
        figures["asr svc wall"].append(recognized.wall_rtf)
        engine, wall = await _service_synthesis(stub, SENTENCES)
        figures["tts svc"].append(engine)
        figures["tts svc wall"].append(wall)

    async def direct_side() -> None:
        figures["asr direct"].append(await asyncio.to_thread(_direct_recognition, model, utterances))
        figures["tts direct"].append(await asyncio.to_thread(_direct_synthesis, voice, SENTENCES))

    for index in range(rounds):
        sides = (service_side, direct_side) if index % 2 == 0 else (direct_side, service_side)
        for side in sides:
            await side()
    await channel.close()
    m = {k: statistics.median(v) for k, v in figures.items()}
    print(f"  {'':26} {'in svc_audio':>12} {'direct':>8} {'svc/direct':>10}")
    print(
        f"  {'ASR RTF (tiny.en, beam 1)':26} {m['asr svc']:>12.3f} {m['asr direct']:>8.3f} "
        f"{m['asr svc'] / m['asr direct']:>9.2f}x   goal <= 1.1x"
    )
    print(
        f"  {'TTS RTF (piper joe)':26} {m['tts svc']:>12.3f} {m['tts direct']:>8.3f} "
        f"{m['tts svc'] / m['tts direct']:>9.2f}x   goal <= 1.1x"
    )
    print(
        f"  ASR in svc_audio, wall clock from stream start to the last final / the stream's "
        f"{_seconds(audio):.1f} s of audio: {m['asr svc wall']:.3f}"
    )
    print(f"  TTS in svc_audio, wall clock per call (gRPC, resampling, chunking) / audio: {m['tts svc wall']:.3f}")
    print(
        f"  in svc_audio: quality_metrics' real-time factors (engine time / audio); direct: decode time / audio\n"
        f"    of the same {len(utterances)} utterance cuts the service decoded ({warm.finals} finals; onset - "
        f"{PAD_SECONDS} s .. end + {TAIL_SECONDS} s), int8, beam 1, temperature 0,\n"
        f"    word timestamps; TTS: {len(SENTENCES)} sentences, native rate, one call each. "
        f"Medians of {rounds} rounds, the two sides alternated."
    )


# -- turn and barge-in --------------------------------------------------------------------


def _speech_bounds(pcm: bytes) -> tuple[int, int]:
    """Byte offsets of the first and last speech sample of a clip."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > SPEECH_LEVEL)[0]
    return int(loud[0]) * 2, int(loud[-1]) * 2


@dataclass
class _Turn:
    onset: float = math.nan  # first speech sample sent -> SPEECH_STARTED
    ended: float = math.nan  # last speech sample sent -> SPEECH_ENDED
    final: float = math.nan  # last speech sample sent -> final transcript
    first_audio: float = math.nan  # StreamingSynthesize called -> its first audio byte
    finals: int = 0


async def _turn(stub: Any, clip: bytes, min_silence: float) -> _Turn:
    lead = _silence(0.6)
    pcm = lead + clip + _silence(1.5)
    first, last = (len(lead) + b for b in _speech_bounds(clip))
    sent: dict[str, float] = {}
    turn = _Turn()

    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        vad = recognition_pb2.VadConfig(min_silence=Duration(nanos=int(min_silence * 1e9)))
        yield pb.StreamingRecognizeRequest(
            config=recognition_pb2.RecognitionConfig(format=FORMAT, language_code="en", vad=vad)
        )
        started = time.monotonic()
        for n, at in enumerate(range(0, len(pcm), CHUNK)):
            delay = started + n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield pb.StreamingRecognizeRequest(audio=pcm[at : at + CHUNK])
            # Marked once the chunk holding the sample is handed to gRPC.
            if at <= first < at + CHUNK:
                sent["first"] = time.monotonic()
            if at <= last < at + CHUNK:
                sent["last"] = time.monotonic()

    async for response in stub.StreamingRecognize(requests(), metadata=_metadata(), timeout=60):
        now = time.monotonic()
        if response.HasField("voice_activity"):
            kind = response.voice_activity.kind
            if kind == recognition_pb2.VoiceActivity.KIND_SPEECH_STARTED and math.isnan(turn.onset):
                turn.onset = now - sent["first"]
            elif kind == recognition_pb2.VoiceActivity.KIND_SPEECH_ENDED:
                turn.ended = now - sent["last"]
        elif response.HasField("result") and response.result.is_final:
            turn.finals += 1
            turn.final = now - sent["last"]
            if turn.finals == 1:  # the answer's first sentence, started right after the transcript
                began = time.monotonic()
                async for said in stub.StreamingSynthesize(
                    pb.StreamingSynthesizeRequest(text=FIRST_SENTENCE), metadata=_metadata(), timeout=60
                ):
                    if said.HasField("audio"):
                        turn.first_audio = time.monotonic() - began
                        break
    return turn


def _p50_ms(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) * 1000 if kept else math.nan


async def _turns(addr: str, count: int) -> None:
    channel = signed_channel(addr)
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    clips = [_espeak(s) for s in SENTENCES]
    await _turn(stub, clips[0], 0.5)  # warm: the first decode and synthesis of a process are slow
    onsets: list[float] = []
    for min_silence in (0.5, 0.3):
        turns = [await _turn(stub, clips[n % len(clips)], min_silence) for n in range(count)]
        onsets += [t.onset for t in turns]
        ended = _p50_ms([t.ended for t in turns])
        final = _p50_ms([t.final - t.ended for t in turns])
        first_audio = _p50_ms([t.first_audio for t in turns])
        whole = _p50_ms([t.final + t.first_audio for t in turns])
        split = sum(t.finals != 1 for t in turns)
        print(f"  min_silence {min_silence * 1000:.0f} ms, p50 over {count} utterances, paced in real time:")
        print(f"    last speech sample sent -> SPEECH_ENDED            {ended:6.0f} ms")
        print(f"    SPEECH_ENDED -> final transcript (tiny.en, beam 1) {final:6.0f} ms")
        print(f"    StreamingSynthesize -> first audio byte (piper)   {first_audio:6.0f} ms   ({FIRST_SENTENCE!r})")
        print(
            f"    sum of the stage p50s {ended + final + first_audio:6.0f} ms; p50 of the per-utterance sums "
            f"{whole:.0f} ms" + (f"   ({split} utterances gave other than one final)" if split else "")
        )
    print(
        "  The LLM's first token is NOT in these sums: bench conversation measures it (time to first token\n"
        "    of the real 0.5B model, ~0.4 s per DESIGN.md section 4); voice to voice is estimated as\n"
        "    svc_audio's sum + the LLM's first token + the first sentence's wait for its last token."
    )
    kept = [v * 1000 for v in onsets if not math.isnan(v)]
    print(
        f"  barge-in detection: first speech sample sent after >= 0.6 s of silence -> SPEECH_STARTED received:\n"
        f"    p50 {statistics.median(kept):.0f} ms, max {max(kept):.0f} ms over {len(kept)} onsets of the runs above "
        "(min_speech 150 ms, the service default,\n    is part of it; InterruptTurn's own time is added in the "
        "e2e figure, tests/e2e/test_voice.py)"
    )
    await channel.close()


def main(counts: Sequence[int] = (50, 100, 250), seconds: float = 20.0, rounds: int = 3, clients: int = 1) -> None:
    print("\n== voice (svc_audio: VAD, features, Whisper tiny.en, piper) ==", flush=True)
    for asset in ("whisper-tiny.en", "piper-en_US-joe-medium", "silero-vad-v6"):
        installed_path(asset)
    with (
        tempfile.TemporaryDirectory(prefix="skm-bench-audio-") as state,
        ProcessPoolExecutor(max_workers=clients, mp_context=get_context("spawn")) as pool,
    ):
        for _ in range(clients):
            pool.submit(_warm)
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(
            state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False, components=("postgres", "redis", "kafka")
        ).start()
        try:
            configure_mesh_key(stack.mesh_key_file)
            if counts:
                metrics_port = free_port()
                vad_only = _service(
                    stack, "vad", {"SKM_AUDIO_ASR_MODEL": "off", "SKM_AUDIO_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
                )
                try:
                    print(
                        f"-- real-time 20 ms streams on one svc_audio process: VAD + features, ASR off "
                        f"({seconds:.0f} s each)",
                        flush=True,
                    )
                    _streams(
                        pool,
                        clients,
                        vad_only.spec.addr,
                        stack.mesh_key_file,
                        f"http://127.0.0.1:{metrics_port}/metrics",
                        vad_only.process.record.pid,
                        counts,
                        seconds,
                    )
                finally:
                    vad_only.stop()
            full = _service(stack, "full", {"SKM_AUDIO_ASR_BEAM_SIZE": "1"})
            try:
                print("-- engines inside svc_audio against the engines called directly", flush=True)
                asyncio.run(_engines(full.spec.addr, rounds))
                print("-- the svc_audio share of a voice turn, in real time", flush=True)
                asyncio.run(_turns(full.spec.addr, 10))
            finally:
                full.stop()
        finally:
            stack.stop()
    sys.stdout.flush()
