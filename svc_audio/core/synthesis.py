"""Speech out: text spoken sentence by sentence in a client's format (StreamingSynthesize, and
the answers of a voice conversation).

`Utterer` speaks one text or one stream of sentences with one voice into one output format:
each sentence is synthesised as soon as it is given, its samples resampled to the output rate,
encoded, and cut into chunks of at most 32 KiB; it measures time to first audio, the engine's
real-time factor and the audio's length.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from svc_audio.core.engines import Synthesis
from svc_audio.core.pcm import StreamResampler, check_format, encode
from svc_audio.core.sentences import SentenceCutter, speakable, style_of
from svc_audio.errors import TextEmpty, TextTooLong
from svc_audio.model import MAX_CHUNK_BYTES, AudioFormat, Encoding, PersonaVoice, Quality, SpeechStyle, SpokenAudio

MAX_TEXT_CHARS = 5000


def output_format(encoding: Encoding | None, sample_rate: int, native_rate: int) -> AudioFormat:
    """The format audio goes out in: unset encoding is LINEAR16, rate 0 the voice's own."""
    return check_format(encoding or Encoding.LINEAR16, sample_rate or native_rate)


def persona_style(persona: PersonaVoice, speaking_rate: float = 0.0) -> SpeechStyle:
    """The persona's tone as a speech style, its rate scaled by `speaking_rate` (0: 1.0),
    kept within 0.5..2.0."""
    style = style_of(persona.tone)
    rate = min(2.0, max(0.5, style.rate * (speaking_rate or 1.0)))
    return SpeechStyle(rate=rate, pitch_semitones=style.pitch_semitones, replacements=style.replacements)


class Utterer:
    """Speaks sentences with one voice into one format; measures what it did."""

    def __init__(
        self,
        synthesis: Synthesis,
        voice: str,
        fmt: AudioFormat,
        style: SpeechStyle,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._synthesis = synthesis
        self.voice = synthesis.voice(voice)
        self._format = fmt
        self._style = style
        self._clock = clock
        self._resampler = StreamResampler(self.voice.sample_rate, fmt.sample_rate)
        self._bytes_per_chunk = MAX_CHUNK_BYTES // fmt.bytes_per_sample * fmt.bytes_per_sample
        self.started_at: float | None = None
        self.first_audio_at: float | None = None
        self.compute_seconds = 0.0
        self.voice_seconds = 0.0
        self._sent_samples = 0

    @property
    def seconds(self) -> float:
        """Audio sent so far, in seconds."""
        return self._sent_samples / self._format.sample_rate

    async def say(self, sentence: str) -> AsyncIterator[SpokenAudio]:
        """`sentence` spoken: its encoded chunks as they are produced."""
        text = speakable(sentence)
        if not text:
            return
        if self.started_at is None:
            self.started_at = self._clock()
        async for chunk in self._synthesis.speak(self.voice.name, text, self._style):
            self.compute_seconds += chunk.compute_seconds
            self.voice_seconds += len(chunk.samples) / self.voice.sample_rate
            for piece in self._encoded(self._resampler.push(chunk.samples)):
                yield piece

    def flush(self) -> list[SpokenAudio]:
        """What the resampler still holds, at the end of the answer."""
        return list(self._encoded(self._resampler.flush()))

    def _encoded(self, samples: object) -> list[SpokenAudio]:
        data = encode(samples, self._format)  # type: ignore[arg-type]  # Samples from the resampler
        pieces = []
        for start in range(0, len(data), self._bytes_per_chunk):
            piece = data[start : start + self._bytes_per_chunk]
            if self.first_audio_at is None:
                self.first_audio_at = self._clock()
            pieces.append(SpokenAudio(piece, self.seconds))
            self._sent_samples += len(piece) // self._format.bytes_per_sample
        return pieces

    def quality(self) -> Quality:
        """Time to first audio, real-time factor and length of what was said."""
        latency = None
        if self.started_at is not None and self.first_audio_at is not None:
            latency = self.first_audio_at - self.started_at
        rtf = self.compute_seconds / self.voice_seconds if self.voice_seconds else None
        return Quality(synthesis_latency=latency, synthesis_rtf=rtf, synthesized_seconds=self.seconds or None)


def check_text(text: str) -> str:
    if not text.strip():
        raise TextEmpty("there is no text to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLong("the text is too long to speak", metadata={"limit_chars": str(MAX_TEXT_CHARS)})
    return text


def sentences_of(text: str) -> list[str]:
    """The text cut as an answer would be, so the first sentence is short."""
    cutter = SentenceCutter()
    return [*cutter.push(text), *cutter.flush()]
