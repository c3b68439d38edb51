"""`skm voice`: speak to an agent from a WAV file (or the microphone) and keep its spoken answer.

The file's audio goes over AudioService.StreamConversation through Envoy in 20 ms chunks, in
real time by default, then a little silence so the last utterance ends, then a half-close; the
server answers every utterance and ends the stream once the last answer is spoken. The answers'
audio is written to a WAV file; transcripts, answers and the measured latencies go to stderr
(or every event as JSON lines on stdout with --json).

Threads: gRPC's own thread pulls the audio out of the request generator (pacing it with
sleeps); the main thread reads the events. Ctrl-C lands in the main thread: while the
microphone records, the first one stops the recording (the answers still come), a second
one leaves; otherwise it leaves at once. Whatever answer audio arrived is written either way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format

from skm.audio.v1 import audio_metrics_pb2, audio_service_pb2_grpc, voice_pb2
from skm.audio.v1 import audio_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc, session_pb2
from skm.type.v1 import audio_format_pb2, deployment_mode_pb2
from skm_cli.chat import tenant_of
from skm_cli.errors import CallFailed, CliError

Metadata = tuple[tuple[str, str], ...]

RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
CHUNK_SECONDS = 0.02
# Silence after the speech, so the server's VAD sees the last utterance end before the half-close.
TAIL_SECONDS = 1.5
MICROPHONE_RATE = 16_000
# Beyond the audio's own duration, how long the server may take to answer the last utterance.
ANSWER_SECONDS = 300.0
DESCRIPTION = """\
Speak to an agent: the WAV file's speech goes to a session over a voice stream (in real
time unless --fast), each utterance becomes a message, and the agent's answers come back
spoken. Their audio, every answer in order, is written to --out (a WAV file); transcripts
("you>"), answers ("agent>") and each answer's latencies go to stderr. --json prints
every voice event as one JSON object per line on stdout instead (audio as base64).

The input: 16-bit PCM WAV at 8, 16, 22.05, 24, 44.1 or 48 kHz; stereo is mixed down.
--microphone records 16 kHz from the capture device (with `arecord`) until Ctrl-C; the
answers to what was said still come, then the command ends.

Without --session a new session is created; its name goes to stderr, so you can come
back to it (`skm chat --session ID` shows it in text).

--list-voices lists the voices an answer can be spoken with (see --voice)."""

_LINEAR16 = audio_format_pb2.AUDIO_ENCODING_LINEAR16
_RATES_TAKEN = ", ".join(str(r) for r in RATES)


def _note(text: str) -> None:
    print(f"skm: {text}", file=sys.stderr, flush=True)


# --- audio in and out


def read_wav(path: Path) -> tuple[bytes, int]:
    """The file's samples as 16-bit little-endian mono PCM, and their rate (one of RATES)."""
    try:
        with wave.open(str(path), "rb") as clip:
            width, channels, rate = clip.getsampwidth(), clip.getnchannels(), clip.getframerate()
            frames = clip.readframes(clip.getnframes())
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: a directory, not a WAV file") from None
    except (wave.Error, EOFError) as error:
        raise CliError(f"{path}: not a WAV file ({error or 'truncated'})") from None
    except OSError as error:
        raise CliError(f"{path}: cannot be read ({error.strerror})") from None
    if width != 2:
        raise CliError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is taken (e.g. `sox IN -b 16 OUT.wav`)")
    if rate not in RATES:
        raise CliError(f"{path}: {rate} Hz; the rates taken are {_RATES_TAKEN}")
    if channels == 1:
        return frames, rate
    return _mixed(frames, channels), rate


def _mixed(frames: bytes, channels: int) -> bytes:
    """Interleaved channels averaged into one (rounded, so equal channels come back unchanged)."""
    import numpy as np  # only for files of several channels; the CLI starts faster without it

    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return bytes(np.clip(samples.mean(axis=1).round(), -32768, 32767).astype("<i2").tobytes())


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    """16-bit mono PCM into a WAV file."""
    try:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm)
    except OSError as error:
        raise CliError(f"{path}: cannot be written ({error.strerror})") from None


def chunks(pcm: bytes, rate: int) -> Iterator[bytes]:
    """The audio in 20 ms pieces (whole samples; the last may be shorter), then TAIL_SECONDS of silence."""
    size = int(rate * CHUNK_SECONDS) * 2
    audio = pcm + bytes(2 * int(rate * TAIL_SECONDS))
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


def paced(pieces: Iterator[bytes], rate: int, realtime: bool) -> Iterator[bytes]:
    """The pieces, each no earlier than its audio time from the first one when realtime."""
    started = time.monotonic()
    sent = 0.0
    for piece in pieces:
        yield piece
        sent += len(piece) / 2 / rate
        if realtime and (delay := started + sent - time.monotonic()) > 0:
            time.sleep(delay)


class Microphone:
    """The capture device, through `arecord`: 16-bit mono chunks of 20 ms until stop()."""

    def __init__(self, arecord: str, rate: int = MICROPHONE_RATE) -> None:
        self.rate = rate
        self._arecord = arecord
        self._recorder: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()

    @classmethod
    def find(cls) -> Microphone:
        """The machine's microphone; CliError when there is none (no arecord, or it lists no card)."""
        arecord = shutil.which("arecord")
        if arecord is None:
            raise CliError("no microphone here (arecord, from alsa-utils, is not installed): use --in FILE")
        try:
            listed = subprocess.run([arecord, "-l"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CliError(f"no microphone here ({arecord} -l failed: {error}): use --in FILE") from None
        if not any(line.startswith("card ") for line in listed.stdout.splitlines()):
            raise CliError("no microphone here (`arecord -l` lists no capture device): use --in FILE")
        return cls(arecord)

    def chunks(self) -> Iterator[bytes]:
        """What the device hears, 20 ms a piece, until stop(); then TAIL_SECONDS of silence."""
        command = [self._arecord, "-q", "-f", "S16_LE", "-r", str(self.rate), "-c", "1", "-t", "raw"]
        # Its own process group: the terminal's Ctrl-C is ours to handle, not arecord's.
        with subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True) as recorder:
            self._recorder = recorder
            if self._stopped.is_set():  # stopped before it started
                recorder.terminate()
            assert recorder.stdout is not None  # stdout=PIPE
            size = int(self.rate * CHUNK_SECONDS) * 2
            while piece := recorder.stdout.read(size):
                if whole := piece[: len(piece) // 2 * 2]:  # a stopped arecord may end mid-sample
                    yield whole
        yield bytes(2 * int(self.rate * TAIL_SECONDS))

    def stop(self) -> None:
        """Ends the recording: chunks() sends the tail of silence and ends, so the stream half-closes."""
        self._stopped.set()
        if self._recorder is not None and self._recorder.poll() is None:
            self._recorder.terminate()


# --- the conversation


def _session(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> str:
    """--session as a resource name, or a new session of --persona."""
    tenant = str(args.tenant).removeprefix("tenants/") if args.tenant else ""
    if args.session:
        if args.session.startswith("tenants/"):
            return str(args.session)
        return f"tenants/{tenant or tenant_of(token)}/sessions/{args.session}"
    parent = f"tenants/{tenant or tenant_of(token)}"
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
    _note(f"new session {name} (come back to it with --session {name.rsplit('/', 1)[-1]})")
    return name


class _Answers:
    """The answers' audio, turn by turn in the order the turns first spoke."""

    def __init__(self) -> None:
        self._turns: dict[str, bytearray] = {}

    def add(self, audio: pb.SynthesizedAudio) -> None:
        self._turns.setdefault(audio.turn, bytearray()).extend(audio.audio)

    def pcm(self) -> bytes:
        return b"".join(bytes(turn) for turn in self._turns.values())


class _Terminal:
    """The conversation for a person, on stderr: transcripts, answers, latencies."""

    def __init__(self, interim: bool) -> None:
        # An interim transcript is redrawn in place, which only a terminal can show.
        self._interim = interim and sys.stderr.isatty()
        self._open = False  # an interim line waits to be overwritten

    def show(self, event: pb.VoiceEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "recognition_result":
            result = event.recognition_result
            if result.is_final:
                self._line(f"you> {result.transcript.strip()}")
            elif self._interim:
                print(f"\r\x1b[K... {result.transcript.strip()}", end="", file=sys.stderr, flush=True)
                self._open = True
        elif kind == "session_event":
            session_event = event.session_event
            which = session_event.WhichOneof("event")
            if which == "final_response":
                self._line(f"agent> {session_event.final_response.text}")
            elif which == "error":
                self._line(f"[error {session_event.error.reason}: {session_event.error.message}]")
        elif kind == "synthesized_audio" and event.synthesized_audio.failure_reason:
            reason = event.synthesized_audio.failure_reason
            self._line(f"[the answer's audio stopped ({reason}); the rest is text only]")
        elif kind == "quality_metrics":
            self._line(f"  {latencies(event.quality_metrics)}")

    def end(self) -> None:
        if self._open:
            print(file=sys.stderr)
            self._open = False

    def _line(self, text: str) -> None:
        prefix = "\r\x1b[K" if self._open else ""
        self._open = False
        print(prefix + text, file=sys.stderr, flush=True)


def _ms(duration: duration_pb2.Duration) -> float:
    return duration.ToNanoseconds() / 1e6


def latencies(metrics: audio_metrics_pb2.QualityMetrics) -> str:
    """An answer's latencies from the end of the user's speech, in ms ("-" where not measured).

    The contract measures the first token from the final transcript; adding the recognition
    latency puts all three on the same origin, the end of speech.
    """
    transcript = _ms(metrics.recognition_latency)
    token = _ms(metrics.first_token_latency)
    audio = _ms(metrics.response_latency)
    shown = [
        f"{transcript:.0f} ms" if transcript else "-",
        f"{transcript + token:.0f} ms" if token else "-",
        f"{audio:.0f} ms" if audio else "-",
    ]
    return f"speech end -> final transcript {shown[0]}, -> first token {shown[1]}, -> first audio {shown[2]}"


def list_voices(args: argparse.Namespace, channel: grpc.Channel, metadata: Metadata) -> int:
    """`skm voice --list-voices`: a table, or one JSON object per voice with --json."""
    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    voices: list[voice_pb2.Voice] = []
    page_token = ""
    while True:
        page = stub.ListVoices(
            pb.ListVoicesRequest(page_size=1000, page_token=page_token), timeout=10, metadata=metadata
        )
        voices.extend(page.voices)
        page_token = page.next_page_token
        if not page_token:
            break
    if args.json:
        for voice in voices:
            print(json.dumps(json_format.MessageToDict(voice)), flush=True)
        return 0
    rows = [("NAME", "ENGINE", "RATE", "LANGUAGES")] + [
        (v.name, v.engine, f"{v.sample_rate_hertz} Hz", ", ".join(v.language_codes)) for v in voices
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    return 0


def run(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    """`skm voice`; returns the exit status."""
    if args.list_voices:
        return list_voices(args, channel, metadata)
    if args.rate not in RATES:
        raise CliError(f"--rate {args.rate}: the rates taken are {_RATES_TAKEN}")
    if bool(args.input) == bool(args.microphone):
        raise CliError("say what to speak: --in FILE.wav or --microphone")
    microphone: Microphone | None = None
    if args.microphone:
        microphone = Microphone.find()
        rate, pieces = microphone.rate, microphone.chunks()
        timeout = args.timeout or None
    else:
        pcm, rate = read_wav(Path(args.input))
        pieces = paced(chunks(pcm, rate), rate, realtime=not args.fast)
        timeout = args.timeout or len(pcm) / 2 / rate + TAIL_SECONDS + ANSWER_SECONDS
    session = _session(args, channel, token, metadata)
    if args.session:  # a new one was named as it was made
        _note(f"session {session}")
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
        for piece in pieces:
            yield pb.StreamConversationRequest(audio=piece)

    stub = audio_service_pb2_grpc.AudioServiceStub(channel)
    call = stub.StreamConversation(requests(), metadata=metadata, timeout=timeout)
    terminal = _Terminal(interim=args.interim)
    answers = _Answers()
    out_rate = args.rate
    spoken = 0
    if microphone is not None:
        _note("listening; Ctrl-C ends the recording (the answers still come), a second one leaves")
    previous = signal.signal(signal.SIGINT, _first_stops(microphone)) if microphone is not None else None
    try:
        for response in call:
            event = response.event
            kind = event.WhichOneof("event")
            if args.json:
                print(json.dumps(json_format.MessageToDict(event)), flush=True)
            else:
                terminal.show(event)
            if kind == "started" and event.started.output_format.sample_rate_hertz:
                out_rate = event.started.output_format.sample_rate_hertz  # the rate the server resolved
            elif kind == "synthesized_audio":
                answers.add(event.synthesized_audio)
            elif kind == "quality_metrics":
                spoken += 1
    except KeyboardInterrupt:
        call.cancel()
        terminal.end()
        _note("left before the last answer ended")
        _save(Path(args.out), answers.pcm(), out_rate, spoken)
        return 130
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            terminal.end()
            _save(Path(args.out), answers.pcm(), out_rate, spoken)
            raise CallFailed(f"no end of the conversation after {timeout:.0f} s (see --timeout)") from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    terminal.end()
    _save(Path(args.out), answers.pcm(), out_rate, spoken)
    return 0


def _first_stops(microphone: Microphone | None) -> Callable[[int, FrameType | None], None]:
    """A SIGINT handler: the first Ctrl-C stops the recording, a second one leaves."""
    stopped = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopped
        if stopped or microphone is None:
            raise KeyboardInterrupt
        stopped = True
        _note("recording stopped; waiting for the answers (Ctrl-C again leaves)")
        microphone.stop()

    return handler


def _save(out: Path, pcm: bytes, rate: int, answers: int) -> None:
    write_wav(out, pcm, rate)
    _note(f"{answers} answer(s) spoken: {len(pcm) / 2 / rate:.2f} s of audio written to {out}")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `voice` command, next to `chat`."""
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
    voice.add_argument("--session", default="", help="speak in this session: its id or tenants/T/sessions/ID")
    voice.add_argument("--persona", default="default", help="new session's persona (default: default)")
    voice.add_argument("--voice", default="", help="the answer's voice, voices/NAME (default: the persona's)")
    voice.add_argument("--language", default="en-US", help="BCP-47 language of the speech (default en-US)")
    voice.add_argument(
        "--rate", type=int, default=16_000, help=f"sample rate of the answer's audio: {_RATES_TAKEN} (default 16000)"
    )
    voice.add_argument("--no-barge-in", action="store_true", help="speaking does not interrupt the agent's answer")
    voice.add_argument("--interim", action="store_true", help="show interim transcripts as they change")
    pace = voice.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", dest="fast", action="store_false", help="send the file at the pace it plays (the default)"
    )
    pace.add_argument("--fast", dest="fast", action="store_true", help="send the file as fast as the server takes it")
    voice.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"give up after this long (default: the file's duration + {ANSWER_SECONDS:.0f} s; none with --microphone)",
    )
    voice.add_argument("--list-voices", action="store_true", help="list the voices (name, engine, rate, languages)")
    return voice
