"""A persona's bundle digest: SHA-256 of the RFC 8785 (JCS) canonical JSON of its bundle.

The bundle is the proto3 JSON mapping of the Persona fields display_name, system_prompt,
tone, voice, allowed_tools, memory_namespaces, model_preferences, knowledge_snapshot and
examples:
lowerCamelCase keys, enums by name, fields with their default value left out (an explicit
`temperature`, being `optional`, stays even at 0). A publisher signs the 32 raw digest
bytes with Ed25519; anyone can recompute the digest from a persona with any protobuf
runtime (MessageToDict of a Persona holding just those fields) and a JCS serializer.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from skm_runtime.values import ModelOverride
from svc_profiles.model import Persona, PersonaExample


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of dicts, lists, str, int, float, bool and None, UTF-8."""
    return _serialize(value).encode()


def _serialize(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        # json.dumps escapes exactly as JCS does with ensure_ascii off: \" \\ \b \f \n \r \t
        # by name, the other control characters as \u00xx (lowercase), nothing else.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError("integers beyond 2^53 have no exact JSON number")
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, Mapping):
        # Keys sort by their UTF-16 code units (big-endian bytes compare the same way).
        items = sorted(value.items(), key=lambda item: item[0].encode("utf-16-be"))
        return "{" + ",".join(f"{_serialize(str(k))}:{_serialize(v)}" for k, v in items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_serialize(item) for item in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def number_text(value: float) -> str:
    """ECMAScript's Number.prototype.toString of a finite double, as RFC 8785 requires."""
    if not math.isfinite(value):
        raise ValueError("NaN and infinities have no JSON number")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, which is what ECMAScript picks too.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        power = n - 1
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    return sign + text


def override_json(override: ModelOverride) -> dict[str, Any]:
    """The proto3 JSON mapping of a ModelOverride."""
    out: dict[str, Any] = {}
    if override.role is not None:
        out["role"] = f"MODEL_ROLE_{override.role.value}"
    if override.model_tiers:
        out["modelTiers"] = list(override.model_tiers)
    if override.temperature is not None:
        out["temperature"] = float(override.temperature)
    if override.max_output_tokens:
        out["maxOutputTokens"] = override.max_output_tokens
    return out


def bundle_json(persona: Persona) -> dict[str, Any]:
    """The persona's bundle in the proto3 JSON mapping (defaults left out)."""
    fields: dict[str, Any] = {
        "displayName": persona.display_name,
        "systemPrompt": persona.system_prompt,
        "tone": persona.tone,
        "voice": persona.voice,
        "allowedTools": list(persona.allowed_tools),
        "memoryNamespaces": list(persona.memory_namespaces),
        "modelPreferences": [override_json(o) for o in persona.model_preferences],
        "knowledgeSnapshot": persona.knowledge_snapshot,
        "examples": [example_json(e) for e in persona.examples],
    }
    return {key: value for key, value in fields.items() if value}


def example_json(example: PersonaExample) -> dict[str, Any]:
    """The proto3 JSON mapping of a PersonaExample."""
    out = {"userText": example.user_text, "agentText": example.agent_text, "sourceTurn": example.source_turn}
    return {key: value for key, value in out.items() if value}


def bundle_digest(persona: Persona) -> str:
    """SHA-256, lowercase hex, of the canonical JSON of the persona's bundle."""
    return hashlib.sha256(canonical_json(bundle_json(persona))).hexdigest()
