"""svc_audio.core.segmenter: utterance onsets and ends from synthetic speech probabilities."""

from __future__ import annotations

import math

import pytest

from svc_audio.core.segmenter import Ended, Onset, Segmenter, SegmentEvent
from svc_audio.model import VadParams

WINDOW = 0.032  # Silero VAD: 512 samples at 16 kHz
PARAMS = VadParams(speech_threshold=0.5, min_silence=0.5, min_speech=0.2)


def windows(seconds: float) -> int:
    return round(seconds / WINDOW)


def run(probabilities: list[float], params: VadParams = PARAMS, step: int = 1) -> list[tuple[int, SegmentEvent]]:
    """Events, each with the index of the window whose push produced it."""
    segmenter = Segmenter(params, WINDOW)
    events: list[tuple[int, SegmentEvent]] = []
    for first in range(0, len(probabilities), step):
        for event in segmenter.push(probabilities[first : first + step]):
            events.append((first + step - 1, event))
    return events


def test_a_100_ms_noise_burst_gives_no_event() -> None:
    probabilities = [0.0] * 10 + [0.95] * windows(0.1) + [0.0] * 40
    assert run(probabilities) == []


def test_one_second_of_speech_then_600_ms_of_silence_is_one_utterance() -> None:
    start = 10
    probabilities = [0.05] * start + [0.9] * windows(1.0) + [0.05] * windows(0.6)
    events = [event for _, event in run(probabilities)]
    speech_end = (start + windows(1.0)) * WINDOW
    assert events == [
        Onset(at=pytest.approx(start * WINDOW)),
        Ended(start=pytest.approx(start * WINDOW), end=pytest.approx(speech_end)),
    ]


def test_a_300_ms_pause_inside_speech_stays_one_utterance() -> None:
    probabilities = [0.9] * windows(0.8) + [0.1] * windows(0.3) + [0.9] * windows(0.8) + [0.1] * windows(0.6)
    events = [event for _, event in run(probabilities)]
    assert [type(event) for event in events] == [Onset, Ended]
    assert events[1] == Ended(start=0.0, end=pytest.approx((windows(0.8) * 2 + windows(0.3)) * WINDOW))


def test_a_pause_of_min_silence_ends_the_utterance() -> None:
    probabilities = [0.9] * windows(0.8) + [0.1] * windows(0.55) + [0.9] * windows(0.8) + [0.1] * windows(0.6)
    assert [type(event) for _, event in run(probabilities)] == [Onset, Ended, Onset, Ended]


@pytest.mark.parametrize("min_speech", [0.1, 0.2, 0.256, 0.3])
def test_onset_is_confirmed_exactly_min_speech_after_speech_starts(min_speech: float) -> None:
    start = 7
    probabilities = [0.0] * start + [0.9] * 40
    events = run(probabilities, VadParams(min_speech=min_speech), step=1)
    assert len(events) == 1
    index, onset = events[0]
    assert onset == Onset(at=pytest.approx(start * WINDOW))
    # The confirming window is the first whose end reaches start + min_speech: barge-in costs
    # min_speech plus at most one window.
    confirmed_at = (index + 1) * WINDOW
    assert start * WINDOW + min_speech <= confirmed_at + 1e-9 < start * WINDOW + min_speech + WINDOW


def test_hysteresis_keeps_speech_through_probabilities_just_below_threshold() -> None:
    # 0.4 is below the threshold but above threshold - 0.15: speech goes on; 0.3 is silence.
    wavering = [0.9, 0.4] * windows(0.5)
    events = [event for _, event in run(wavering + [0.3] * windows(0.6))]
    assert [type(event) for event in events] == [Onset, Ended]
    assert events[1] == Ended(start=0.0, end=pytest.approx(len(wavering) * WINDOW))
    # From silence, 0.4 does not start speech.
    assert run([0.4] * 50) == []


def test_speaking_is_true_from_onset_to_end() -> None:
    segmenter = Segmenter(PARAMS, WINDOW)
    confirming = math.ceil(PARAMS.min_speech / WINDOW)  # 7 windows: 0.224 s
    segmenter.push([0.9] * (confirming - 1))
    assert not segmenter.speaking
    assert segmenter.push([0.9]) == [Onset(at=0.0)]
    assert segmenter.speaking
    segmenter.push([0.1] * windows(0.3))
    assert segmenter.speaking  # a pause shorter than min_silence
    assert len(segmenter.push([0.1] * windows(0.3))) == 1
    assert not segmenter.speaking


def test_flush_ends_an_open_utterance_at_the_end_of_input() -> None:
    segmenter = Segmenter(PARAMS, WINDOW)
    segmenter.push([0.0] * 5 + [0.9] * 20)
    assert segmenter.flush(now=25 * WINDOW + 0.01) == [
        Ended(start=pytest.approx(5 * WINDOW), end=pytest.approx(25 * WINDOW + 0.01))
    ]
    assert not segmenter.speaking
    # In a pause, the utterance ends where its speech did.
    segmenter = Segmenter(PARAMS, WINDOW)
    segmenter.push([0.9] * 20 + [0.1] * 5)
    assert segmenter.flush(now=1.0) == [Ended(start=0.0, end=pytest.approx(20 * WINDOW))]


def test_flush_gives_nothing_for_an_unconfirmed_burst_or_silence() -> None:
    segmenter = Segmenter(PARAMS, WINDOW)
    segmenter.push([0.0] * 5 + [0.9] * 3)
    assert segmenter.flush(now=8 * WINDOW) == []
    assert Segmenter(PARAMS, WINDOW).flush(now=0.0) == []


def test_times_are_absolute_across_pushes() -> None:
    segmenter = Segmenter(PARAMS, WINDOW)
    events: list[SegmentEvent] = []
    for _ in range(100):
        events += segmenter.push([0.0])
    for _ in range(20):
        events += segmenter.push([0.9])
    for _ in range(20):
        events += segmenter.push([0.0])
    assert events == [
        Onset(at=pytest.approx(100 * WINDOW)),
        Ended(start=pytest.approx(100 * WINDOW), end=pytest.approx(120 * WINDOW)),
    ]
    assert segmenter.position == pytest.approx(140 * WINDOW)
