"""`skm keys` and `skm persona export|install|uninstall`: persona bundles.

A publisher makes an Ed25519 key pair (`skm keys generate`), each tenant that will install its
personas trusts the public half (`skm keys trust`), and the publisher exports a persona as a
bundle file signed on its own machine (`skm persona export`: the service returns the payload,
this command signs it; the private key never leaves the machine). A tenant installs the file
(`skm persona install`), later a newer version of it, and can uninstall it. svc_profiles
refuses a bundle changed after signing, signed with a key the tenant does not trust or whose
trust expired, or older than the installed version; a refusal installs nothing.

The file (skm-persona-bundle/v1, see skm.profiles.v1.TrustedKey):

    skm-persona-bundle/v1
    key: {key id}
    signature: {base64 of the Ed25519 signature of the payload}

    {payload: the canonical JSON ExportPersonaBundle returned}
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from skm.profiles.v1 import persona_bundle_pb2, persona_pb2, persona_service_pb2, persona_service_pb2_grpc
from skm_cli.errors import CliError

FORMAT = "skm-persona-bundle/v1"
PERSONA_ACTIONS = ("export", "install", "uninstall")
KEY_ACTIONS = ("generate", "trust", "list", "remove")
MAX_BUNDLE_BYTES = 1024 * 1024

KEYS_EPILOG = """examples:
  skm keys generate --out acme.pem                    a new key pair; prints the public key (base64)
  skm keys trust acme --public-key BASE64 --expires 2027-06-01
                                                      the tenant trusts bundles signed with it (admins)
  skm keys trust acme --public-key-file acme.pub.pem --expires 2027-06-01
  skm keys list                                       the tenant's trusted keys
  skm keys remove acme                                stop trusting it (installed personas stay)"""

PERSONA_EPILOG = """bundles:
  skm persona export helper --version 3 --key-id acme --sign-key acme.pem -o helper.skmpersona
  skm persona export helper@2 ...                     that revision
  skm persona install helper.skmpersona               install, or upgrade to a newer version (admins)
  skm persona uninstall helper                        the persona and the permissions it brought"""

Public = Callable[[], tuple[grpc.Channel, Any]]


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _expiry(text: str) -> datetime:
    """--expires: a date (the end of that day is not meant: its start, UTC) or an ISO 8601 time."""
    if not text:
        raise CliError("`skm keys trust` needs --expires, e.g. --expires 2027-06-01")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--expires {text!r}: expected a date (2027-06-01) or an ISO 8601 time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_key(args: argparse.Namespace) -> bytes:
    """--public-key (base64 of the 32 raw bytes) or --public-key-file (a PEM public key, or
    a PEM private key whose public half is taken; nothing private is sent)."""
    if bool(args.public_key) == bool(args.public_key_file):
        raise CliError("`skm keys trust` needs exactly one of --public-key and --public-key-file")
    if args.public_key:
        try:
            raw = base64.b64decode(args.public_key, validate=True)
        except binascii.Error:
            raise CliError("--public-key: not base64") from None
        if len(raw) != 32:
            raise CliError(f"--public-key: {len(raw)} bytes; an Ed25519 public key is 32")
        return raw
    data = _read(Path(args.public_key_file))
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise CliError(f"{args.public_key_file}: not an Ed25519 key")
            return _raw_public(private.public_key())
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise CliError(f"{args.public_key_file}: not a PEM key (unencrypted)") from None
    if not isinstance(public, Ed25519PublicKey):
        raise CliError(f"{args.public_key_file}: not an Ed25519 key")
    return _raw_public(public)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _signing_key(path: str) -> Ed25519PrivateKey:
    if not path:
        raise CliError("`skm persona export` needs --sign-key, the PEM file `skm keys generate` wrote")
    try:
        key = serialization.load_pem_private_key(_read(Path(path)), password=None)
    except (ValueError, TypeError):
        raise CliError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"{path}: not an Ed25519 key")
    return key


def signed_file(payload: bytes, key_id: str, signature: bytes) -> bytes:
    """The bundle file of a payload and its signature."""
    return f"{FORMAT}\nkey: {key_id}\nsignature: {base64.b64encode(signature).decode()}\n\n".encode() + payload


def _key_dict(key: persona_bundle_pb2.TrustedKey) -> dict[str, Any]:
    return json_format.MessageToDict(key)


def _key_line(key: persona_bundle_pb2.TrustedKey) -> str:
    expires = key.expire_time.ToJsonString()[:19] + "Z"
    return (
        f"{key.name.rsplit('/', 1)[-1]:<24} expires {expires}  "
        f"{base64.b64encode(key.public_key).decode()}  {key.display_name}"
    )


# -- skm keys -----------------------------------------------------------------------------------


def run_keys(args: argparse.Namespace, public: Public, tenant: Callable[[], str]) -> int:
    if args.action == "generate":
        return _generate(args)
    if args.action in ("trust", "remove") and not args.id:
        raise CliError(f"`skm keys {args.action}` needs the key's id, e.g. skm keys {args.action} acme")
    trusted = (_public_key(args), _expiry(args.expires)) if args.action == "trust" else None
    channel, auth = public()
    stub = persona_service_pb2_grpc.PersonaServiceStub(channel)
    parent = f"tenants/{tenant()}"
    if args.action == "list":
        token = ""
        while True:
            reply = stub.ListTrustedKeys(
                persona_service_pb2.ListTrustedKeysRequest(parent=parent, page_size=1000, page_token=token),
                timeout=10,
                metadata=auth,
            )
            for key in reply.trusted_keys:
                print(json.dumps(_key_dict(key)) if args.json else _key_line(key), flush=True)
            token = reply.next_page_token
            if not token:
                return 0
    if trusted is not None:
        public_key, expiry = trusted
        created = stub.CreateTrustedKey(
            persona_service_pb2.CreateTrustedKeyRequest(
                parent=parent,
                trusted_key_id=args.id,
                trusted_key=persona_bundle_pb2.TrustedKey(
                    public_key=public_key,
                    expire_time=_timestamp(expiry),
                    display_name=args.display_name,
                ),
            ),
            timeout=10,
            metadata=auth,
        )
        key = created.trusted_key
        print(json.dumps(_key_dict(key)) if args.json else _key_line(key))
        return 0
    stub.DeleteTrustedKey(
        persona_service_pb2.DeleteTrustedKeyRequest(name=f"{parent}/trustedKeys/{args.id}"),
        timeout=10,
        metadata=auth,
    )
    print(f"{parent}/trustedKeys/{args.id}: no longer trusted", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    if not args.out:
        raise CliError("`skm keys generate` needs --out FILE for the private key")
    path = Path(args.out)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        # O_EXCL: never overwrite a key; 0600: the private key is its owner's alone.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path}: exists; a key is never overwritten") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = base64.b64encode(_raw_public(key.public_key())).decode()
    if args.json:
        print(json.dumps({"private_key_file": str(path), "public_key": public}))
    else:
        print(public)
        print(f"{path}: the private key (keep it; only its public key above goes to tenants)", file=sys.stderr)
    return 0


# -- skm persona export|install|uninstall -------------------------------------------------------


def run_persona(args: argparse.Namespace, public: Public, tenant: Callable[[], str]) -> int:
    if not args.name:
        what = "bundle file" if args.action == "install" else "persona's id"
        raise CliError(f"`skm persona {args.action}` needs the {what}")
    key = _export_key(args) if args.action == "export" else None
    channel, auth = public()
    stub = persona_service_pb2_grpc.PersonaServiceStub(channel)
    parent = f"tenants/{tenant()}"
    if args.action == "install":
        data = _read(Path(args.name))
        if len(data) > MAX_BUNDLE_BYTES:
            raise CliError(f"{args.name}: {len(data)} bytes; a bundle is at most 1 MiB")
        installed = stub.InstallPersonaBundle(
            persona_service_pb2.InstallPersonaBundleRequest(parent=parent, bundle=data), timeout=30, metadata=auth
        )
        _print_persona(installed.persona, args)
        return 0
    name = args.name if args.name.startswith("tenants/") else f"{parent}/personas/{args.name}"
    if args.action == "uninstall":
        stub.UninstallPersona(
            persona_service_pb2.UninstallPersonaRequest(name=name, etag=args.etag), timeout=30, metadata=auth
        )
        print(f"{name}: uninstalled, with the permissions it brought", file=sys.stderr)
        return 0
    assert key is not None
    exported = stub.ExportPersonaBundle(
        persona_service_pb2.ExportPersonaBundleRequest(name=name, version=args.bundle_version, key_id=args.key_id),
        timeout=10,
        metadata=auth,
    )
    data = signed_file(exported.payload, args.key_id, key.sign(exported.payload))
    try:
        Path(args.out).write_bytes(data)
    except OSError as exc:
        raise CliError(f"{args.out}: cannot be written ({exc.strerror or exc})") from None
    shown = {"bundle": args.out, "persona": name, "version": args.bundle_version, "key_id": args.key_id}
    print(
        json.dumps(shown) if args.json else f"{args.out}: {name} version {args.bundle_version}, signed by {args.key_id}"
    )
    return 0


def _export_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    """Check export's options before any call; the key that will sign."""
    if args.bundle_version is None or args.bundle_version <= 0:
        raise CliError("`skm persona export` needs --version N, above every version released before")
    if not args.key_id:
        raise CliError("`skm persona export` needs --key-id, the id tenants trust the key under")
    if not args.out:
        raise CliError("`skm persona export` needs -o FILE for the bundle")
    return _signing_key(args.sign_key)


def _print_persona(persona: persona_pb2.Persona, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(json_format.MessageToDict(persona)))
        return
    print(
        f"{persona.name}: bundle version {persona.bundle_version}, revision {persona.revision.revision_id},"
        f" signed by {persona.signing_key or '-'}"
    )


# -- parsers ----------------------------------------------------------------------------------


def add_keys_parser(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    keys: argparse.ArgumentParser = commands.add_parser(
        "keys",
        parents=[common],
        help="persona bundle keys: generate a pair, and the tenant's trusted keys (trust, list, remove)",
        description=__doc__,
        epilog=KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys.add_argument("action", choices=KEY_ACTIONS)
    keys.add_argument("id", nargs="?", default="", metavar="ID", help="with trust and remove: the key's id")
    keys.add_argument("--out", default="", help="with generate: where the private key goes (PEM, mode 0600)")
    keys.add_argument("--public-key", default="", help="with trust: base64 of the 32 raw public key bytes")
    keys.add_argument("--public-key-file", default="", help="with trust: a PEM public key (or its private key)")
    keys.add_argument("--expires", default="", help="with trust: when trust ends, e.g. 2027-06-01 (UTC)")
    keys.add_argument("--display-name", default="", help="with trust: who the publisher is")
    keys.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    return keys


def extend_persona_parser(persona: argparse.ArgumentParser) -> None:
    """The options of export, install and uninstall on `skm persona` (whose parser was made
    with PERSONA_ACTIONS among its actions)."""
    persona.epilog = f"{persona.epilog}\n{PERSONA_EPILOG}"
    persona.add_argument(
        "--version",
        dest="bundle_version",
        metavar="N",
        type=int,
        default=None,
        help="with export: the bundle's version, above every one released before",
    )
    persona.add_argument("--key-id", default="", help="with export: the id tenants trust the signing key under")
    persona.add_argument("--sign-key", default="", help="with export: the Ed25519 private key (PEM) that signs it")
    persona.add_argument("-o", "--out", default="", help="with export: the bundle file to write")
