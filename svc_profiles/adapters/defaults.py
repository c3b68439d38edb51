"""The deployment defaults file (YAML): models registered at start, per-role default
profiles, and the built-in personas every tenant is offered.

Shape (deploy/profiles/defaults.yaml is the deployment's own, with comments)::

    models:
      - name: models/{model}
        display_name: ...
        endpoint_uri: ${SKM_LLM_URL:-http://127.0.0.1:58090/v1}
        served_model: ...
        context_length: 2048
        capabilities: [CHAT, STRUCTURED_OUTPUT]      # CHAT TOOL_CALLS STRUCTURED_OUTPUT EMBEDDINGS
        embedding_dimensions: 384                    # EMBEDDINGS models only
        credential_secret: NAME_OF_THE_SECRET        # optional
        input_cost_per_million_tokens: {currency_code: USD, units: 0, nanos: 0}   # optional, zero
        output_cost_per_million_tokens: {currency_code: USD, units: 0, nanos: 0}  # optional, zero
    role_defaults:
      - role: PRIMARY                                # PRE_SLM PRIMARY UTILITY EMBEDDING
        mode: PRODUCTION                             # optional: DEVELOPER TEST PRODUCTION; absent: all
        model_tiers: [models/...]
        temperature: 0.7                             # optional
        max_output_tokens: 512                       # optional, 0: the engine's default
    personas:
      - id: default
        display_name: ...
        system_prompt: |
          ...
        tone: ...                                    # optional
        voice: voices/...                            # optional
        allowed_tools: [code_execution, response]    # tool ids; each tenant sees its own tools
        memory_namespaces: [main]                    # optional
        model_preferences:                           # optional, as role_defaults without mode
          - {role: PRIMARY, temperature: 0.2}

`endpoint_uri` may use `${SKM_NAME}` or `${SKM_NAME:-default}`: the value of an SKM_*
environment variable, read when the file is loaded. Only SKM_* variables expand, so the
file cannot copy an unrelated secret into a field every tenant can read. Values are checked
by the core (svc_profiles.checks) when the service starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole, Money
from svc_profiles.errors import DefaultsInvalid
from svc_profiles.model import BuiltInPersona, Capability, Defaults, Model, RoleDefault

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
E = TypeVar("E")


class _Problems(list[str]):
    def need(self, entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
        value = entry.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.append(f"{where}.{key}: required, a {kind.__name__}")
            return kind()
        return value

    def may(self, entry: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
        if entry.get(key) is None:
            return default
        return self.need(entry, key, kind, where)


def expand(text: str, environ: Mapping[str, str], problems: list[str], where: str) -> str:
    """Replace ${SKM_NAME} and ${SKM_NAME:-default} with the variable's value."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if not name.startswith("SKM_"):
            problems.append(f"{where}: only SKM_* variables expand, not {name}")
            return ""
        found = environ.get(name)
        if found:
            return found
        if default is None:
            problems.append(f"{where}: {name} is not set and has no default")
            return ""
        return default

    return _VARIABLE.sub(value, text)


def _enum(kind: Callable[[str], E], text: Any, problems: list[str], where: str, prefix: str) -> E | None:
    if not isinstance(text, str):
        problems.append(f"{where}: required, one of the names")
        return None
    try:
        return kind(text.upper().removeprefix(prefix))
    except ValueError:
        problems.append(f"{where}: unknown value {text!r}")
        return None


def _money(value: Any, problems: _Problems, where: str) -> Money:
    if value is None:
        return Money()
    if not isinstance(value, dict):
        problems.append(f"{where}: expected {{currency_code, units, nanos}}")
        return Money()
    return Money(
        problems.may(value, "currency_code", str, where, ""),
        problems.may(value, "units", int, where, 0),
        problems.may(value, "nanos", int, where, 0),
    )


def _tiers(entry: Mapping[str, Any], problems: _Problems, where: str) -> tuple[str, ...]:
    tiers = problems.may(entry, "model_tiers", list, where, [])
    if not all(isinstance(t, str) for t in tiers):
        problems.append(f"{where}.model_tiers: a list of models/{{model}} names")
        return ()
    return tuple(tiers)


def _strings(entry: Mapping[str, Any], key: str, problems: _Problems, where: str) -> tuple[str, ...]:
    values = problems.may(entry, key, list, where, [])
    if not all(isinstance(v, str) for v in values):
        problems.append(f"{where}.{key}: a list of strings")
        return ()
    return tuple(values)


def _number(entry: Mapping[str, Any], key: str, problems: _Problems, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{where}.{key}: a number")
        return None
    return float(value)


def _model(entry: Any, environ: Mapping[str, str], problems: _Problems, where: str) -> Model | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    capabilities = []
    for index, text in enumerate(problems.need(entry, "capabilities", list, where)):
        capability = _enum(Capability, text, problems, f"{where}.capabilities[{index}]", "MODEL_CAPABILITY_")
        if capability is not None:
            capabilities.append(capability)
    return Model(
        name=problems.need(entry, "name", str, where),
        display_name=problems.need(entry, "display_name", str, where),
        endpoint_uri=expand(
            problems.need(entry, "endpoint_uri", str, where), environ, problems, f"{where}.endpoint_uri"
        ),
        served_model=problems.need(entry, "served_model", str, where),
        context_length=problems.need(entry, "context_length", int, where),
        capabilities=tuple(capabilities),
        credential_secret=problems.may(entry, "credential_secret", str, where, ""),
        input_cost=_money(
            entry.get("input_cost_per_million_tokens"), problems, f"{where}.input_cost_per_million_tokens"
        ),
        output_cost=_money(
            entry.get("output_cost_per_million_tokens"), problems, f"{where}.output_cost_per_million_tokens"
        ),
        embedding_dimensions=problems.may(entry, "embedding_dimensions", int, where, 0),
    )


def _override(entry: Any, problems: _Problems, where: str) -> ModelOverride | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    return ModelOverride(
        role=_enum(ModelRole, entry.get("role"), problems, f"{where}.role", "MODEL_ROLE_"),
        model_tiers=_tiers(entry, problems, where),
        temperature=_number(entry, "temperature", problems, where),
        max_output_tokens=problems.may(entry, "max_output_tokens", int, where, 0),
    )


def _role_default(entry: Any, problems: _Problems, where: str) -> RoleDefault | None:
    override = _override(entry, problems, where)
    if override is None or override.role is None:
        return None
    mode = None
    if entry.get("mode") is not None:
        mode = _enum(DeploymentMode, entry["mode"], problems, f"{where}.mode", "DEPLOYMENT_MODE_")
    return RoleDefault(override.role, override.model_tiers, mode, override.temperature, override.max_output_tokens)


def _persona(entry: Any, problems: _Problems, where: str) -> BuiltInPersona | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    preferences = []
    for index, item in enumerate(problems.may(entry, "model_preferences", list, where, [])):
        override = _override(item, problems, f"{where}.model_preferences[{index}]")
        if override is not None:
            preferences.append(override)
    return BuiltInPersona(
        persona_id=problems.need(entry, "id", str, where),
        display_name=problems.need(entry, "display_name", str, where),
        system_prompt=problems.need(entry, "system_prompt", str, where),
        tone=problems.may(entry, "tone", str, where, ""),
        voice=problems.may(entry, "voice", str, where, ""),
        tool_ids=_strings(entry, "allowed_tools", problems, where),
        memory_namespaces=_strings(entry, "memory_namespaces", problems, where),
        model_preferences=tuple(preferences),
    )


def parse_defaults(text: str, source: str, environ: Mapping[str, str] | None = None) -> Defaults:
    """The defaults in `text`; DefaultsInvalid lists every problem, `source` naming the file."""
    env = os.environ if environ is None else environ
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefaultsInvalid(source, [f"not YAML: {exc}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise DefaultsInvalid(source, ["expected a mapping with models, role_defaults, personas"])
    problems = _Problems()
    unknown = set(document) - {"models", "role_defaults", "personas"}
    if unknown:
        problems.append(f"unknown sections: {', '.join(sorted(map(str, unknown)))}")
    sections = {key: problems.may(document, key, list, "file", []) for key in ("models", "role_defaults", "personas")}
    models = [_model(e, env, problems, f"models[{i}]") for i, e in enumerate(sections["models"])]
    defaults = [_role_default(e, problems, f"role_defaults[{i}]") for i, e in enumerate(sections["role_defaults"])]
    personas = [_persona(e, problems, f"personas[{i}]") for i, e in enumerate(sections["personas"])]
    if problems:
        raise DefaultsInvalid(source, list(problems))
    return Defaults(
        models=tuple(m for m in models if m is not None),
        role_defaults=tuple(d for d in defaults if d is not None),
        personas=tuple(p for p in personas if p is not None),
    )


def load_defaults(path: Path, environ: Mapping[str, str] | None = None) -> Defaults:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefaultsInvalid(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    return parse_defaults(text, str(path), environ)


def _registry_name(alias: str) -> str:
    slug = re.sub(r"[^a-z0-9.-]+", "-", alias.lower()).strip("-.")[:63]
    return f"models/{slug or 'local-engine-model'}"


def with_served_engine(defaults: Defaults, environ: Mapping[str, str] | None = None) -> Defaults:
    """`defaults` adjusted to the models the local stack's engine really serves.

    The stack names them in SKM_LLM_MODELS (aliases in tier order) at SKM_LLM_URL. A served
    model the registry does not know (one's own GGUF, SKM_STACK_LLM_MODEL) is registered
    and put first in every role whose tiers use the engine. Then, in every role, each chat
    model at that endpoint which the engine does not serve is replaced by the next served
    model the role does not use yet (in the engine's tier order), or dropped when none is
    left, keeping as many tiers as the role had; a role left without tiers gets the
    engine's tier 0. So a stack serving the tiny
    untrained models runs every role on them, and one serving the real models leaves the
    file's tiers as they are. Without SKM_LLM_MODELS (a deployment without the local
    engine) nothing changes.
    """
    env = os.environ if environ is None else environ
    aliases = [alias for alias in env.get("SKM_LLM_MODELS", "").split(",") if alias]
    url = env.get("SKM_LLM_URL", "")
    if not aliases or not url:
        return defaults
    at_engine = {model.served_model: model for model in defaults.models if model.endpoint_uri == url}
    unknown = [
        Model(
            name=_registry_name(alias),
            display_name=f"{alias} (served by the local stack's engine)",
            endpoint_uri=url,
            served_model=alias,
            context_length=int(env.get("SKM_LLM_CONTEXT_LENGTH", "8192")),
            capabilities=(Capability.CHAT, Capability.STRUCTURED_OUTPUT),
        )
        for alias in aliases
        if alias not in at_engine
    ]
    served = [at_engine[alias].name if alias in at_engine else _registry_name(alias) for alias in aliases]
    gone = {
        model.name
        for model in defaults.models
        if model.endpoint_uri == url and model.served_model not in aliases and Capability.CHAT in model.capabilities
    }
    engine_names = gone | set(served)
    first = [model.name for model in unknown]

    def adjusted(tiers: tuple[str, ...]) -> tuple[str, ...]:
        if not any(tier in engine_names for tier in tiers):
            return tiers
        out = list(dict.fromkeys([*first, *tiers]))
        spare = [name for name in served if name not in out]
        out = [tier if tier not in gone else (spare.pop(0) if spare else "") for tier in out]
        # As many tiers as the role had (one's own model first may push the last one out).
        return tuple(dict.fromkeys(tier for tier in out if tier))[: max(len(tiers), 1)] or (served[0],)

    role_defaults = tuple(
        dataclasses.replace(default, model_tiers=adjusted(default.model_tiers)) for default in defaults.role_defaults
    )
    return dataclasses.replace(defaults, models=(*defaults.models, *unknown), role_defaults=role_defaults)
