"""The persona bundle file: export -> sign -> read back, and every way a file is refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from skm_runtime.values import ModelOverride, ModelRole
from svc_profiles import bundle_file
from svc_profiles.bundle import canonical_json
from svc_profiles.errors import BundleMalformed, BundleSignatureInvalid
from svc_profiles.model import BundlePermissions, Persona, PersonaExample

ISSUED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PERSONA = Persona(
    name="tenants/pub/personas/helper",
    display_name="Helper",
    system_prompt="You help.",
    tone="warm",
    allowed_tools=("tenants/pub/tools/code_execution", "tenants/pub/tools/web_search"),
    memory_namespaces=("solutions", "fragments"),
    model_preferences=(ModelOverride(ModelRole.PRIMARY, ("models/a",), 0.7, 100),),
    examples=(PersonaExample("hi", "hello"),),
)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _signed(key: Ed25519PrivateKey, payload: bytes, key_id: str = "acme") -> bytes:
    return bundle_file.signed_file(payload, key_id, key.sign(payload))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_an_exported_and_signed_persona_reads_back_in_another_tenant(key: Ed25519PrivateKey) -> None:
    payload = bundle_file.payload_of(PERSONA, 3, "acme", ISSUED)
    signed = bundle_file.read_signed(_signed(key, payload))
    bundle_file.verify(signed, _raw(key))
    read = bundle_file.read_payload(signed, "tenants/t2")
    assert read.version == 3
    assert read.key_id == "acme"
    assert read.issue_time == ISSUED
    assert read.persona.name == "tenants/t2/personas/helper"
    assert read.persona.allowed_tools == ("tenants/t2/tools/code_execution", "tenants/t2/tools/web_search")
    assert read.persona.memory_namespaces == PERSONA.memory_namespaces
    assert read.persona.model_preferences == PERSONA.model_preferences
    assert read.persona.examples == PERSONA.examples
    assert (read.persona.display_name, read.persona.system_prompt, read.persona.tone) == ("Helper", "You help.", "warm")
    assert read.permissions == BundlePermissions(
        tools=("code_execution", "web_search"),
        memory_read=("solutions", "fragments"),
        memory_write=("solutions", "fragments"),
    )


def test_the_payload_is_canonical_json_with_tools_by_id() -> None:
    payload = bundle_file.payload_of(PERSONA, 1, "acme", ISSUED)
    value = json.loads(payload)
    assert canonical_json(value) == payload
    assert value["bundle"]["allowedTools"] == ["code_execution", "web_search"]
    assert value["issueTime"] == "2026-12-01T12:00:00Z"
    assert value["format"] == "skm-persona-bundle/v1"


@pytest.mark.parametrize("position", [0, 10, -1])
def test_one_changed_byte_of_the_payload_is_a_signature_failure(key: Ed25519PrivateKey, position: int) -> None:
    data = bytearray(_signed(key, bundle_file.payload_of(PERSONA, 1, "acme", ISSUED)))
    start = data.index(b"\n\n") + 2
    index = start + position if position >= 0 else len(data) + position
    data[index] ^= 0x01
    signed = bundle_file.read_signed(bytes(data))
    with pytest.raises(BundleSignatureInvalid) as raised:
        bundle_file.verify(signed, _raw(key))
    assert raised.value.metadata["key_id"] == "acme"


def test_a_bundle_signed_with_another_key_does_not_verify(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    signed = bundle_file.read_signed(_signed(other, bundle_file.payload_of(PERSONA, 1, "acme", ISSUED)))
    with pytest.raises(BundleSignatureInvalid):
        bundle_file.verify(signed, _raw(key))


def test_a_replaced_signature_does_not_verify(key: Ed25519PrivateKey) -> None:
    payload = bundle_file.payload_of(PERSONA, 1, "acme", ISSUED)
    forged = bundle_file.signed_file(payload, "acme", key.sign(payload + b" "))
    with pytest.raises(BundleSignatureInvalid):
        bundle_file.verify(bundle_file.read_signed(forged), _raw(key))


def test_a_public_key_of_the_wrong_length_is_a_signature_failure(key: Ed25519PrivateKey) -> None:
    signed = bundle_file.read_signed(_signed(key, bundle_file.payload_of(PERSONA, 1, "acme", ISSUED)))
    with pytest.raises(BundleSignatureInvalid):
        bundle_file.verify(signed, b"\x00" * 31)


SIG = base64.b64encode(b"\x01" * 64).decode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"skm-persona-bundle/v2\nkey: acme\nsignature: " + SIG.encode() + b"\n\n{}",
        b"skm-persona-bundle/v1\nkey: acme\nsignature: " + SIG.encode() + b"\n{}",
        b"skm-persona-bundle/v1\nkey: Acme\nsignature: " + SIG.encode() + b"\n\n{}",
        b"skm-persona-bundle/v1\nkey: acme\nsig: " + SIG.encode() + b"\n\n{}",
        b"skm-persona-bundle/v1\nkey: acme\nsignature: AAAA\n\n{}",
        b"skm-persona-bundle/v1\nkey: acme\nsignature: not base64!\n\n{}",
        b"skm-persona-bundle/v1\nkey: acme\nextra: x\nsignature: " + SIG.encode() + b"\n\n{}",
        b"skm-persona-bundle/v1\nkey: \xff\nsignature: " + SIG.encode() + b"\n\n{}",
    ],
)
def test_files_that_are_no_bundle_are_malformed(data: bytes) -> None:
    with pytest.raises(BundleMalformed):
        bundle_file.read_signed(data)


def test_a_file_over_one_mebibyte_is_malformed(key: Ed25519PrivateKey) -> None:
    with pytest.raises(BundleMalformed):
        bundle_file.read_signed(_signed(key, b"x" * (1024 * 1024)))


def _payload(**changes: object) -> bytes:
    value = json.loads(bundle_file.payload_of(PERSONA, 2, "acme", ISSUED))
    for path, new in changes.items():
        target = value
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if new is None:
            del target[last]
        else:
            target[last] = new
    return canonical_json(value)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"a":1,"a":2}',
        b"[]",
        b'{"version": 1}',  # not canonical (a space)
        _payload(format="skm-persona-bundle/v2"),
        _payload(version=0),
        _payload(version=-3),
        _payload(version=1.5),
        _payload(version=True),
        _payload(keyId="other"),
        _payload(personaId="Bad_Id"),
        _payload(issueTime="yesterday"),
        _payload(issueTime="2026-12-01T12:00:00"),
        _payload(bundle=None),
        _payload(bundle__unknown="x"),
        _payload(bundle__systemPrompt=5),
        _payload(bundle__allowedTools=["Not An Id"]),
        _payload(bundle__allowedTools=["web_search", "web_search"]),
        _payload(bundle__modelPreferences=[{"role": "ROLE"}]),
        _payload(bundle__examples="x"),
        _payload(permissions=None),
        _payload(permissions__tools=["shell"]),
        _payload(permissions__memoryWrite=["elsewhere"]),
        _payload(extra="x"),
    ],
)
def test_a_verified_payload_that_is_no_persona_bundle_is_malformed(key: Ed25519PrivateKey, payload: bytes) -> None:
    signed = bundle_file.read_signed(_signed(key, payload))
    bundle_file.verify(signed, _raw(key))
    with pytest.raises(BundleMalformed):
        bundle_file.read_payload(signed, "tenants/t2")


def test_a_payload_may_grant_less_than_its_persona_shows(key: Ed25519PrivateKey) -> None:
    payload = _payload(permissions__tools=["web_search"], permissions__memoryWrite=[])
    read = bundle_file.read_payload(bundle_file.read_signed(_signed(key, payload)), "tenants/t2")
    assert read.permissions == BundlePermissions(("web_search",), ("solutions", "fragments"), ())
