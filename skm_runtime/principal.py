"""The authenticated principal, carried between services in call metadata, signed.

A public call is admitted, by its bearer token, in the service that owns the method
(skm_runtime.gate); when that service calls another on the caller's behalf it passes the
principal (tenant, user, roles) as `x-skm-principal-bin`, a serialized
`skm.type.v1.Principal`, with `x-skm-principal-mac-bin`: HMAC-SHA256 of those bytes (after
a fixed label) under the mesh key, a secret that only the mesh's own processes hold
(`principal_metadata`). A service trusts a principal only when its MAC verifies
(`principal_from`); a call that carries mesh credentials that do not verify, a client's own
included, is refused as unauthenticated, never judged by its token instead. Envoy, the
public entry, removes every `x-skm-*` header a client sends, so no client can pass a
principal or a MAC through it.

The mesh key lives in a file named by SKM_MESH_KEY_FILE (`read_mesh_keys`): hex text, one
key of at least 32 bytes (64 hex digits) per line; blank lines and `#` comments are
ignored. The first key signs, every key verifies, so a key is rotated without downtime:
add the new key as a second line everywhere, then make it the first, then remove the old
one. `skm_runtime.server.run` loads it before a service starts and refuses to start
without it (exit 2). The key is never logged, and never part of an error message.

What the MAC does not do: it authenticates the principal, not the call, and does not
expire, so whoever reads a signed principal on the mesh's network can replay it. Keep the
mesh's traffic private (loopback here; mTLS or a private network in deployments).

Calls between services that carry no principal (svc_tools asking svc_policy, an operator's
`skm relationships --mesh` naming a tenant's first admin) carry a signed caller instead:
`x-skm-caller-bin`, the time it was signed (milliseconds since the epoch, 8 bytes
big-endian), the HMAC-SHA256 under the mesh key of a fixed label, the method's path, that
time and the caller's name, then the name. It holds for that method only, and for
`CALLER_MAX_AGE_SECONDS` either side of its time, so a copy read off the network is of
little use for long. Every service except the gateway admits a call only with a verified
principal or a verified caller (`mesh_admitted`), or, for a public method it owns, by the
caller's token; health and reflection answer anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from skm.type.v1 import principal_pb2

PRINCIPAL_KEY = "x-skm-principal-bin"
# HMAC-SHA256 (32 bytes) of _LABEL + the principal's bytes under the mesh key.
PRINCIPAL_MAC_KEY = "x-skm-principal-mac-bin"
# Set on a call a service makes on a client's behalf (svc_conversation handing an
# intervention to the process that runs the turn): what only the mesh may ask is ignored.
FORWARDED_BY_KEY = "x-skm-forwarded-by"
# The variable that names the mesh key file (read by RuntimeSettings.mesh_key_file).
MESH_KEY_FILE_VAR = "SKM_MESH_KEY_FILE"
MIN_KEY_BYTES = 32

# A caller inside the mesh that carries no principal (skm_runtime.interceptors signs every
# outbound call of a service without one with it): when it was signed (milliseconds since the
# epoch, 8 bytes big-endian), HMAC-SHA256 of _CALLER_LABEL + the method's path + NUL + that
# time + the name (32 bytes), then the caller's name.
CALLER_KEY = "x-skm-caller-bin"
_MAC_AT = 8
# How far a signed caller's time may be from the receiver's clock, either way.
CALLER_MAX_AGE_SECONDS = 60.0
MAX_CALLER_NAME_BYTES = 64

# Binds a MAC to its purpose: the same key signs principals and callers.
_LABEL = b"skm.principal.v1\x00"
_CALLER_LABEL = b"skm.caller.v1\x00"

_ROLE_NAMES = {
    principal_pb2.ROLE_MEMBER: "member",
    principal_pb2.ROLE_OPERATOR: "operator",
    principal_pb2.ROLE_ADMIN: "admin",
}
_ROLES = {name: number for number, name in _ROLE_NAMES.items()}

# The process's mesh keys: the first signs, each verifies. Empty: nothing is signed or trusted.
_keys: tuple[_Key, ...] = ()
# The name this process signs its calls with (`use_caller_name`).
_caller_name = b"skm"


class _Key:
    """One mesh key, ready to compute HMAC-SHA256 (RFC 2104) with: its inner and outer
    hashes are started once. A MAC then costs two small hash updates and never lets go of
    the GIL (hmac.digest does, on every call: under a busy grpc.aio server, getting it back
    cost a call some 20 us)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\x00")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def mac(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class MeshKeyInvalid(ValueError):
    """The mesh key file cannot be used (the message names the file, never its content)."""


class MeshKeyMissing(RuntimeError):
    """A principal was to be signed in a process that has no mesh key."""


def role_names(message: principal_pb2.Principal) -> tuple[str, ...]:
    """The principal's roles as the words services use ("member", "operator", "admin")."""
    return tuple(_ROLE_NAMES[role] for role in message.roles if role in _ROLE_NAMES)


def principal_message(tenant: str, user: str, roles: Iterable[str]) -> principal_pb2.Principal:
    """The wire form of a principal; unknown role words are dropped."""
    return principal_pb2.Principal(tenant=tenant, user=user, roles=[_ROLES[r] for r in roles if r in _ROLES])


# -- the mesh key ------------------------------------------------------------------------


def new_mesh_key() -> str:
    """A fresh mesh key file's content: 32 random bytes as hex text, one line."""
    return secrets.token_hex(MIN_KEY_BYTES) + "\n"


def read_mesh_keys(path: Path) -> tuple[bytes, ...]:
    """The keys of a mesh key file (see the module's docstring for the format)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
        raise MeshKeyInvalid(f"cannot read the mesh key file {str(path)!r}: {reason}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise MeshKeyInvalid(f"{str(path)!r} line {number}: expected a key as hex digits") from None
        if len(key) < MIN_KEY_BYTES:
            raise MeshKeyInvalid(
                f"{str(path)!r} line {number}: a key needs at least {MIN_KEY_BYTES} bytes"
                f" ({2 * MIN_KEY_BYTES} hex digits), got {len(key)}"
            )
        keys.append(key)
    if not keys:
        raise MeshKeyInvalid(f"{str(path)!r} holds no key")
    return tuple(keys)


def use_mesh_keys(keys: Sequence[bytes]) -> None:
    """Make `keys` the process's mesh keys (the first signs); an empty list: none."""
    global _keys
    short = [key for key in keys if len(key) < MIN_KEY_BYTES]
    if short:
        raise MeshKeyInvalid(f"a mesh key needs at least {MIN_KEY_BYTES} bytes")
    _keys = tuple(_Key(key) for key in keys)


def configure_mesh_key(path: Path) -> None:
    """Read a mesh key file and use its keys in this process (tests, benches, tools)."""
    use_mesh_keys(read_mesh_keys(path))


def has_mesh_key() -> bool:
    """Whether this process can sign and check principals."""
    return bool(_keys)


# -- signed principals -------------------------------------------------------------------


def _mac(key: _Key, serialized: bytes) -> bytes:
    return key.mac(_LABEL + serialized)


def principal_metadata(principal: principal_pb2.Principal) -> tuple[tuple[str, bytes], ...]:
    """The metadata that carries `principal` to another service of the mesh, signed.

    Raises MeshKeyMissing in a process without a mesh key: an unsigned principal would
    be refused anyway, and a clear error here beats UNAUTHENTICATED over there.
    """
    if not _keys:
        raise MeshKeyMissing(f"no mesh key to sign a principal with: set {MESH_KEY_FILE_VAR}")
    serialized = principal.SerializeToString()
    return ((PRINCIPAL_KEY, serialized), (PRINCIPAL_MAC_KEY, _mac(_keys[0], serialized)))


def principal_from(metadata: Iterable[Any] | None) -> principal_pb2.Principal | None:
    """The principal a call carries, when its MAC verifies under a mesh key; else None.

    None also for a principal without a MAC, with a wrong one, with more than one principal
    or MAC, for undecodable bytes, and in a process without a mesh key.
    """
    serialized = mac = None
    for key, value in metadata or ():
        if key == PRINCIPAL_KEY:
            if serialized is not None or not isinstance(value, bytes):
                return None
            serialized = value
        elif key == PRINCIPAL_MAC_KEY:
            if mac is not None or not isinstance(value, bytes):
                return None
            mac = value
    if serialized is None or mac is None:
        return None
    return _verified_principal(serialized, mac)


def _principal_signed(serialized: bytes, mac: bytes) -> bool:
    # Every key is tried, whatever matches: the time taken says nothing about which did.
    verified = False
    for key in _keys:
        verified |= hmac.compare_digest(_mac(key, serialized), mac)
    return verified


def _verified_principal(serialized: bytes, mac: bytes) -> principal_pb2.Principal | None:
    if not _principal_signed(serialized, mac):
        return None
    try:
        return principal_pb2.Principal.FromString(serialized)
    except Exception:  # noqa: BLE001  # malformed metadata is no principal
        return None


# -- signed callers ----------------------------------------------------------------------


def use_caller_name(name: str) -> None:
    """The name this process's signed calls carry (a service's name, `skm-cli`, ...)."""
    global _caller_name
    encoded = name.encode()
    if not encoded or len(encoded) > MAX_CALLER_NAME_BYTES:
        raise ValueError(f"a caller name has 1 to {MAX_CALLER_NAME_BYTES} bytes")
    _caller_name = encoded


def _caller_mac(key: _Key, method: bytes, stamp: bytes, name: bytes) -> bytes:
    return key.mac(_CALLER_LABEL + method + b"\x00" + stamp + name)


def _path(method: str | bytes) -> bytes:
    return method if isinstance(method, bytes) else method.encode()


def caller_metadata(method: str | bytes, *, now: float | None = None) -> tuple[tuple[str, bytes]]:
    """The metadata that admits a call of `method` (its path, `/pkg.Service/Method`) to a
    service of the mesh without a principal: this process's name, signed with the time.

    Raises MeshKeyMissing in a process without a mesh key."""
    if not _keys:
        raise MeshKeyMissing(f"no mesh key to sign a call with: set {MESH_KEY_FILE_VAR}")
    stamp = int((time.time() if now is None else now) * 1000).to_bytes(8, "big", signed=True)
    return ((CALLER_KEY, stamp + _caller_mac(_keys[0], _path(method), stamp, _caller_name) + _caller_name),)


def _verified_caller(value: bytes, method: bytes, now: float) -> str | None:
    if not _MAC_AT + 32 < len(value) <= _MAC_AT + 32 + MAX_CALLER_NAME_BYTES:
        return None
    stamp, mac, name = value[:_MAC_AT], value[_MAC_AT : _MAC_AT + 32], value[_MAC_AT + 32 :]
    verified = False
    for key in _keys:  # every key, whatever matches: the time taken says nothing about which did
        verified |= hmac.compare_digest(_caller_mac(key, method, stamp, name), mac)
    if not verified or abs(now - int.from_bytes(stamp, "big", signed=True) / 1000.0) > CALLER_MAX_AGE_SECONDS:
        return None
    return name.decode(errors="replace")


def caller_from(metadata: Iterable[Any] | None, method: str | bytes, *, now: float | None = None) -> str | None:
    """The name of the mesh caller a call of `method` carries, when its MAC verifies under
    a mesh key and its time is within CALLER_MAX_AGE_SECONDS of now; else None (also for
    more than one caller)."""
    caller = None
    for key, value in metadata or ():
        if key == CALLER_KEY:
            if caller is not None or not isinstance(value, bytes):
                return None
            caller = value
    if caller is None:
        return None
    return _verified_caller(caller, _path(method), time.time() if now is None else now)


def mesh_admitted(metadata: Iterable[Any] | None, method: str | bytes) -> bool:
    """Whether a call comes from inside the mesh: it carries a principal or a caller that
    verifies (see the module's docstring), in one pass over the metadata. Never in a
    process without a mesh key. More than one principal, MAC or caller: not admitted."""
    serialized = mac = caller = None
    for key, value in metadata or ():
        if key == PRINCIPAL_KEY:
            if serialized is not None or not isinstance(value, bytes):
                return False
            serialized = value
        elif key == PRINCIPAL_MAC_KEY:
            if mac is not None or not isinstance(value, bytes):
                return False
            mac = value
        elif key == CALLER_KEY:
            if caller is not None or not isinstance(value, bytes):
                return False
            caller = value
    if serialized is not None and mac is not None and _principal_signed(serialized, mac):
        return True
    return caller is not None and _verified_caller(caller, _path(method), time.time()) is not None
