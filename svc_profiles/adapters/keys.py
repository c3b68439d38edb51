"""The deployment's trusted persona publisher keys: Ed25519 public keys by key id.

Keys come from settings, in either or both forms:

- a folder of PEM files (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes them),
  one per key, the key id being the file name without `.pem`;
- entries `key_id=BASE64` of the 32 raw public key bytes (standard or URL-safe base64).

Only public keys are read there; a private key file in the folder is refused.

`Ed25519PersonaSigner` holds the one private key svc_profiles may have: the deployment's
key for its built-in personas (see ProfilesSettings.builtin_signing_key_file).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class PersonaKeysInvalid(ValueError):
    """A configured key cannot be used; the service does not start."""


class Ed25519PersonaKeys:
    """Verifies persona signatures against a fixed set of trusted keys."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, entries: Iterable[str] = (), folder: Path | None = None) -> Ed25519PersonaKeys:
        keys: dict[str, Ed25519PublicKey] = {}
        problems: list[str] = []
        for entry in entries:
            key_id, sep, encoded = entry.partition("=")
            key_id = key_id.strip()
            if not sep or not _KEY_ID.fullmatch(key_id):
                problems.append(f"{entry[:40]!r}: expected key_id=BASE64 of the 32 raw key bytes")
                continue
            try:
                text = encoded.strip().replace("-", "+").replace("_", "/").rstrip("=")
                raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
                keys[key_id] = Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, binascii.Error):
                problems.append(f"{key_id}: not 32 base64-encoded Ed25519 public key bytes")
        if folder is not None:
            if not folder.is_dir():
                problems.append(f"{folder}: not a folder")
            else:
                for path in sorted(folder.glob("*.pem")):
                    problem = _load_pem(path, keys)
                    if problem:
                        problems.append(problem)
        if problems:
            raise PersonaKeysInvalid("trusted persona keys:\n  " + "\n  ".join(problems))
        return cls(keys)

    def trusting(self, key_id: str, key: Ed25519PublicKey) -> Ed25519PersonaKeys:
        """These keys and one more."""
        if key_id in self._keys:
            raise PersonaKeysInvalid(f"trusted persona keys: key id {key_id} given twice")
        return Ed25519PersonaKeys({**self._keys, key_id: key})

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def is_trusted(self, key_id: str) -> bool:
        return key_id in self._keys

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _load_pem(path: Path, keys: dict[str, Ed25519PublicKey]) -> str:
    key_id = path.stem
    if not _KEY_ID.fullmatch(key_id):
        return f"{path.name}: the key id (file name) must be 1-128 characters of [A-Za-z0-9_.-]"
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return f"{path.name}: a private key; only public keys belong here"
    try:
        key = load_pem_public_key(data)
    except ValueError:
        return f"{path.name}: not a PEM public key"
    if not isinstance(key, Ed25519PublicKey):
        return f"{path.name}: not an Ed25519 key"
    if key_id in keys:
        return f"{path.name}: key id {key_id} given twice"
    keys[key_id] = key
    return ""


class Ed25519PersonaSigner:
    """Signs with the deployment's built-in persona key."""

    def __init__(self, key_id: str, key: Ed25519PrivateKey) -> None:
        self._key_id = key_id
        self._key = key

    @classmethod
    def load(cls, key_id: str, path: Path) -> Ed25519PersonaSigner:
        if not _KEY_ID.fullmatch(key_id):
            raise PersonaKeysInvalid(f"built-in persona key id {key_id[:40]!r}: 1-128 characters of [A-Za-z0-9_.-]")
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise PersonaKeysInvalid(f"{path}: cannot be read: {exc.strerror or exc}") from None
        except (ValueError, TypeError):
            raise PersonaKeysInvalid(f"{path}: not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise PersonaKeysInvalid(f"{path}: not an Ed25519 key")
        return cls(key_id, key)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)
