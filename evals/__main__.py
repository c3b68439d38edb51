"""`make eval`: the capsule set against every registered chat model, on the local engine.

Starts the stack's LLM engine with the real models (and, with --with-untrained, a second
one with the tiny UNTRAINED models), resolves the chat models svc_profiles registers beside
it, asks every selected item of each model at temperature 0 through the platform's model
client, prints progress and a table, and writes the JSON report (its shape: evals.report).
Exits 0 when the run worked, whatever the accuracy; 1 when something went wrong (the
engine did not start, a model did not answer at all, an item could not be judged, a model
named with --models is not registered); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evals.capsules import DEFAULT_CAPSULES, KINDS, Capsule, CapsuleError, CapsuleSet, load_capsules, select
from evals.prompts import AgentSetup, Budgets, agent_setup, primary_max_tokens
from evals.record import record_benchmarks, use_mesh_key
from evals.report import RunInfo, report_json, table
from evals.runner import Engine, EngineStarter, EvalModel, ModelResult, local_engine, models_to_run, registered_defaults
from evals.runner import run_model as run_one_model
from evals.sandbox import SandboxCodeRunner
from skm_stack.llm import SERVE_REAL, SERVE_UNTRAINED
from svc_conversation.adapters.openai import OpenAICompatibleClient
from svc_profiles.adapters.defaults import load_defaults
from svc_profiles.errors import DefaultsInvalid
from svc_profiles.settings import DEFAULTS_FILE

DEFAULT_REPORT = Path(".state/eval/report.json")
DEFAULT_PROFILES_ADDR = "127.0.0.1:50056"
TEMPERATURE = 0.0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _kinds(text: str) -> list[str]:
    kinds = _names(text)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(unknown)}; the kinds: {', '.join(KINDS)}")
    return kinds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evals",
        description=(
            "Run the capsule set (items with checkable answers: exact, json_schema, tool_choice, injection) "
            "against every registered chat model on the local LLM engine, at temperature 0, through the "
            "platform's model client. Prints per-model accuracy (overall and per kind), median time to first "
            "token and tokens/s, and writes a JSON report. Exit status: 0 when the run worked (whatever the "
            "accuracy), 1 on errors, 2 on bad arguments."
        ),
        epilog="See evals/README.md for the capsule format and the scoring rules; evals/report.py for the report.",
    )
    parser.add_argument(
        "--models",
        type=_names,
        default=[],
        metavar="A,B",
        help="only these registered models, by name (models/x) or served name (x); default: every chat model",
    )
    parser.add_argument(
        "--capsules", type=Path, default=DEFAULT_CAPSULES, metavar="FILE", help="the capsule set (default %(default)s)"
    )
    parser.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, metavar="FILE", help="where the JSON report goes (%(default)s)"
    )
    parser.add_argument(
        "--kinds", type=_kinds, default=[], metavar="K,K", help=f"only items of these kinds ({', '.join(KINDS)})"
    )
    parser.add_argument("--ids", type=_names, default=[], metavar="ID,ID", help="only the items with these ids")
    parser.add_argument(
        "--limit",
        type=_positive,
        default=None,
        metavar="N",
        help="at most N items, taken evenly across the kinds (a quick, mixed subset)",
    )
    parser.add_argument(
        "--with-untrained",
        action="store_true",
        help="also run the tiny UNTRAINED test models (random weights: their accuracy means nothing)",
    )
    parser.add_argument(
        "--defaults",
        type=Path,
        default=Path(os.environ.get("SKM_PROFILES_DEFAULTS_FILE") or DEFAULTS_FILE),
        metavar="FILE",
        help="the deployment defaults svc_profiles registers models from (SKM_PROFILES_DEFAULTS_FILE, "
        "else deploy/profiles/defaults.yaml)",
    )
    parser.add_argument(
        "--persona", default="default", help="the built-in persona tool items are asked under (%(default)s)"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="record each model's run in svc_profiles (RecordBenchmark, one run per model and capsule set): "
        "the quality the scoring job uses; needs the mesh key (SKM_MESH_KEY_FILE)",
    )
    parser.add_argument(
        "--profiles-addr",
        default=os.environ.get("SKM_PROFILES_ADDR") or DEFAULT_PROFILES_ADDR,
        metavar="HOST:PORT",
        help="with --record: svc_profiles (default: $SKM_PROFILES_ADDR or %(default)s)",
    )
    parser.add_argument(
        "--first-token-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds a call may wait for its first token (a long prompt on a slow model; %(default)s)",
    )
    return parser


def _say(line: str) -> None:
    print(line, flush=True)


def _wanted(model: EvalModel, names: Sequence[str]) -> bool:
    return not names or model.name in names or model.served_model in names


def _wanted_name(name: str, names: Sequence[str]) -> bool:
    return not names or name in names or name.removeprefix("models/") in names


async def _run_models(
    models: Sequence[EvalModel],
    items: Sequence[Capsule],
    setup: AgentSetup,
    budgets: Budgets,
    wait: float,
    results: list[ModelResult],
) -> None:
    """Each model's run, added to ``results`` as it ends (kept when a later one fails)."""
    # Long waits on purpose: a slow model's first long prompt takes minutes on a small machine.
    client = OpenAICompatibleClient(first_token_timeout=wait, idle_timeout=wait)
    runner = SandboxCodeRunner()
    try:
        for model in models:
            results.append(await run_one_model(client, model, items, setup, budgets, runner, _say))
    finally:
        await client.close()


def run(args: argparse.Namespace, capsules: CapsuleSet, start_engine: EngineStarter) -> int:
    """The run the arguments ask for; the exit status."""
    items = select(capsules.items, kinds=args.kinds, ids=args.ids, limit=args.limit)
    unknown_ids = sorted(set(args.ids) - {item.id for item in capsules.items})
    if unknown_ids or not items:
        print(f"no such item(s): {', '.join(unknown_ids)}" if unknown_ids else "no item selected", file=sys.stderr)
        return 2
    try:
        defaults = load_defaults(args.defaults)
        setup = agent_setup(defaults, args.persona)
    except (DefaultsInvalid, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    budgets = Budgets(agent=primary_max_tokens(defaults))
    started, load_start = time.time(), os.getloadavg()
    engines: list[Engine] = []
    results: list[ModelResult] = []
    unserved: list[str] = []
    errors: list[str] = []
    serves = [SERVE_REAL, SERVE_UNTRAINED] if args.with_untrained else [SERVE_REAL]
    for index, serve in enumerate(serves):
        tag = f"[{'UNTRAINED' if serve == SERVE_UNTRAINED else 'REAL'} engine]"
        _say(f"{tag} starting the LLM engine with the {serve} models...")
        try:
            with start_engine(serve) as engine:
                engines.append(engine)
                registered = registered_defaults(engine, args.defaults)
                # Models at another address run once, beside the first engine's.
                chosen, skipped_here = models_to_run(engine, registered, external=index == 0)
                chosen = [model for model in chosen if _wanted(model, args.models)]
                unserved += [name for name in skipped_here if _wanted_name(name, args.models)]
                _say(f"{tag} {len(chosen)} model(s) x {len(items)} item(s): " + ", ".join(m.name for m in chosen))
                asyncio.run(_run_models(chosen, items, setup, budgets, args.first_token_timeout, results))
        except Exception as error:  # noqa: BLE001  # any failure of an engine's run is reported, and fails the run
            errors.append(f"the {serve} engine's run failed: {type(error).__name__}: {error}")
            _say(f"{tag} ERROR {errors[-1]}")
    ran = {result.model.name for result in results}
    hint = "" if args.with_untrained else " (the UNTRAINED test models run with --with-untrained)"
    skipped = [
        f"{name}: registered, but no engine of this run serves it{hint}"
        for name in dict.fromkeys(unserved)
        if name not in ran
    ]
    missing = [name for name in args.models if not any(_wanted(r.model, [name]) for r in results)]
    if missing:
        errors.append(f"not registered (or not served; UNTRAINED ones need --with-untrained): {', '.join(missing)}")
    for result in results:
        errors += result.errors()
    if args.record and results:
        errors += _record(args.profiles_addr, results, capsules)
    info = RunInfo(
        capsules=capsules,
        items_run=len(items),
        selection={"kinds": args.kinds, "ids": args.ids, "limit": args.limit, "models": args.models},
        settings={
            "temperature": TEMPERATURE,
            "max_tokens": {"exact": budgets.answer, "json_schema": budgets.json, "agent": budgets.agent},
            "persona": setup.persona_id,
            "tools": [tool.id for tool in setup.tools],
            "first_token_timeout_seconds": args.first_token_timeout,
            "defaults_file": str(args.defaults),
        },
        engines=engines,
        started=started,
        finished=time.time(),
        load_start=load_start,
        load_end=os.getloadavg(),
        skipped=skipped,
        errors=errors,
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report_json(info, results), indent=2, ensure_ascii=False) + "\n")
    _say("")
    _say(f"capsules {capsules.name} {capsules.version} (sha256 {capsules.sha256[:12]}), {len(items)} item(s)")
    _say(table(results, [kind for kind in KINDS if any(item.kind == kind for item in items)]))
    for note in skipped:
        _say(f"skipped {note}")
    for problem in errors:
        _say(f"ERROR {problem}")
    _say(f"report: {args.report} ({info.finished - info.started:.0f} s)")
    return 1 if errors else 0


def _record(profiles_addr: str, results: Sequence[ModelResult], capsules: CapsuleSet) -> list[str]:
    """RecordBenchmark of every model's run (evals.record); the problems."""
    problem = use_mesh_key()
    if problem:
        return [problem]
    return asyncio.run(record_benchmarks(profiles_addr, results, capsules, _say))


def main(argv: Sequence[str] | None = None, start_engine: EngineStarter = local_engine) -> int:
    args = parser().parse_args(argv)
    try:
        capsules = load_capsules(args.capsules)
    except CapsuleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return run(args, capsules, start_engine)


if __name__ == "__main__":
    sys.exit(main())
