"""The browser UI in a real browser: Debian's Chromium driven by playwright-core, against the
whole mesh through Envoy (grpc-web), the UI served by skm_stack.web as `make run` serves it.

Each test prepares a tenant here (relationships, tokens) and runs one scenario of
web/e2e/scenarios.mjs, which signs in as a person would, drives the page by its accessible
names and checks what the page shows. A scenario fails on any console error of the page.
Screenshots of every view land in .state/browser-screenshots (printed with `pytest -s`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
import wave
from pathlib import Path
from typing import Any

import pytest

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.policy.v1 import (
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
)
from skm_stack import RunningStack
from skm_stack.demo import DEMO_TENANT
from skm_stack.paths import REPO_ROOT
from skm_stack.web import WebServer
from tests.e2e.test_conversation import Client, _grant, _token
from tests.e2e.test_real_model import _tenant_on_the_real_model
from tests.integration.test_audio_service import RATE, espeak, silence

pytestmark = pytest.mark.timeout(600)

SCREENSHOTS = REPO_ROOT / ".state" / "browser-screenshots"
RUNNER = REPO_ROOT / "web" / "e2e" / "run.mjs"


@pytest.fixture(scope="module")
def web(mesh: RunningStack) -> WebServer:
    """The UI's static server on the mesh (one per test session: the stack owns it)."""
    return mesh.web or mesh.start_web()


def _launch(name: str, web: WebServer, **settings: str) -> subprocess.Popen[str]:
    """Start one scenario in Chromium (web/e2e/run.mjs); its stdin and stdout are pipes."""
    node = shutil.which("node")
    assert node, "node is needed for the browser tests (the README's requirements)"
    env = {
        **os.environ,
        "SKM_UI_URL": web.url,
        "SKM_UI_SHOTS": str(SCREENSHOTS),
        **{f"SKM_UI_{key.upper()}": value for key, value in settings.items()},
    }
    return subprocess.Popen(
        [node, str(RUNNER), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def _finish(process: subprocess.Popen[str], name: str, *, before: str = "") -> dict[str, Any]:
    """Wait for the scenario; its JSON result, or a failure with what it printed."""
    try:
        stdout, stderr = process.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    stdout = before + stdout
    assert process.returncode == 0, f"scenario {name} failed:\n{stderr[-6000:]}\n{stdout[-2000:]}"
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    shown = {k: v for k, v in result["figures"].items() if k != "sequences"}
    print(f"\n[{name}] figures {shown}; screenshots: {', '.join(result['screenshots'])}")
    return result


def _scenario(name: str, web: WebServer, **settings: str) -> dict[str, Any]:
    """Run one scenario to its end."""
    return _finish(_launch(name, web, **settings), name)


async def _tenant(mesh: RunningStack, *, low_risk: bool) -> tuple[str, dict[str, str]]:
    tenant = f"b{uuid.uuid4().hex[:8]}"
    await _grant(mesh, tenant, users={"alice": "member", "olga": "operator", "ada": "admin"}, low_risk=low_risk)
    tokens = {
        "token": _token(mesh.state_dir, tenant, "alice"),
        "operator_token": _token(mesh.state_dir, tenant, "olga", roles=("operator",)),
        "admin_token": _token(mesh.state_dir, tenant, "ada", roles=("admin",)),
    }
    return tenant, tokens


async def test_a_message_streams_tokens_then_a_tool_call_and_its_verdict_show(
    mesh: RunningStack, web: WebServer
) -> None:
    _, tokens = await _tenant(mesh, low_risk=True)
    result = _scenario("chat", web, token=tokens["token"])
    assert result["figures"]["token_updates_seen"] >= 2


async def test_a_running_turn_is_interrupted_from_the_page(mesh: RunningStack, web: WebServer) -> None:
    _, tokens = await _tenant(mesh, low_risk=True)
    _scenario("interrupt", web, token=tokens["token"])


async def test_an_operator_approves_a_held_call_and_the_session_goes_on(mesh: RunningStack, web: WebServer) -> None:
    _, tokens = await _tenant(mesh, low_risk=False)
    _scenario("approval", web, token=tokens["token"], operator_token=tokens["operator_token"])


async def test_a_stream_dropped_mid_turn_reattaches_without_gaps_or_repeats(mesh: RunningStack, web: WebServer) -> None:
    tenant, tokens = await _tenant(mesh, low_risk=False)
    process = _launch("reattach", web, token=tokens["token"])
    assert process.stdout is not None
    assert process.stdin is not None
    seen = ""
    for line in process.stdout:
        seen += line
        if line.strip() == "DROP-NOW":
            break
    # A real drop: svc_conversation dies under the page's stream (Envoy answers UNAVAILABLE);
    # its successor takes the turn over after the lease (3 s in this mesh).
    mesh.restart_service("conversation", kill=True)
    operator = Client(mesh, tenant, "olga")
    blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(operator.channel)
    held = await blocked.ListBlockedActions(
        blocked_action_service_pb2.ListBlockedActionsRequest(parent=f"tenants/{tenant}"),
        metadata=operator.metadata,
        timeout=10,
    )
    assert len(held.blocked_actions) == 1
    await blocked.ApproveBlockedAction(
        blocked_action_service_pb2.ApproveBlockedActionRequest(name=held.blocked_actions[0].name, note="go on"),
        metadata=operator.metadata,
        timeout=10,
    )
    process.stdin.write("DROPPED\n")
    process.stdin.flush()
    result = _finish(process, "reattach", before=seen)
    shown = result["figures"]["sequences"]
    # Every event of the session, as the service keeps it, is on the page (once: the scenario
    # checked that no sequence shows twice).
    client = Client(mesh, tenant, "alice")
    stored: list[int] = []
    session = f"tenants/{tenant}/sessions/{result['figures']['session_id']}"
    turns = await client.stub.ListTurns(
        pb.ListTurnsRequest(parent=session, page_size=100), metadata=client.metadata, timeout=10
    )
    for turn in turns.turns:
        events = await client.stub.ListTurnEvents(
            pb.ListTurnEventsRequest(parent=turn.name, page_size=1000), metadata=client.metadata, timeout=10
        )
        stored += [event.sequence for event in events.events]
    # Nothing stored is missing. The page shows more: the token deltas it saw live, which the
    # service compacts away once the turn ends (their text survives in final_response).
    missing = sorted(set(stored) - set(shown))
    assert not missing, f"the page lacks stored events {missing}"
    assert max(stored) > result["figures"]["before_drop"], "no event of the turn came after the drop"
    compacted = len(set(shown) - set(stored))
    print(f"{len(stored)} stored events all shown; {compacted} token deltas seen live and compacted since")


async def test_every_view_renders_and_the_main_flow_works_by_keyboard_alone(mesh: RunningStack, web: WebServer) -> None:
    _, tokens = await _tenant(mesh, low_risk=True)
    result = _scenario("views", web, token=tokens["admin_token"])
    assert len(result["screenshots"]) >= 6
    _scenario("keyboard", web, token=tokens["token"])


async def test_a_tenant_admin_changes_models_roles_budgets_and_the_constitution_from_the_page(
    mesh: RunningStack, web: WebServer
) -> None:
    tenant, tokens = await _tenant(mesh, low_risk=True)
    _scenario("admin", web, token=tokens["admin_token"])
    # What the page did, read back from the services.
    admin = Client(mesh, tenant, "ada")
    constitution = await constitution_service_pb2_grpc.ConstitutionServiceStub(admin.channel).GetConstitution(
        constitution_service_pb2.GetConstitutionRequest(name=f"tenants/{tenant}/constitution"),
        metadata=admin.metadata,
        timeout=10,
    )
    assert constitution.constitution.content == "Be kind. Ask before anything that costs money."


async def test_the_demo_sign_in_gives_the_demo_admin(mesh: RunningStack, web: WebServer) -> None:
    from skm_stack.demo import onboard_demo

    onboard_demo(mesh.services["profiles"].addr, mesh.mesh_key_file)
    result = _scenario("demo", web)
    assert result["figures"]["signed_in_as"] == f"admin @ {DEMO_TENANT}"


async def test_a_spoken_question_from_the_microphone_gets_a_spoken_answer(
    mesh: RunningStack, real_engine: RunningStack, web: WebServer, tmp_path: Path
) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    wav = tmp_path / "question.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        # Silence first, so the page is listening before the question starts.
        out.writeframes(silence(1.5) + espeak("What is the capital of France?") + silence(3.0))
    # %noloop: Chromium plays the file once instead of repeating the question.
    result = _scenario("voice", web, token=client.token, wav=f"{wav}%noloop")
    assert result["figures"]["audio_bytes_received"] > 0
