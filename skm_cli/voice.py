"""`skm voice`: speak to an agent from a WAV file (or the microphone) and keep its spoken answer.

The file's audio goes over AudioService.StreamConversation through Envoy in 20 ms chunks, in
real time by default, then a little silence so the last utterance ends, then a half-close; the
server answers every utterance and ends the stream once the last answer is spoken. The answers'
audio is written to a WAV file; transcripts, answers and the measured latencies go to stderr
(or every event as JSON lines on stdout with --json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from skm.audio.v1 import audio_service_pb2 as pb
from skm.audio.v1 import audio_service_pb2_grpc
from skm.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc, session_pb2
from skm.type.v1 import audio_format_pb2, deployment_mode_pb2
from skm_cli.chat import tenant_of
from skm_cli.errors import CliError

Metadata = tuple[tuple[str, str], ...]

RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
CHUNK_SECONDS = 0.02
# Silence after the speech, so the server sees the last utterance end before the half-close.
TAIL_SECONDS = 1.5
DESCRIPTION = """\
Speak to an agent: the WAV file's speech goes to a session over a voice stream (in real
time unless --fast), each utterance becomes a message, and the agent's answers come back
spoken. Their audio is written to --out (a WAV file); transcripts ("you>"), answers
("agent>") and each answer's latencies go to stderr. --json prints every voice event as
one JSON object per line on stdout instead.

The input: 16-bit PCM WAV at 8, 16, 22.05, 24, 44.1 or 48 kHz; stereo is mixed down.
--microphone records from the default capture device (with `arecord`) until Ctrl-C."""

_LINEAR16 = audio_format_pb2.AUDIO_ENCODING_LINEAR16


def read_wav(path: Path) -> tuple[bytes, int]:
    """The file's samples as 16-bit little-endian mono PCM, and their rate."""
    try:
        with wave.open(str(path), "rb") as clip:
            width, channels, rate = clip.getsampwidth(), clip.getnchannels(), clip.getframerate()
            frames = clip.readframes(clip.getnframes())
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as error:
        raise CliError(f"{path}: not a WAV file ({error})") from None
    except OSError as error:
        raise CliError(f"{path}: cannot be read ({error.strerror})") from None
    if width != 2:
        raise CliError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is taken")
    if rate not in RATES:
        raise CliError(f"{path}: {rate} Hz; the rates taken are {', '.join(str(r) for r in RATES)}")
    if channels == 1:
        return frames, rate
    return _mixed(frames, channels), rate


def _mixed(frames: bytes, channels: int) -> bytes:
    import numpy as np  # only for stereo files

    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return bytes(np.clip(samples.mean(axis=1).round(), -32768, 32767).astype("<i2").tobytes())


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def chunks(pcm: bytes, rate: int) -> Iterator[bytes]:
    """The audio in 20 ms pieces (whole samples), then TAIL_SECONDS of silence."""
    size = int(rate * CHUNK_SECONDS) * 2
    audio = pcm + bytes(2 * int(rate * TAIL_SECONDS))
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


def microphone_audio(rate: int) -> Iterator[bytes]:
    """Raw 16-bit mono chunks from the default capture device, until Ctrl-C."""
    arecord = shutil.which("arecord")
    if (
        arecord is None
        or "card" not in subprocess.run([arecord, "-l"], capture_output=True, text=True, check=False).stdout
    ):
        raise CliError("no microphone here (no capture device found by arecord): use --in FILE")
    command = [arecord, "-q", "-f", "S16_LE", "-r", str(rate), "-c", "1", "-t", "raw"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as recorder:
        assert recorder.stdout is not None
        size = int(rate * CHUNK_SECONDS) * 2
        try:
            while piece := recorder.stdout.read(size):
                yield piece
        except KeyboardInterrupt:
            recorder.terminate()
    yield bytes(2 * int(rate * TAIL_SECONDS))


def _paced(pieces: Iterator[bytes], rate: int, realtime: bool) -> Iterator[bytes]:
    started = time.monotonic()
    sent = 0.0
    for piece in pieces:
        yield piece
        sent += len(piece) / 2 / rate
        if realtime and (delay := started + sent - time.monotonic()) > 0:
            time.sleep(delay)


def _session(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> str:
    tenant = str(args.tenant) if args.tenant else tenant_of(token)
    if args.session:
        return str(args.session) if args.session.startswith("tenants/") else f"tenants/{tenant}/sessions/{args.session}"
    parent = f"tenants/{tenant}"
    persona = args.persona if args.persona.startswith("tenants/") else f"{parent}/personas/{args.persona}"
    stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)
    created = stub.CreateSession(
        conversation_service_pb2.CreateSessionRequest(
            parent=parent,
            session=session_pb2.Session(persona=persona, mode=deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER),
            request_id=str(uuid.uuid4()),
        ),
        timeout=30,
        metadata=metadata,
    ).session
    name = str(created.name)
    print(f"new session {name} (come back to it with --session {name.rsplit('/', 1)[-1]})", file=sys.stderr)
    return name


def _ms(duration: Any) -> str:
    return f"{duration.ToNanoseconds() / 1e6:.0f} ms" if duration.ToNanoseconds() else "-"


def list_voices(args: argparse.Namespace, channel: grpc.Channel, metadata: Metadata) -> int:
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    token = ""
    while True:
        page = stub.ListVoices(pb.ListVoicesRequest(page_size=100, page_token=token), timeout=10, metadata=metadata)
        for voice in page.voices:
            if args.json:
                print(json.dumps(json_format.MessageToDict(voice)))
            else:
                languages = ",".join(voice.language_codes)
                print(f"{voice.name:40} {voice.engine:10} {voice.sample_rate_hertz:>6} Hz  {languages}")
        token = page.next_page_token
        if not token:
            return 0


def run(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    """`skm voice`; returns the exit status."""
    if args.list_voices:
        return list_voices(args, channel, metadata)
    if args.rate not in RATES:
        raise CliError(f"--rate {args.rate}: the rates taken are {', '.join(str(r) for r in RATES)}")
    if bool(args.input) == bool(args.microphone):
        raise CliError("say what to speak: --in FILE.wav or --microphone")
    if args.microphone:
        rate = args.rate
        pieces = microphone_audio(rate)
    else:
        pcm, rate = read_wav(Path(args.input))
        pieces = chunks(pcm, rate)
    session = _session(args, channel, token, metadata)
    config = pb.VoiceConfig(
        input_format=audio_format_pb2.AudioFormat(encoding=_LINEAR16, sample_rate_hertz=rate),
        output_format=audio_format_pb2.AudioFormat(encoding=_LINEAR16, sample_rate_hertz=args.rate),
        voice=args.voice,
        disable_barge_in=args.no_barge_in,
        interim_results=args.interim,
        language_code=args.language,
    )

    def requests() -> Iterator[pb.StreamConversationRequest]:
        yield pb.StreamConversationRequest(session=session, config=config)
        for piece in _paced(pieces, rate, realtime=not args.fast and not args.microphone):
            yield pb.StreamConversationRequest(audio=piece)

    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    answer = bytearray()
    answers = 0
    for response in stub.StreamConversation(requests(), metadata=metadata, timeout=args.timeout):
        event = response.event
        if args.json:
            data = json_format.MessageToDict(event)
            print(json.dumps(data), flush=True)
        kind = event.WhichOneof("event")
        if kind == "synthesized_audio":
            answer += event.synthesized_audio.audio
        elif kind == "quality_metrics":
            answers += 1
        if not args.json:
            _show(event)
    out = Path(args.out)
    write_wav(out, bytes(answer), args.rate)
    seconds = len(answer) / 2 / args.rate
    print(f"{answers} answer(s), {seconds:.1f} s of audio written to {out}", file=sys.stderr)
    return 0


def _show(event: pb.VoiceEvent) -> None:
    kind = event.WhichOneof("event")
    if kind == "started":
        print(f"voice stream {event.started.voice_stream}", file=sys.stderr)
    elif kind == "recognition_result" and event.recognition_result.is_final:
        print(f"you> {event.recognition_result.transcript}", file=sys.stderr)
    elif kind == "recognition_result" and sys.stderr.isatty():
        print(f"\r... {event.recognition_result.transcript}", end="", file=sys.stderr)
    elif kind == "session_event" and event.session_event.HasField("final_response"):
        print(f"agent> {event.session_event.final_response.text}", file=sys.stderr)
    elif kind == "synthesized_audio" and event.synthesized_audio.failure_reason:
        print(f"(audio of the answer stopped: {event.synthesized_audio.failure_reason})", file=sys.stderr)
    elif kind == "quality_metrics":
        q = event.quality_metrics
        print(
            f"  speech end -> transcript {_ms(q.recognition_latency)}; message -> first token "
            f"{_ms(q.first_token_latency)}; speech end -> first audio {_ms(q.response_latency)}",
            file=sys.stderr,
        )


def add_parser(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    voice: argparse.ArgumentParser = commands.add_parser(
        "voice",
        parents=[common],
        help="speak to an agent from a WAV file (or the microphone); its spoken answer goes to a WAV file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    voice.add_argument("--in", dest="input", default="", metavar="FILE.wav", help="the speech to send")
    voice.add_argument("--microphone", action="store_true", help="record from the capture device instead")
    voice.add_argument(
        "--out", default="answer.wav", metavar="FILE.wav", help="the answers' audio (default answer.wav)"
    )
    voice.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    voice.add_argument("--session", default="", help="speak in this session (default: a new one)")
    voice.add_argument("--persona", default="default", help="new session's persona (default: default)")
    voice.add_argument("--voice", default="", help="the answer's voice, voices/NAME (default: the persona's)")
    voice.add_argument("--language", default="en-US", help="language of the speech (default en-US)")
    voice.add_argument("--rate", type=int, default=16_000, help="sample rate of the answer's audio (default 16000)")
    voice.add_argument("--no-barge-in", action="store_true", help="speaking does not interrupt the agent")
    voice.add_argument("--interim", action="store_true", help="ask for interim transcripts")
    voice.add_argument("--fast", action="store_true", help="send the file as fast as it is taken, not in real time")
    voice.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    voice.add_argument("--list-voices", action="store_true", help="list the voices and exit")
    return voice
