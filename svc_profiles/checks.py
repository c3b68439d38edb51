"""Resource names, page tokens and the field rules of personas, models and profiles.

Each `*_violations` function returns every problem it finds (as BadRequest field
violations), so that a client learns all of them from one call. Limits not fixed by the
contract are set here: display names 200 characters, tones 200, up to 100 allowed tools and
32 memory namespaces per persona, model names 63 characters of [a-z0-9.-].
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from skm_runtime.errors import FieldViolation
from skm_runtime.values import ModelOverride, ModelRole, Money
from svc_profiles.errors import InvalidPageToken, InvalidResourceName
from svc_profiles.model import Capability, Model, ModelProfile, Persona

MAX_SYSTEM_PROMPT_BYTES = 64 * 1024
MAX_DISPLAY_NAME_CHARS = 200
MAX_TONE_CHARS = 200
MAX_ALLOWED_TOOLS = 100
MAX_MEMORY_NAMESPACES = 32
MAX_TRAINING_SESSIONS = 1000
MAX_EXAMPLES = 50
MAX_EXAMPLE_BYTES = 8 * 1024
MAX_TIERS = 8
MAX_TEMPERATURE = 2.0
MAX_OUTPUT_TOKENS = 10_000_000
MAX_CONTEXT_LENGTH = 100_000_000
SIGNATURE_BYTES = 64

_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,63}")
_PERSONA_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_MODEL_ID = re.compile(r"[a-z0-9.-]{1,63}")
_TOOL_ID = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_VOICE = re.compile(r"voices/[A-Za-z0-9_.-]{1,128}")
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_./:-]{1,256}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_HTTP_URI = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
_LOCAL_URI = re.compile(r"local:[a-z0-9._/-]*")


# -- resource names -----------------------------------------------------------------------


def _bad_name(expected: str, name: str) -> InvalidResourceName:
    return InvalidResourceName(f"expected {expected}", metadata={"name": name[:200]})


def tenant_of_parent(parent: str) -> str:
    """`parent` itself when it is "tenants/{tenant}"."""
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "tenants" or not _SEGMENT.fullmatch(parts[1]):
        raise _bad_name("tenants/{tenant}", parent)
    return parent


def split_child(name: str, collection: str, id_pattern: re.Pattern[str] = _SEGMENT) -> tuple[str, str]:
    """Split "tenants/{t}/{collection}/{id}" into ("tenants/{t}", id)."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "tenants"
        or not _SEGMENT.fullmatch(parts[1])
        or parts[2] != collection
        or not id_pattern.fullmatch(parts[3])
    ):
        raise _bad_name(f"tenants/{{tenant}}/{collection}/{{id}}", name)
    return f"tenants/{parts[1]}", parts[3]


def is_segment(text: str) -> bool:
    """Whether `text` is one id segment of a resource name."""
    return bool(_SEGMENT.fullmatch(text))


def split_persona(name: str) -> tuple[str, str]:
    return split_child(name, "personas", _PERSONA_ID)


def split_model_profile(name: str) -> tuple[str, str]:
    return split_child(name, "modelProfiles")


def is_model_name(name: str) -> bool:
    prefix, _, model_id = name.partition("/")
    return prefix == "models" and bool(_MODEL_ID.fullmatch(model_id))


def check_model_name(name: str) -> str:
    if not is_model_name(name):
        raise _bad_name("models/{model}, {model} 1-63 characters of [a-z0-9.-]", name)
    return name


def is_persona_id(value: str) -> bool:
    return bool(_PERSONA_ID.fullmatch(value))


def is_tool_id(value: str) -> bool:
    return bool(_TOOL_ID.fullmatch(value))


def model_profile_id(role: ModelRole, mode_value: str) -> str:
    """A profile's id follows from its (role, mode): "primary-production", "pre-slm-test"."""
    return f"{role.value.lower().replace('_', '-')}-{mode_value.lower()}"


# -- page tokens ----------------------------------------------------------------------------


def page_size_of(requested: int, default: int) -> int:
    return default if requested <= 0 else min(requested, 1000)


def token_of(scope: str, position: Any) -> str:
    """An opaque page token for `position` within one listing (`scope`: parent and filter)."""
    return base64.urlsafe_b64encode(json.dumps([scope, position], separators=(",", ":")).encode()).decode()


def position_of(token: str, scope: str) -> Any:
    """The position a token was issued for; INVALID_PAGE_TOKEN for another listing's."""
    if not token:
        return None
    try:
        issued_for, position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if issued_for != scope:
        raise InvalidPageToken("page_token was issued for another listing or filter")
    return position


def check_request_id(request_id: str, field: str) -> list[FieldViolation]:
    if not request_id:
        return []
    try:
        uuid.UUID(request_id)
    except ValueError:
        return [FieldViolation(field, "must be a UUID")]
    return []


# -- field rules ------------------------------------------------------------------------------


def _length_violations(field: str, value: str, limit: int, *, required: bool) -> list[FieldViolation]:
    if required and not value.strip():
        return [FieldViolation(field, "required")]
    if len(value) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    return []


def _duplicates(field: str, values: Sequence[str]) -> list[FieldViolation]:
    seen: set[str] = set()
    out = []
    for index, value in enumerate(values):
        if value in seen:
            out.append(FieldViolation(f"{field}[{index}]", f"{value[:200]} appears twice"))
        seen.add(value)
    return out


def temperature_violations(field: str, temperature: float | None) -> list[FieldViolation]:
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        return [FieldViolation(field, "must lie in [0, 2]")]
    return []


def tokens_violations(field: str, tokens: int) -> list[FieldViolation]:
    if not 0 <= tokens <= MAX_OUTPUT_TOKENS:
        return [FieldViolation(field, f"must lie in [0, {MAX_OUTPUT_TOKENS}]")]
    return []


def tiers_violations(field: str, tiers: Sequence[str], *, required: bool) -> list[FieldViolation]:
    out = []
    if required and not tiers:
        out.append(FieldViolation(field, f"1 to {MAX_TIERS} models required"))
    if len(tiers) > MAX_TIERS:
        out.append(FieldViolation(field, f"at most {MAX_TIERS} models"))
    for index, tier in enumerate(tiers):
        if not is_model_name(tier):
            out.append(FieldViolation(f"{field}[{index}]", "expected models/{model}"))
    return out + _duplicates(field, tiers)


def overrides_violations(field: str, overrides: Sequence[ModelOverride]) -> list[FieldViolation]:
    """Session overrides or persona preferences: one per role, tiers, temperature, tokens."""
    out = []
    roles: set[ModelRole] = set()
    for index, override in enumerate(overrides):
        at = f"{field}[{index}]"
        if override.role is None:
            out.append(FieldViolation(f"{at}.role", "required"))
        elif override.role in roles:
            out.append(FieldViolation(f"{at}.role", f"a second override of {override.role.value}"))
        else:
            roles.add(override.role)
        out += tiers_violations(f"{at}.model_tiers", override.model_tiers, required=False)
        out += temperature_violations(f"{at}.temperature", override.temperature)
        out += tokens_violations(f"{at}.max_output_tokens", override.max_output_tokens)
    return out


def role_fit_violations(field: str, role: ModelRole, tiers: Iterable[Model]) -> list[FieldViolation]:
    """Each tier must be able to do the role's job: embeddings, or chat for the rest."""
    needed = Capability.EMBEDDINGS if role is ModelRole.EMBEDDING else Capability.CHAT
    return [
        FieldViolation(f"{field}[{index}]", f"{model.name} cannot serve {role.value}: it lacks {needed.value}")
        for index, model in enumerate(tiers)
        if needed not in model.capabilities
    ]


def persona_violations(persona: Persona, tenant: str, field: str = "persona") -> list[FieldViolation]:
    """Every rule of a persona's own fields; `tenant` owns the names it may refer to."""
    out = _length_violations(f"{field}.display_name", persona.display_name, MAX_DISPLAY_NAME_CHARS, required=True)
    if not persona.system_prompt.strip():
        out.append(FieldViolation(f"{field}.system_prompt", "required"))
    elif len(persona.system_prompt.encode()) > MAX_SYSTEM_PROMPT_BYTES:
        out.append(FieldViolation(f"{field}.system_prompt", "at most 64 KiB (UTF-8)"))
    out += _length_violations(f"{field}.tone", persona.tone, MAX_TONE_CHARS, required=False)
    if persona.voice and not _VOICE.fullmatch(persona.voice):
        out.append(FieldViolation(f"{field}.voice", "expected voices/{voice}"))
    if len(persona.allowed_tools) > MAX_ALLOWED_TOOLS:
        out.append(FieldViolation(f"{field}.allowed_tools", f"at most {MAX_ALLOWED_TOOLS} tools"))
    for index, tool in enumerate(persona.allowed_tools):
        at = f"{field}.allowed_tools[{index}]"
        owner, _, tool_id = tool.rpartition("/tools/")
        if owner != tenant or not is_tool_id(tool_id):
            out.append(FieldViolation(at, f"expected {tenant}/tools/{{tool}}"))
    out += _duplicates(f"{field}.allowed_tools", persona.allowed_tools)
    if len(persona.memory_namespaces) > MAX_MEMORY_NAMESPACES:
        out.append(FieldViolation(f"{field}.memory_namespaces", f"at most {MAX_MEMORY_NAMESPACES} namespaces"))
    for index, namespace in enumerate(persona.memory_namespaces):
        if not _NAMESPACE.fullmatch(namespace):
            out.append(FieldViolation(f"{field}.memory_namespaces[{index}]", "1-63 characters of [A-Za-z0-9_.-]"))
    out += _duplicates(f"{field}.memory_namespaces", persona.memory_namespaces)
    out += overrides_violations(f"{field}.model_preferences", persona.model_preferences)
    if persona.knowledge_snapshot:
        owner, _, base = persona.knowledge_snapshot.rpartition("/knowledgeBases/")
        if owner != tenant or not _SEGMENT.fullmatch(base):
            out.append(FieldViolation(f"{field}.knowledge_snapshot", f"expected {tenant}/knowledgeBases/{{id}}"))
    if bool(persona.signature) != bool(persona.signing_key):
        out.append(FieldViolation(f"{field}.signature", "signature and signing_key go together"))
    elif (
        persona.signing_key
        and not _KEY_ID.fullmatch(persona.signing_key)
        # A persona installed from a bundle is signed by one of its tenant's trusted keys.
        and not persona.signing_key.startswith(f"{tenant}/trustedKeys/")
    ):
        out.append(FieldViolation(f"{field}.signing_key", "1-128 characters of [A-Za-z0-9_.-]"))
    lineage = persona.lineage
    if lineage.parent_persona:
        try:
            split_persona(lineage.parent_persona)
        except InvalidResourceName:
            out.append(FieldViolation(f"{field}.lineage.parent_persona", "expected tenants/{tenant}/personas/{id}"))
    if lineage.parent_bundle_digest and not _HEX_DIGEST.fullmatch(lineage.parent_bundle_digest):
        out.append(FieldViolation(f"{field}.lineage.parent_bundle_digest", "64 lowercase hex digits"))
    if len(lineage.training_sessions) > MAX_TRAINING_SESSIONS:
        out.append(FieldViolation(f"{field}.lineage.training_sessions", f"at most {MAX_TRAINING_SESSIONS}"))
    for index, session in enumerate(lineage.training_sessions):
        try:
            split_child(session, "sessions")
        except InvalidResourceName:
            out.append(
                FieldViolation(f"{field}.lineage.training_sessions[{index}]", "expected tenants/{t}/sessions/{s}")
            )
    if lineage.operator and not lineage.operator.startswith(f"{tenant}/users/"):
        out.append(FieldViolation(f"{field}.lineage.operator", f"expected {tenant}/users/{{user}}"))
    if lineage.parent_revision_id and not lineage.parent_revision_id.isdigit():
        out.append(FieldViolation(f"{field}.lineage.parent_revision_id", "a revision id: digits"))
    out += _examples_violations(f"{field}.examples", persona, tenant)
    return out


def _examples_violations(field: str, persona: Persona, tenant: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if len(persona.examples) > MAX_EXAMPLES:
        out.append(FieldViolation(field, f"at most {MAX_EXAMPLES} examples"))
    for index, example in enumerate(persona.examples):
        at = f"{field}[{index}]"
        for name, text in (("user_text", example.user_text), ("agent_text", example.agent_text)):
            if not text.strip():
                out.append(FieldViolation(f"{at}.{name}", "required"))
            elif len(text.encode()) > MAX_EXAMPLE_BYTES:
                out.append(FieldViolation(f"{at}.{name}", "at most 8 KiB (UTF-8)"))
        if example.source_turn and not example.source_turn.startswith(f"{tenant}/sessions/"):
            out.append(FieldViolation(f"{at}.source_turn", f"expected {tenant}/sessions/{{s}}/turns/{{t}}"))
    return out


def _money_violations(field: str, money: Money) -> list[FieldViolation]:
    out = []
    if money.currency_code and not _CURRENCY.fullmatch(money.currency_code):
        out.append(FieldViolation(f"{field}.currency_code", "three upper-case letters (ISO 4217)"))
    if not money.is_zero and not money.currency_code:
        out.append(FieldViolation(f"{field}.currency_code", "required for a non-zero amount"))
    if not -999_999_999 <= money.nanos <= 999_999_999:
        out.append(FieldViolation(f"{field}.nanos", "must lie in [-999999999, 999999999]"))
    if money.units < 0 or money.nanos < 0:
        out.append(FieldViolation(field, "a price cannot be negative"))
    return out


def model_violations(model: Model, field: str = "model") -> list[FieldViolation]:
    out = []
    if not is_model_name(model.name):
        out.append(FieldViolation(f"{field}.name", "expected models/{model}, {model} 1-63 characters of [a-z0-9.-]"))
    out += _length_violations(f"{field}.display_name", model.display_name, MAX_DISPLAY_NAME_CHARS, required=True)
    if not (_HTTP_URI.fullmatch(model.endpoint_uri) or _LOCAL_URI.fullmatch(model.endpoint_uri)):
        out.append(
            FieldViolation(f"{field}.endpoint_uri", "expected an http(s) base URL, or local: for an in-process model")
        )
    out += _length_violations(f"{field}.served_model", model.served_model, 256, required=True)
    if model.credential_secret and not _SECRET_NAME.fullmatch(model.credential_secret):
        out.append(
            FieldViolation(f"{field}.credential_secret", "the name of a secret (variable or vault path), not a key")
        )
    if not 0 < model.context_length <= MAX_CONTEXT_LENGTH:
        out.append(FieldViolation(f"{field}.context_length", "required, a positive number of tokens"))
    out += _money_violations(f"{field}.input_cost_per_million_tokens", model.input_cost)
    out += _money_violations(f"{field}.output_cost_per_million_tokens", model.output_cost)
    if not model.capabilities:
        out.append(FieldViolation(f"{field}.capabilities", "at least one"))
    embeds = Capability.EMBEDDINGS in model.capabilities
    if embeds and model.embedding_dimensions <= 0:
        out.append(FieldViolation(f"{field}.embedding_dimensions", "required for a model with EMBEDDINGS"))
    if not embeds and model.embedding_dimensions != 0:
        out.append(FieldViolation(f"{field}.embedding_dimensions", "set only for a model with EMBEDDINGS"))
    return out


def model_profile_violations(profile: ModelProfile, field: str = "model_profile") -> list[FieldViolation]:
    out = []
    if profile.role is None:
        out.append(FieldViolation(f"{field}.role", "required"))
    if profile.mode is None:
        out.append(FieldViolation(f"{field}.mode", "required"))
    out += tiers_violations(f"{field}.model_tiers", profile.model_tiers, required=True)
    out += temperature_violations(f"{field}.temperature", profile.temperature)
    out += tokens_violations(f"{field}.max_output_tokens", profile.max_output_tokens)
    return out


def token_fit_violations(field: str, max_output_tokens: int, tiers: Iterable[Model]) -> list[FieldViolation]:
    """A token limit no tier's context window can hold is a mistake."""
    return [
        FieldViolation(field, f"{max_output_tokens} tokens do not fit {model.name}'s context of {model.context_length}")
        for model in tiers
        if max_output_tokens >= model.context_length and Capability.EMBEDDINGS not in model.capabilities
    ]
