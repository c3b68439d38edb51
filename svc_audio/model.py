"""svc_audio's domain: audio formats, voice activity, transcripts, voices, features and quality.

Audio inside the core is mono float32 in [-1, 1] (`Samples`); recognition, voice activity and
features work at 16 kHz (`SPEECH_RATE`), voices at their native rate. Times are seconds of
audio since the stream's first byte unless a name says otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]

# What recognition, voice activity detection and the features work at.
SPEECH_RATE = 16_000
# Rates a stream may carry (skm.type.v1.AudioFormat).
ALLOWED_RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
# At most this much audio per client message (the contract's 32 KiB).
MAX_CHUNK_BYTES = 32 * 1024


class Encoding(enum.Enum):
    """Sample encodings of a stream (skm.type.v1.AudioEncoding)."""

    LINEAR16 = "LINEAR16"
    MULAW = "MULAW"
    ALAW = "ALAW"


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Headerless mono samples: `encoding` at `sample_rate` Hz."""

    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.LINEAR16 else 1

    def seconds(self, byte_count: int) -> float:
        return byte_count / self.bytes_per_sample / self.sample_rate


@dataclass(frozen=True, slots=True)
class VadParams:
    """How utterances are cut (skm.audio.v1.VadConfig, with the service's own minimum speech).

    `min_speech`: speech shorter than this is a noise: it starts no utterance and interrupts
    no playback. `pad`: audio kept before the detected onset, so a soft first sound is heard.
    """

    speech_threshold: float = 0.5
    min_silence: float = 0.5
    min_speech: float = 0.2
    pad: float = 0.2


class ActivityKind(enum.Enum):
    SPEECH_STARTED = "SPEECH_STARTED"
    SPEECH_ENDED = "SPEECH_ENDED"


@dataclass(frozen=True, slots=True)
class VoiceActivity:
    """Speech started or ended at `offset` (audio seconds)."""

    kind: ActivityKind
    offset: float


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """What a recogniser heard in one piece of audio, with offsets relative to that audio.

    `compute_seconds` is the engine's own time on it, `audio_seconds` the audio's length: their
    ratio is the real-time factor.
    """

    text: str
    language: str
    confidence: float
    words: tuple[Word, ...] = ()
    compute_seconds: float = 0.0
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RecognitionResult:
    """A transcript of utterance `utterance` (from 1), interim or final, in stream time."""

    utterance: int
    is_final: bool
    text: str
    start: float
    end: float
    language: str
    confidence: float = 0.0
    words: tuple[Word, ...] = ()
    speaker_label: str = ""


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice the service can speak with; `name` is "voices/{voice}"."""

    name: str
    display_name: str
    languages: tuple[str, ...]
    sample_rate: int
    engine: str


@dataclass(frozen=True, slots=True)
class SpeechStyle:
    """How a persona's tone shapes speech: words replaced in the text, speaking rate (1.0
    normal) and pitch shift in semitones (0 none; engines that cannot shift ignore it)."""

    rate: float = 1.0
    pitch_semitones: float = 0.0
    replacements: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Features:
    """Acoustic features of one utterance (see svc_audio.core.features for the formulas).

    `vector` (log-mel means and standard deviations, then MFCC means) is what Qdrant stores and
    speaker clustering compares; `pitch_hz` is the median voiced fundamental (0: none found).
    """

    rms: float
    zero_crossing_rate: float
    spectral_entropy: float
    pitch_hz: float
    speech_rate: float
    vector: Samples = field(repr=False)
    mfcc_mean: Samples = field(repr=False)


@dataclass(frozen=True, slots=True)
class UtteranceFeatures:
    """Features of utterance `utterance` of a stream, its agitation, and where they were stored."""

    utterance: int
    start: float
    end: float
    features: Features
    agitation_score: float
    vector_id: str = ""


@dataclass(frozen=True, slots=True)
class Quality:
    """Quality measurements of an exchange; None where not measured (seconds, ratios)."""

    word_error_rate: float | None = None
    mean_opinion_score: float | None = None
    recognition_latency: float | None = None
    response_latency: float | None = None
    synthesis_latency: float | None = None
    first_token_latency: float | None = None
    recognition_rtf: float | None = None
    synthesis_rtf: float | None = None
    synthesized_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class QualityReport:
    """A Quality with what it measured, as the AudioQualityMeasured event carries it."""

    tenant: str
    quality: Quality
    voice_stream: str = ""
    turn: str = ""
    persona: str = ""
    recognizer: str = ""
    voice: str = ""


@dataclass(frozen=True, slots=True)
class FeaturePoint:
    """An utterance's vectors and where it was heard, as stored per tenant."""

    tenant: str
    session: str
    voice_stream: str
    utterance: int
    turn: str
    features: Features
    agitation_score: float


class AgentEventKind(enum.Enum):
    """What svc_audio reads in a session event; everything else passes through as OTHER."""

    TURN_STATE = "TURN_STATE"
    USER_MESSAGE = "USER_MESSAGE"
    TOKEN = "TOKEN"
    FINAL_RESPONSE = "FINAL_RESPONSE"
    OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """A session event as the voice loop needs it. `state` is the turn state's name for
    TURN_STATE ("RUNNING", "COMPLETED", "INTERRUPTED", ...); `text` the token, message or
    response text; `wire` the event exactly as svc_conversation sent it, handed to the client
    untouched."""

    sequence: int
    turn: str
    kind: AgentEventKind
    wire: object = field(repr=False)
    state: str = ""
    text: str = ""
    request_id: str = ""
    # The model call a TOKEN belongs to (a turn's calls are numbered from 1).
    iteration: int = 0


# Turn states after which a turn produces no more tokens.
TURN_ENDED = frozenset({"COMPLETED", "FAILED", "REFUSED", "INTERRUPTED", "CANCELLED"})


@dataclass(frozen=True, slots=True)
class PersonaVoice:
    """What a persona says about speech: its voice ("voices/{voice}", empty: the default) and
    tone words ("warm, concise")."""

    voice: str = ""
    tone: str = ""


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a voice stream needs of its session when it opens: the persona, the sequence its
    events start after, and the turn running now ("" when none), which the stream follows."""

    persona: str
    last_sequence: int
    running_turn: str = ""


@dataclass(frozen=True, slots=True)
class WireFormat:
    """An audio format as a client asked for it, before it is checked (None: unset encoding)."""

    encoding: Encoding | None
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True, slots=True)
class VadRequest:
    """VadConfig as sent: 0 threshold and None silence mean the defaults."""

    speech_threshold: float = 0.0
    min_silence: float | None = None


@dataclass(frozen=True, slots=True)
class RecognitionSetup:
    """The first message of StreamingRecognize."""

    format: WireFormat
    language: str = ""
    interim: bool = False
    vad: VadRequest = field(default_factory=VadRequest)
    features: bool = False
    speaker_labels: bool = False
    reference: str = ""


@dataclass(frozen=True, slots=True)
class VoiceSetup:
    """The first message of a voice conversation (VoiceConfig); `output` None: text only."""

    input: WireFormat
    output: WireFormat | None
    language: str = ""
    vad: VadRequest = field(default_factory=VadRequest)
    voice: str = ""
    barge_in: bool = True
    interim: bool = False


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One client message of an audio stream: a setup, audio, or (wrongly) neither."""

    setup: RecognitionSetup | VoiceSetup | None = None
    audio: bytes | None = None
    session: str = ""


# -- what the use cases hand the servicers, in stream order --------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished utterance as the voice loop takes it: its final result, its agitation, and
    when (monotonic seconds) its end was detected and its final result was ready."""

    result: RecognitionResult
    transcript: Transcript
    agitation_score: float
    ended_at: float
    final_at: float
    features: Features | None = None


# What a stream sends its reader, in order.
Output = VoiceActivity | RecognitionResult | UtteranceFeatures | Utterance


@dataclass(frozen=True, slots=True)
class RecognitionEnd:
    """The last message of StreamingRecognize: the stream's quality."""

    quality: Quality


@dataclass(frozen=True, slots=True)
class SynthesisStart:
    """The first message of StreamingSynthesize: the audio's actual format."""

    format: AudioFormat


@dataclass(frozen=True, slots=True)
class SpokenAudio:
    """A chunk of encoded audio and where it starts in the whole answer (audio seconds)."""

    audio: bytes
    offset: float


@dataclass(frozen=True, slots=True)
class VoiceStarted:
    """The first output of a voice stream."""

    voice_stream: str
    output_format: AudioFormat | None


@dataclass(frozen=True, slots=True)
class AnswerAudio:
    """A chunk of a turn's spoken answer; `last` closes the turn's audio."""

    turn: str
    audio: bytes
    offset: float
    last: bool = False
    failure_reason: str = ""


@dataclass(frozen=True, slots=True)
class AnswerQuality:
    turn: str
    quality: Quality


VoiceOutput = (
    VoiceStarted | VoiceActivity | RecognitionResult | UtteranceFeatures | AgentEvent | AnswerAudio | AnswerQuality
)
