"""One stream's speech, turned into utterances: voice activity, interim and final transcripts,
features, speaker labels. Shared by StreamingRecognize and the voice conversation.

Audio comes in as 16 kHz samples (`push`); speech detection runs on every whole 32 ms window as
it arrives, and the segmenter turns its probabilities into utterance onsets and ends. Decoding
runs in the background, one job at a time per stream and in order, so an utterance's interim
results come before its end, its end before its final result, and finals in utterance order:

    SPEECH_STARTED (the caller's `on_onset` hears of it at once: barge-in acts on that)
    interim results (a growing window decoded greedily, at most one in flight; skipped while
                     busy, so a slow recogniser sends fewer, never late ones)
    SPEECH_ENDED (at once, unless the previous utterance's results are still being decoded)
    final result (full decode with word timings, often under way already: the utterance is
                 decoded once a short silence begins, while its end is being confirmed)
    features

Offsets are audio time since the stream's first sample; `Utterance` adds the wall-clock
moments (monotonic seconds) the voice loop measures its latencies from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from svc_audio.core.engines import Recognition, SpeechDetection
from svc_audio.core.features import Agitation, utterance_features
from svc_audio.core.segmenter import Ended, Onset, Segmenter
from svc_audio.core.speakers import SpeakerClusters
from svc_audio.errors import StreamDurationExceeded, UnsupportedLanguage
from svc_audio.model import (
    SPEECH_RATE,
    ActivityKind,
    Features,
    Output,
    RecognitionResult,
    Samples,
    Transcript,
    Utterance,
    UtteranceFeatures,
    VadParams,
    VoiceActivity,
    Word,
)

_NO_AUDIO = np.zeros(0, dtype=np.float32)

# Audio kept after the last speech window in a final decode: the tail of a soft last sound.
_TAIL_SECONDS = 0.15


@dataclass(frozen=True, slots=True)
class RecognitionOptions:
    """How one stream is recognised. `language` "" detects; `features` sends AudioFeatures;
    agitation and speaker labels need the features computed even when they are not sent."""

    language: str = ""
    interim: bool = False
    features: bool = False
    speaker_labels: bool = False
    agitation: bool = False
    vad: VadParams = field(default_factory=VadParams)
    # Seconds of new speech between two interim decodes.
    interim_interval: float = 0.6
    # Silence after which the utterance so far is decoded ahead of its end (None: never). If
    # the silence goes on to end the utterance, its final result is ready (or nearly) when the
    # end is confirmed; if speech resumes, that decode is thrown away.
    prefetch_after: float | None = 0.2
    # Audio a stream may carry before OUT_OF_RANGE.
    max_seconds: float = 15 * 60.0


# Stores an utterance's features (Qdrant); the point's id.
StoreFeatures = Callable[[UtteranceFeatures], Awaitable[str]]


def check_language(language: str, languages: frozenset[str] | None) -> str:
    """The BCP-47 code as given when the recogniser knows its primary subtag; else
    UNSUPPORTED_LANGUAGE."""
    primary = language.split("-", 1)[0].lower()
    if language and (not primary.isalpha() or (languages is not None and primary not in languages)):
        raise UnsupportedLanguage(
            "the recogniser does not know this language",
            metadata={"language_code": language[:35], "supported": ",".join(sorted(languages or ()))},
        )
    return language


@dataclass(slots=True)
class _Job:
    kind: str  # "started" | "interim" | "prefetch" | "final"
    utterance: int
    start: float
    end: float
    audio: Samples
    audio_start: float
    ended_at: float = 0.0
    end_announced: bool = False


class UtteranceStream:
    """Speech detection and recognition of one stream; read `outputs` until it yields None."""

    def __init__(
        self,
        detection: SpeechDetection,
        recognition: Recognition,
        options: RecognitionOptions,
        *,
        store: StoreFeatures | None = None,
        on_onset: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_onset` is told of each confirmed onset (its audio time) at once, ahead of the
        ordered outputs: what barge-in acts on."""
        self._on_onset = on_onset
        self._detection = detection
        self._recognition = recognition
        self._options = options
        self._store = store
        self._clock = clock
        self._state = detection.start_stream()
        self._segmenter = Segmenter(options.vad, detection.window / SPEECH_RATE)
        self._agitation = Agitation()
        self._speakers = SpeakerClusters()
        self.outputs: asyncio.Queue[Output | None] = asyncio.Queue()
        # The stream's audio from sample `_kept_from` on; older audio is dropped once no
        # utterance can need it.
        # A buffer that grows by doubling, so that a chunk's append copies only the chunk.
        self._buffer = np.zeros(4 * SPEECH_RATE, dtype=np.float32)
        self._length = 0
        self._kept_from = 0
        self._detected = 0  # samples already given to speech detection
        self._utterance = 0
        self._utterance_start = 0.0  # where the open utterance's audio starts (with its pad)
        self._last_interim = 0.0
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._prefetch_end = -1.0
        self._finals_pending = 0  # final jobs queued or running
        self._started_out = 0  # the last utterance whose SPEECH_STARTED is out
        self._ended_out = 0  # the last utterance whose SPEECH_ENDED is out
        self._prefetched: tuple[int, float, int, Transcript] | None = None
        self._busy = False
        self._worker = asyncio.get_running_loop().create_task(self._decode_jobs(), name="utterance decoding")
        self.failure: BaseException | None = None

    @property
    def _audio(self) -> Samples:
        """The kept audio (a view of the buffer)."""
        return self._buffer[: self._length]

    @property
    def seconds(self) -> float:
        """Audio received so far."""
        return (self._kept_from + self._length) / SPEECH_RATE

    def _append(self, samples: Samples) -> None:
        needed = self._length + len(samples)
        if needed > len(self._buffer):
            grown = np.zeros(max(needed, 2 * len(self._buffer)), dtype=np.float32)
            grown[: self._length] = self._buffer[: self._length]
            self._buffer = grown
        self._buffer[self._length : needed] = samples
        self._length = needed

    @property
    def speaking(self) -> bool:
        return self._segmenter.speaking

    async def push(self, samples: Samples) -> bool:
        """Takes the next audio; returns once its whole windows went through speech detection,
        whether there were any (a chunk shorter than a window may complete none)."""
        if self.failure is not None:
            raise self.failure
        if self.seconds + len(samples) / SPEECH_RATE > self._options.max_seconds:
            raise StreamDurationExceeded(
                "the stream carried more audio than its limit",
                metadata={"limit_seconds": str(int(self._options.max_seconds))},
            )
        self._append(samples)
        total = self._kept_from + self._length
        window = self._detection.window
        whole = (total - self._detected) // window * window
        if whole == 0:
            return False
        start = self._detected - self._kept_from
        windows = self._buffer[start : start + whole].copy()  # the buffer may move meanwhile
        probabilities = await self._detection.probabilities(self._state, windows)
        self._detected += whole
        for event in self._segmenter.push(probabilities):
            self._on(event)
        self._maybe_prefetch()
        self._maybe_interim()
        self._trim()
        return True

    async def finish(self) -> None:
        """End of input: the open utterance ends here; returns when every result is out."""
        for event in self._segmenter.flush(self.seconds):
            self._on(event)
        await self._jobs.put(None)
        await self._worker

    def fail(self, error: BaseException) -> None:
        """The input failed: the reader gets what is out already, then `failure`."""
        if self.failure is None:
            self.failure = error
        self._worker.cancel()

    async def next_output(self) -> Output | None:
        """The next output; None at the end; raises the stream's failure once it is read out."""
        output = await self.outputs.get()
        if output is None and self.failure is not None:
            raise self.failure
        return output

    async def close(self) -> None:
        """Stops at once (the stream was abandoned); nothing more is sent."""
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    def _on(self, event: Onset | Ended) -> None:
        if isinstance(event, Onset):
            self._utterance += 1
            self._utterance_start = max(self._kept_from / SPEECH_RATE, event.at - self._options.vad.pad)
            self._last_interim = event.at
            if self._on_onset is not None:
                self._on_onset(event.at)
            # In order with the previous utterance's end and results: a client reading a
            # SPEECH_ENDED knows which utterance it closes.
            self._jobs.put_nowait(_Job("started", self._utterance, event.at, event.at, _NO_AUDIO, event.at))
            return
        end = min(self.seconds, event.end + _TAIL_SECONDS)
        audio = self._slice(self._utterance_start, end)
        job = _Job("final", self._utterance, event.start, event.end, audio, self._utterance_start, self._clock())
        # The end is announced at once when everything before it is out (the previous
        # utterance's final result, this one's start); a pending look-ahead decode need not
        # delay it, and this utterance's interim results still to come are dropped.
        if self._finals_pending == 0 and self._started_out == self._utterance:
            self._announce_end(job)
        self._finals_pending += 1
        self._jobs.put_nowait(job)

    def _announce_end(self, job: _Job) -> None:
        self.outputs.put_nowait(VoiceActivity(ActivityKind.SPEECH_ENDED, job.end))
        self._ended_out = job.utterance
        job.end_announced = True

    def _maybe_prefetch(self) -> None:
        after = self._options.prefetch_after
        silence_from = self._segmenter.last_speech_end
        if after is None or not self._segmenter.speaking or self._prefetch_end == silence_from:
            return
        if self._segmenter.position - silence_from < after:
            return
        self._prefetch_end = silence_from
        end = min(self.seconds, silence_from + _TAIL_SECONDS)
        audio = self._slice(self._utterance_start, end)
        self._jobs.put_nowait(_Job("prefetch", self._utterance, 0.0, silence_from, audio, self._utterance_start))

    def _maybe_interim(self) -> None:
        if not (self._options.interim and self._segmenter.speaking) or self._busy or not self._jobs.empty():
            return
        now = self.seconds
        if now - self._last_interim < self._options.interim_interval:
            return
        self._last_interim = now
        start = self._utterance_start
        self._jobs.put_nowait(_Job("interim", self._utterance, start, now, self._slice(start, now), start))

    def _slice(self, start: float, end: float) -> Samples:
        first = max(0, int(start * SPEECH_RATE) - self._kept_from)
        last = max(first, int(end * SPEECH_RATE) - self._kept_from)
        return self._audio[first:last].copy()

    def _trim(self) -> None:
        # Keep what an open utterance or the next onset (confirmed up to a second late, then
        # padded) may still need.
        keep_from = int((self.seconds - self._options.vad.pad - 1.0) * SPEECH_RATE)
        if self._segmenter.speaking:
            keep_from = min(keep_from, int(self._utterance_start * SPEECH_RATE))
        keep_from = min(keep_from, self._detected)
        drop = keep_from - self._kept_from
        if drop > SPEECH_RATE:  # in steps of a second or more, not every frame
            kept = self._length - drop
            self._buffer[:kept] = self._buffer[drop : self._length]
            self._length = kept
            self._kept_from += drop

    async def _decode_jobs(self) -> None:
        try:
            while (job := await self._jobs.get()) is not None:
                self._busy = True
                try:
                    if job.kind == "started":
                        self.outputs.put_nowait(VoiceActivity(ActivityKind.SPEECH_STARTED, job.start))
                        self._started_out = job.utterance
                    elif job.kind == "prefetch":
                        transcript = await self._recognition.transcribe(job.audio, self._options.language, words=True)
                        self._prefetched = (job.utterance, job.end, len(job.audio), transcript)
                    elif job.kind == "interim":
                        await self._interim(job)
                    else:
                        await self._final(job)
                finally:
                    self._busy = False
        except asyncio.CancelledError:
            if self.failure is None:
                raise
        except Exception as error:  # noqa: BLE001  # the reader learns of it through `failure`
            self.failure = error
        finally:
            self.outputs.put_nowait(None)

    async def _interim(self, job: _Job) -> None:
        transcript = await self._recognition.transcribe(job.audio, self._options.language, words=False, partial=True)
        if transcript.text and self._ended_out < job.utterance:
            self.outputs.put_nowait(
                RecognitionResult(job.utterance, False, transcript.text, job.start, job.end, transcript.language)
            )

    async def _final(self, job: _Job) -> None:
        if not job.end_announced:
            self._announce_end(job)
        offset = job.audio_start
        prefetched = self._prefetched
        self._prefetched = None
        if prefetched is not None and prefetched[:3] == (job.utterance, job.end, len(job.audio)):
            transcript = prefetched[3]  # decoded while the silence was being confirmed
        else:
            transcript = await self._recognition.transcribe(job.audio, self._options.language, words=True)
        words = tuple(
            Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in transcript.words
        )
        result = RecognitionResult(
            job.utterance,
            True,
            transcript.text,
            job.start,
            job.end,
            transcript.language,
            confidence=transcript.confidence,
            words=words,
        )
        features: Features | None = None
        agitation = 0.0
        needs_features = self._options.features or self._options.speaker_labels or self._options.agitation
        if needs_features and len(job.audio):
            features = await asyncio.to_thread(utterance_features, job.audio)
            agitation = self._agitation.score(features)
            if self._options.speaker_labels:
                result = replace(result, speaker_label=self._speakers.label(features))
        final_at = self._clock()
        self.outputs.put_nowait(result)
        if features is not None and self._options.features:
            found = UtteranceFeatures(job.utterance, job.start, job.end, features, agitation)
            if self._store is not None:
                found = replace(found, vector_id=await self._store(found))
            self.outputs.put_nowait(found)
        self.outputs.put_nowait(Utterance(result, transcript, agitation, job.ended_at, final_at, features))
        self._finals_pending -= 1
