"""In-memory speech engines for svc_audio's unit tests: test fixtures, not models.

Each really implements its port (`svc_audio.ports`), in microseconds and without model files,
and tests/integration/test_audio_engines.py runs the same behaviour suite over each fixture and
the real engine it stands in for:

- `EnergySpeechDetector`: an honest energy VAD (loud windows are speech), for Silero VAD.
- `ScriptedRecognizer`: answers with texts given up front, for faster-whisper.
- `ToneSynthesizer`: a 220 Hz tone, 60 ms a word, for piper and espeak-ng.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from svc_audio.engines.text import apply_replacements, sentences
from svc_audio.errors import UnsupportedLanguage
from svc_audio.model import SPEECH_RATE, Samples, SpeechStyle, Transcript, Voice, Word

WINDOW = 512


class EnergyState:
    """An energy VAD needs no memory of the stream; it counts the windows it has scored."""

    __slots__ = ("windows",)

    def __init__(self) -> None:
        self.windows = 0


class EnergySpeechDetector:
    """Test fixture for `SpeechDetector`: each 512-sample window's level (RMS in dBFS) through a
    logistic curve, 0.5 at `threshold_db`, rising by e for every `slope_db` above it.

    At the defaults, quiet room noise (-50 dBFS) scores under 0.01 and speech (-30 to -10 dBFS)
    over 0.8. It tells loud from quiet, not speech from noise: a loud hum is "speech".
    """

    window = WINDOW

    def __init__(self, threshold_db: float = -38.0, slope_db: float = 2.0) -> None:
        self.threshold_db = threshold_db
        self.slope_db = slope_db

    def start(self) -> EnergyState:
        return EnergyState()

    def probabilities(self, state: object, audio: Samples) -> Samples:
        if not isinstance(state, EnergyState):
            raise TypeError(f"state must come from EnergySpeechDetector.start(), not {type(state).__name__}")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) % WINDOW:
            raise ValueError(f"audio must be whole windows of {WINDOW} samples, got shape {audio.shape}")
        windows = audio.reshape(-1, WINDOW).astype(np.float64)
        state.windows += len(windows)
        level_db = 10 * np.log10(np.mean(windows**2, axis=1) + 1e-12)
        speech: Samples = (1 / (1 + np.exp(-(level_db - self.threshold_db) / self.slope_db))).astype(np.float32)
        return speech


class ScriptedRecognizer:
    """Test fixture for `Recognizer`: each final call answers the next text of `script` (and
    fails when the script runs out); each partial call answers "" (no interim words), so a test
    sees exactly the finals it scripted. `final_calls` and `partial_calls` count the calls.

    Final words share the audio evenly, in order; confidence is 1; empty audio answers "" and
    keeps the script. `languages` defaults to English only, like whisper tiny.en; None makes it
    multilingual (detecting "en"). A language outside `languages` raises UnsupportedLanguage.
    """

    def __init__(
        self, script: Sequence[str], *, languages: frozenset[str] | None = frozenset({"en"}), name: str = "scripted"
    ) -> None:
        self.name = name
        self.languages = languages
        self._script = list(script)
        self.final_calls = 0
        self.partial_calls = 0

    def transcribe(self, audio: Samples, language: str, *, word_timestamps: bool, partial: bool = False) -> Transcript:
        primary = language.split("-")[0].lower() or "en"
        if self.languages is not None and primary not in self.languages:
            raise UnsupportedLanguage(f"{self.name} does not recognise {language!r}")
        audio_seconds = len(audio) / SPEECH_RATE
        if partial:
            self.partial_calls += 1
            return Transcript(text="", language=primary, confidence=0.0, audio_seconds=audio_seconds)
        if len(audio) == 0:
            # No audio, no words: the script is kept for the utterances that have some.
            return Transcript(text="", language=primary, confidence=0.0)
        if self.final_calls >= len(self._script):
            raise AssertionError(
                f"{self.name} was asked for final {self.final_calls + 1}; its script has {len(self._script)}"
            )
        text = self._script[self.final_calls]
        self.final_calls += 1
        said = text.split()
        share = audio_seconds / max(len(said), 1)
        words = (
            tuple(Word(word, i * share, (i + 1) * share, 1.0) for i, word in enumerate(said)) if word_timestamps else ()
        )
        return Transcript(
            text=text, language=primary, confidence=1.0 if said else 0.0, words=words, audio_seconds=audio_seconds
        )


class ToneSynthesizer:
    """Test fixture for `Synthesizer`: "voices/tone", a 220 Hz tone (shifted by the style's
    pitch), 60 ms a word at rate 1.0 (divided by the rate, clipped to 0.5..2.0), one chunk per
    sentence, 16 kHz. Replacements apply as in the real voices; text with nothing to say yields
    no chunks. `spoken` lists the sentences it voiced, after replacements."""

    voice = Voice(
        name="voices/tone", display_name="Tone (test fixture)", languages=("en-US",), sample_rate=16_000, engine="tone"
    )

    def __init__(self) -> None:
        self.spoken: list[str] = []

    def synthesize(self, text: str, style: SpeechStyle) -> Iterator[Samples]:
        rate = min(max(style.rate, 0.5), 2.0)
        frequency = 220.0 * 2 ** (style.pitch_semitones / 12)
        for sentence in sentences(apply_replacements(text, style.replacements)):
            self.spoken.append(sentence)
            count = math.ceil(len(sentence.split()) * 0.060 / rate * self.voice.sample_rate)
            seconds = np.arange(count) / self.voice.sample_rate
            yield (0.3 * np.sin(2 * np.pi * frequency * seconds)).astype(np.float32)
