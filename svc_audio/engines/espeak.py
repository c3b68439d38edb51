"""espeak-ng: the always-available fallback voice (formant synthesis, robotic but clear).

Each sentence is one `espeak-ng --stdout` run with the text on its stdin, never on its command
line (text cannot become an option, and does not show in the process list). Its WAV comes back
on stdout with the sizes left at a streaming placeholder, so it is parsed here, not by `wave`.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator

import numpy as np
from scipy.signal import resample_poly

from svc_audio.engines.text import apply_replacements, bcp47, sentences
from svc_audio.errors import SynthesizerUnavailable
from svc_audio.model import Samples, SpeechStyle, Voice

ENGINE = "espeak-ng"
SAMPLE_RATE = 22_050
# espeak-ng's default speed (words a minute) and pitch (0..99), which a style scales and shifts.
_WORDS_PER_MINUTE = 175
_PITCH = 50
_PITCH_PER_SEMITONE = 8
_RATES = (0.5, 2.0)
# Longer than any one sentence takes (espeak-ng speaks far faster than real time).
_TIMEOUT_SECONDS = 30.0
_VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


class EspeakSynthesizer:
    """`Synthesizer` over the espeak-ng binary: "voices/espeak-ng-<voice>", 22,050 Hz.

    A style's rate scales the speed (175 words a minute at 1.0, rate clipped to 0.5..2.0) and
    its pitch shifts espeak's pitch (50, 8 steps a semitone, within 0..99). One chunk per
    sentence; text with nothing to say (no letter or digit) yields no chunks. The binary is
    looked up on each call, so a missing one fails that call (SynthesizerUnavailable), not the
    service's start.
    """

    def __init__(self, voice: str = "en-us", binary: str = "espeak-ng") -> None:
        if not _VOICE_NAME.fullmatch(voice):
            raise ValueError(f"not an espeak-ng voice name: {voice!r}")
        self._voice_id = voice
        self._binary = binary
        self.voice = Voice(
            name=f"voices/espeak-ng-{voice}",
            display_name=f"espeak-ng {voice}",
            languages=(bcp47(voice.split("+")[0]),),
            sample_rate=SAMPLE_RATE,
            engine=ENGINE,
        )

    def synthesize(self, text: str, style: SpeechStyle) -> Iterator[Samples]:
        text = apply_replacements(text, style.replacements)
        rate = min(max(style.rate, _RATES[0]), _RATES[1])
        pitch = min(max(_PITCH + _PITCH_PER_SEMITONE * style.pitch_semitones, 0), 99)
        for sentence in sentences(text):
            yield self._speak(sentence, round(_WORDS_PER_MINUTE * rate), round(pitch))

    def _speak(self, sentence: str, words_per_minute: int, pitch: int) -> Samples:
        binary = shutil.which(self._binary)
        if binary is None:
            raise self._unavailable(f"{self._binary} is not installed")
        command = [binary, "--stdout", "-b", "1", "-v", self._voice_id, "-s", str(words_per_minute)]
        command += ["-p", str(pitch), "--stdin"]
        try:
            run = subprocess.run(command, input=sentence.encode(), capture_output=True, timeout=_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._unavailable(f"espeak-ng could not run ({type(exc).__name__})") from exc
        if run.returncode != 0:
            # stderr names what is wrong (an unknown voice), never the text, which came on stdin.
            reason = run.stderr.decode(errors="replace").strip()[:200]
            raise self._unavailable(f"espeak-ng exited with {run.returncode}: {reason}")
        try:
            samples, rate = _parse_wav(run.stdout)
        except ValueError as exc:
            raise self._unavailable(f"espeak-ng wrote no usable WAV: {exc}") from exc
        if rate != SAMPLE_RATE:
            # Some espeak voices (mbrola) speak at 16 kHz; the voice promises 22,050 Hz.
            common = math.gcd(rate, SAMPLE_RATE)
            samples = np.asarray(resample_poly(samples, SAMPLE_RATE // common, rate // common), dtype=np.float32)
        return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)

    def _unavailable(self, message: str) -> SynthesizerUnavailable:
        return SynthesizerUnavailable(message, metadata={"voice": self.voice.name})


def _parse_wav(data: bytes) -> tuple[Samples, int]:
    """The mono 16-bit PCM samples (as floats in [-1, 1]) and rate of a RIFF WAVE file whose
    size fields may be placeholders: the data chunk runs to the end of what was written."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF WAVE stream")
    position, rate = 12, None
    while position + 8 <= len(data):
        kind, size = data[position : position + 4], struct.unpack_from("<I", data, position + 4)[0]
        body = position + 8
        if kind == b"fmt ":
            encoding, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if (encoding, channels, bits) != (1, 1, 16):
                raise ValueError(f"format {encoding}, {channels} channels, {bits} bits; want PCM, 1, 16")
        elif kind == b"data":
            if rate is None:
                raise ValueError("data before fmt")
            end = min(body + size, len(data))
            end -= (end - body) % 2
            samples = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            return samples, rate
        position = body + size + (size % 2)
    raise ValueError("no data chunk")
