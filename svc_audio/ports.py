"""What svc_audio's core needs from the world, as protocols its engines and adapters implement.

Engines (speech detection, recognition, synthesis) are synchronous and CPU-bound: the core runs
them off the event loop (`svc_audio.core.engines`), so a frame's acknowledgement never waits
behind a decode. Adapters are asynchronous clients of other services and stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Protocol

from skm_runtime.access import Principal
from svc_audio.model import (
    AgentEvent,
    FeaturePoint,
    PersonaVoice,
    QualityReport,
    Samples,
    SessionView,
    SpeechStyle,
    Transcript,
    Voice,
)


class SpeechDetector(Protocol):
    """Speech probability of consecutive windows of one 16 kHz stream (Silero VAD).

    `start()` makes a stream's state (the model's recurrent state and context); `probabilities`
    takes n whole windows (n * `window` samples, in stream order) and returns n probabilities,
    updating the state. One state is never used by two threads at once.
    """

    window: int

    def start(self) -> object: ...

    def probabilities(self, state: object, audio: Samples) -> Samples: ...


class Recognizer(Protocol):
    """Speech to text on 16 kHz audio (faster-whisper).

    `name` identifies the model ("faster-whisper/tiny.en"); `languages` the BCP-47 primary
    subtags it accepts ("en"), or None for a multilingual model. `transcribe` with language ""
    detects it. `partial=True` asks for an interim result of a growing window: the cheap path
    (greedy, no timestamps, no word timings), text only. Raises RecognizerUnavailable when the
    engine cannot run.
    """

    name: str
    languages: frozenset[str] | None

    def transcribe(
        self, audio: Samples, language: str, *, word_timestamps: bool, partial: bool = False
    ) -> Transcript: ...


class Synthesizer(Protocol):
    """Text to speech with one voice (piper, espeak-ng): `synthesize` yields chunks of
    samples at `voice.sample_rate` as it produces them. Raises SynthesizerUnavailable when
    the engine cannot run."""

    voice: Voice

    def synthesize(self, text: str, style: SpeechStyle) -> Iterator[Samples]: ...


class Conversations(Protocol):
    """svc_conversation, on behalf of the voice stream's user (a signed principal).

    Raises SessionNotFound for a session the principal cannot see, ServiceUnavailable when
    svc_conversation cannot be reached.
    """

    async def session_view(self, principal: Principal, session: str) -> SessionView:
        """The session's persona and last event sequence (checks the session exists)."""
        ...

    async def send_message(
        self, principal: Principal, session: str, text: str, request_id: str, policy_context: Mapping[str, float]
    ) -> str:
        """Starts a turn with `text` as the user's message; the turn's name. Idempotent on
        `request_id`."""
        ...

    def events(self, principal: Principal, session: str, after_sequence: int | None) -> AsyncIterator[AgentEvent]:
        """The session's events after `after_sequence` (None: from its acknowledged point),
        then live ones, until the caller stops reading."""
        ...

    async def interrupt(self, principal: Principal, turn: str, request_id: str) -> None:
        """Interrupts the turn; a turn already ended is not an error."""
        ...


class Personas(Protocol):
    """svc_profiles: the voice and tone of a persona (PersonaVoice() when it has none)."""

    async def voice_of(self, principal: Principal, persona: str) -> PersonaVoice: ...


class FeatureStore(Protocol):
    """Utterance feature vectors, one collection per tenant (Qdrant)."""

    async def add(self, point: FeaturePoint) -> str:
        """Stores the point; its id."""
        ...


class QualityLog(Protocol):
    """Where quality measurements go (AudioQualityMeasured events): `record` returns at once;
    delivery happens in the background and survives a Kafka outage."""

    def record(self, report: QualityReport) -> None: ...


class StreamDirectory(Protocol):
    """Which replica holds each live voice stream (its address), shared by all replicas."""

    async def claim(self, voice_stream: str, holder: str, ttl_seconds: float) -> None: ...

    async def holder(self, voice_stream: str) -> str | None: ...

    async def release(self, voice_stream: str) -> None: ...


class Relay(Protocol):
    """Hands a PushAudio chunk to the replica at `holder`, as the caller; the highest sequence
    it accepted. Raises the holder's domain error (VoiceStreamNotFound, AudioSequenceGap, ...)."""

    async def push(
        self, holder: str, principal: Principal, voice_stream: str, sequence: int, audio: bytes, last: bool
    ) -> int: ...


# The voices a deployment has, by name ("voices/{voice}").
Voices = Mapping[str, Synthesizer]
