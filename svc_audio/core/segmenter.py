"""Turn-taking from speech probabilities: when an utterance starts and when it ends.

The speech detector gives one probability per window (Silero VAD: 512 samples, 32 ms at
16 kHz). Each window is first called speech or silence with hysteresis, so a probability that
wavers around the threshold does not flip the state every window:

- speech when p >= threshold;
- silence when p < threshold - 0.15 (`HYSTERESIS`);
- in between, whatever the previous window was.

Then the timing rules (`VadParams`):

- speech must last `min_speech` before it counts: `Onset(at=start)` is emitted with the window
  that reaches start + min_speech, so barge-in costs min_speech plus at most one window. A
  burst shorter than that (a cough, a door) gives no event at all, and so never interrupts
  playback. A silent window before confirmation drops the burst.
- after an onset, silence must last `min_silence` to end the utterance: `Ended(start, end)`,
  end being the last speech window's end. A shorter pause stays inside the utterance.

Times are seconds from the stream's start: window i covers [i * window, (i + 1) * window).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from svc_audio.model import VadParams

# How far below the threshold a probability must fall to end speech (Silero's own VADIterator
# uses the same 0.15 margin).
HYSTERESIS = 0.15
# Window arithmetic in float seconds: 0.032 * 7 is not exactly 0.224.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Onset:
    """Speech confirmed; it began at `at` (it was confirmed min_speech later)."""

    at: float


@dataclass(frozen=True, slots=True)
class Ended:
    """The utterance that began at `start` ended at `end` (its last speech window's end)."""

    start: float
    end: float


SegmentEvent = Onset | Ended


class _State(enum.Enum):
    SILENCE = "SILENCE"
    PENDING = "PENDING"  # speech heard, not yet min_speech long
    SPEAKING = "SPEAKING"  # an utterance is open (possibly in a pause shorter than min_silence)


class Segmenter:
    """Cuts one stream's windows of speech probability into utterances."""

    def __init__(self, params: VadParams, window_seconds: float) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self._params = params
        self._window = window_seconds
        self._index = 0  # windows seen
        self._in_speech = False  # the hysteresis' verdict on the last window
        self._state = _State.SILENCE
        self._start = 0.0
        self._last_speech_end = 0.0

    @property
    def speaking(self) -> bool:
        """Whether an utterance is open: confirmed and not ended (true through short pauses)."""
        return self._state is _State.SPEAKING

    @property
    def last_speech_end(self) -> float:
        """End of the last window heard as speech (where a silence now running began)."""
        return self._last_speech_end

    @property
    def position(self) -> float:
        """Seconds of audio seen (the end of the last window)."""
        return self._index * self._window

    def push(self, probabilities: Iterable[float]) -> list[SegmentEvent]:
        """The events that these consecutive windows' probabilities complete."""
        events: list[SegmentEvent] = []
        threshold = self._params.speech_threshold
        for p in probabilities:
            begin = self._index * self._window
            self._index += 1
            end = self._index * self._window
            if self._in_speech:
                self._in_speech = p >= threshold - HYSTERESIS
            else:
                self._in_speech = p >= threshold
            event = self._step(begin, end)
            if event is not None:
                events.append(event)
        return events

    def _step(self, begin: float, end: float) -> SegmentEvent | None:
        if self._in_speech:
            if self._state is _State.SILENCE:
                self._state, self._start = _State.PENDING, begin
            self._last_speech_end = end
            if self._state is _State.PENDING and end - self._start >= self._params.min_speech - _EPSILON:
                self._state = _State.SPEAKING
                return Onset(self._start)
            return None
        if self._state is _State.PENDING:
            self._state = _State.SILENCE
        elif self._state is _State.SPEAKING and end - self._last_speech_end >= self._params.min_silence - _EPSILON:
            self._state = _State.SILENCE
            return Ended(self._start, self._last_speech_end)
        return None

    def flush(self, now: float) -> list[SegmentEvent]:
        """End of input at `now` (stream seconds): ends an open utterance (at `now` if speech
        was still going, else at its last speech window's end). An unconfirmed burst stays without
        an event. Later windows are timed on from where the stream was."""
        events: list[SegmentEvent] = []
        if self._state is _State.SPEAKING:
            end = max(now, self._last_speech_end) if self._in_speech else self._last_speech_end
            events.append(Ended(self._start, end))
        self._state = _State.SILENCE
        self._in_speech = False
        return events
