"""The browser UI measured in Debian's Chromium (playwright-core) on a whole mesh started for the run.

1. First load: the page in a fresh browser context (nothing cached), then reloaded in the same
   context (cached): time from navigation to the sign-in form being usable, the load event,
   and the bytes transferred. Median of ``rounds``.
2. Enter to the first token on screen: a member signs in and sends ``rounds`` messages from the
   session workspace. For each turn, the page's own clock marks the Enter key and the moment
   the first agent text of that turn is on screen (a MutationObserver); `skm chat --json`,
   attached to the same session before the first message, marks when the same turn's first
   token delta reaches it (a native gRPC client through the same Envoy). Both clocks are this
   machine's wall clock, so the difference is what grpc-web, the page and React add. The
   model call's own time to first token (its ModelCall event) is printed beside them.

The engine serves the tiny UNTRAINED models unless ``--llm real``: the text is meaningless,
the timings are real. Scenario code: web/e2e/scenarios.mjs (`bench`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.conversation import _new_user
from bench.measure import bench_services
from skm_stack import EPHEMERAL_PORTS, Stack
from skm_stack.paths import REPO_ROOT


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} ms" if values else "     n/a"


def main(rounds: int = 5, llm: str = "untrained") -> None:
    print("\n== the browser UI: first load, and Enter to the first token on screen ==", flush=True)
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is needed (the README's requirements)")
    with tempfile.TemporaryDirectory(prefix="skm-bench-web-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False, llm_serve=llm).start()
        try:
            stack.start_services(bench_services({"conversation": {"SKM_CONVERSATION_MAX_ITERATIONS": "1"}}))
            stack.start_envoy()
            web = stack.start_web(demo_sign_in=False)
            user = asyncio.run(_new_user(stack))
            token = user.bearer[0][1].removeprefix("Bearer ")
            env = {
                **os.environ,
                "SKM_UI_URL": web.url,
                "SKM_UI_TOKEN": token,
                "SKM_UI_ROUNDS": str(rounds),
                "SKM_UI_ENVOY": stack.envoy_url,
                "SKM_UI_SKM": str(REPO_ROOT / ".venv" / "bin" / "skm"),
                "SKM_UI_SHOTS": str(Path(state) / "shots"),
            }
            done = subprocess.run(
                [node, str(REPO_ROOT / "web" / "e2e" / "run.mjs"), "bench"],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
                cwd=REPO_ROOT,
            )
            if done.returncode != 0:
                raise SystemExit(f"the browser scenario failed:\n{done.stderr[-4000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])["figures"]
        finally:
            stack.stop()
    print(f"\nfirst load, median of {rounds} (Chromium {llm=}; the page served by skm_stack.web on loopback)")
    print(f"  {'':<8} {'usable':>10} {'load event':>12} {'transferred':>14}")
    for label in ("cold", "cached"):
        usable, load = figures[f"{label}_usable_ms_p50"], figures[f"{label}_load_event_ms_p50"]
        kib = figures[f"{label}_bytes_transferred"] / 1024
        print(f"  {label:<8} {usable:>7.0f} ms {load:>9.0f} ms {kib:>10.0f} KiB")
    browser = figures["browser_enter_to_first_token_ms"]
    cli = figures["cli_enter_to_first_token_ms"]
    model = figures["model_call_ttft_ms"]
    print(f"\nEnter -> first token, {len(browser)} turns (p50)")
    print(f"  browser, on screen            {_p50(browser)}   {[round(v) for v in browser]}")
    print(f"  skm chat --json, received     {_p50(cli)}   {[round(v) for v in cli]}")
    print(f"  model calls' own TTFT         {_p50(model)}   (pre-SLM and primary calls, as their ModelCall events say)")
    if browser and cli:
        ratio = statistics.median(browser) / statistics.median(cli)
        gap = statistics.median(browser) - statistics.median(cli)
        print(f"  browser / CLI                 {ratio:8.2f}x  ({gap:+.0f} ms: grpc-web, the page and React)")
