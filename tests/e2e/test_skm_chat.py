"""`skm chat` end to end: the command line as a user runs it, through Envoy and the gateway,
on svc_conversation's agent loop with the tiny UNTRAINED models.

The models' words mean nothing; the tests check what the CLI shows and how it exits.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import grpc

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm_runtime.principal import caller_metadata
from skm_stack import RunningStack
from skm_stack.devkeys import dev_keys_dir


def _tenant(mesh: RunningStack, *, risk: str = "low_risk") -> str:
    """A fresh tenant with a member, alice, and an operator, olga; its default persona may use
    code_execution, low risk (allowed) or high risk (held for an operator when alice asks)."""
    tenant = f"k{uuid.uuid4().hex[:8]}"
    t, tool = f"tenant:tenants/{tenant}", f"tool:tenants/{tenant}/tools/code_execution"
    with grpc.insecure_channel(mesh.services["policy"].addr) as channel:
        policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[
                    access_pb2.Relationship(subject=f"user:tenants/{tenant}/users/alice", relation="member", object=t),
                    access_pb2.Relationship(subject=f"user:tenants/{tenant}/users/olga", relation="operator", object=t),
                    access_pb2.Relationship(subject=t, relation="tenant", object=tool),
                    access_pb2.Relationship(subject=t, relation=risk, object=tool),
                    access_pb2.Relationship(
                        subject=f"persona:tenants/{tenant}/personas/default", relation="persona_user", object=tool
                    ),
                ],
            ),
            timeout=10,
            metadata=caller_metadata("/skm.policy.v1.PolicyService/WriteRelationships"),  # a caller of the mesh
        )
    return tenant


def _env(mesh: RunningStack, token: str) -> dict[str, str]:
    return {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": token}


def _skm(mesh: RunningStack, *args: str, token: str = "", stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skm_cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(mesh, token),
    )


def _token(mesh: RunningStack, tenant: str, user: str = "alice", role: str = "member") -> str:
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    minted = _skm(mesh, "token", "--tenant", tenant, "--user", user, "--role", role, "--key", key)
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def _with_ctrl_c(*args: str) -> list[str]:
    """`python -m skm_cli ARGS` with SIGINT raising KeyboardInterrupt, as from a terminal. A test
    run started in the background (`make test &`) ignores SIGINT, children inherit that, and
    Python then never raises KeyboardInterrupt. (Not preexec_fn: Python code between fork and
    exec in a process with gRPC's threads can crash the child.)"""
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'skm'; runpy.run_module('skm_cli', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", start, *args]


def _lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line is one JSON object (the call fails here otherwise)."""
    return [json.loads(line) for line in stdout.splitlines()]


def _kind(message: dict[str, Any]) -> str:
    """The event's kind (`tokenDelta`, ...), or the message's (`attached`, `rejected`)."""
    if "event" not in message:
        return next(iter(message))
    event: dict[str, Any] = message["event"]
    return next(k for k in event if k not in {"sequence", "turn", "createTime"})


def _new_session(stderr: str) -> str:
    return next(word for word in stderr.split() if word.startswith("tenants/") and "/sessions/" in word)


def test_one_message_as_json_lines_shows_the_whole_turn(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    token = _token(mesh, tenant)
    run = _skm(
        mesh, "chat", "-m", "Work out 6 times 7 with Python.", "--json", "--tool-choice", "code_execution", token=token
    )
    assert run.returncode == 0, run.stderr
    messages = _lines(run.stdout)
    assert _kind(messages[0]) == "attached"
    session = _new_session(run.stderr)
    assert messages[0]["attached"]["session"]["name"] == session
    assert session.startswith(f"tenants/{tenant}/sessions/")
    kinds = [_kind(m) for m in messages[1:]]
    assert kinds[:3] == ["turnStateChanged", "userMessage", "preprocessing"]
    for kind in ("tokenDelta", "modelCall", "toolCallRequested", "toolCallVerdict", "toolCallResult"):
        assert kind in kinds, kind
    assert kinds.index("tokenDelta") < kinds.index("toolCallRequested") < kinds.index("toolCallVerdict")
    verdict = messages[1 + kinds.index("toolCallVerdict")]["event"]["toolCallVerdict"]
    assert verdict["decision"]["verdict"] == "VERDICT_ALLOW"
    assert kinds[-2:] == ["finalResponse", "turnStateChanged"]
    assert messages[-1]["event"]["turnStateChanged"]["state"] == "STATE_COMPLETED"
    assert {m["event"]["turn"] for m in messages[1:]} == {f"{session}/turns/1"}
    # The untrained models are named for what they are, once, on stderr only.
    assert run.stderr.count("UNTRAINED") == 1


def test_a_reader_that_stops_reading_ends_the_chat_quietly(mesh: RunningStack) -> None:
    """`skm chat --json | head -2`: no traceback, the SIGPIPE exit status."""
    token = _token(mesh, _tenant(mesh))
    with subprocess.Popen(
        [sys.executable, "-m", "skm_cli", "chat", "-m", "hello", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(mesh, token),
    ) as chat:
        assert chat.stdout is not None
        assert chat.stderr is not None
        first = chat.stdout.readline()
        assert json.loads(first)["attached"]
        chat.stdout.close()
        stderr = chat.stderr.read().decode()
        assert chat.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipe" not in stderr, stderr


def test_session_continues_a_session_and_after_replays_it(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    token = _token(mesh, tenant)
    first = _skm(mesh, "chat", "-m", "hello", "--json", token=token)
    session = _new_session(first.stderr)
    last = _lines(first.stdout)[-1]["event"]
    assert last["turnStateChanged"]["state"] in {"STATE_COMPLETED", "STATE_FAILED"}
    # The session's id alone is enough: the tenant comes from the token.
    second = _skm(mesh, "chat", "--session", session.rsplit("/", 1)[-1], "-m", "hello again", "--json", token=token)
    assert "new session" not in second.stderr
    messages = _lines(second.stdout)
    assert messages[0]["attached"]["session"]["name"] == session
    # Only what happened from the attach on: the new turn's events.
    assert {m["event"]["turn"] for m in messages[1:]} == {f"{session}/turns/2"}
    assert int(messages[1]["event"]["sequence"]) > int(last["sequence"])
    assert second.returncode == (0 if messages[-1]["event"]["turnStateChanged"]["state"] == "STATE_COMPLETED" else 1)
    # --after 0 replays the stored history first (the finished turns' deltas are compacted away).
    replay = _skm(mesh, "chat", "--session", session, "--after", "0", "-m", "and again", "--json", token=token)
    turns = [m["event"]["turn"] for m in _lines(replay.stdout)[1:]]
    assert turns[0] == f"{session}/turns/1"
    assert {f"{session}/turns/{n}" for n in (1, 2, 3)} == set(turns)
    assert "tokenDelta" not in [_kind(m) for m in _lines(replay.stdout)[1:] if m["event"]["turn"].endswith("/1")]


def test_no_token_is_a_usage_error_and_another_tenants_session_is_denied(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    anonymous = _skm(mesh, "chat", "-m", "hello")
    assert anonymous.returncode == 2
    assert "no token" in anonymous.stderr
    assert "Traceback" not in anonymous.stderr
    mine = _skm(mesh, "chat", "-m", "hello", "--json", token=_token(mesh, tenant))
    session = _new_session(mine.stderr)
    other = _token(mesh, _tenant(mesh))
    denied = _skm(mesh, "chat", "--session", session, "-m", "let me in", token=other)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr
    assert "Traceback" not in denied.stderr
    assert denied.stdout == ""


def test_interactive_chat_over_stdin_shows_the_answer_and_reruns(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    token = _token(mesh, tenant)
    run = _skm(
        mesh, "chat", "--tool-choice", "code_execution", token=token, stdin="Add 2 and 3.\n/help\n/rerun\n/quit\n"
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("you> ")
    assert out.count("agent> ") == 2
    assert "[tool code_execution {" in out
    assert "[policy ALLOW " in out
    assert "[model models/skm-tiny-untrained tier 0: " in out
    assert "/nudge [TEXT]" in out  # /help
    session = _new_session(run.stderr)
    assert f"[rerun as {session}/turns/2]" in out
    # The rerun answers with the next tier's model.
    assert "[model models/skm-tiny-untrained-large tier 1: " in out
    assert "UNTRAINED" in run.stderr


def test_ctrl_c_interrupts_the_running_turn(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    messages = []
    with subprocess.Popen(
        _with_ctrl_c("chat", "-m", "Tell me a long story.", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(mesh, _token(mesh, tenant)),
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        # Read to the end (communicate() would skip what this reader has buffered).
        for line in process.stdout:
            messages.append(json.loads(line))
            if _kind(messages[-1]) == "tokenDelta" and "tokenDelta" not in map(_kind, messages[:-1]):
                process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stderr = process.stderr.read()
    assert process.returncode == 1, stderr
    assert [_kind(m) for m in messages][-2:] == ["intervention", "turnStateChanged"]
    assert messages[-1]["event"]["turnStateChanged"]["state"] == "STATE_INTERRUPTED"
    assert "interrupting the turn" in stderr


def test_the_chat_re_attaches_when_svc_conversation_is_killed_mid_turn(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    messages = []
    with subprocess.Popen(
        [sys.executable, "-m", "skm_cli", "chat", "-m", "Tell me a story.", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(mesh, _token(mesh, tenant)),
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        for line in process.stdout:
            messages.append(json.loads(line))
            if _kind(messages[-1]) == "tokenDelta" and "tokenDelta" not in map(_kind, messages[:-1]):
                mesh.restart_service("conversation", kill=True)
        process.wait(timeout=60)
        stderr = process.stderr.read()
    assert "re-attaching after event" in stderr
    kinds = [_kind(m) for m in messages]
    assert kinds.count("attached") == 2
    assert messages[-1]["event"]["turnStateChanged"]["state"] in {"STATE_COMPLETED", "STATE_FAILED"}
    assert process.returncode == (0 if messages[-1]["event"]["turnStateChanged"]["state"] == "STATE_COMPLETED" else 1)
    # Read on where it left: no event twice, none out of order.
    sequences = [int(m["event"]["sequence"]) for m in messages if "event" in m]
    assert sequences == sorted(set(sequences))


def test_a_held_tool_call_names_its_blocked_action_and_goes_on_once_approved(mesh: RunningStack) -> None:
    tenant = _tenant(mesh, risk="high_risk")
    shown = []
    approved = None
    with subprocess.Popen(
        [sys.executable, "-m", "skm_cli", "chat", "-m", "Run this for me.", "--tool-choice", "code_execution"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(mesh, _token(mesh, tenant)),
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        for line in process.stdout:
            shown.append(line)
            held = re.search(r"waits for an operator to approve (tenants/\S+/blockedActions/[\w-]+)", line)
            if held and approved is None:
                assert line.startswith("[policy REQUIRES_APPROVAL ")
                operator = _token(mesh, tenant, "olga", "operator")
                approved = _skm(mesh, "blocked", "approve", held.group(1), "--note", "fine", token=operator)
        process.wait(timeout=60)
        stderr = process.stderr.read()
    assert approved is not None, "".join(shown)
    assert approved.returncode == 0, approved.stderr
    out = "".join(shown)
    assert "[awaiting an operator's decision]" in out
    assert out.index("[awaiting an operator's decision]") < out.index("[decided: running again]")
    assert "[result " in out or "[tool failed TOOL_ERROR" in out
    assert "agent> " in out
    assert process.returncode == 0, stderr


class _Screen:
    """What a chat process has written to stdout so far, read as it comes (no line buffering:
    the model's tokens arrive without newlines)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._fd = process.stdout.fileno()
        self.text = b""

    def wait_for(self, pattern: bytes, *, after: int = 0, seconds: float = 60.0) -> int:
        """Reads until ``pattern`` (a regex) shows up past offset ``after``; returns where it ends."""
        deadline = time.monotonic() + seconds
        while (found := re.compile(pattern).search(self.text, after)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.text[after:]!r}"
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                data = os.read(self._fd, 65536)
                assert data, f"the chat ended before {pattern!r}: {self.text[after:]!r}"
                self.text += data
        return found.end()


def test_ctrl_c_in_an_interactive_chat_interrupts_the_turn_and_resume_continues_it(mesh: RunningStack) -> None:
    tenant = _tenant(mesh)
    with subprocess.Popen(
        _with_ctrl_c("chat"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(mesh, _token(mesh, tenant)),
    ) as process:
        assert process.stdin is not None
        assert process.stderr is not None
        screen = _Screen(process)
        at = screen.wait_for(rb"you> ")
        process.stdin.write(b"Tell me a long story.\n")
        process.stdin.flush()
        # The pre-SLM's call is reported, then the primary model starts writing: interrupt it.
        at = screen.wait_for(rb"\(pre_slm\)[^\n]*\]\n.", after=at)
        process.send_signal(signal.SIGINT)
        at = screen.wait_for(rb"\[interrupted: /resume continues[^\n]*\n", after=at)
        at = screen.wait_for(rb"you> ", after=at)
        process.stdin.write(b"/resume\n")
        process.stdin.flush()
        at = screen.wait_for(rb"\[resume\]\n", after=at)
        at = screen.wait_for(rb"(agent> |\[turn failed )[^\n]*\n", after=at)
        screen.wait_for(rb"you> ", after=at)
        process.stdin.write(b"/quit\n")
        process.stdin.flush()
        process.wait(timeout=30)
        stderr = process.stderr.read().decode()
    assert process.returncode == 0, stderr
    assert "interrupting the turn" in stderr
