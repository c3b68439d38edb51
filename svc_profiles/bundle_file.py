"""The persona bundle file (skm-persona-bundle/v1): what a publisher exports, signs and hands
to tenants, and what InstallPersonaBundle reads.

    skm-persona-bundle/v1\\n
    key: {key_id}\\n
    signature: {base64 of the 64-byte Ed25519 signature}\\n
    \\n
    {payload}

The payload is RFC 8785 canonical JSON (see `payload_of`) and the signature covers its exact
bytes. Reading is in two steps on purpose: `read_signed` takes the header apart and touches
nothing in the payload, `verify` checks the signature, and only then does `read_payload`
parse it. An attacker's payload is therefore never parsed, and a changed byte anywhere in it
is BUNDLE_SIGNATURE_INVALID, not some parse error that would tell what was changed.

Tools travel by id ("code_execution"), not by name, so that the bundle installs in any
tenant; `read_payload` names them in the installing tenant.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from skm_runtime.values import ModelOverride, ModelRole
from svc_profiles.bundle import bundle_json, canonical_json
from svc_profiles.errors import BundleMalformed, BundleSignatureInvalid
from svc_profiles.model import BundlePermissions, Persona, PersonaExample

FORMAT = "skm-persona-bundle/v1"
MAX_BUNDLE_BYTES = 1024 * 1024
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32

_KEY_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_PERSONA_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_TOOL_ID = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# JSON safe integers: versions must survive any JSON reader.
_MAX_VERSION = 2**53
_PAYLOAD_KEYS = {"format", "personaId", "version", "keyId", "issueTime", "bundle", "permissions"}
_BUNDLE_KEYS = {
    "displayName",
    "systemPrompt",
    "tone",
    "voice",
    "allowedTools",
    "memoryNamespaces",
    "modelPreferences",
    "knowledgeSnapshot",
    "examples",
}
_EXAMPLE_KEYS = {"userText", "agentText", "sourceTurn"}
_OVERRIDE_KEYS = {"role", "modelTiers", "temperature", "maxOutputTokens"}
_PERMISSION_KEYS = {"tools", "memoryRead", "memoryWrite"}


def is_key_id(value: str) -> bool:
    """A trusted key's id: 1-63 characters of [a-z0-9-], starting with a letter."""
    return bool(_KEY_ID.fullmatch(value))


@dataclass(frozen=True, slots=True)
class SignedBundle:
    """A bundle file taken apart, its signature not yet checked: nothing here but `key_id`
    may be believed before `verify` passes."""

    key_id: str
    signature: bytes
    payload: bytes
    # SHA-256 of the whole file, lowercase hex: what the audit names a refused bundle by.
    sha256: str


@dataclass(frozen=True, slots=True)
class BundlePayload:
    """A verified payload, read for one tenant: the persona as it installs there (tools
    named in that tenant, no digest, signature or times yet) and its permissions."""

    persona: Persona
    version: int
    key_id: str
    issue_time: datetime
    permissions: BundlePermissions


def read_signed(data: bytes) -> SignedBundle:
    """The header of a bundle file, and its payload as bytes; BUNDLE_MALFORMED when the file
    is not a bundle at all."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleMalformed("a bundle is at most 1 MiB", metadata={"bundle_sha256": digest})
    head, sep, payload = data.partition(b"\n\n")
    lines = head.split(b"\n")
    if not sep or len(lines) != 3 or lines[0] != FORMAT.encode():
        raise BundleMalformed(
            f"not a persona bundle: expected the lines '{FORMAT}', 'key: ...', 'signature: ...' and a blank line",
            metadata={"bundle_sha256": digest},
        )
    key_id = _header_value(lines[1], b"key: ", digest)
    if not is_key_id(key_id):
        raise BundleMalformed(
            "the key id is not 1-63 characters of [a-z0-9-] starting with a letter", metadata={"bundle_sha256": digest}
        )
    encoded = _header_value(lines[2], b"signature: ", digest)
    signature = b""
    if _BASE64.fullmatch(encoded):
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise BundleMalformed(
            "the signature is not the base64 of 64 bytes", metadata={"bundle_sha256": digest, "key_id": key_id}
        )
    return SignedBundle(key_id=key_id, signature=signature, payload=payload, sha256=digest)


def _header_value(line: bytes, prefix: bytes, digest: str) -> str:
    if not line.startswith(prefix):
        raise BundleMalformed(
            f"expected a header line starting with '{prefix.decode()}'", metadata={"bundle_sha256": digest}
        )
    try:
        return line[len(prefix) :].decode("ascii")
    except UnicodeDecodeError:
        raise BundleMalformed("a header line is not ASCII", metadata={"bundle_sha256": digest}) from None


def verify(bundle: SignedBundle, public_key: bytes) -> None:
    """BUNDLE_SIGNATURE_INVALID unless `bundle.signature` is the Ed25519 signature of its
    payload's exact bytes by `public_key` (32 raw bytes)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(bundle.signature, bundle.payload)
    except (InvalidSignature, ValueError):
        raise BundleSignatureInvalid(
            "the bundle's signature does not verify with its key: it was changed after signing, or signed with"
            " another key",
            metadata={"key_id": bundle.key_id, "bundle_sha256": bundle.sha256},
        ) from None


def read_payload(bundle: SignedBundle, tenant: str) -> BundlePayload:
    """The payload of a bundle whose signature verified, read for `tenant`; BUNDLE_MALFORMED
    when it is not the format's canonical JSON. The persona's own rules (prompt length, ...)
    are the caller's to check, as for any persona."""
    meta = {"bundle_sha256": bundle.sha256, "key_id": bundle.key_id}
    try:
        value = json.loads(
            bundle.payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
        canonical = canonical_json(value) == bundle.payload
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise BundleMalformed(f"the payload is not JSON: {str(exc)[:200]}", metadata=meta) from None
    if not canonical:
        raise BundleMalformed("the payload is not RFC 8785 canonical JSON", metadata=meta)
    problems: list[str] = []
    payload = _object(value, "payload", _PAYLOAD_KEYS, problems)
    if payload.get("format") != FORMAT:
        problems.append(f"payload.format: expected {FORMAT}")
    persona_id = payload.get("personaId")
    if not isinstance(persona_id, str) or not _PERSONA_ID.fullmatch(persona_id):
        problems.append("payload.personaId: 1-63 characters of [a-z0-9-], starting with a letter")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= _MAX_VERSION:
        problems.append("payload.version: an integer from 1 to 2^53")
    if payload.get("keyId") != bundle.key_id:
        problems.append("payload.keyId: must be the key id of the header")
    issue_time = _time(payload.get("issueTime"), "payload.issueTime", problems)
    persona = _persona(_object(payload.get("bundle"), "payload.bundle", _BUNDLE_KEYS, problems), tenant, problems)
    permissions = _permissions(payload.get("permissions"), persona, problems)
    if problems:
        raise BundleMalformed(
            "the payload is not a persona bundle: " + "; ".join(problems[:10]),
            metadata={**meta, "problems": "; ".join(problems)[:1000]},
        )
    assert isinstance(persona_id, str)
    assert isinstance(version, int)
    assert issue_time is not None
    return BundlePayload(
        persona=dataclasses.replace(persona, name=f"{tenant}/personas/{persona_id}"),
        version=version,
        key_id=bundle.key_id,
        issue_time=issue_time,
        permissions=permissions,
    )


def payload_of(persona: Persona, version: int, key_id: str, issue_time: datetime) -> bytes:
    """The payload to sign for a persona (ExportPersonaBundle): its bundle with tools by id,
    and its permissions: its tools, and its memory namespaces read and written (a persona's
    namespaces are the ones it "reads and writes")."""
    bundle = bundle_json(persona)
    tool_ids = [tool.rsplit("/", 1)[-1] for tool in persona.allowed_tools]
    if tool_ids:
        bundle["allowedTools"] = tool_ids
    namespaces = list(persona.memory_namespaces)
    return canonical_json(
        {
            "format": FORMAT,
            "personaId": persona.persona_id,
            "version": version,
            "keyId": key_id,
            "issueTime": issue_time.isoformat().replace("+00:00", "Z"),
            "bundle": bundle,
            "permissions": {"tools": tool_ids, "memoryRead": namespaces, "memoryWrite": namespaces},
        }
    )


def signed_file(payload: bytes, key_id: str, signature: bytes) -> bytes:
    """The bundle file of a payload and its signature."""
    header = f"{FORMAT}\nkey: {key_id}\nsignature: {base64.b64encode(signature).decode()}\n\n"
    return header.encode() + payload


# -- reading the payload -------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:40]!r} given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, at: str, allowed: set[str], problems: list[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"{at}: expected an object")
        return {}
    unknown = sorted(set(value) - allowed)
    if unknown:
        problems.append(f"{at}: unknown fields {', '.join(k[:40] for k in unknown[:5])}")
    return value


def _strings(value: Any, at: str, pattern: re.Pattern[str], problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
        problems.append(f"{at}: expected a list of ids")
        return ()
    if len(set(value)) != len(value):
        problems.append(f"{at}: an id given twice")
    return tuple(value)


def _text(value: Any, at: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{at}: expected a string")
        return ""
    return value


def _time(value: Any, at: str, problems: list[str]) -> datetime | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    problems.append(f"{at}: expected an RFC 3339 time with its offset")
    return None


def _persona(bundle: Mapping[str, Any], tenant: str, problems: list[str]) -> Persona:
    tool_ids = _strings(bundle.get("allowedTools"), "payload.bundle.allowedTools", _TOOL_ID, problems)
    preferences = bundle.get("modelPreferences", [])
    if not isinstance(preferences, list):
        problems.append("payload.bundle.modelPreferences: expected a list")
        preferences = []
    examples = bundle.get("examples", [])
    if not isinstance(examples, list):
        problems.append("payload.bundle.examples: expected a list")
        examples = []
    return Persona(
        name="",
        display_name=_text(bundle.get("displayName"), "payload.bundle.displayName", problems),
        system_prompt=_text(bundle.get("systemPrompt"), "payload.bundle.systemPrompt", problems),
        tone=_text(bundle.get("tone"), "payload.bundle.tone", problems),
        voice=_text(bundle.get("voice"), "payload.bundle.voice", problems),
        allowed_tools=tuple(f"{tenant}/tools/{tool}" for tool in tool_ids),
        memory_namespaces=_strings(
            bundle.get("memoryNamespaces"), "payload.bundle.memoryNamespaces", _NAMESPACE, problems
        ),
        model_preferences=tuple(
            _override(o, f"payload.bundle.modelPreferences[{i}]", problems) for i, o in enumerate(preferences)
        ),
        knowledge_snapshot=_text(bundle.get("knowledgeSnapshot"), "payload.bundle.knowledgeSnapshot", problems),
        examples=tuple(_example(e, f"payload.bundle.examples[{i}]", problems) for i, e in enumerate(examples)),
    )


def _example(value: Any, at: str, problems: list[str]) -> PersonaExample:
    fields = _object(value, at, _EXAMPLE_KEYS, problems)
    return PersonaExample(
        user_text=_text(fields.get("userText"), f"{at}.userText", problems),
        agent_text=_text(fields.get("agentText"), f"{at}.agentText", problems),
        source_turn=_text(fields.get("sourceTurn"), f"{at}.sourceTurn", problems),
    )


def _override(value: Any, at: str, problems: list[str]) -> ModelOverride:
    fields = _object(value, at, _OVERRIDE_KEYS, problems)
    role_name = fields.get("role")
    role = None
    if isinstance(role_name, str) and role_name.startswith("MODEL_ROLE_"):
        role = next((r for r in ModelRole if r.value == role_name.removeprefix("MODEL_ROLE_")), None)
    if role is None:
        problems.append(f"{at}.role: expected a MODEL_ROLE_* name")
    tiers = fields.get("modelTiers", [])
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        problems.append(f"{at}.modelTiers: expected a list of model names")
        tiers = []
    temperature = fields.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)):
        problems.append(f"{at}.temperature: expected a number")
        temperature = None
    tokens = fields.get("maxOutputTokens", 0)
    if not _is_int(tokens):
        problems.append(f"{at}.maxOutputTokens: expected an integer")
        tokens = 0
    return ModelOverride(role, tuple(tiers), None if temperature is None else float(temperature), int(tokens))


def _permissions(value: Any, persona: Persona, problems: list[str]) -> BundlePermissions:
    fields = _object(value, "payload.permissions", _PERMISSION_KEYS, problems)
    permissions = BundlePermissions(
        tools=_strings(fields.get("tools"), "payload.permissions.tools", _TOOL_ID, problems),
        memory_read=_strings(fields.get("memoryRead"), "payload.permissions.memoryRead", _NAMESPACE, problems),
        memory_write=_strings(fields.get("memoryWrite"), "payload.permissions.memoryWrite", _NAMESPACE, problems),
    )
    # A bundle grants no more than the persona it carries shows the model.
    tool_ids = {tool.rsplit("/", 1)[-1] for tool in persona.allowed_tools}
    if not set(permissions.tools) <= tool_ids:
        problems.append("payload.permissions.tools: only tools of payload.bundle.allowedTools")
    namespaces = set(persona.memory_namespaces)
    if not set(permissions.memory_read) | set(permissions.memory_write) <= namespaces:
        problems.append(
            "payload.permissions.memoryRead/memoryWrite: only namespaces of payload.bundle.memoryNamespaces"
        )
    return permissions
