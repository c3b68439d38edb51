"""`skm voice` end to end: the command line as a user runs it, through Envoy, on svc_audio's
real speech models (Silero VAD, Whisper tiny.en, the piper voice) and the mesh's UNTRAINED
language model.

The question is espeak-ng's own WAV file (22.05 kHz), so svc_audio resamples what the CLI
sends. The model's words mean nothing: the tests check what was heard, that an answer came
back spoken, and what the CLI writes and prints. (The same command against a real model, with
the answer's words checked: tests/e2e/test_voice.py.)
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from skm_stack import RunningStack
from tests.e2e.test_skm_chat import _env, _new_session, _tenant, _token

pytestmark = pytest.mark.timeout(600)

QUESTION = "What is the capital of France?"


def _question(folder: Path) -> Path:
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    path = folder / "question.wav"
    subprocess.run([binary, "-w", str(path), "-s", "160", "-v", "en-us", QUESTION], check=True, timeout=30)
    return path


def _voice(mesh: RunningStack, token: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skm_cli", "voice", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(mesh, token),
    )


def _lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line is one JSON VoiceEvent (the call fails here otherwise)."""
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_spoken_question_is_heard_answered_and_its_spoken_answer_written(mesh: RunningStack, tmp_path: Path) -> None:
    tenant = _tenant(mesh)
    token = _token(mesh, tenant)
    question = _question(tmp_path)
    answer = tmp_path / "answer.wav"
    run = _voice(mesh, token, "--in", str(question), "--out", str(answer), "--fast", "--json")
    assert run.returncode == 0, run.stderr
    events = _lines(run.stdout)
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "started"
    session = _new_session(run.stderr)
    assert session.startswith(f"tenants/{tenant}/sessions/")
    assert events[0]["started"]["voiceStream"].startswith(f"{session}/voiceStreams/")

    finals = [e["recognitionResult"] for e in events if e.get("recognitionResult", {}).get("isFinal")]
    assert len(finals) == 1, finals
    heard = finals[0]["transcript"].lower()
    assert "capital" in heard, heard
    assert "france" in heard, heard

    responses = [e["sessionEvent"] for e in events if "finalResponse" in e.get("sessionEvent", {})]
    assert len(responses) == 1, [e["sessionEvent"] for e in events if "sessionEvent" in e][-3:]
    turn = responses[0]["turn"]
    assert turn.startswith(f"{session}/turns/")
    # The answer's audio, as the JSON mapping writes bytes (base64), is what went into the file.
    audio = [e["synthesizedAudio"] for e in events if "synthesizedAudio" in e]
    assert audio, "no synthesized audio"
    assert {a["turn"] for a in audio} == {turn}
    assert audio[-1].get("last") is True
    assert "failureReason" not in audio[-1]
    spoken = b"".join(base64.b64decode(a.get("audio", "")) for a in audio)
    assert kinds.index("recognitionResult") < kinds.index("synthesizedAudio") < kinds.index("qualityMetrics")
    assert kinds.count("qualityMetrics") == 1

    with wave.open(str(answer), "rb") as written:
        assert (written.getnchannels(), written.getsampwidth(), written.getframerate()) == (1, 2, 16_000)
        assert written.getnframes() > 0.3 * 16_000
        assert written.readframes(written.getnframes()) == spoken
    seconds = len(spoken) / 2 / 16_000
    assert f"1 answer(s) spoken: {seconds:.2f} s of audio written to {answer}" in run.stderr


def test_in_real_time_in_the_same_session_for_a_person(mesh: RunningStack, tmp_path: Path) -> None:
    """The default pace and the human output: stderr shows what was heard, the answer and its
    latencies; --session speaks in a session that exists."""
    token = _token(mesh, _tenant(mesh))
    question = _question(tmp_path)
    first = _voice(mesh, token, "--in", str(question), "--out", str(tmp_path / "first.wav"), "--fast")
    assert first.returncode == 0, first.stderr
    session = _new_session(first.stderr)
    answer = tmp_path / "second.wav"
    run = _voice(mesh, token, "--in", str(question), "--out", str(answer), "--session", session.rsplit("/", 1)[-1])
    assert run.returncode == 0, run.stderr
    print(run.stderr)  # what a person sees, latencies included (pytest -s)
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert f"skm: session {session}" in lines
    heard = [line for line in lines if line.startswith("you> ")]
    assert len(heard) == 1, run.stderr
    assert "capital" in heard[0].lower()
    assert sum(line.startswith("agent> ") for line in lines) == 1, run.stderr
    latencies = [line for line in lines if "speech end -> final transcript" in line]
    assert len(latencies) == 1, run.stderr
    assert latencies[0].count(" ms") == 3, latencies[0]  # all three measured
    with wave.open(str(answer), "rb") as written:
        assert written.getnframes() > 0.3 * 16_000


def test_the_voices_are_listed(mesh: RunningStack) -> None:
    token = _token(mesh, _tenant(mesh))
    listed = _voice(mesh, token, "--list-voices", "--json", timeout=60)
    assert listed.returncode == 0, listed.stderr
    voices = {v["name"]: v for v in _lines(listed.stdout)}
    assert "voices/en_US-joe-medium" in voices
    table = _voice(mesh, token, "--list-voices", timeout=60)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["NAME", "ENGINE", "RATE", "LANGUAGES"]
    joe = next(row for row in rows if row.startswith("voices/en_US-joe-medium "))
    assert f"{voices['voices/en_US-joe-medium']['sampleRateHertz']} Hz" in joe


def test_an_unreadable_question_and_a_refused_format_say_why(mesh: RunningStack, tmp_path: Path) -> None:
    token = _token(mesh, _tenant(mesh))
    (tmp_path / "notes.wav").write_text("not audio")
    run = _voice(mesh, token, "--in", str(tmp_path / "notes.wav"))
    assert run.returncode == 2
    assert f"{tmp_path / 'notes.wav'}: not a WAV file" in run.stderr
    assert "new session" not in run.stderr, "nothing is created for a file that cannot be sent"
    # What only the server can refuse: its status and ErrorInfo reason are shown.
    refused = _voice(mesh, token, "--in", str(_question(tmp_path)), "--fast", "--voice", "voices/nobody")
    assert refused.returncode == 1, refused.stderr
    assert "NOT_FOUND [VOICE_NOT_FOUND]" in refused.stderr, refused.stderr
