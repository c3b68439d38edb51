"""Online diarization: which of a stream's speakers said each utterance ("S1", "S2", ...).

No trained speaker model is reachable here (pyannote's weights are not), so a speaker is told
apart by a hand-built embedding of the utterance's features (`speaker_embedding`):

- MFCC 1..12 means: the vocal tract's average spectral envelope and tilt (c0, the loudness, is
  left out: the same person speaks softly and loudly);
- MFCC 1..12 standard deviations: how much the envelope moves (articulation, voice quality);
- log pitch, weighted `PITCH_WEIGHT` (2) times a standardised dimension: the single most
  speaker-specific number we measure, and 1 of 25 dimensions would drown otherwise.

Each dimension is standardised by a population's mean and standard deviation (`Population`),
so cosine similarity compares how two voices differ from a typical voice, not the shape every
voice shares. The default, `TTS_POPULATION`, was measured on eight espeak-ng voices (en-us+f3,
en-us+m3, en-gb, en-us+Alicia, en-us+Andy, en-gb-scotland+f2, en-us+john, en-us+linda), six
sentences each: synthetic voices, not a population of people, and none of them is a voice of
the diarization bench (`bench/diarization.py`, which can measure them again).

What this embedding cannot do: the population must be audio of the same kind (channel,
recording, synthesis) as the stream's, or every voice of the stream sits on the same side of
it and they all look alike (a mismatch that no constant threshold survives: synthetic
harmonic voices measured against the TTS population score 0.87 across two different voices);
and a voice close to the population's centre has no stable direction, so two such voices,
or one, are labelled poorly. A trained speaker model would not have these limits.

`SpeakerClusters` keeps one running centroid (mean unit embedding) per speaker and gives an
utterance the label of the most similar centroid when that similarity reaches `threshold`,
else a new label, in order of first appearance, up to `max_speakers` (then the most similar).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from svc_audio.model import Features, Samples


@dataclass(frozen=True, slots=True)
class Population:
    """The mean and standard deviation of each embedding measure (see `speaker_raw`) over the
    utterances of many voices."""

    mean: Samples
    std: Samples

    @classmethod
    def of(cls, utterances: Sequence[Features]) -> Population:
        """Measured on `utterances` (several voices, several utterances each)."""
        raw = np.array([speaker_raw(features) for features in utterances], dtype=np.float64)
        return cls(raw.mean(axis=0).astype(np.float32), np.maximum(raw.std(axis=0), 1e-3).astype(np.float32))


# Order of the embedding: MFCC means 1..12, MFCC standard deviations 1..12, log pitch (Hz).
POPULATION_MEAN = np.concatenate(
    (
        [6.84, 0.91, 3.31, -3.99, -3.22, -0.87, -2.55, 0.27, -0.89, -0.49, -1.48, -0.6],
        [8.89, 5.41, 5.72, 4.56, 5.1, 4.19, 3.86, 3.32, 2.83, 2.41, 2.63, 2.21],
        [5.02],
    )
).astype(np.float32)
POPULATION_STD = np.concatenate(
    (
        [4.14, 1.75, 2.2, 2.52, 1.7, 1.82, 1.16, 0.82, 1.85, 0.76, 1.49, 0.91],
        [2.69, 0.59, 1.14, 1.01, 0.8, 0.88, 0.59, 0.71, 0.45, 0.6, 0.54, 0.42],
        [0.39],
    )
).astype(np.float32)
TTS_POPULATION = Population(POPULATION_MEAN, POPULATION_STD)
PITCH_WEIGHT = 2.0
# Where the features' vector keeps the MFCC means and standard deviations (see features.py).
_MFCC_MEAN = slice(80 + 1, 93)
_MFCC_STD = slice(93 + 1, 106)
# Tuned on the diarization bench (bench/diarization.py), which is all the labelled data there is.
DEFAULT_THRESHOLD = 0.3


def speaker_raw(features: Features) -> Samples:
    """The embedding's measures before standardising (see the module's docstring); an
    unvoiced utterance gets the TTS population's mean pitch."""
    pitch = math.log(features.pitch_hz) if features.pitch_hz > 0 else float(POPULATION_MEAN[-1])
    return np.concatenate(
        (features.vector[_MFCC_MEAN], features.vector[_MFCC_STD], np.array([pitch], dtype=np.float32))
    ).astype(np.float32)


def speaker_embedding(features: Features, population: Population = TTS_POPULATION) -> Samples:
    """The speaker embedding of an utterance, standardised by `population`."""
    z = (speaker_raw(features) - population.mean) / population.std
    z[-1] *= PITCH_WEIGHT
    return z.astype(np.float32)


def _unit(vector: Samples) -> Samples:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class SpeakerClusters:
    """The speakers of one stream, labelled in order of first appearance."""

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, max_speakers: int = 8, population: Population = TTS_POPULATION
    ) -> None:
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be at least 1, got {max_speakers}")
        self.threshold = threshold
        self.max_speakers = max_speakers
        self.population = population
        self._sums: list[Samples] = []
        self._counts: list[int] = []

    @property
    def speakers(self) -> int:
        """How many speakers have been heard."""
        return len(self._sums)

    def label(self, features: Features) -> str:
        """The label of the utterance's speaker; the utterance joins that speaker's centroid."""
        embedding = _unit(speaker_embedding(features, self.population))
        best, similarity = -1, -math.inf
        for index, total in enumerate(self._sums):
            candidate = float(np.dot(embedding, _unit((total / self._counts[index]).astype(np.float32))))
            if candidate > similarity:
                best, similarity = index, candidate
        if best < 0 or (similarity < self.threshold and len(self._sums) < self.max_speakers):
            self._sums.append(embedding.copy())
            self._counts.append(1)
            return f"S{len(self._sums)}"
        self._sums[best] = self._sums[best] + embedding
        self._counts[best] += 1
        return f"S{best + 1}"
