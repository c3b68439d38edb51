"""svc_audio.core.features: the measures on signals whose answers are known, and agitation."""

from __future__ import annotations

import numpy as np
import pytest

from svc_audio.core.features import N_MFCC, VECTOR_SIZE, Agitation, mel_filterbank, utterance_features
from svc_audio.model import SPEECH_RATE, Samples

RATE = SPEECH_RATE


def voice(f0: float, amplitude: float, syllables: float, seconds: float = 2.0, tilt: float = 1.0) -> Samples:
    """A synthetic voice: harmonics of f0 (amplitude 1/k^tilt, slight vibrato) up to 4 kHz,
    opened and closed `syllables` times a second, at `amplitude` RMS."""
    t = np.arange(int(RATE * seconds)) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / RATE
    x = sum(np.sin(k * phase) / k**tilt for k in range(1, int(4000 / f0)))
    x = np.asarray(x) * 0.5 * (1 - np.cos(2 * np.pi * syllables * t))
    return (x / np.sqrt(np.mean(x**2)) * amplitude).astype(np.float32)


def sine(hz: float, seconds: float = 1.0, amplitude: float = 0.5) -> Samples:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


def test_zero_crossing_rate_of_a_1khz_sine_is_an_eighth() -> None:
    assert utterance_features(sine(1000)).zero_crossing_rate == pytest.approx(0.125, abs=0.002)


def test_rms_is_a_fraction_of_full_scale() -> None:
    assert utterance_features(sine(440, amplitude=0.5)).rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_a_pure_tone_has_low_entropy_and_white_noise_high() -> None:
    tone = utterance_features(sine(1000)).spectral_entropy
    noise = utterance_features((0.1 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32))
    assert tone < 0.25
    assert noise.spectral_entropy > 0.95
    assert noise.pitch_hz == 0.0  # nothing voiced in noise


@pytest.mark.parametrize("f0", [80.0, 150.0, 220.0, 380.0])
def test_pitch_of_a_harmonic_signal(f0: float) -> None:
    assert utterance_features(voice(f0, 0.1, 4)).pitch_hz == pytest.approx(f0, rel=0.02)


@pytest.mark.parametrize("syllables", [3.0, 5.0, 7.0])
def test_speech_rate_counts_energy_peaks_per_second(syllables: float) -> None:
    assert utterance_features(voice(150, 0.1, syllables, seconds=4)).speech_rate == pytest.approx(syllables, abs=0.5)


def test_vector_is_log_mel_means_and_stds_then_mfcc_means_and_stds() -> None:
    features = utterance_features(voice(150, 0.1, 4))
    assert features.vector.dtype == np.float32
    assert features.vector.shape == (VECTOR_SIZE,) == (106,)
    assert features.mfcc_mean.shape == (N_MFCC,)
    assert np.array_equal(features.vector[80:93], features.mfcc_mean)
    assert np.all(features.vector[40:80] >= 0)  # standard deviations
    # Louder by a factor g raises every log-mel band mean by 2 log g and leaves the spreads
    # (noise: no band falls to the floor).
    noise = (0.01 * np.random.default_rng(1).standard_normal(RATE)).astype(np.float32)
    quiet, louder = utterance_features(noise), utterance_features(4 * noise)
    assert np.allclose(louder.vector[:40] - quiet.vector[:40], 2 * np.log(4), atol=1e-3)
    assert np.allclose(louder.vector[40:80], quiet.vector[40:80], atol=1e-3)


def test_the_mel_filterbank_covers_the_band_with_no_empty_filter() -> None:
    bank = mel_filterbank()
    assert bank.shape == (40, 257)
    assert np.all(bank.max(axis=1) > 0.5)
    assert np.all(bank[:, 2:-1].sum(axis=0) > 0)  # every bin above ~60 Hz is heard


@pytest.mark.parametrize("length", [0, 1, 399])
def test_input_shorter_than_a_frame_gives_zeros(length: int) -> None:
    features = utterance_features(np.ones(length, dtype=np.float32) * 0.1)
    assert features.rms == 0.0
    assert features.pitch_hz == 0.0
    assert not features.vector.any()
    assert features.vector.shape == (VECTOR_SIZE,)


@pytest.mark.parametrize("seconds", [0.1, 60.0])
def test_short_and_long_utterances_are_measured(seconds: float) -> None:
    features = utterance_features(voice(150, 0.1, 4, seconds=seconds))
    assert np.all(np.isfinite(features.vector))
    assert features.pitch_hz == pytest.approx(150, rel=0.03)


def test_digital_silence_is_measured_without_error() -> None:
    features = utterance_features(np.zeros(RATE, dtype=np.float32))
    assert features.rms == 0.0
    assert features.pitch_hz == 0.0
    assert np.all(np.isfinite(features.vector))


def test_a_louder_higher_faster_voice_scores_above_the_calm_baseline() -> None:
    agitation = Agitation()
    calm = [agitation.score(utterance_features(voice(120 + 3 * i, 0.05, 3.5 + 0.2 * i))) for i in range(4)]
    agitated = agitation.score(utterance_features(voice(200, 0.25, 6.5)))
    assert all(0.0 <= score <= 1.0 for score in [*calm, agitated])
    assert max(calm) < 0.3
    assert agitated > 0.8
    assert agitated > max(calm) + 0.5


def test_the_baseline_is_the_speakers_own() -> None:
    # A naturally loud, high voice is calm for its speaker once their baseline is known.
    loud_speaker = Agitation()
    scores = [loud_speaker.score(utterance_features(voice(230, 0.25, 5))) for _ in range(8)]
    assert scores[-1] < scores[0] - 0.3
    # The first utterance is scored against the population prior alone.
    assert Agitation().score(utterance_features(voice(230, 0.25, 5))) == pytest.approx(scores[0])


def test_silence_scores_zero_and_leaves_the_baseline() -> None:
    agitation = Agitation()
    quiet = utterance_features(np.zeros(RATE, dtype=np.float32))
    assert agitation.score(quiet) == 0.0
    assert agitation.score(utterance_features(voice(150, 0.05, 4))) == pytest.approx(
        Agitation().score(utterance_features(voice(150, 0.05, 4)))
    )
