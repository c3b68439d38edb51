"""`skm voice`'s own parts: WAV in and out, 20 ms chunks, its arguments and the microphone check."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from skm_cli.__main__ import main
from skm_cli.errors import CliError
from skm_cli.voice import TAIL_SECONDS, chunks, microphone_audio, read_wav, write_wav


def _wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 24_000, 44_100, 48_000])
def test_a_mono_file_round_trips_and_is_cut_into_20_ms_chunks(tmp_path: Path, rate: int) -> None:
    samples = (np.sin(np.arange(rate) / 7) * 10_000).astype("<i2")
    pcm, found = read_wav(_wav(tmp_path / "in.wav", samples, rate))
    assert found == rate
    assert pcm == samples.tobytes()
    pieces = list(chunks(pcm, rate))
    assert all(len(p) == int(rate * 0.02) * 2 for p in pieces[:-1])
    assert b"".join(pieces) == pcm + bytes(2 * int(rate * TAIL_SECONDS))
    write_wav(tmp_path / "out.wav", pcm, rate)
    assert read_wav(tmp_path / "out.wav") == (pcm, rate)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    pcm, _ = read_wav(_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 16_000, channels=2))
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [2000] * 100


def test_what_cannot_be_sent_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="8-bit"):
        read_wav(_wav(tmp_path / "8.wav", np.zeros(10, dtype=np.uint8), 16_000, width=1))
    with pytest.raises(CliError, match="11025 Hz"):
        read_wav(_wav(tmp_path / "r.wav", np.zeros(10, dtype="<i2"), 11_025))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(CliError, match="not a WAV file"):
        read_wav(tmp_path / "text.wav")
    with pytest.raises(CliError, match="no such file"):
        read_wav(tmp_path / "missing.wav")


def test_no_capture_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CliError, match="no microphone here"):
        next(microphone_audio(16_000))


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["voice", "--help"])
    assert shown.value.code == 0
    assert "WAV" in capsys.readouterr().out
    assert main(["voice", "--token", "t"]) == 2
    assert "--in FILE.wav or --microphone" in capsys.readouterr().err
    assert main(["voice", "--token", "t", "--in", str(tmp_path / "none.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
