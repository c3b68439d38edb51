"""svc_audio.core.pcm: formats, G.711 tables and codecs, LINEAR16, and streaming resampling."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import signal

from svc_audio.core import pcm
from svc_audio.errors import AudioEmpty, UnsupportedAudioFormat
from svc_audio.model import ALLOWED_RATES, AudioFormat, Encoding, Samples

MULAW = AudioFormat(Encoding.MULAW, 8000)
ALAW = AudioFormat(Encoding.ALAW, 8000)
L16 = AudioFormat(Encoding.LINEAR16, 16000)
# Inputs (16-bit) and their codes by the G.191 reference encoders (as CPython's audioop gives).
LINEAR = np.array([-32768, -1000, -9, -8, -1, 0, 1, 7, 8, 100, 1000, 12345, 32767], dtype=np.int16)
MULAW_CODES = bytes([0, 78, 125, 126, 126, 255, 255, 254, 254, 242, 206, 151, 128])
ALAW_CODES = bytes([42, 122, 85, 85, 85, 213, 213, 213, 213, 211, 250, 189, 170])


@pytest.mark.parametrize("rate", ALLOWED_RATES)
def test_linear16_is_accepted_at_every_allowed_rate(rate: int) -> None:
    assert pcm.check_format(Encoding.LINEAR16, rate) == AudioFormat(Encoding.LINEAR16, rate)


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [(Encoding.MULAW, 16000), (Encoding.ALAW, 48000), (Encoding.LINEAR16, 11025), ("OGG_OPUS", 48000), ("", 8000)],
)
def test_other_formats_are_refused_with_what_was_asked(encoding: Encoding | str, rate: int) -> None:
    with pytest.raises(UnsupportedAudioFormat) as caught:
        pcm.check_format(encoding, rate)
    name = encoding.value if isinstance(encoding, Encoding) else encoding
    assert caught.value.metadata == {"encoding": name, "sample_rate_hertz": str(rate)}


def test_g711_at_8000_and_encoding_names_are_accepted() -> None:
    assert pcm.check_format("MULAW", 8000) == MULAW
    assert pcm.check_format(Encoding.ALAW, 8000) == ALAW


def test_g711_decoding_tables_are_the_standards() -> None:
    # Digests of the reference decoders' 256 outputs (16-bit little-endian).
    assert hashlib.sha256(pcm.MULAW_TABLE.astype("<i2").tobytes()).hexdigest()[:16] == "3dab54339e520bb2"
    assert hashlib.sha256(pcm.ALAW_TABLE.astype("<i2").tobytes()).hexdigest()[:16] == "e04788d110e58ff8"
    assert pcm.MULAW_TABLE[[0x00, 0x7F, 0x80, 0xFF]].tolist() == [-32124, 0, 32124, 0]
    assert pcm.ALAW_TABLE[[0x55, 0xD5, 0x2A, 0xAA]].tolist() == [-8, 8, -32256, 32256]


@pytest.mark.parametrize(("fmt", "codes"), [(MULAW, MULAW_CODES), (ALAW, ALAW_CODES)])
def test_g711_encoders_match_the_reference(fmt: AudioFormat, codes: bytes) -> None:
    assert pcm.encode((LINEAR / 32768).astype(np.float32), fmt) == codes


@pytest.mark.parametrize("fmt", [MULAW, ALAW])
def test_every_g711_code_survives_decode_then_encode(fmt: AudioFormat) -> None:
    codes = bytes(range(256))
    back = pcm.encode(pcm.decode(codes, fmt), fmt)
    # mu-law has two zeros (0x7F is "negative zero"): it comes back as 0xFF.
    expected = bytes(0xFF if fmt is MULAW and c == 0x7F else c for c in codes)
    assert back == expected


@pytest.mark.parametrize("fmt", [MULAW, ALAW])
def test_g711_quantises_monotonically_within_its_steps(fmt: AudioFormat) -> None:
    x = np.linspace(-1, 1, 100_001, dtype=np.float32)
    y = pcm.decode(pcm.encode(x, fmt), fmt)
    assert np.all(np.diff(y) >= 0)
    # The largest step (top segment) is 1024 of 32768 on this scale.
    assert np.max(np.abs(y - x)) <= 1024 / 32768 + 1e-6


def test_linear16_is_little_endian_and_round_trips() -> None:
    assert pcm.decode(b"\x00\x40\x00\xc0", L16).tolist() == [0.5, -0.5]
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    assert np.max(np.abs(pcm.decode(pcm.encode(x, L16), L16) - x)) <= 0.5 / 32768 + 1e-7


def test_linear16_encoding_clips_and_rounds() -> None:
    data = pcm.encode(np.array([2.0, -2.0, 1.0, 0.4 / 32768, 0.6 / 32768], dtype=np.float32), L16)
    assert np.frombuffer(data, "<i2").tolist() == [32767, -32768, 32767, 0, 1]


def test_an_odd_byte_count_is_not_whole_samples() -> None:
    with pytest.raises(AudioEmpty, match="whole 16-bit samples"):
        pcm.decode(b"\x00\x01\x02", L16)


def _chunked(resampler: pcm.StreamResampler, x: Samples, sizes: list[int]) -> Samples:
    out, i = [], 0
    for size in sizes:
        out.append(resampler.push(x[i : i + size]))
        i += size
    out.append(resampler.push(x[i:]))
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("src", "dst"), [(48000, 16000), (22050, 16000), (16000, 24000), (16000, 22050), (44100, 16000), (8000, 16000)]
)
def test_streaming_equals_resampling_at_once_for_any_chunking(src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    x = (0.3 * rng.standard_normal(src)).astype(np.float32)
    whole = signal.resample_poly(x, dst, src)
    assert np.max(np.abs(pcm.resample(x, src, dst) - whole)) < 1e-5
    sizes = [int(n) for n in rng.integers(0, 700, 40)] + [1, 1, 2, 3]
    streamed = _chunked(pcm.StreamResampler(src, dst), x, sizes)
    assert abs(len(streamed) - len(x) * dst / src) <= 1
    assert len(streamed) == len(whole)
    assert np.max(np.abs(streamed - whole)) < 1e-3


def test_the_resampler_starts_over_after_a_flush() -> None:
    x = np.sin(np.arange(4800) / 7).astype(np.float32)
    resampler = pcm.StreamResampler(48000, 16000)
    first = np.concatenate((resampler.push(x), resampler.flush()))
    second = np.concatenate((resampler.push(x), resampler.flush()))
    assert np.array_equal(first, second)


def test_equal_rates_pass_through() -> None:
    x = np.arange(10, dtype=np.float32) / 10
    resampler = pcm.StreamResampler(16000, 16000)
    assert np.array_equal(resampler.push(x), x)
    assert len(resampler.flush()) == 0
    assert np.array_equal(pcm.resample(x, 16000, 16000), x)


def _dirt_above_1khz(y: Samples, rate: int) -> float:
    # dB of the strongest component above 1 kHz relative to the peak; also the peak's frequency.
    part = y[rate // 10 : rate // 10 + rate]  # one second, after the first 100 ms
    spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
    freqs = np.fft.rfftfreq(len(part), 1 / rate)
    peak = int(np.argmax(spectrum))
    assert abs(freqs[peak] - 440) <= 1.5
    return float(20 * np.log10(spectrum[freqs > 1000].max() / spectrum[peak]))


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (22050, 16000), (16000, 24000)])
def test_chunk_edges_make_no_clicks(src: int, dst: int) -> None:
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(1.5 * src)) / src)).astype(np.float32)
    chunk = src // 50  # 20 ms
    resampler = pcm.StreamResampler(src, dst)
    y = np.concatenate([resampler.push(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    dirt = _dirt_above_1khz(y, dst)
    assert dirt < -40
    # Stricter, so the check can fail: resampling each 20 ms chunk on its own, which fades every
    # chunk's edges, measures -53 to -59 dB here; the stream measures -74 dB or cleaner (the
    # filter's own stopband).
    assert dirt < -70
    g = np.gcd(src, dst)
    naive = np.concatenate(
        [signal.resample_poly(x[i : i + chunk], dst // g, src // g) for i in range(0, len(x), chunk)]
    )
    assert _dirt_above_1khz(naive.astype(np.float32), dst) > -70
