"""`skm voice`'s own parts: WAV in and out, 20 ms chunks and their pace, the microphone check,
the latencies line and the command's arguments. (Through the mesh: tests/e2e/test_skm_voice.py.)"""

from __future__ import annotations

import os
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import duration_pb2

from skm.audio.v1 import audio_metrics_pb2
from skm.audio.v1 import audio_service_pb2 as pb
from skm_cli.__main__ import main
from skm_cli.errors import CliError
from skm_cli.voice import TAIL_SECONDS, Microphone, _Answers, chunks, latencies, paced, read_wav, write_wav

RATES = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000]


def _wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("rate", RATES)
def test_a_mono_file_is_read_as_it_is_and_round_trips(tmp_path: Path, rate: int) -> None:
    samples = (np.sin(np.arange(rate) / 7) * 10_000).astype("<i2")
    pcm, found = read_wav(_wav(tmp_path / "in.wav", samples, rate))
    assert found == rate
    assert pcm == samples.tobytes()
    write_wav(tmp_path / "out.wav", pcm, rate)
    assert read_wav(tmp_path / "out.wav") == (pcm, rate)
    with wave.open(str(tmp_path / "out.wav"), "rb") as written:
        assert (written.getnchannels(), written.getsampwidth(), written.getframerate()) == (1, 2, rate)
        assert written.getnframes() == rate


@pytest.mark.parametrize("rate", RATES)
def test_audio_is_cut_into_20_ms_chunks_then_silence(rate: int) -> None:
    pcm = (np.arange(rate // 2 + 3) % 1000).astype("<i2").tobytes()  # 0.5 s and a bit: a short last piece
    pieces = list(chunks(pcm, rate))
    size = int(rate * 0.02) * 2
    assert {len(p) for p in pieces[:-1]} == {size}
    assert 0 < len(pieces[-1]) <= size
    assert all(len(p) % 2 == 0 for p in pieces), "whole 16-bit samples only"
    sent = b"".join(pieces)
    assert sent[: len(pcm)] == pcm
    assert sent[len(pcm) :] == bytes(2 * int(rate * TAIL_SECONDS))


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = np.array([1000, -2000, 32767, 3], dtype="<i2")
    right = np.array([3000, -4000, 32767, 4], dtype="<i2")
    pcm, rate = read_wav(_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 44_100, channels=2))
    assert rate == 44_100
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [2000, -3000, 32767, 4]


def test_what_cannot_be_sent_is_refused_with_the_path(tmp_path: Path) -> None:
    eight = _wav(tmp_path / "8.wav", np.zeros(10, dtype=np.uint8), 16_000, width=1)
    with pytest.raises(CliError, match=re.escape(f"{eight}: 8-bit samples")):
        read_wav(eight)
    with pytest.raises(CliError, match="32-bit"):
        read_wav(_wav(tmp_path / "32.wav", np.zeros(10, dtype="<i4"), 16_000, width=4))
    with pytest.raises(CliError, match=r"/r\.wav: 11025 Hz"):
        read_wav(_wav(tmp_path / "r.wav", np.zeros(10, dtype="<i2"), 11_025))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(CliError, match=r"text\.wav: not a WAV file"):
        read_wav(tmp_path / "text.wav")
    with pytest.raises(CliError, match=r"missing\.wav: no such file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(CliError, match="a directory"):
        read_wav(tmp_path)


def test_realtime_pacing_takes_the_audio_s_time_and_fast_does_not() -> None:
    pcm = bytes(2 * 16_000 // 4)  # 0.25 s
    started = time.monotonic()
    assert b"".join(paced(iter([pcm[:4000], pcm[4000:]]), 16_000, realtime=True)) == pcm
    assert time.monotonic() - started >= 0.24
    started = time.monotonic()
    assert b"".join(paced(iter([pcm[:4000], pcm[4000:]]), 16_000, realtime=False)) == pcm
    assert time.monotonic() - started < 0.1


def _arecord(directory: Path, listing: str, audio_bytes: int = 0) -> None:
    """An `arecord` stand-in: `-l` prints LISTING; recording writes AUDIO_BYTES of zeros."""
    script = directory / "arecord"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-l" ]; then printf %s "{listing}"; exit 0; fi\nhead -c {audio_bytes} /dev/zero\n'
    )
    script.chmod(0o755)


def test_no_capture_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CliError, match=r"no microphone here.*not installed.*use --in FILE"):
        Microphone.find()
    # arecord without a sound card prints its complaint on stderr and no card on stdout
    _arecord(tmp_path, "")
    with pytest.raises(CliError, match=r"no microphone here.*no capture device.*use --in FILE"):
        Microphone.find()


def test_the_command_says_so_before_it_calls_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _arecord(tmp_path, "")
    # Nothing listens at this URL: a call would fail with UNAVAILABLE, not this usage error.
    assert main(["voice", "--url", "127.0.0.1:9", "--token", "t", "--microphone"]) == 2
    assert "no microphone here" in capsys.readouterr().err


def test_a_capture_device_is_read_in_20_ms_chunks_until_it_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _arecord(tmp_path, "card 0: PCH [HDA Intel PCH], device 0: ALC892 Analog [ALC892 Analog]\n", audio_bytes=1_601)
    microphone = Microphone.find()
    pieces = list(microphone.chunks())
    assert [len(p) for p in pieces] == [640, 640, 320, 2 * int(16_000 * TAIL_SECONDS)]


def test_answers_keep_each_turn_s_audio_together_in_turn_order() -> None:
    answers = _Answers()
    for turn, audio in [("t1", b"a1"), ("t2", b"b1"), ("t1", b"a2"), ("t2", b"b2")]:
        answers.add(pb.SynthesizedAudio(turn=turn, audio=audio))
    assert answers.pcm() == b"a1a2b1b2"


def test_latencies_are_measured_from_the_end_of_speech() -> None:
    metrics = audio_metrics_pb2.QualityMetrics(
        recognition_latency=duration_pb2.Duration(nanos=300_000_000),
        first_token_latency=duration_pb2.Duration(nanos=450_000_000),
        response_latency=duration_pb2.Duration(seconds=1, nanos=200_000_000),
    )
    assert latencies(metrics) == (
        "speech end -> final transcript 300 ms, -> first token 750 ms, -> first audio 1200 ms"
    )
    assert latencies(audio_metrics_pb2.QualityMetrics()) == (
        "speech end -> final transcript -, -> first token -, -> first audio -"
    )


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["voice", "--help"])
    assert shown.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--in", "--out", "--session", "--persona", "--voice", "--rate", "--no-barge-in", "--interim"):
        assert option in help_text
    for option in ("--json", "--realtime", "--fast", "--microphone", "--list-voices"):
        assert option in help_text
    with pytest.raises(SystemExit) as shown:
        main(["voice", "--token", "t", "--in", "x.wav", "--realtime", "--fast"])
    assert shown.value.code == 2
    capsys.readouterr()
    assert main(["voice", "--token", "t"]) == 2
    assert "--in FILE.wav or --microphone" in capsys.readouterr().err
    assert main(["voice", "--token", "t", "--in", str(tmp_path / "none.wav")]) == 2
    assert "none.wav: no such file" in capsys.readouterr().err
    assert main(["voice", "--token", "t", "--in", "x.wav", "--rate", "11025"]) == 2
    assert "--rate 11025" in capsys.readouterr().err
