"""The deployment defaults follow what the local stack's engine really serves."""

from __future__ import annotations

from skm_runtime.values import ModelRole
from svc_profiles.adapters.defaults import load_defaults, with_served_engine
from svc_profiles.settings import DEFAULTS_FILE

URL = "http://127.0.0.1:58090/v1"


def _tiers(environ: dict[str, str]) -> dict[ModelRole, tuple[str, ...]]:
    defaults = with_served_engine(load_defaults(DEFAULTS_FILE, {"SKM_LLM_URL": URL}), environ)
    return {d.role: d.model_tiers for d in defaults.role_defaults if d.mode is None}


REAL = ("models/qwen2.5-coder-0.5b-instruct", "models/qwen2.5-coder-1.5b-instruct")
REAL_SERVED = "qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct,smollm2-135m-instruct"


def test_the_real_models_stay_when_the_engine_serves_them() -> None:
    tiers = _tiers({"SKM_LLM_URL": URL, "SKM_LLM_MODELS": REAL_SERVED})
    assert tiers[ModelRole.PRIMARY] == REAL
    assert tiers[ModelRole.PRE_SLM] == tiers[ModelRole.UTILITY] == REAL[:1]
    assert _tiers({})[ModelRole.PRIMARY] == REAL


def test_an_engine_serving_the_tiny_models_runs_every_role_on_them() -> None:
    environ = {"SKM_LLM_URL": URL, "SKM_LLM_MODELS": "skm-tiny-untrained,skm-tiny-untrained-large"}
    tiers = _tiers(environ)
    assert tiers[ModelRole.PRIMARY] == ("models/skm-tiny-untrained", "models/skm-tiny-untrained-large")
    assert tiers[ModelRole.PRE_SLM] == tiers[ModelRole.UTILITY] == ("models/skm-tiny-untrained",)
    assert tiers[ModelRole.EMBEDDING] == ("models/all-minilm-l6-v2",)


def test_a_model_of_ones_own_served_as_tier_0_comes_first_in_every_role() -> None:
    # (Registry names are [a-z0-9.-]: the alias's underscores become dashes.)
    environ = {"SKM_LLM_URL": URL, "SKM_LLM_MODELS": "qwen2.5-0.5b-instruct-q4_k_m,skm-tiny-untrained-large"}
    tiers = _tiers(environ)
    assert tiers[ModelRole.PRIMARY] == ("models/qwen2.5-0.5b-instruct-q4-k-m", "models/skm-tiny-untrained-large")
    assert tiers[ModelRole.PRE_SLM] == ("models/qwen2.5-0.5b-instruct-q4-k-m",)
    assert tiers[ModelRole.UTILITY] == ("models/qwen2.5-0.5b-instruct-q4-k-m",)
    assert tiers[ModelRole.EMBEDDING] == ("models/all-minilm-l6-v2",)
    defaults = with_served_engine(load_defaults(DEFAULTS_FILE, {"SKM_LLM_URL": URL}), environ)
    served = next(m for m in defaults.models if m.name == "models/qwen2.5-0.5b-instruct-q4-k-m")
    assert (served.endpoint_uri, served.served_model) == (URL, "qwen2.5-0.5b-instruct-q4_k_m")
    assert "UNTRAINED" not in served.display_name
