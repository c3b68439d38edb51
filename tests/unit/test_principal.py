"""Signed principals: only a principal whose MAC verifies under the mesh key is one.

Also the mesh key file's format, and a service process that has no key refusing to start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from skm.type.v1 import principal_pb2
from skm_runtime.principal import (
    CALLER_MAX_AGE_SECONDS,
    MAX_CALLER_NAME_BYTES,
    PRINCIPAL_KEY,
    PRINCIPAL_MAC_KEY,
    MeshKeyInvalid,
    MeshKeyMissing,
    caller_from,
    caller_metadata,
    configure_mesh_key,
    has_mesh_key,
    mesh_admitted,
    new_mesh_key,
    principal_from,
    principal_message,
    principal_metadata,
    read_mesh_keys,
    use_caller_name,
    use_mesh_keys,
)
from skm_runtime.server import ServiceSpec, run, usage
from skm_runtime.settings import ServiceSettings
from skm_stack.devkeys import ensure_mesh_key

ALICE = principal_message("tenants/t1", "tenants/t1/users/alice", ["member", "operator"])


@pytest.fixture(autouse=True)
def _session_key_back(mesh_key_file: Path) -> Iterator[None]:
    """Each test may change the process's keys; the next one finds the session's again."""
    yield
    configure_mesh_key(mesh_key_file)


def _key() -> bytes:
    return secrets.token_bytes(32)


def test_a_signed_principal_verifies() -> None:
    use_mesh_keys([_key()])
    metadata = principal_metadata(ALICE)
    assert [key for key, _ in metadata] == [PRINCIPAL_KEY, PRINCIPAL_MAC_KEY]
    assert principal_from(metadata) == ALICE
    # Among other metadata, in any order.
    assert principal_from([("x-other", "1"), metadata[1], ("traceparent", "00-x"), metadata[0]]) == ALICE


def test_a_tampered_principal_is_none() -> None:
    use_mesh_keys([_key()])
    (_, serialized), mac = principal_metadata(ALICE)
    mallory = principal_message("tenants/t1", "tenants/t1/users/mallory", ["admin"]).SerializeToString()
    assert principal_from([(PRINCIPAL_KEY, mallory), mac]) is None
    assert principal_from([(PRINCIPAL_KEY, serialized + b"\x10\x03"), mac]) is None  # a role appended
    flipped = bytes([mac[1][0] ^ 1]) + mac[1][1:]
    assert principal_from([(PRINCIPAL_KEY, serialized), (PRINCIPAL_MAC_KEY, flipped)]) is None


def test_a_principal_signed_under_another_key_is_none() -> None:
    use_mesh_keys([_key()])
    metadata = principal_metadata(ALICE)
    use_mesh_keys([_key()])
    assert principal_from(metadata) is None


def test_a_principal_without_its_mac_or_a_mac_alone_is_none() -> None:
    use_mesh_keys([_key()])
    principal, mac = principal_metadata(ALICE)
    assert principal_from([principal]) is None
    assert principal_from([mac]) is None
    assert principal_from([]) is None
    assert principal_from(None) is None


def test_two_principals_or_two_macs_are_none() -> None:
    use_mesh_keys([_key()])
    principal, mac = principal_metadata(ALICE)
    other, other_mac = principal_metadata(principal_message("tenants/t1", "tenants/t1/users/bob", []))
    assert principal_from([principal, mac, other, other_mac]) is None
    assert principal_from([principal, mac, mac]) is None


def test_undecodable_bytes_are_none_even_when_signed() -> None:
    key = _key()
    use_mesh_keys([key])
    assert principal_from([(PRINCIPAL_KEY, b"\xff\xff\xff"), (PRINCIPAL_MAC_KEY, b"\x00" * 32)]) is None
    assert principal_from([(PRINCIPAL_KEY, "text, not bytes"), (PRINCIPAL_MAC_KEY, b"\x00" * 32)]) is None
    # Bytes that are no Principal (cut short), with a MAC that verifies: still no principal.
    garbage = principal_pb2.Principal(tenant="t").SerializeToString()[:-1]
    mac = hmac.digest(key, b"skm.principal.v1\x00" + garbage, hashlib.sha256)
    assert principal_from([(PRINCIPAL_KEY, garbage), (PRINCIPAL_MAC_KEY, mac)]) is None


def test_without_a_key_nothing_is_signed_or_trusted() -> None:
    metadata = principal_metadata(ALICE)
    use_mesh_keys([])
    assert not has_mesh_key()
    assert principal_from(metadata) is None
    with pytest.raises(MeshKeyMissing, match="SKM_MESH_KEY_FILE"):
        principal_metadata(ALICE)


def test_a_key_file_with_two_keys_signs_with_the_first_and_accepts_both(tmp_path: Path) -> None:
    old, new = _key(), _key()
    use_mesh_keys([old])
    signed_before = principal_metadata(ALICE)
    path = tmp_path / "mesh.key"
    path.write_text(f"# rotating: the new key first\n{new.hex()}\n\n{old.hex()}\n")
    configure_mesh_key(path)
    assert read_mesh_keys(path) == (new, old)
    assert principal_from(signed_before) == ALICE
    signed_now = principal_metadata(ALICE)
    use_mesh_keys([new])
    assert principal_from(signed_now) == ALICE
    assert principal_from(signed_before) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("ab" * 31 + "\n", "at least 32 bytes"),
        ("zz" * 32 + "\n", "hex digits"),
        ("ab" * 32 + "\nnot hex\n", "line 2"),
    ],
)
def test_an_unusable_key_file_is_named_and_its_content_never_shown(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mesh.key"
    path.write_text(content)
    with pytest.raises(MeshKeyInvalid, match=message) as raised:
        read_mesh_keys(path)
    assert str(path) in str(raised.value)
    assert "abab" not in str(raised.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeshKeyInvalid, match="cannot read the mesh key file") as raised:
        read_mesh_keys(tmp_path / "nowhere.key")
    assert "nowhere.key" in str(raised.value)


def test_a_new_key_is_32_random_bytes_in_hex(tmp_path: Path) -> None:
    first, second = new_mesh_key(), new_mesh_key()
    assert first != second
    path = tmp_path / "k"
    path.write_text(first)
    assert [len(key) for key in read_mesh_keys(path)] == [32]


def test_the_stack_makes_its_key_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = ensure_mesh_key(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    content = path.read_text()
    assert ensure_mesh_key(tmp_path) == path
    assert path.read_text() == content
    assert len(read_mesh_keys(path)[0]) == 32


async def _build(settings: ServiceSettings, runtime: object) -> ServiceSpec:
    raise AssertionError("a service without its mesh key must not be built")


def test_a_service_without_a_mesh_key_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SKM_MESH_KEY_FILE", raising=False)
    assert run("sample", ServiceSettings, _build, argv=[]) == 2
    err = capsys.readouterr().err
    assert "SKM_MESH_KEY_FILE: required" in err


def test_a_service_with_an_unusable_mesh_key_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.key"
    path.write_text("cd" * 16 + "\n")  # 16 bytes: too short
    monkeypatch.setenv("SKM_MESH_KEY_FILE", str(path))
    assert run("sample", ServiceSettings, _build, argv=[]) == 2
    err = capsys.readouterr().err
    assert f"SKM_MESH_KEY_FILE: {str(path)!r} line 1: a key needs at least 32 bytes" in err
    assert "cdcd" not in err


def test_help_lists_the_mesh_key_file() -> None:
    [required] = [line for line in usage("sample", ServiceSettings).splitlines() if "SKM_MESH_KEY_FILE" in line]
    assert "(required)" in required
    optional = usage("echo", ServiceSettings, uses_principals=False)
    assert "SKM_MESH_KEY_FILE" in optional
    assert "(required)" not in optional


# -- signed callers ----------------------------------------------------------------------

CHECK = "/skm.policy.v1.PolicyService/Check"


def test_a_signed_caller_names_the_process_for_that_method_only() -> None:
    use_caller_name("tools")
    try:
        signed = caller_metadata(CHECK)
        assert caller_from(signed, CHECK) == "tools"
        assert caller_from(signed, CHECK.encode()) == "tools", "grpc.aio hands clients the path as bytes"
        assert caller_from(signed, "/skm.policy.v1.PolicyService/WriteRelationships") is None
        assert mesh_admitted(signed, CHECK)
        assert not mesh_admitted(signed, "/skm.policy.v1.PolicyService/BatchCheck")
    finally:
        use_caller_name("skm")


def test_a_signed_caller_holds_for_a_minute_either_side_of_its_time() -> None:
    now = 1_800_000_000.0
    signed = caller_metadata(CHECK, now=now)
    assert caller_from(signed, CHECK, now=now + CALLER_MAX_AGE_SECONDS - 1) == "skm"
    assert caller_from(signed, CHECK, now=now - CALLER_MAX_AGE_SECONDS + 1) == "skm"
    assert caller_from(signed, CHECK, now=now + CALLER_MAX_AGE_SECONDS + 1) is None
    assert caller_from(signed, CHECK, now=now - CALLER_MAX_AGE_SECONDS - 1) is None


def test_a_caller_that_does_not_verify_is_none() -> None:
    (signed,) = caller_metadata(CHECK)
    key, value = signed
    stamp, mac, name = value[:8], value[8:40], value[40:]
    later = (int.from_bytes(stamp, "big") + 1).to_bytes(8, "big")
    cases = {
        "nothing": (),
        "a time and a name, no MAC": ((key, stamp + name),),
        "a forged MAC": ((key, stamp + secrets.token_bytes(32) + name),),
        "another name under the same MAC": ((key, stamp + mac + b"gateway"),),
        "another time under the same MAC": ((key, later + mac + name),),
        "two callers": (signed, signed),
        "text, not bytes": ((key, value.hex()),),
        "a time and a MAC, no name": ((key, stamp + mac),),
        "a name too long": ((key, stamp + mac + b"x" * (MAX_CALLER_NAME_BYTES + 1)),),
    }
    for what, metadata in cases.items():
        assert caller_from(metadata, CHECK) is None, what
        assert not mesh_admitted(metadata, CHECK), what
    use_mesh_keys([secrets.token_bytes(32)])
    assert caller_from((signed,), CHECK) is None, "another key"
    use_mesh_keys([])
    assert caller_from((signed,), CHECK) is None, "a process without a key trusts nobody"
    assert not mesh_admitted((signed,), CHECK)
    with pytest.raises(MeshKeyMissing):
        caller_metadata(CHECK)


def test_a_call_with_a_signed_principal_is_admitted_without_a_caller() -> None:
    assert mesh_admitted(principal_metadata(ALICE), CHECK)
    (serialized, _mac) = principal_metadata(ALICE)
    assert not mesh_admitted((serialized, (PRINCIPAL_MAC_KEY, secrets.token_bytes(32))), CHECK)
    assert not mesh_admitted((*principal_metadata(ALICE), serialized), CHECK), "two principals"


def test_a_caller_name_has_1_to_64_bytes() -> None:
    for bad in ("", "x" * 65):
        with pytest.raises(ValueError, match="1 to 64 bytes"):
            use_caller_name(bad)
