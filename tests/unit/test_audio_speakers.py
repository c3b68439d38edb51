"""svc_audio.core.speakers: online speaker labels on synthetic voices.

The voices are harmonic sources (f0, a spectral tilt 1/k^tilt) through three vowel formants
(scaled by a vocal tract factor), syllable by syllable. Their embedding is standardised by a
population of other synthetic voices of the same kind, as the service's default population
is TTS speech for TTS-like input: against the TTS population every synthetic voice sits on the
same side and they all look alike (see the module's docstring).
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest

from svc_audio.core.features import utterance_features
from svc_audio.core.speakers import DEFAULT_THRESHOLD, Population, SpeakerClusters, speaker_embedding
from svc_audio.model import SPEECH_RATE, Features

VOWELS = ((730, 1090), (270, 2290), (530, 1840), (300, 870), (660, 1720), (490, 1350), (640, 1190))


@cache
def voice(f0: float, tilt: float, tract: float, seed: int, amplitude: float = 0.1) -> Features:
    """The features of 1.5 s of a synthetic voice saying random vowels (seeded)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(6):
        length = int(SPEECH_RATE * rng.uniform(0.18, 0.32))
        t = np.arange(length) / SPEECH_RATE
        pitch = f0 * (1 + 0.03 * rng.standard_normal()) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(pitch) / SPEECH_RATE
        formants = np.array([*VOWELS[rng.integers(len(VOWELS))], 2500]) * tract
        x = np.zeros(length)
        for k in range(1, int(7000 / f0)):
            gain = sum(1 / (1 + ((k * f0 - f) / (80 + 0.1 * f)) ** 2) for f in formants) + 0.05
            x += gain * np.sin(k * phase) / k**tilt
        pieces += [x * np.hanning(length), np.zeros(int(SPEECH_RATE * rng.uniform(0.02, 0.08)))]
    x = np.concatenate(pieces)
    x += 1e-3 * np.sqrt(np.mean(x**2)) * rng.standard_normal(len(x))
    return utterance_features((x / np.sqrt(np.mean(x**2)) * amplitude).astype(np.float32))


@cache
def population() -> Population:
    """24 synthetic voices, none of them the tests' speakers."""
    grid = itertools.product((95, 140, 190, 250), (0.7, 1.2, 1.9), (0.9, 1.1))
    return Population.of([voice(f0, tilt, tract, 100 + i) for i, (f0, tilt, tract) in enumerate(grid)])


def low(seed: int, amplitude: float = 0.1) -> Features:
    return voice(110, 0.8, 1.0, seed, amplitude)


def high(seed: int, amplitude: float = 0.1) -> Features:
    return voice(210, 1.6, 1.15, 1000 + seed, amplitude)


def test_two_alternating_voices_get_two_labels_in_order_of_appearance() -> None:
    clusters = SpeakerClusters(population=population())
    utterances = [high(0), low(1), low(2), high(3), low(4), high(5), high(6), low(7)]
    labels = [clusters.label(u) for u in utterances]
    assert labels == ["S1", "S2", "S2", "S1", "S2", "S1", "S1", "S2"]
    assert clusters.speakers == 2


def test_one_voice_speaking_louder_and_softer_stays_one_speaker() -> None:
    clusters = SpeakerClusters(population=population())
    amplitudes = [0.02, 0.1, 0.3, 0.05, 0.2]
    assert [clusters.label(low(seed, amplitude)) for seed, amplitude in enumerate(amplitudes)] == ["S1"] * 5


def test_same_voice_similar_other_voice_not() -> None:
    def unit(features: Features) -> np.ndarray:
        embedding = speaker_embedding(features, population())
        return embedding / np.linalg.norm(embedding)

    lows, highs = [unit(low(s)) for s in range(4)], [unit(high(s)) for s in range(4)]
    same = min(float(a @ b) for group in (lows, highs) for a, b in itertools.combinations(group, 2))
    across = max(float(a @ b) for a in lows for b in highs)
    assert same > DEFAULT_THRESHOLD > across


def test_the_embedding_ignores_loudness() -> None:
    quiet, loud = speaker_embedding(low(1, 0.02)), speaker_embedding(low(1, 0.3))
    assert quiet.shape == (25,)
    assert np.allclose(quiet, loud, atol=0.05)


def test_a_threshold_above_one_makes_every_utterance_new_up_to_the_limit() -> None:
    clusters = SpeakerClusters(threshold=1.01, max_speakers=3, population=population())
    labels = [clusters.label(low(seed)) for seed in range(5)]
    assert labels[:3] == ["S1", "S2", "S3"]
    assert set(labels[3:]) <= {"S1", "S2", "S3"}
    assert clusters.speakers == 3


def test_max_speakers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_speakers"):
        SpeakerClusters(max_speakers=0)
