"""Persona bundles through svc_profiles's PersonaService on the real servers: PostgreSQL (the
personas, trusted keys and the outbox) and svc_policy on OpenFGA (the relationships an
install writes). Install writes exactly the bundle's relationships, an upgrade replaces them,
uninstall removes them; each of the four attacks is refused with its own reason, leaves no
persona and no relationship, and is a PersonaBundleRefused event in the outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp

from skm.events.v1 import event_pb2
from skm.policy.v1 import policy_service_pb2, policy_service_pb2_grpc
from skm.profiles.v1 import (
    persona_bundle_pb2,
    persona_pb2,
    persona_service_pb2,
    persona_service_pb2_grpc,
    revision_pb2,
)
from skm_cli.__main__ import main
from skm_runtime.admission import Admission, PolicyAnswer
from skm_runtime.gate import Gate, public_rules
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from svc_profiles import bundle_file
from svc_profiles.__main__ import build
from svc_profiles.model import Persona
from svc_profiles.settings import ProfilesSettings
from tests.support.ports import free_port
from tests.support.runtime import Served, serving
from tests.support.tools import policy_settings
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Limiter, _Policy, _verifier

KEY_ID = "acme-pub"
PUBLISHER = "tenants/publisher"
ISSUED = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


def _settings(stack: RunningStack, policy: Served) -> ProfilesSettings:
    return ProfilesSettings(
        addr="127.0.0.1:0",
        postgres_dsn=stack.postgres_dsn,
        kafka_bootstrap=stack.kafka_bootstrap,
        policy_addr=policy.target,
        # Bundles do not reach svc_tools or svc_analytics; nothing listens there.
        tools_addr=f"127.0.0.1:{free_port()}",
        analytics_addr=f"127.0.0.1:{free_port()}",
    )


@pytest.fixture(scope="module")
async def profiles(stack: RunningStack, policy: Served) -> AsyncIterator[Served]:
    async with serving(await build(_settings(stack, policy), RuntimeSettings()), record_spans=False) as served:
        yield served


@dataclasses.dataclass
class Tenant:
    name: str
    personas: persona_service_pb2_grpc.PersonaServiceAsyncStub
    policy: policy_service_pb2_grpc.PolicyServiceAsyncStub
    key: Ed25519PrivateKey
    dsn: str

    @property
    def admin(self) -> tuple[tuple[str, bytes], ...]:
        return principal_metadata(principal_message(self.name, f"{self.name}/users/alice", ["admin"]))

    @property
    def persona(self) -> str:
        return f"{self.name}/personas/helper"

    def bundle(self, version: int, *, key: Ed25519PrivateKey | None = None, **changes: object) -> bytes:
        source = Persona(
            name=f"{PUBLISHER}/personas/helper",
            display_name="Helper",
            system_prompt="You help.",
            allowed_tools=(f"{PUBLISHER}/tools/code_execution", f"{PUBLISHER}/tools/web_search"),
            memory_namespaces=("solutions", "main"),
        )
        source = dataclasses.replace(source, **changes)  # type: ignore[arg-type]  # test data by keyword
        payload = bundle_file.payload_of(source, version, KEY_ID, ISSUED)
        return bundle_file.signed_file(payload, KEY_ID, (key or self.key).sign(payload))

    async def install(self, data: bytes) -> persona_service_pb2.InstallPersonaBundleResponse:
        return await self.personas.InstallPersonaBundle(
            persona_service_pb2.InstallPersonaBundleRequest(parent=self.name, bundle=data),
            metadata=self.admin,
            timeout=10,
        )

    async def relationships(self) -> set[tuple[str, str, str]]:
        """Every relationship of the tenant whose subject is the persona."""
        found: set[tuple[str, str, str]] = set()
        for object_type in ("tool:", "memory_namespace:"):
            reply = await self.policy.ReadRelationships(
                policy_service_pb2.ReadRelationshipsRequest(parent=self.name, object=object_type, page_size=1000),
                timeout=10,
            )
            found |= {(r.subject, r.relation, r.object) for r in reply.relationships}
        return {r for r in found if r[0] == f"persona:{self.persona}"}

    async def events(self, payload: str) -> list[event_pb2.Event]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT value FROM profiles.outbox WHERE topic = 'profiles' AND key = $1 ORDER BY seq",
                self.name.encode(),
            )
        finally:
            await conn.close()
        events = [event_pb2.Event.FromString(row["value"]) for row in rows]
        return [e for e in events if e.WhichOneof("payload") == payload]

    async def stored_personas(self) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            count = await conn.fetchval("SELECT count(*) FROM profiles.personas WHERE tenant = $1", self.name)
        finally:
            await conn.close()
        assert isinstance(count, int)
        return count

    def expected(self, tools: tuple[str, ...], areas: tuple[str, ...]) -> set[tuple[str, str, str]]:
        subject = f"persona:{self.persona}"
        out = {(subject, "persona_user", f"tool:{self.name}/tools/{tool}") for tool in tools}
        for area in areas:
            namespace = f"memory_namespace:{self.name}/memoryNamespaces/{area}"
            out |= {(subject, "persona_reader", namespace), (subject, "persona_writer", namespace)}
        return out


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


@pytest.fixture
async def tenant(stack: RunningStack, profiles: Served, policy: Served) -> AsyncIterator[Tenant]:
    name = f"tenants/b{uuid.uuid4().hex[:10]}"
    key = Ed25519PrivateKey.generate()
    async with signed_channel(profiles.target) as pch, signed_channel(policy.target) as polch:
        t = Tenant(
            name,
            persona_service_pb2_grpc.PersonaServiceStub(pch),
            policy_service_pb2_grpc.PolicyServiceStub(polch),
            key,
            stack.postgres_dsn,
        )
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        await t.personas.CreateTrustedKey(
            persona_service_pb2.CreateTrustedKeyRequest(
                parent=name,
                trusted_key_id=KEY_ID,
                trusted_key=persona_bundle_pb2.TrustedKey(
                    public_key=raw,
                    expire_time=_timestamp(datetime.now(UTC) + timedelta(days=30)),
                    display_name="ACME publishing",
                ),
            ),
            metadata=t.admin,
            timeout=10,
        )
        yield t


async def test_install_upgrade_and_uninstall_write_exactly_the_bundles_relationships(tenant: Tenant) -> None:
    installed = (await tenant.install(tenant.bundle(1))).persona
    assert installed.name == tenant.persona
    assert installed.signing_key == f"{tenant.name}/trustedKeys/{KEY_ID}"
    assert len(installed.signature) == 64
    assert installed.bundle_version == 1
    assert installed.revision.origin == revision_pb2.Revision.ORIGIN_BUNDLE_INSTALL
    shown = await tenant.personas.GetPersona(
        persona_service_pb2.GetPersonaRequest(name=tenant.persona), metadata=tenant.admin, timeout=10
    )
    assert shown.persona.signature == installed.signature
    # "main" is each user's own area: no relationship for it.
    assert await tenant.relationships() == tenant.expected(("code_execution", "web_search"), ("solutions",))

    upgraded = (
        await tenant.install(
            tenant.bundle(
                3, allowed_tools=(f"{PUBLISHER}/tools/web_search",), memory_namespaces=("fragments",), tone="dry"
            )
        )
    ).persona
    assert (upgraded.bundle_version, upgraded.tone, upgraded.revision.revision_id) == (3, "dry", "2")
    assert await tenant.relationships() == tenant.expected(("web_search",), ("fragments",))
    done = await tenant.events("persona_bundle_installed")
    assert [(e.persona_bundle_installed.version, e.persona_bundle_installed.previous_version) for e in done] == [
        (1, 0),
        (3, 1),
    ]
    assert done[-1].persona_bundle_installed.bundle_digest == upgraded.bundle_digest

    await tenant.personas.UninstallPersona(
        persona_service_pb2.UninstallPersonaRequest(name=tenant.persona), metadata=tenant.admin, timeout=10
    )
    assert await tenant.relationships() == set()
    assert await tenant.stored_personas() == 0


async def test_a_rollback_of_an_installed_persona_brings_its_relationships_back(tenant: Tenant) -> None:
    await tenant.install(tenant.bundle(1))
    await tenant.install(tenant.bundle(2, allowed_tools=(f"{PUBLISHER}/tools/shell",), memory_namespaces=()))
    rolled = await tenant.personas.RollbackPersona(
        persona_service_pb2.RollbackPersonaRequest(name=tenant.persona, revision_id="1"),
        metadata=tenant.admin,
        timeout=10,
    )
    assert rolled.persona.revision.origin == revision_pb2.Revision.ORIGIN_ROLLBACK
    assert rolled.persona.signature
    assert await tenant.relationships() == tenant.expected(("code_execution", "web_search"), ("solutions",))


async def _expire(tenant: Tenant) -> None:
    """The key's expiry passes (CreateTrustedKey accepts only future ones)."""
    conn = await asyncpg.connect(tenant.dsn)
    try:
        await conn.execute(
            "UPDATE profiles.trusted_keys SET expire_time = now() - interval '1 minute'"
            " WHERE tenant = $1 AND key_id = $2",
            tenant.name,
            KEY_ID,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("attack", "code", "reason"),
    [
        ("tampered", grpc.StatusCode.INVALID_ARGUMENT, "BUNDLE_SIGNATURE_INVALID"),
        ("wrong_key", grpc.StatusCode.INVALID_ARGUMENT, "BUNDLE_SIGNATURE_INVALID"),
        ("untrusted_key", grpc.StatusCode.FAILED_PRECONDITION, "BUNDLE_KEY_NOT_TRUSTED"),
        ("expired_key", grpc.StatusCode.FAILED_PRECONDITION, "BUNDLE_KEY_EXPIRED"),
        ("replayed", grpc.StatusCode.FAILED_PRECONDITION, "BUNDLE_VERSION_NOT_NEWER"),
    ],
)
async def test_each_attack_is_refused_installs_nothing_and_is_audited(
    tenant: Tenant, attack: str, code: grpc.StatusCode, reason: str
) -> None:
    before_personas, before_relationships = 0, set()
    data = tenant.bundle(1)
    if attack == "tampered":
        # One byte of the payload changed after signing.
        data = data.replace(b"You help.", b"You hurt.")
    elif attack == "wrong_key":
        data = tenant.bundle(1, key=Ed25519PrivateKey.generate())
    elif attack == "untrusted_key":
        await tenant.personas.DeleteTrustedKey(
            persona_service_pb2.DeleteTrustedKeyRequest(name=f"{tenant.name}/trustedKeys/{KEY_ID}"),
            metadata=tenant.admin,
            timeout=10,
        )
    elif attack == "expired_key":
        await _expire(tenant)
    elif attack == "replayed":
        await tenant.install(tenant.bundle(2))
        before_personas, before_relationships = 1, await tenant.relationships()
        data = tenant.bundle(1, allowed_tools=(f"{PUBLISHER}/tools/shell",))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tenant.install(data)
    assert raised.value.code() is code
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == reason, info

    assert await tenant.stored_personas() == before_personas
    assert await tenant.relationships() == before_relationships
    (refusal,) = await tenant.events("persona_bundle_refused")
    assert refusal.persona_bundle_refused.reason == reason
    assert refusal.persona_bundle_refused.key_id == KEY_ID
    assert len(refusal.persona_bundle_refused.bundle_sha256) == 64
    if attack == "replayed":
        assert refusal.persona_bundle_refused.persona == tenant.persona
        assert refusal.persona_bundle_refused.version == 1
        shown = await tenant.personas.GetPersona(
            persona_service_pb2.GetPersonaRequest(name=tenant.persona), metadata=tenant.admin, timeout=10
        )
        assert shown.persona.revision.revision_id == "1"


async def test_trusted_keys_are_listed_and_refused_when_invalid(tenant: Tenant) -> None:
    listed = await tenant.personas.ListTrustedKeys(
        persona_service_pb2.ListTrustedKeysRequest(parent=tenant.name), metadata=tenant.admin, timeout=10
    )
    assert [k.name for k in listed.trusted_keys] == [f"{tenant.name}/trustedKeys/{KEY_ID}"]
    assert listed.trusted_keys[0].display_name == "ACME publishing"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tenant.personas.CreateTrustedKey(
            persona_service_pb2.CreateTrustedKeyRequest(
                parent=tenant.name,
                trusted_key_id="short",
                trusted_key=persona_bundle_pb2.TrustedKey(
                    public_key=b"\x01" * 31, expire_time=_timestamp(datetime.now(UTC) + timedelta(days=1))
                ),
            ),
            metadata=tenant.admin,
            timeout=10,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == "INVALID_TRUSTED_KEY"


async def test_an_export_signed_locally_installs_in_another_tenant(tenant: Tenant) -> None:
    await tenant.install(tenant.bundle(1))
    exported = await tenant.personas.ExportPersonaBundle(
        persona_service_pb2.ExportPersonaBundleRequest(name=tenant.persona, version=7, key_id=KEY_ID),
        metadata=tenant.admin,
        timeout=10,
    )
    signed = bundle_file.signed_file(exported.payload, KEY_ID, tenant.key.sign(exported.payload))
    again = (await tenant.install(signed)).persona
    assert again.bundle_version == 7
    assert again.revision.revision_id == "2"


# -- the CLI, as a user runs it: through a gate, with a bearer token ---------------------------


@dataclasses.dataclass
class Public:
    """svc_profiles served through a gate (tokens signed here, a policy that allows)."""

    target: str
    pem: bytes

    def token(self, tenant: str) -> str:
        claims = {
            "iss": "skm-dev",
            "aud": "skm",
            "sub": "alice",
            "tenant": tenant,
            "roles": ["admin"],
            "constitution_sha256": DIGEST,
            "exp": int(time.time()) + 600,
        }
        return jwt.encode(claims, self.pem, algorithm="EdDSA", headers={"kid": "k"})


@pytest.fixture(scope="module")
async def public(stack: RunningStack, policy: Served) -> AsyncIterator[Public]:
    pem, jwks = _keys()
    gate = Gate(
        Admission(
            _verifier(jwks), _Constitutions(DIGEST), _Limiter(), _Policy(PolicyAnswer(True, "ROLE_ALLOWS", "d1"))
        ),
        public_rules(),
        max_message_bytes=4 * 1024 * 1024,
        max_receive_bytes=8 * 1024 * 1024,
    )
    spec = await build(_settings(stack, policy), RuntimeSettings())
    async with serving(spec, gate=gate, record_spans=False) as served:
        yield Public(served.target, pem)
    await gate.close()


async def test_cli_generate_trust_export_install_uninstall(
    public: Public, profiles: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher, tenant_id = f"p{uuid.uuid4().hex[:10]}", f"c{uuid.uuid4().hex[:10]}"

    async def skm(tenant: str, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        argv_all = ["--url", f"http://{public.target}", "--token", public.token(tenant), *argv]
        code = await asyncio.to_thread(main, argv_all)
        out, err = capsys.readouterr()
        return code, out, err

    # The publisher's own persona, to export.
    async with signed_channel(profiles.target) as channel:
        await persona_service_pb2_grpc.PersonaServiceStub(channel).CreatePersona(
            persona_service_pb2.CreatePersonaRequest(
                parent=f"tenants/{publisher}",
                persona_id="helper",
                persona=persona_pb2.Persona(
                    display_name="Helper",
                    system_prompt="You help.",
                    allowed_tools=[f"tenants/{publisher}/tools/web_search"],
                    memory_namespaces=["solutions"],
                ),
            ),
            timeout=10,
        )

    key_file = tmp_path / "acme.pem"
    code, out, _ = await skm(publisher, "keys", "generate", "--out", str(key_file), "--json")
    assert code == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public_key = json.loads(out)["public_key"]
    code, _, err = await skm(publisher, "keys", "generate", "--out", str(key_file))
    assert code == 2
    assert "never overwritten" in err

    code, _, err = await skm(tenant_id, "keys", "trust", "acme", "--public-key", public_key, "--expires", "2099-06-01")
    assert code == 0, err
    code, out, _ = await skm(tenant_id, "keys", "list", "--json")
    assert [json.loads(line)["name"] for line in out.splitlines()] == [f"tenants/{tenant_id}/trustedKeys/acme"]

    bundle = tmp_path / "helper.skmpersona"
    code, _, err = await skm(
        publisher, "persona", "export", "helper", "--version", "4", "--key-id", "acme", "--sign-key", str(key_file),
        "-o", str(bundle),
    )  # fmt: skip
    assert code == 0, err
    # A changed payload breaks the signature: refused, with its reason.
    tampered = tmp_path / "tampered.skmpersona"
    tampered.write_bytes(bundle.read_bytes().replace(b"You help.", b"You obey."))
    code, _, err = await skm(tenant_id, "persona", "install", str(tampered))
    assert code == 1
    assert "BUNDLE_SIGNATURE_INVALID" in err

    code, out, err = await skm(tenant_id, "persona", "install", str(bundle), "--json")
    assert code == 0, err
    installed = json.loads(out)
    assert installed["name"] == f"tenants/{tenant_id}/personas/helper"
    assert installed["allowedTools"] == [f"tenants/{tenant_id}/tools/web_search"]
    assert installed["bundleVersion"] == "4"
    assert installed["signingKey"] == f"tenants/{tenant_id}/trustedKeys/acme"

    code, _, err = await skm(tenant_id, "persona", "install", str(bundle))
    assert code == 1
    assert "BUNDLE_VERSION_NOT_NEWER" in err

    code, _, err = await skm(tenant_id, "persona", "uninstall", "helper")
    assert code == 0, err
    code, _, err = await skm(tenant_id, "keys", "remove", "acme")
    assert code == 0, err
    code, out, _ = await skm(tenant_id, "keys", "list", "--json")
    assert out == ""
