"""Development keys, made once per state dir.

The signing key pair for the platform's tokens: `make run` gives every service the public
half (a JWKS file, SKM_ADMISSION_JWKS_FILE) and `skm token` signs with the private half.
Ed25519 (JWT algorithm EdDSA). For development only: deployments configure admission with
their identity provider's JWKS.

The mesh key (`ensure_mesh_key`): the secret every service of the stack gets as
SKM_MESH_KEY_FILE, with which principals passed between services are signed and checked
(skm_runtime.principal). Deployments make their own and mount it into every service.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skm_runtime.principal import new_mesh_key

KEY_ID = "skm-dev-1"


@dataclass(frozen=True)
class DevKeys:
    private_key: Path  # PEM, mode 0600
    jwks: Path  # the public key as a JWKS document


def dev_keys_dir(state_dir: Path) -> Path:
    return state_dir / "gateway"


def ensure_dev_keys(state_dir: Path) -> DevKeys:
    """The state dir's key pair, created on first use."""
    folder = dev_keys_dir(state_dir)
    keys = DevKeys(folder / "dev-signing-key.pem", folder / "jwks.json")
    if keys.private_key.is_file() and keys.jwks.is_file():
        return keys
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(keys.private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(public).rstrip(b"=").decode(),
        "kid": KEY_ID,
        "alg": "EdDSA",
        "use": "sig",
    }
    keys.jwks.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return keys


def mesh_key_file(state_dir: Path) -> Path:
    return state_dir / "mesh" / "mesh.key"


def ensure_mesh_key(state_dir: Path) -> Path:
    """The state dir's mesh key file (hex text, mode 0600), created on first use."""
    path = mesh_key_file(state_dir)
    if path.is_file():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: a reader never sees half a
    # key, and of two processes creating it at once, the first link wins for both.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_mesh_key())
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
