"""The eval's JSON report and its console table.

The report (``format: "skm-eval-report/1"``; times in seconds, rates in tokens per second,
timestamps RFC 3339 UTC, accuracies 0..1 or null when nothing was run)::

    {
      "format": "skm-eval-report/1",
      "started_at": "...", "finished_at": "...", "duration_seconds": 812.4,
      "capsules": {"path": "evals/capsules/v1.jsonl", "name": "skm-capsules", "version": "v1",
                   "sha256": "<of the file>", "items_in_set": 44, "items_run": 44,
                   "selection": {"kinds": [...], "ids": [...], "limit": null}},
      "settings": {"temperature": 0.0, "max_tokens": {"exact": 32, "json_schema": 256, "agent": 512},
                   "persona": "default", "tools": ["call_subordinate", ...], "first_token_timeout_seconds": 300},
      "engine": {"name": "llama-cpp-python", "version": "0.3.36", "runs": [{"serve": "real", "threads": 2,
                 "context_length": 8192, "models": [{"alias": ..., "label": "REAL", "gguf": ...}]}]},
      "machine": {"platform": ..., "cpu": ..., "cpus": 2, "memory_bytes": ..., "python": ...,
                  "load_average_start": [1.0, 0.8, 0.5], "load_average_end": [...]},
      "models": [{
        "name": "models/qwen2.5-coder-0.5b-instruct", "served_model": "...", "label": "REAL",
        "engine": "real", "endpoint_uri": "...", "structured_output": true, "gguf": "...",
        "error": null, "load_seconds": 2.1, "duration_seconds": 95.0,
        "passed": 30, "total": 44, "accuracy": 0.68,
        "by_kind": {"exact": {"passed": 10, "total": 12, "accuracy": 0.83}, ...},
        "ttft_median_seconds": 0.41, "tokens_per_second_median": 21.3, "call_median_seconds": 1.2,
        "benchmark_runs": [<BenchmarkRun>, ...],
        "items": [{"id": ..., "kind": ..., "difficulty": ..., "passed": true, "why": "...",
                   "reply": "...", "finish_reason": "stop", "failure": null, "error": null,
                   "ttft_seconds": 0.3, "tokens_per_second": 22.0, "input_tokens": 40,
                   "output_tokens": 3, "duration_seconds": 0.5}]
      }],
      "skipped": ["models/...: why"],
      "errors": []
    }

``benchmark_runs`` are ready for svc_profiles' RecordBenchmark (skm.profiles.v1.BenchmarkRun,
one per suite): ``{"model", "role", "suite", "attempts", "successes", "failures",
"latency_seconds", "input_tokens", "output_tokens", "end_time"}``, where suite is
``<set>-<version>`` (every item) or ``<set>-<version>/<kind>``, failures counts calls that
failed (timeouts, errors), latency is the median call duration, and role is the role the
items exercise (KIND_ROLES; the whole set counts as PRIMARY). A model labelled UNTRAINED
must not be recorded as if its quality meant anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from evals.capsules import KINDS, CapsuleSet
from evals.runner import UNTRAINED, Engine, ItemResult, ModelResult

FORMAT = "skm-eval-report/1"
# The role of the platform each kind exercises (skm.type.v1.ModelRole names).
KIND_ROLES = {"exact": "PRIMARY", "json_schema": "UTILITY", "tool_choice": "PRIMARY", "injection": "PRIMARY"}


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the report says about the run besides the models' results."""

    capsules: CapsuleSet
    items_run: int
    selection: dict[str, Any]
    settings: dict[str, Any]
    engines: Sequence[Engine]
    started: float
    finished: float
    load_start: tuple[float, ...]
    load_end: tuple[float, ...]
    skipped: Sequence[str] = ()
    errors: Sequence[str] = ()


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ratio(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _item(item: ItemResult) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "difficulty": item.difficulty,
        "passed": item.passed,
        "why": item.why,
        "reply": item.reply,
        "finish_reason": item.finish_reason or None,
        "failure": item.failure or None,
        "error": item.error or None,
        "ttft_seconds": _round(item.time_to_first_token),
        "tokens_per_second": _round(item.tokens_per_second, 2),
        "input_tokens": item.input_tokens,
        "output_tokens": item.output_tokens,
        "duration_seconds": _round(item.duration),
    }


def _benchmark(result: ModelResult, suite: str, role: str, items: Sequence[ItemResult]) -> dict[str, Any]:
    durations = [item.duration for item in items]
    return {
        "model": result.model.name,
        "role": role,
        "suite": suite,
        "attempts": len(items),
        "successes": sum(item.passed for item in items),
        "failures": sum(bool(item.failure) for item in items),
        "latency_seconds": _round(statistics.median(durations)) if durations else None,
        "input_tokens": sum(item.input_tokens for item in items),
        "output_tokens": sum(item.output_tokens for item in items),
        "end_time": _time(result.ended or result.started),
    }


def model_json(result: ModelResult, capsules: CapsuleSet) -> dict[str, Any]:
    passed, total = result.passed()
    by_kind = {}
    suite = f"{capsules.name}-{capsules.version}"
    runs = [_benchmark(result, suite, "PRIMARY", result.items)] if result.items else []
    for kind in KINDS:
        kind_passed, kind_total = result.passed(kind)
        if kind_total:
            by_kind[kind] = {"passed": kind_passed, "total": kind_total, "accuracy": _ratio(kind_passed, kind_total)}
            chosen = [item for item in result.items if item.kind == kind]
            runs.append(_benchmark(result, f"{suite}/{kind}", KIND_ROLES[kind], chosen))
    model = result.model
    return {
        "name": model.name,
        "served_model": model.served_model,
        "label": model.label,
        "engine": model.engine or None,
        "endpoint_uri": model.endpoint_uri,
        "structured_output": model.structured_output,
        "gguf": model.gguf or None,
        "error": result.error or None,
        "load_seconds": _round(result.load_seconds),
        "duration_seconds": _round((result.ended or result.started) - result.started, 1),
        "passed": passed,
        "total": total,
        "accuracy": _ratio(passed, total),
        "by_kind": by_kind,
        "ttft_median_seconds": _round(result.median_ttft()),
        "tokens_per_second_median": _round(result.median_tokens_per_second(), 2),
        "call_median_seconds": _round(result.median_duration()),
        "benchmark_runs": runs,
        "items": [_item(item) for item in result.items],
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_json(load_start: Sequence[float], load_end: Sequence[float]) -> dict[str, Any]:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        # Other work on the machine slows the engine: the load shows how busy it was.
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in load_end],
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_json(engines: Sequence[Engine]) -> dict[str, Any]:
    return {
        "name": "llama-cpp-python",
        "version": _version("llama-cpp-python"),
        "runs": [
            {
                "serve": engine.serve,
                "threads": engine.threads,
                "context_length": engine.context_length,
                "models": [{"alias": m.alias, "label": m.label, "gguf": str(m.path)} for m in engine.models],
            }
            for engine in engines
        ],
    }


def report_json(info: RunInfo, results: Sequence[ModelResult]) -> dict[str, Any]:
    """The whole report (see the module docstring)."""
    capsules = info.capsules
    try:
        path = str(capsules.path.resolve().relative_to(os.getcwd()))
    except ValueError:
        path = str(capsules.path)
    return {
        "format": FORMAT,
        "started_at": _time(info.started),
        "finished_at": _time(info.finished),
        "duration_seconds": round(info.finished - info.started, 1),
        "capsules": {
            "path": path,
            "name": capsules.name,
            "version": capsules.version,
            "sha256": capsules.sha256,
            "items_in_set": len(capsules.items),
            "items_run": info.items_run,
            "selection": info.selection,
        },
        "settings": info.settings,
        "engine": engine_json(info.engines),
        "machine": machine_json(info.load_start, info.load_end),
        "models": [model_json(result, capsules) for result in results],
        "skipped": list(info.skipped),
        "errors": list(info.errors),
    }


def _cell(passed: int, total: int) -> str:
    return f"{100 * passed / total:3.0f}% {passed:>2}/{total:<2}" if total else "-"


def table(results: Sequence[ModelResult], kinds: Sequence[str]) -> str:
    """The console table: a row per model, accuracy overall and per kind, TTFT and tokens/s."""
    header = ["model", "label", "overall", *kinds, "TTFT p50", "tok/s p50"]
    rows = []
    for result in results:
        ttft, rate = result.median_ttft(), result.median_tokens_per_second()
        rows.append(
            [
                result.model.served_model,
                result.model.label,
                "ERROR" if result.error else _cell(*result.passed()),
                *(_cell(*result.passed(kind)) for kind in kinds),
                "-" if ttft is None else f"{ttft:.2f} s",
                "-" if rate is None else f"{rate:.1f}",
            ]
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if any(result.model.label == UNTRAINED for result in results):
        lines.append("UNTRAINED: random weights (test fixtures); their accuracy means NOTHING.")
    return "\n".join(lines)
