"""Whisper through faster-whisper (CTranslate2): speech to text on 16 kHz audio already cut by
the VAD.

Decoding is deterministic: temperature 0 only, no fallback to sampling, no conditioning on
earlier text, and no VAD of faster-whisper's own (the caller's VAD has cut the utterance). A
final transcript uses beam search with segment and (on request) word timestamps; an interim
one of a growing window (`partial=True`) takes the cheap path: greedy, no timestamps at all.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import ctranslate2  # type: ignore[import-untyped]  # ships no type information
import numpy as np
from faster_whisper import WhisperModel

from svc_audio.errors import RecognizerUnavailable, UnsupportedLanguage
from svc_audio.model import SPEECH_RATE, Samples, Transcript, Word

# BCP-47 primary subtags that Whisper spells otherwise, and back.
_TO_WHISPER = {"jv": "jw"}
_FROM_WHISPER = {whisper: bcp for bcp, whisper in _TO_WHISPER.items()}


class WhisperRecognizer:
    """`Recognizer` over a CTranslate2 Whisper folder: "faster-whisper/<folder name>".

    `device="auto"` runs on CUDA when CTranslate2 sees a GPU, else on the CPU; on the CPU
    `compute_type="default"` means int8 (Whisper's float weights quantised at load: several
    times faster, the same words on our checks). `cpu_threads=0` lets CTranslate2 choose.
    An English-only model accepts "en" alone and answers "en" when asked to detect; a
    multilingual one detects the language when given "". A language the model does not know
    raises UnsupportedLanguage; anything that goes wrong inside the engine RecognizerUnavailable.
    Calls from several threads are safe (CTranslate2 queues them on its one worker).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        beam_size: int = 5,
    ) -> None:
        folder = Path(model_dir)
        self.name = f"faster-whisper/{folder.name}"
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if device == "cpu" and compute_type == "default":
            compute_type = "int8"
        self.device, self.compute_type = device, compute_type
        self._beam_size = beam_size
        if not (folder / "model.bin").is_file():
            # faster-whisper would take a missing folder for a model name to download.
            raise RecognizerUnavailable(f"no Whisper model in {folder}", metadata={"recognizer": self.name})
        try:
            self._model = WhisperModel(
                str(folder), device=device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError, ValueError, OSError; all mean "cannot run".
            raise RecognizerUnavailable(
                f"{self.name} cannot be loaded on {device} ({type(exc).__name__})", metadata={"recognizer": self.name}
            ) from exc
        multilingual = bool(self._model.model.is_multilingual)
        self._known = frozenset(self._model.supported_languages)
        self.languages: frozenset[str] | None = None if multilingual else frozenset({"en"})

    def transcribe(self, audio: Samples, language: str, *, word_timestamps: bool, partial: bool = False) -> Transcript:
        wanted = self._whisper_language(language)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        audio_seconds = len(audio) / SPEECH_RATE
        if len(audio) == 0:
            # Nothing to hear, nothing to detect: the language is the one asked for, or unknown.
            return Transcript(text="", language=_from_whisper(wanted) if wanted else "", confidence=0.0)
        words_wanted = word_timestamps and not partial
        started = time.perf_counter()
        try:
            segments, info = self._model.transcribe(
                audio,
                language=wanted,
                beam_size=1 if partial else self._beam_size,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=False,
                without_timestamps=partial,
                word_timestamps=words_wanted,
            )
            # The segments are decoded lazily, as they are read: the decode is this line.
            decoded = list(segments)
        except Exception as exc:  # CTranslate2 and the tokenizer raise many types; none is the caller's fault.
            raise RecognizerUnavailable(
                f"{self.name} failed to transcribe ({type(exc).__name__})", metadata={"recognizer": self.name}
            ) from exc
        compute_seconds = time.perf_counter() - started

        texts = [segment.text.strip() for segment in decoded]
        words = tuple(
            Word(
                word=word.word.strip(),
                # Whisper's timestamps come in 20 ms steps and may overshoot the audio's end.
                start=min(max(float(word.start), 0.0), audio_seconds),
                end=min(max(float(word.end), 0.0), audio_seconds),
                confidence=min(max(float(word.probability), 0.0), 1.0),
            )
            for segment in decoded
            for word in (segment.words or ())
            if word.word.strip()
        )
        logprobs = [float(segment.avg_logprob) for segment in decoded]
        confidence = min(max(math.exp(sum(logprobs) / len(logprobs)), 0.0), 1.0) if logprobs else 0.0
        return Transcript(
            text=" ".join(text for text in texts if text),
            language=_from_whisper(info.language),
            confidence=confidence,
            words=words,
            compute_seconds=compute_seconds,
            audio_seconds=audio_seconds,
        )

    def _whisper_language(self, language: str) -> str | None:
        """Whisper's code for a BCP-47 tag ("en-US" -> "en"); None to detect."""
        primary = language.strip().replace("_", "-").split("-")[0].lower()
        if not primary:
            return None if self.languages is None else "en"
        code = _TO_WHISPER.get(primary, primary)
        if code not in self._known:
            raise UnsupportedLanguage(
                f"{self.name} does not recognise {language!r}",
                metadata={"recognizer": self.name, "language": language},
            )
        return code


def _from_whisper(code: str) -> str:
    return _FROM_WHISPER.get(code, code)
