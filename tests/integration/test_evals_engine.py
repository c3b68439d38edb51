"""`python -m evals` end to end over the real engine: the REAL 0.5B model on a mixed subset.

The stack's LLM engine serves the real models (``llm_serve="real"``); the eval's own
command line runs with it in place of the engine it would start, over the first two items
of every kind (one easy, one harder), and writes its report. The 0.5B model must pass the
items marked easy: they are trivially easy, so failing one means the eval (its requests,
its scoring) or the model's serving is broken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evals.__main__ import main
from evals.capsules import KINDS, load_capsules
from evals.runner import Engine
from tests.conftest import StackFactory

MODEL = "qwen2.5-coder-0.5b-instruct"


def test_the_real_small_model_passes_the_easy_items_and_the_report_says_so(
    stack_factory: StackFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []

    @contextmanager
    def engine(serve: str) -> Iterator[Engine]:
        started.append(serve)
        yield Engine.of(stack_factory(components=("llm",), llm_serve=serve), serve)

    report_file = tmp_path / "eval" / "report.json"
    status = main(["--models", MODEL, "--limit", "8", "--report", str(report_file)], start_engine=engine)

    out = capsys.readouterr().out
    assert status == 0, out
    assert started == ["real"]
    report = json.loads(report_file.read_text())
    capsules = load_capsules()
    assert report["format"] == "skm-eval-report/1"
    assert report["capsules"]["version"] == capsules.version
    assert report["capsules"]["sha256"] == capsules.sha256
    assert report["capsules"]["items_run"] == 8
    assert report["errors"] == []
    assert report["engine"]["name"] == "llama-cpp-python"
    assert report["engine"]["runs"][0]["serve"] == "real"
    assert report["machine"]["cpus"] >= 1

    (model,) = report["models"]
    assert (model["name"], model["label"], model["structured_output"]) == (f"models/{MODEL}", "REAL", True)
    assert model["total"] == 8
    assert set(model["by_kind"]) == set(KINDS)
    assert all(entry["total"] == 2 for entry in model["by_kind"].values())
    assert model["ttft_median_seconds"] > 0
    assert model["tokens_per_second_median"] > 0
    assert [run["suite"] for run in model["benchmark_runs"]] == ["skm-capsules-v1"] + [
        f"skm-capsules-v1/{kind}" for kind in KINDS
    ]

    easy = [item for item in model["items"] if item["difficulty"] == "easy"]
    assert len(easy) >= 4
    assert {item["kind"] for item in easy} == set(KINDS)
    failed = [(item["id"], item["why"], item["reply"]) for item in easy if not item["passed"]]
    assert failed == []
    for item in model["items"]:
        assert item["why"]
        assert item["failure"] is None
        assert item["reply"]

    # Every line about the model names its label; the table has its row.
    assert all("[REAL " in line for line in out.splitlines() if MODEL in line and line.startswith("["))
    row = next(line for line in out.splitlines() if line.startswith(MODEL))
    assert row.split()[1] == "REAL"
    assert f"report: {report_file}" in out
