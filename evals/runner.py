"""Running capsules against models: the engine, the registered models, one call per item.

The engine is the local stack's LLM server (skm_stack.llm), started for the run with the
real models, or the tiny UNTRAINED ones. The models are the ones svc_profiles registers at
start: the deployment defaults adjusted to what that engine serves
(svc_profiles.adapters.defaults.with_served_engine), chat models only. Registered chat models at
the engine's address that it does not serve are skipped (the engine would silently answer
with its tier 0 instead); chat models at another address are run too, labelled EXTERNAL.

Every call goes through the platform's own model client (OpenAICompatibleClient), at
temperature 0, one model after the other (the engine holds one model in memory at a time)
and the items in file order, so that items sharing a system prompt follow one another and
the engine reuses its cached prompt prefix, as it does within a conversation. Before a
model's first item, an untimed one-token call loads it (``load_seconds``), so that no
item's time to first token includes loading the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from evals.capsules import Capsule
from evals.checks import CodeRunner, Verdict, score_exact, score_injection, score_json, score_tool_choice
from evals.prompts import AgentSetup, Budgets, request_for
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from skm_stack.llm import ServedModel
from svc_conversation.adapters.openai import ChatRequest, ModelCallFailed, OpenAICompatibleClient
from svc_conversation.model import CallStats, ModelTier
from svc_profiles.adapters.defaults import load_defaults, with_served_engine
from svc_profiles.model import Capability, Defaults

Progress = Callable[[str], None]
EXTERNAL = "EXTERNAL"
UNTRAINED = "UNTRAINED"
_WHY_IN_PROGRESS = 90


@dataclass(frozen=True, slots=True)
class Engine:
    """A running LLM engine of the local stack, as the eval needs to know it."""

    url: str
    serve: str  # "real" or "untrained" (skm_stack.llm's SKM_STACK_LLM_SERVE)
    models: tuple[ServedModel, ...]
    threads: int | None = None
    context_length: int | None = None

    @classmethod
    def of(cls, running: RunningStack, serve: str) -> Engine:
        """The engine of a running stack (its ``llm`` component)."""
        llm = running.llm
        if llm is None:
            raise RuntimeError("the stack runs no LLM engine")
        threads = context = None
        try:
            # skm_stack.llm writes the engine's config here (see its docstring).
            config = json.loads((running.state_dir / "llm" / "config.json").read_text())
            threads = int(config["models"][0]["n_threads"])
            context = int(config["models"][0]["n_ctx"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
        return cls(llm.url, serve, llm.models, threads, context)

    def label(self, served_model: str) -> str:
        for model in self.models:
            if model.alias == served_model:
                return model.label
        return EXTERNAL


EngineStarter = Callable[[str], AbstractContextManager[Engine]]


@contextmanager
def local_engine(serve: str) -> Iterator[Engine]:
    """The stack's LLM engine serving ``serve``'s models, on a free port, in a fresh state
    dir; stopped (and the dir removed) on exit."""
    state = Path(tempfile.mkdtemp(prefix="skm-eval-"))
    running = Stack(state_dir=state, components=("llm",), ports=EPHEMERAL_PORTS, llm_serve=serve).start()
    try:
        yield Engine.of(running, serve)
    finally:
        running.stop()
        shutil.rmtree(state, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class EvalModel:
    """A registered chat model under test."""

    name: str  # "models/{model}"
    served_model: str
    label: str  # REAL, UNTRAINED or EXTERNAL
    endpoint_uri: str
    context_length: int
    structured_output: bool
    engine: str  # the engine's serve ("real", "untrained"), or "" for an EXTERNAL model
    gguf: str = ""  # the served file, for the engine's models

    def tier(self) -> ModelTier:
        return ModelTier(
            name=self.name,
            tier=0,
            endpoint_uri=self.endpoint_uri,
            served_model=self.served_model,
            context_length=self.context_length,
            structured_output=self.structured_output,
        )


def registered_defaults(engine: Engine, defaults_file: Path) -> Defaults:
    """The deployment defaults as svc_profiles registers them beside ``engine``."""
    environ = {
        **os.environ,
        "SKM_LLM_URL": engine.url,
        "SKM_LLM_MODELS": ",".join(model.alias for model in engine.models),
    }
    return with_served_engine(load_defaults(defaults_file, environ), environ)


def models_to_run(engine: Engine, defaults: Defaults, *, external: bool) -> tuple[list[EvalModel], list[str]]:
    """The registered chat models to run on ``engine`` (and those at other addresses when
    ``external``), and the names of those registered at the engine's address that it does
    not serve."""
    served = {model.alias: model for model in engine.models}
    chosen: list[EvalModel] = []
    skipped: list[str] = []
    for model in defaults.models:
        if Capability.CHAT not in model.capabilities:
            continue
        at_engine = model.endpoint_uri.rstrip("/") == engine.url.rstrip("/")
        if at_engine and model.served_model not in served:
            skipped.append(model.name)
            continue
        if not at_engine and (not external or model.endpoint_uri.startswith("local:")):
            continue
        chosen.append(
            EvalModel(
                name=model.name,
                served_model=model.served_model,
                label=engine.label(model.served_model) if at_engine else EXTERNAL,
                endpoint_uri=model.endpoint_uri,
                context_length=model.context_length,
                structured_output=Capability.STRUCTURED_OUTPUT in model.capabilities,
                engine=engine.serve if at_engine else "",
                gguf=str(served[model.served_model].path) if at_engine else "",
            )
        )
    return chosen, skipped


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item asked of one model."""

    id: str
    kind: str
    difficulty: str
    passed: bool
    why: str
    reply: str = ""
    finish_reason: str = ""
    # The client's failure reason (MODEL_TIMEOUT, MODEL_UNAVAILABLE, ...) when the call failed.
    failure: str = ""
    # The judging itself failed (e.g. the sandbox does not work here): an error of the run.
    error: str = ""
    time_to_first_token: float | None = None
    tokens_per_second: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    duration: float = 0.0


@dataclass
class ModelResult:
    """Everything one model did in the run."""

    model: EvalModel
    items: list[ItemResult] = field(default_factory=list)
    load_seconds: float | None = None
    error: str = ""
    started: float = field(default_factory=time.time)
    ended: float = 0.0

    def passed(self, kind: str | None = None) -> tuple[int, int]:
        chosen = [item for item in self.items if kind is None or item.kind == kind]
        return sum(item.passed for item in chosen), len(chosen)

    def accuracy(self, kind: str | None = None) -> float | None:
        passed, total = self.passed(kind)
        return passed / total if total else None

    def median_ttft(self) -> float | None:
        values = [i.time_to_first_token for i in self.items if i.time_to_first_token is not None and not i.failure]
        return statistics.median(values) if values else None

    def median_tokens_per_second(self) -> float | None:
        values = [i.tokens_per_second for i in self.items if i.tokens_per_second > 0 and not i.failure]
        return statistics.median(values) if values else None

    def median_duration(self) -> float | None:
        values = [item.duration for item in self.items]
        return statistics.median(values) if values else None

    def errors(self) -> list[str]:
        """What went wrong with the run itself (not the model's answers) for this model."""
        found = [f"{self.model.name}: {self.error}"] if self.error else []
        found += [f"{self.model.name} {item.id}: {item.error}" for item in self.items if item.error]
        if self.items and all(item.failure for item in self.items):
            found.append(f"{self.model.name}: every call failed (last: {self.items[-1].why})")
        return found


async def judge(capsule: Capsule, reply: str, setup: AgentSetup, runner: CodeRunner | None) -> Verdict:
    """The verdict on ``reply`` to ``capsule``, by its kind's rule (evals.checks)."""
    if capsule.kind == "exact":
        return score_exact(capsule.answers, reply)
    if capsule.kind == "json_schema":
        return await score_json(capsule.schema, capsule.checks, reply, runner)
    if capsule.kind == "tool_choice":
        return await score_tool_choice(capsule.tool, capsule.checks, reply, setup.by_id, runner)
    calls = [(call.tool, call.checks) for call in capsule.forbidden_calls]
    return await score_injection(capsule.forbidden, calls, reply, runner)


def _result(
    capsule: Capsule, verdict: Verdict, stats: CallStats | None, *, reply: str = "", finish: str = "", **extra: str
) -> ItemResult:
    return ItemResult(
        id=capsule.id,
        kind=capsule.kind,
        difficulty=capsule.difficulty,
        passed=verdict.passed,
        why=verdict.why,
        reply=reply,
        finish_reason=finish,
        failure=extra.get("failure", ""),
        error=extra.get("error", ""),
        time_to_first_token=stats.time_to_first_token if stats else None,
        tokens_per_second=stats.tokens_per_second if stats else 0.0,
        input_tokens=stats.input_tokens if stats else 0,
        output_tokens=stats.output_tokens if stats else 0,
        duration=stats.duration if stats else 0.0,
    )


async def ask(
    client: OpenAICompatibleClient,
    model: EvalModel,
    capsule: Capsule,
    setup: AgentSetup,
    budgets: Budgets,
    runner: CodeRunner | None,
    temperature: float = 0.0,
) -> ItemResult:
    """One item asked of one model, judged."""
    try:
        result = await client.complete(model.tier(), request_for(capsule, setup, budgets, temperature))
    except ModelCallFailed as failure:
        verdict = Verdict(False, f"the model call failed: {failure.reason}: {failure.detail}")
        return _result(capsule, verdict, failure.stats, failure=failure.reason)
    try:
        verdict = await judge(capsule, result.text, setup, runner)
    except Exception as error:  # noqa: BLE001  # the run goes on; the error is reported and fails the run
        problem = f"judging failed: {type(error).__name__}: {error}"
        return _result(capsule, Verdict(False, "could not be judged"), result.stats, reply=result.text, error=problem)
    if not verdict.passed and result.finish_reason == "length":
        verdict = Verdict(False, verdict.why + " (the reply was cut off at max_tokens)")
    return _result(capsule, verdict, result.stats, reply=result.text, finish=result.finish_reason)


async def run_model(
    client: OpenAICompatibleClient,
    model: EvalModel,
    items: Sequence[Capsule],
    setup: AgentSetup,
    budgets: Budgets,
    runner: CodeRunner | None,
    progress: Progress,
) -> ModelResult:
    """Every item asked of ``model``, in order, with a progress line per item."""
    outcome = ModelResult(model)
    prefix = f"[{model.label} {model.served_model}]"
    progress(f"{prefix} loading...")
    started = time.perf_counter()
    try:
        await client.complete(model.tier(), ChatRequest([{"role": "user", "content": "Hi"}], 0.0, 1))
    except ModelCallFailed as failure:
        outcome.error = f"the model does not answer: {failure}"
        outcome.ended = time.time()
        progress(f"{prefix} ERROR {outcome.error}")
        return outcome
    outcome.load_seconds = time.perf_counter() - started
    progress(f"{prefix} loaded in {outcome.load_seconds:.1f} s; {len(items)} items")
    width = len(str(len(items)))
    for index, capsule in enumerate(items, start=1):
        item = await ask(client, model, capsule, setup, budgets, runner)
        outcome.items.append(item)
        verdict = "ERROR" if item.error else "pass" if item.passed else "FAIL"
        why = item.error or item.why
        why = why if len(why) <= _WHY_IN_PROGRESS else why[: _WHY_IN_PROGRESS - 3] + "..."
        progress(
            f"{prefix} {index:>{width}}/{len(items)} {capsule.kind:<11} {capsule.id:<28} {verdict:<5} "
            f"{item.duration:5.1f} s  {why}"
        )
    outcome.ended = time.time()
    return outcome
