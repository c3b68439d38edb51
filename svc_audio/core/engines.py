"""The engines as the core calls them: off the event loop, timed, and batched where it pays.

The engines (svc_audio.ports) are synchronous and CPU-bound; onnxruntime and CTranslate2 let go
of the GIL while they compute, so threads are enough. Each kind gets its own pool, so a long
decode never delays a stream's speech detection:

- speech detection: one worker thread takes every window that streams have queued since its
  last pass and runs them stream by stream in that one pass, so a thousand 32 ms windows a
  second cost a few hundred thread hand-offs, not a thousand (`SpeechDetection`);
- recognition and synthesis: a pool each, sized by settings (one per core by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from svc_audio.errors import SynthesizerUnavailable, VoiceNotFound
from svc_audio.model import Samples, SpeechStyle, Transcript, Voice
from svc_audio.ports import Recognizer, SpeechDetector, Synthesizer


@dataclass(slots=True)
class _Pending:
    state: object
    audio: Samples
    done: asyncio.Future[Samples]


class SpeechDetection:
    """Speech probabilities for many streams through one worker thread."""

    def __init__(self, detector: SpeechDetector) -> None:
        self._detector = detector
        self.window = detector.window
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._worker: asyncio.Task[None] | None = None

    def start_stream(self) -> object:
        return self._detector.start()

    async def probabilities(self, state: object, audio: Samples) -> Samples:
        """One probability per whole window of `audio` (a multiple of `window` samples)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="speech detection")
        done: asyncio.Future[Samples] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(state, audio, done))
        self._wake.set()
        return await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._pool, self._compute, batch)
            except Exception as error:  # noqa: BLE001  # every waiting stream learns of it
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(error)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.done.done():
                    item.done.set_result(result)

    def _compute(self, batch: list[_Pending]) -> list[Samples]:
        return [self._detector.probabilities(item.state, item.audio) for item in batch]

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=False, cancel_futures=True)


class Recognition:
    """The recogniser in its own pool; results carry the engine's own compute time."""

    def __init__(self, recognizer: Recognizer, threads: int = 1) -> None:
        self._recognizer = recognizer
        self.name = recognizer.name
        self.languages = recognizer.languages
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="asr")

    async def transcribe(self, audio: Samples, language: str, *, words: bool, partial: bool = False) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._recognizer.transcribe(audio, language, word_timestamps=words, partial=partial)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class SpokenChunk:
    """Samples of a voice at its native rate, and the engine time they took."""

    samples: Samples
    compute_seconds: float


_DONE = object()


class Synthesis:
    """The deployment's voices, each spoken in the synthesis pool, chunk by chunk."""

    def __init__(self, voices: Mapping[str, Synthesizer], default_voice: str, threads: int = 1) -> None:
        if default_voice not in voices:
            raise ValueError(f"the default voice {default_voice!r} is not among the voices")
        self._voices = dict(sorted(voices.items()))
        self.default_voice = default_voice
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="tts")

    def voices(self) -> list[Voice]:
        return [synthesizer.voice for synthesizer in self._voices.values()]

    def voice(self, name: str) -> Voice:
        """The voice called `name` ("" the default); VOICE_NOT_FOUND when there is none."""
        return self._synthesizer(name).voice

    def _synthesizer(self, name: str) -> Synthesizer:
        found = self._voices.get(name or self.default_voice)
        if found is None:
            raise VoiceNotFound("no such voice", metadata={"voice": name[:200]})
        return found

    async def speak(self, voice: str, text: str, style: SpeechStyle) -> AsyncIterator[SpokenChunk]:
        """The voice's samples for `text` as the engine produces them. Stopping early (the
        caller breaks out or is cancelled) stops the engine after its current chunk."""
        synthesizer = self._synthesizer(voice)
        loop = asyncio.get_running_loop()
        chunks: Iterator[Samples] = iter(())

        def start() -> None:
            nonlocal chunks
            chunks = synthesizer.synthesize(text, style)

        def step() -> object:
            began = time.perf_counter()
            try:
                chunk = next(chunks)
            except StopIteration:
                return _DONE
            return SpokenChunk(np.asarray(chunk, dtype=np.float32), time.perf_counter() - began)

        try:
            await loop.run_in_executor(self._pool, start)
            while True:
                item = await loop.run_in_executor(self._pool, step)
                if item is _DONE:
                    return
                assert isinstance(item, SpokenChunk)
                yield item
        except (SynthesizerUnavailable, VoiceNotFound):
            raise
        except Exception as error:
            raise SynthesizerUnavailable("the voice could not speak", metadata={"voice": voice}) from error

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
