"""Acoustic features of an utterance, and how agitated its speaker sounds against themselves.

`utterance_features` takes 16 kHz samples and measures:

- `rms`: root mean square, a fraction of full scale (1.0 = a full-scale square wave);
- `zero_crossing_rate`: the share of adjacent sample pairs whose signs differ (a 1 kHz sine at
  16 kHz: 2 per 16 samples, 0.125);
- `spectral_entropy`: Shannon entropy of the mean power spectrum (25 ms Hann frames), normalised
  to a distribution and divided by log(bins): near 0 for a pure tone (its energy in the few
  bins of the window's main lobe: ~0.2), near 1 for white noise;
- log-mel: 40 triangular bands on the HTK mel scale from 0 to 8 kHz over the power spectrum of
  25 ms Hann frames every 10 ms (512-point FFT), natural log floored at 1e-8 (16-bit quantisation noise);
- MFCC: the first 13 coefficients of the orthonormal DCT-II of each frame's log-mel;
- `pitch_hz`: the median over voiced frames of each frame's autocorrelation pitch, searched
  between 70 and 400 Hz on 40 ms frames every 10 ms; a frame is voiced when its normalised
  autocorrelation peak is >= 0.5 and its energy is within 35 dB of the loudest frame; 0 when
  no frame is voiced;
- `speech_rate`: peaks per second of the frame energy (dB, smoothed over 50 ms) that rise >= 4 dB
  above their surroundings, lie within 30 dB of the loudest frame and are >= 100 ms apart: a
  syllable-rate proxy (syllable nuclei are energy peaks);
- `vector`: log-mel mean (40), log-mel std (40), MFCC mean (13), MFCC std (13), float32: what is
  stored per utterance and compared between speakers; `mfcc_mean` (13).

Input shorter than one 25 ms frame gives all-zero features.

`Agitation` scores each utterance of one stream against the same speaker's earlier ones:

    score = logistic(1.0 * z_loudness + 0.8 * z_pitch + 0.5 * z_rate + 1.0 * (1 - entropy) - 2.0)

- z_loudness: log RMS against the speaker's baseline. Raised voice is the most reliable cue of
  arousal in speech, so it weighs most (a = 1.0).
- z_pitch: log pitch against the baseline (0 for an unvoiced utterance); pitch rises with
  arousal but also with questions and emphasis, so a little less (b = 0.8).
- z_rate: speech rate against the baseline; the energy-peak proxy is noisy, so half weight
  (c = 0.5).
- 1 - entropy: a strained, shouted voice is more harmonic (lower spectral entropy); calm speech
  measures ~0.5 here, so this term adds ~0.5 at rest (d = 1.0).
- bias 2.0: a speaker at their own baseline scores logistic(0.5 - 2.0) ~ 0.18; one who is 2
  standard deviations louder and higher pitched scores ~0.9. Each z is clipped to [-4, 4] so
  one odd measurement cannot saturate the score alone.

The baseline is the mean and standard deviation over the stream's earlier utterances, blended
with a fixed population prior worth `PRIOR_WEIGHT` (3) utterances, so the first utterance is
scored against the prior alone and the speaker's own voice takes over as they talk. The prior
(adult conversational speech): log RMS mean log(0.05) (about -26 dBFS) with standard
deviation 0.5 (about 4.3 dB); log pitch mean log(160 Hz) (between typical male and female
voices) with standard deviation 0.25 (about 4 semitones); speech rate 4 peaks per second with
standard deviation 1.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import fft, signal

from svc_audio.model import SPEECH_RATE, Features, Samples

FRAME = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 40
N_MFCC = 13
VECTOR_SIZE = 2 * N_MELS + 2 * N_MFCC
# The power of 16-bit quantisation noise in a band (~1e-8 per FFT bin of a 25 ms Hann frame):
# digital silence, as TTS engines write it, then measures like the quietest real recording
# instead of dragging means and spreads down to log(0).
_LOG_FLOOR = 1e-8

_PITCH_FRAME = 640  # 40 ms: two periods of the lowest pitch searched
_PITCH_FFT = 1024  # >= frame + longest lag, so the FFT autocorrelation does not wrap
_PITCH_MIN_HZ = 70.0
_PITCH_MAX_HZ = 400.0
_VOICED_CORRELATION = 0.5
_VOICED_RANGE_DB = 35.0
_PITCH_BLOCK = 512  # frames per FFT block, so a 60 s utterance stays a few MB

_PEAK_PROMINENCE_DB = 4.0
_PEAK_RANGE_DB = 30.0
_PEAK_DISTANCE = 10  # hops: 100 ms
_ENVELOPE_SMOOTHING = 5  # hops: 50 ms

FloatArray = npt.NDArray[np.float64]


def _hz_to_mel(hz: FloatArray) -> FloatArray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: FloatArray) -> FloatArray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SPEECH_RATE) -> FloatArray:
    """(n_mels, n_fft // 2 + 1) triangular filters, peak 1, evenly spaced on the HTK mel scale
    from 0 Hz to Nyquist."""
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(rate / 2.0))), n_mels + 2))
    bins = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / (centre - low)
    falling = (high - bins[None, :]) / (high - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


_MEL = mel_filterbank()
_HANN = signal.get_window("hann", FRAME)


def _frames(samples: FloatArray, size: int, hop: int) -> FloatArray:
    count = 1 + (len(samples) - size) // hop
    return np.lib.stride_tricks.as_strided(
        samples, shape=(count, size), strides=(samples.strides[0] * hop, samples.strides[0])
    )


def _pitch(samples: FloatArray) -> float:
    if len(samples) < _PITCH_FRAME:
        return 0.0
    frames = _frames(samples, _PITCH_FRAME, HOP)
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    loud = energy > energy.max() * 10 ** (-_VOICED_RANGE_DB / 10) if energy.max() > 0 else energy > 0
    shortest = int(SPEECH_RATE / _PITCH_MAX_HZ)
    longest = math.ceil(SPEECH_RATE / _PITCH_MIN_HZ)
    pitches: list[float] = []
    for first in range(0, len(frames), _PITCH_BLOCK):
        block = frames[first : first + _PITCH_BLOCK]
        spectrum = np.fft.rfft(block, _PITCH_FFT, axis=1)
        # The biased autocorrelation (no division by the overlap) falls off with lag, which
        # keeps a period's double (an octave too low) from winning over the period itself.
        acf = np.fft.irfft(np.abs(spectrum) ** 2, _PITCH_FFT, axis=1)[:, : longest + 2]
        zero = acf[:, 0]
        for row, voiced_energy, r0 in zip(acf, loud[first : first + len(block)], zero, strict=True):
            if not voiced_energy or r0 <= 0:
                continue
            lag = shortest + int(np.argmax(row[shortest : longest + 1]))
            if row[lag] / r0 < _VOICED_CORRELATION:
                continue
            # A parabola through the peak and its neighbours places it between samples.
            before, at, after = row[lag - 1], row[lag], row[lag + 1]
            curvature = before - 2 * at + after
            shift = 0.5 * (before - after) / curvature if curvature < 0 else 0.0
            pitches.append(SPEECH_RATE / (lag + shift))
    return float(np.median(pitches)) if pitches else 0.0


def _speech_rate(power: FloatArray, seconds: float) -> float:
    level = 10 * np.log10(power.sum(axis=1) + _LOG_FLOOR)
    if len(level) >= _ENVELOPE_SMOOTHING:
        level = np.convolve(level, np.ones(_ENVELOPE_SMOOTHING) / _ENVELOPE_SMOOTHING, mode="same")
    peaks, _ = signal.find_peaks(
        level,
        height=level.max() - _PEAK_RANGE_DB,
        prominence=_PEAK_PROMINENCE_DB,
        distance=_PEAK_DISTANCE,
    )
    return len(peaks) / seconds


def _zeros() -> Features:
    return Features(
        rms=0.0,
        zero_crossing_rate=0.0,
        spectral_entropy=0.0,
        pitch_hz=0.0,
        speech_rate=0.0,
        vector=np.zeros(VECTOR_SIZE, dtype=np.float32),
        mfcc_mean=np.zeros(N_MFCC, dtype=np.float32),
    )


def utterance_features(samples_16k: Samples) -> Features:
    """The features of one utterance (mono, 16 kHz, float in [-1, 1]); see the module's
    docstring for each formula."""
    x = np.ascontiguousarray(samples_16k, dtype=np.float64)
    if len(x) < FRAME:
        return _zeros()
    rms = float(np.sqrt(np.mean(x**2)))
    negative = np.signbit(x)
    zcr = float(np.mean(negative[1:] != negative[:-1]))

    power = np.abs(np.fft.rfft(_frames(x, FRAME, HOP) * _HANN, N_FFT, axis=1)) ** 2
    mean_power = power.mean(axis=0)
    total = mean_power.sum()
    if total > 0:
        share = mean_power / total
        share = share[share > 0]
        entropy = float(-(share * np.log(share)).sum() / math.log(len(mean_power)))
    else:
        entropy = 0.0

    log_mel = np.log(np.maximum(power @ _MEL.T, _LOG_FLOOR))
    mfcc = fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, :N_MFCC]
    vector = np.concatenate((log_mel.mean(axis=0), log_mel.std(axis=0), mfcc.mean(axis=0), mfcc.std(axis=0)))
    return Features(
        rms=rms,
        zero_crossing_rate=zcr,
        spectral_entropy=entropy,
        pitch_hz=_pitch(x),
        speech_rate=_speech_rate(power, len(x) / SPEECH_RATE),
        vector=vector.astype(np.float32),
        mfcc_mean=mfcc.mean(axis=0).astype(np.float32),
    )


# The agitation formula's weights and the population prior (see the module's docstring).
WEIGHT_LOUDNESS = 1.0
WEIGHT_PITCH = 0.8
WEIGHT_RATE = 0.5
WEIGHT_TONALITY = 1.0
BIAS = 2.0
Z_LIMIT = 4.0
PRIOR_WEIGHT = 3.0
PRIOR_LOG_RMS = (math.log(0.05), 0.5)
PRIOR_LOG_PITCH = (math.log(160.0), 0.25)
PRIOR_RATE = (4.0, 1.2)
_SILENT_RMS = 1e-4  # below this (-80 dBFS) there is no voice to score


@dataclass(slots=True)
class _Baseline:
    """Running mean and standard deviation of one measure, blended with a prior worth
    PRIOR_WEIGHT observations."""

    prior_mean: float
    prior_std: float
    count: int = 0
    total: float = 0.0
    total_squares: float = 0.0

    def z(self, value: float) -> float:
        weight = PRIOR_WEIGHT + self.count
        mean = (PRIOR_WEIGHT * self.prior_mean + self.total) / weight
        # E[x^2] blended the same way, so the prior's spread counts as PRIOR_WEIGHT observations.
        second = (PRIOR_WEIGHT * (self.prior_std**2 + self.prior_mean**2) + self.total_squares) / weight
        std = math.sqrt(max(second - mean**2, 1e-12))
        return max(-Z_LIMIT, min(Z_LIMIT, (value - mean) / std))

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.total_squares += value * value


class Agitation:
    """How agitated one stream's speaker sounds, utterance by utterance, against their own
    earlier utterances (see the module's docstring for the formula and its constants)."""

    def __init__(self) -> None:
        self._loudness = _Baseline(*PRIOR_LOG_RMS)
        self._pitch = _Baseline(*PRIOR_LOG_PITCH)
        self._rate = _Baseline(*PRIOR_RATE)

    def score(self, features: Features) -> float:
        """The utterance's agitation in [0, 1]; the utterance then joins the baseline. A silent
        utterance scores 0 and leaves the baseline as it was."""
        if features.rms < _SILENT_RMS:
            return 0.0
        loudness = math.log(features.rms)
        z_loudness = self._loudness.z(loudness)
        z_rate = self._rate.z(features.speech_rate)
        z_pitch = 0.0
        if features.pitch_hz > 0:
            pitch = math.log(features.pitch_hz)
            z_pitch = self._pitch.z(pitch)
            self._pitch.add(pitch)
        self._loudness.add(loudness)
        self._rate.add(features.speech_rate)
        tonality = 1.0 - min(1.0, max(0.0, features.spectral_entropy))
        logit = (
            WEIGHT_LOUDNESS * z_loudness
            + WEIGHT_PITCH * z_pitch
            + WEIGHT_RATE * z_rate
            + WEIGHT_TONALITY * tonality
            - BIAS
        )
        return 1.0 / (1.0 + math.exp(-logit))
