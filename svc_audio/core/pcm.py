"""The wire's audio in and out: formats a stream may carry, bytes <-> samples, and resampling.

Clients send headerless mono audio as LINEAR16 (little-endian signed 16-bit) at any of
`model.ALLOWED_RATES`, or telephone audio as G.711 mu-law or A-law at 8 kHz. Inside the core
audio is float32 in [-1, 1] (`Samples`, full scale = 32768). G.711 is decoded by the exact
256-entry tables of ITU-T G.711 (built below from the standard's segment/mantissa layout,
on the 16-bit scale of the usual reference code), and encoded by the standard's truncating
segment encoder, so `encode(decode(code)) == code` for every code.

Resampling is polyphase FIR filtering with scipy's `resample_poly` design (Kaiser window,
beta 5, 10 zero crossings per side at the lower of the two rates' Nyquist), so a stream cut
into chunks of any size resamples to the same samples as the whole signal at once, and a
chunk edge adds no click.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import signal

from svc_audio.errors import AudioEmpty, UnsupportedAudioFormat
from svc_audio.model import ALLOWED_RATES, AudioFormat, Encoding, Samples

# G.711 runs only at telephone rate.
_G711_RATE = 8_000
_FULL_SCALE = 32768.0


def check_format(encoding: Encoding | str, sample_rate: int) -> AudioFormat:
    """The format a stream declared, or UnsupportedAudioFormat: LINEAR16 at any allowed rate,
    MULAW and ALAW at 8000 Hz only."""
    name = encoding.value if isinstance(encoding, Encoding) else str(encoding)
    try:
        parsed = Encoding(name)
    except ValueError:
        parsed = None
    rates = ALLOWED_RATES if parsed is Encoding.LINEAR16 else (_G711_RATE,)
    if parsed is None or sample_rate not in rates:
        allowed = ", ".join(str(rate) for rate in ALLOWED_RATES)
        raise UnsupportedAudioFormat(
            f"unsupported audio format {name} at {sample_rate} Hz: LINEAR16 at {allowed} Hz, "
            f"MULAW or ALAW at {_G711_RATE} Hz",
            metadata={"encoding": name, "sample_rate_hertz": str(sample_rate)},
        )
    return AudioFormat(parsed, sample_rate)


def _mulaw_table() -> npt.NDArray[np.int16]:
    # G.711 mu-law: the code is sent inverted; then 1 sign bit (set: negative), 3 segment bits,
    # 4 mantissa bits; the step doubles each segment and the bias 0x84 (132 on this scale) makes
    # the segments line up at zero.
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    segment = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << segment) - 0x84
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    # G.711 A-law: even bits are inverted on the line (xor 0x55); sign bit set = positive;
    # segment 0 is linear (step 16 on this scale), each later segment doubles the step.
    codes = np.arange(256, dtype=np.int32)
    toggled = codes ^ 0x55
    segment = (toggled >> 4) & 0x07
    mantissa = toggled & 0x0F
    magnitude = np.where(segment == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(segment - 1, 0))
    return np.where(toggled & 0x80, magnitude, -magnitude).astype(np.int16)


MULAW_TABLE = _mulaw_table()
ALAW_TABLE = _alaw_table()
_MULAW_FLOAT = (MULAW_TABLE / _FULL_SCALE).astype(np.float32)
_ALAW_FLOAT = (ALAW_TABLE / _FULL_SCALE).astype(np.float32)


def decode(chunk: bytes, fmt: AudioFormat) -> Samples:
    """`chunk` as float32 samples in [-1, 1]; AudioEmpty when LINEAR16 bytes do not make whole
    samples."""
    if fmt.encoding is Encoding.LINEAR16:
        if len(chunk) % 2:
            raise AudioEmpty(
                f"LINEAR16 audio must be whole 16-bit samples; got {len(chunk)} bytes",
                metadata={"byte_count": str(len(chunk))},
            )
        return (np.frombuffer(chunk, dtype="<i2") / np.float32(_FULL_SCALE)).astype(np.float32)
    codes = np.frombuffer(chunk, dtype=np.uint8)
    table = _MULAW_FLOAT if fmt.encoding is Encoding.MULAW else _ALAW_FLOAT
    return table[codes]


def _to_int16(samples: Samples) -> npt.NDArray[np.int32]:
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * _FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int32)


def _mulaw_encode(linear: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    # The reference encoder (G.191's, as CPython's audioop): keep 14 bits (floor, so negative
    # values round away from zero), bias by 33, find the segment from the top set bit, keep 4
    # mantissa bits (truncating: each decoded value encodes back to its own code), invert.
    value = linear >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    # 8158, not the reference's 8159: the reference maps 8159 + 33 (a ninth segment) to the top code.
    magnitude = np.minimum(np.abs(value), 8158) + 0x21
    segment = np.floor(np.log2(magnitude >> 5)).astype(np.int32)
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    codes: npt.NDArray[np.uint8] = (((segment << 4) | mantissa) ^ mask).astype(np.uint8)
    return codes


def _alaw_encode(linear: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    # The reference encoder (G.191's, as CPython's audioop): keep 13 bits (floor), sign bit set
    # for non-negative values, segment from the top set bit, even bits toggled.
    sign = np.where(linear >= 0, 0x80, 0)
    magnitude = np.where(linear >= 0, linear, -linear - 1) >> 3
    magnitude = np.minimum(magnitude, 0x0FFF)
    # Segment s >= 1 holds magnitudes [16 << s, 32 << s); segment 0 the 32 below, at the same step.
    segment = np.floor(np.log2(np.maximum(magnitude >> 4, 1))).astype(np.int32)
    mantissa = np.where(segment == 0, magnitude >> 1, magnitude >> segment) & 0x0F
    codes: npt.NDArray[np.uint8] = ((sign | (segment << 4) | mantissa) ^ 0x55).astype(np.uint8)
    return codes


def encode(samples: Samples, fmt: AudioFormat) -> bytes:
    """`samples` (clipped to [-1, 1), rounded) as `fmt`'s bytes."""
    linear = _to_int16(samples)
    if fmt.encoding is Encoding.LINEAR16:
        return linear.astype("<i2").tobytes()
    if fmt.encoding is Encoding.MULAW:
        return _mulaw_encode(linear).tobytes()
    return _alaw_encode(linear).tobytes()


def resample(samples: Samples, from_rate: int, to_rate: int) -> Samples:
    """`samples` at `to_rate`, all at once (ceil(len * to / from) samples)."""
    if from_rate == to_rate:
        return np.array(samples, dtype=np.float32)
    g = math.gcd(from_rate, to_rate)
    out = signal.resample_poly(np.asarray(samples, dtype=np.float32), to_rate // g, from_rate // g)
    return np.asarray(out, dtype=np.float32)


class StreamResampler:
    """Resamples one stream chunk by chunk, with the same filter as `resample`.

    Output sample n is sum_j x[j] * h[n*down + half - j*up], the polyphase form of upsampling
    by `up`, filtering with the symmetric FIR `h` (2*half + 1 taps) and keeping every
    `down`-th sample; samples before the stream's start are zero, as `resample` treats them.
    `push` returns every output whose last input has arrived (the delay is half/up input
    samples: 0.6 ms for 48 kHz -> 16 kHz, 0.6 ms for 16 kHz -> 22.05 kHz), and keeps the
    inputs later outputs still need; `flush` pads the end with zeros, returns the rest and
    starts a new stream. Concatenated, the outputs equal `resample` of the whole input up to
    float32 rounding, whatever the chunking.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
        g = math.gcd(from_rate, to_rate)
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._up = to_rate // g
        self._down = from_rate // g
        self._passthrough = self._up == self._down
        self._half = 10 * max(self._up, self._down)
        taps = np.ones(1)  # pass-through needs no filter
        if not self._passthrough:
            cutoff = 1.0 / max(self._up, self._down)
            taps = signal.firwin(2 * self._half + 1, cutoff, window=("kaiser", 5.0)) * self._up
        # Polyphase: row p holds the taps h[p], h[p + up], h[p + 2 up], ... (zero past the end).
        self._width = -(-len(taps) // self._up)
        padded = np.zeros(self._width * self._up)
        padded[: len(taps)] = taps
        self._phases = padded.reshape(self._width, self._up).T.astype(np.float32)
        self._offsets = np.arange(self._width)
        self._reset()

    def _reset(self) -> None:
        # Inputs kept (absolute index of the first: `_base`; negative indices are the zeros
        # before the stream's start), how many arrived, and the next output's index.
        self._buffer = np.zeros(self._width, dtype=np.float32)
        self._base = -self._width
        self._received = 0
        self._next = 0

    def push(self, samples: Samples) -> Samples:
        """The outputs that `samples` completes (possibly none)."""
        chunk = np.asarray(samples, dtype=np.float32)
        if self._passthrough:
            return chunk.copy()
        self._buffer = np.concatenate((self._buffer, chunk))
        self._received += len(chunk)
        # Output n needs inputs up to (n*down + half) // up.
        last = (self._received * self._up - 1 - self._half) // self._down
        return self._produce(last + 1)

    def flush(self) -> Samples:
        """The remaining outputs (the stream's end padded with zeros); the resampler then
        starts over."""
        if self._passthrough:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self._up // self._down)
        if total > self._next:
            needed = ((total - 1) * self._down + self._half) // self._up + 1
            pad = needed - (self._base + len(self._buffer))
            if pad > 0:
                self._buffer = np.concatenate((self._buffer, np.zeros(pad, dtype=np.float32)))
        out = self._produce(total)
        self._reset()
        return out

    def _produce(self, end: int) -> Samples:
        if end <= self._next:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._next, end)
        t = n * self._down + self._half
        newest = t // self._up - self._base
        rows = self._buffer[newest[:, None] - self._offsets[None, :]]
        out: Samples = np.einsum("ij,ij->i", rows, self._phases[t % self._up]).astype(np.float32)
        self._next = end
        # Keep only what the next output reaches back to.
        oldest = (self._next * self._down + self._half) // self._up - (self._width - 1)
        drop = oldest - self._base
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._base = oldest
        return out
