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

from skm_stack import RunningStack
from skm_stack.demo import DEMO_TENANT
from skm_stack.paths import REPO_ROOT
from skm_stack.web import WebServer
from tests.e2e.test_conversation import _grant, _token
from tests.e2e.test_real_model import _tenant_on_the_real_model
from tests.integration.test_audio_service import RATE, espeak, silence

pytestmark = pytest.mark.timeout(600)

SCREENSHOTS = REPO_ROOT / ".state" / "browser-screenshots"
RUNNER = REPO_ROOT / "web" / "e2e" / "run.mjs"


@pytest.fixture(scope="module")
def web(mesh: RunningStack) -> WebServer:
    """The UI's static server on the mesh (one per test session: the stack owns it)."""
    return mesh.web or mesh.start_web()


def _scenario(name: str, web: WebServer, **settings: str) -> dict[str, Any]:
    """Run one scenario in Chromium; its JSON result, or a failure with what it printed."""
    node = shutil.which("node")
    assert node, "node is needed for the browser tests (the README's requirements)"
    env = {
        **os.environ,
        "SKM_UI_URL": web.url,
        "SKM_UI_SHOTS": str(SCREENSHOTS),
        **{f"SKM_UI_{key.upper()}": value for key, value in settings.items()},
    }
    done = subprocess.run(
        [node, str(RUNNER), name], capture_output=True, text=True, env=env, timeout=540, check=False, cwd=REPO_ROOT
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr[-6000:]}\n{done.stdout[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    print(f"\n[{name}] figures {result['figures']}; screenshots: {', '.join(result['screenshots'])}")
    return result


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


async def test_every_view_renders_and_the_main_flow_works_by_keyboard_alone(mesh: RunningStack, web: WebServer) -> None:
    _, tokens = await _tenant(mesh, low_risk=True)
    result = _scenario("views", web, token=tokens["admin_token"])
    assert len(result["screenshots"]) >= 6
    _scenario("keyboard", web, token=tokens["token"])


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
