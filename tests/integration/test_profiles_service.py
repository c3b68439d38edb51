"""svc_profiles through its gRPC API on a real PostgreSQL: personas, the model registry,
model profiles and role resolution, with the errors a client sees."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs

from skm.profiles.v1 import (
    model_pb2,
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    persona_pb2,
    persona_service_pb2,
    persona_service_pb2_grpc,
)
from skm.type.v1 import deployment_mode_pb2, money_pb2
from skm.type.v1 import model_pb2 as type_model_pb2
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import details_of, error_info_of
from skm_stack import RunningStack
from svc_profiles.__main__ import build
from svc_profiles.settings import ProfilesSettings
from tests.support.runtime import Served, serving

PRIMARY = type_model_pb2.MODEL_ROLE_PRIMARY
PRE_SLM = type_model_pb2.MODEL_ROLE_PRE_SLM
UTILITY = type_model_pb2.MODEL_ROLE_UTILITY
EMBEDDING = type_model_pb2.MODEL_ROLE_EMBEDDING
DEV = deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER
PROD = deployment_mode_pb2.DEPLOYMENT_MODE_PRODUCTION
TINY = "models/skm-tiny-untrained"
LARGE = "models/skm-tiny-untrained-large"
REAL_05 = "models/qwen2.5-coder-0.5b-instruct"
REAL_15 = "models/qwen2.5-coder-1.5b-instruct"
MINILM = "models/all-minilm-l6-v2"
KEY_ID = "publisher-1"
SIGNER = Ed25519PrivateKey.generate()
DEPLOYMENT_KEY = Ed25519PrivateKey.generate()


def _public_entry(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{KEY_ID}={base64.b64encode(raw).decode()}"


@pytest.fixture(scope="module")
def settings(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> ProfilesSettings:
    """Trusts SIGNER; signs the built-in personas with DEPLOYMENT_KEY."""
    key_file = tmp_path_factory.mktemp("profiles-keys") / "deployment.pem"
    key_file.write_bytes(
        DEPLOYMENT_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ProfilesSettings(
        addr="127.0.0.1:0",
        postgres_dsn=stack.postgres_dsn,
        persona_keys=(_public_entry(SIGNER),),
        builtin_signing_key_file=key_file,
    )


@pytest.fixture(scope="module")
async def profiles(settings: ProfilesSettings) -> AsyncIterator[Served]:
    async with serving(await build(settings, RuntimeSettings()), record_spans=False) as served:
        yield served


@dataclass
class Client:
    """A fresh tenant, its admin's metadata, and the three stubs."""

    tenant: str
    channel: grpc.aio.Channel

    @property
    def personas(self) -> persona_service_pb2_grpc.PersonaServiceAsyncStub:
        return persona_service_pb2_grpc.PersonaServiceStub(self.channel)

    @property
    def models(self) -> model_service_pb2_grpc.ModelServiceAsyncStub:
        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def model_profiles(self) -> model_profile_service_pb2_grpc.ModelProfileServiceAsyncStub:
        return model_profile_service_pb2_grpc.ModelProfileServiceStub(self.channel)

    @property
    def admin(self) -> tuple[tuple[str, bytes], ...]:
        return principal_metadata(principal_message(self.tenant, f"{self.tenant}/users/alice", ["admin"]))

    def persona_name(self, persona_id: str) -> str:
        return f"{self.tenant}/personas/{persona_id}"

    async def create_persona(self, persona_id: str, **fields: Any) -> persona_pb2.Persona:
        reply = await self.personas.CreatePersona(
            persona_service_pb2.CreatePersonaRequest(
                parent=self.tenant, persona_id=persona_id, persona=persona_message(self.tenant, **fields)
            ),
            metadata=self.admin,
            timeout=10,
        )
        return reply.persona

    async def update_persona(self, persona: persona_pb2.Persona, *paths: str) -> persona_pb2.Persona:
        reply = await self.personas.UpdatePersona(
            persona_service_pb2.UpdatePersonaRequest(
                persona=persona, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=self.admin,
            timeout=10,
        )
        return reply.persona

    async def resolve(
        self,
        role: type_model_pb2.ModelRole.ValueType,
        mode: deployment_mode_pb2.DeploymentMode.ValueType = DEV,
        **fields: Any,
    ) -> model_profile_pb2.ResolvedModelProfile:
        reply = await self.model_profiles.ResolveModelProfile(
            model_profile_service_pb2.ResolveModelProfileRequest(parent=self.tenant, role=role, mode=mode, **fields),
            timeout=10,
        )
        return reply.resolved_model_profile


@pytest.fixture
async def client(profiles: Served) -> AsyncIterator[Client]:
    async with signed_channel(profiles.target) as channel:
        yield Client(f"tenants/t{uuid.uuid4().hex[:10]}", channel)


def persona_message(tenant: str, **fields: Any) -> persona_pb2.Persona:
    values: dict[str, Any] = {
        "display_name": "Helper",
        "system_prompt": "You help.",
        "tone": "warm",
        "allowed_tools": [f"{tenant}/tools/code_execution", f"{tenant}/tools/response"],
        "memory_namespaces": ["main"],
    }
    values.update(fields)
    return persona_pb2.Persona(**values)


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    fields: list[str]


async def refused(call: Awaitable[Any]) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info_of(raised.value)
    assert info is not None, raised.value.details()
    fields: list[str] = []
    status = details_of(raised.value.trailing_metadata())
    assert status is not None
    for holder in status.details:
        if holder.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            holder.Unpack(bad)
            fields += [violation.field for violation in bad.field_violations]
    return Refusal(raised.value.code(), info.reason, info.domain, dict(info.metadata), fields)


# -- personas -------------------------------------------------------------------------------------


async def test_a_new_tenant_already_has_the_built_in_personas(client: Client) -> None:
    listed = await client.personas.ListPersonas(
        persona_service_pb2.ListPersonasRequest(parent=client.tenant), metadata=client.admin, timeout=10
    )
    assert [p.name for p in listed.personas] == [client.persona_name("default"), client.persona_name("coder")]
    assert listed.next_page_token == ""
    agent = (
        await client.personas.GetPersona(
            persona_service_pb2.GetPersonaRequest(name=client.persona_name("default")), metadata=client.admin
        )
    ).persona
    assert agent == listed.personas[0]
    assert agent.display_name == "Agent"
    assert [t.rsplit("/", 1)[1] for t in agent.allowed_tools] == [
        "code_execution",
        "response",
        "call_subordinate",
        "memory_save",
        "memory_load",
    ]
    assert all(t.startswith(f"{client.tenant}/tools/") for t in agent.allowed_tools)
    assert '"tool_name"' in agent.system_prompt
    assert len(agent.bundle_digest) == 64
    assert agent.etag
    assert not agent.HasField("create_time")
    # Signed with the deployment's key, for this tenant's bundle.
    assert agent.signing_key == "deployment"
    DEPLOYMENT_KEY.public_key().verify(agent.signature, bytes.fromhex(agent.bundle_digest))


async def test_persona_lifecycle_on_postgres(client: Client, stack: RunningStack) -> None:
    made = await client.create_persona(
        "helper",
        model_preferences=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=[LARGE], temperature=0.0)],
        lineage=persona_pb2.PersonaLineage(parent_persona=client.persona_name("default")),
    )
    assert made.name == client.persona_name("helper")
    assert made.create_time == made.update_time
    assert made.model_preferences[0].HasField("temperature")
    got = await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=made.name), timeout=10)
    assert got.persona == made

    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT bundle_digest, etag FROM profiles.personas WHERE tenant = $1 AND persona_id = 'helper'",
            client.tenant,
        )
    finally:
        await conn.close()
    assert (row["bundle_digest"], row["etag"]) == (made.bundle_digest, made.etag)

    made.tone = "cold"
    changed = await client.update_persona(made, "tone")
    assert changed.tone == "cold"
    assert changed.etag != made.etag
    assert changed.bundle_digest != made.bundle_digest
    assert changed.update_time.ToDatetime() > changed.create_time.ToDatetime()
    assert changed.lineage.parent_persona == client.persona_name("default")

    stale = await refused(client.update_persona(made, "tone"))
    assert (stale.code, stale.reason, stale.domain) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH", "profiles.skm")
    stale_delete = await refused(
        client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=made.name, etag=made.etag))
    )
    assert (stale_delete.code, stale_delete.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await client.personas.DeletePersona(
        persona_service_pb2.DeletePersonaRequest(name=made.name, etag=changed.etag), metadata=client.admin
    )
    gone = await refused(client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=made.name)))
    assert (gone.code, gone.reason, gone.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "PERSONA_NOT_FOUND",
        {"persona": made.name},
    )


async def test_bad_personas_are_refused_with_every_field_named(client: Client) -> None:
    bad = await refused(
        client.personas.CreatePersona(
            persona_service_pb2.CreatePersonaRequest(
                parent=client.tenant,
                persona_id="9lives",
                persona=persona_message(
                    client.tenant,
                    display_name="",
                    allowed_tools=["tenants/other/tools/code_execution"],
                    model_preferences=[model_profile_pb2.ModelOverride(role=PRIMARY, temperature=3.0)],
                ),
            )
        )
    )
    assert (bad.code, bad.reason, bad.domain) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PERSONA", "profiles.skm")
    assert bad.fields == [
        "persona_id",
        "persona.display_name",
        "persona.allowed_tools[0]",
        "persona.model_preferences[0].temperature",
    ]
    unknown = await refused(
        client.create_persona(
            "x", model_preferences=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=["models/nope"])]
        )
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert unknown.metadata["model"] == "models/nope"
    await client.create_persona("twice")
    taken = await refused(client.create_persona("twice"))
    assert (taken.code, taken.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PERSONA_ALREADY_EXISTS")
    for name in ("personas/x", f"{client.tenant}/personas/", f"{client.tenant}/persona/x", "tenants/a/b/personas/x"):
        malformed = await refused(client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name)))
        assert (malformed.code, malformed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RESOURCE_NAME")
    missing = await refused(
        client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=client.persona_name("nobody")))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "PERSONA_NOT_FOUND")
    mask = await refused(client.update_persona(await client.create_persona("masked"), "bundle_digest"))
    assert (mask.code, mask.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")
    token = await refused(
        client.personas.ListPersonas(persona_service_pb2.ListPersonasRequest(parent=client.tenant, page_token="nope"))
    )
    assert (token.code, token.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_another_tenants_persona_is_not_found(client: Client, profiles: Served) -> None:
    made = await client.create_persona("secret")
    stranger = principal_metadata(principal_message("tenants/stranger", "tenants/stranger/users/eve", ["admin"]))
    for call in (
        client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=made.name), metadata=stranger),
        client.personas.UpdatePersona(
            persona_service_pb2.UpdatePersonaRequest(
                persona=made, update_mask=field_mask_pb2.FieldMask(paths=["tone"])
            ),
            metadata=stranger,
        ),
        client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=made.name), metadata=stranger),
    ):
        hidden = await refused(call)
        assert (hidden.code, hidden.reason, hidden.domain) == (
            grpc.StatusCode.NOT_FOUND,
            "PERSONA_NOT_FOUND",
            "profiles.skm",
        )
    assert (await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=made.name))).persona == made


async def test_signing_a_persona_and_losing_the_signature_on_change(client: Client) -> None:
    made = await client.create_persona("signed")
    assert made.signature == b""
    made.signature = SIGNER.sign(bytes.fromhex(made.bundle_digest))
    made.signing_key = KEY_ID
    signed = await client.update_persona(made, "signature", "signing_key")
    assert (signed.signature, signed.signing_key, signed.bundle_digest) == (
        made.signature,
        KEY_ID,
        made.bundle_digest,
    )
    read = await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=signed.name))
    assert read.persona.signature == made.signature

    forged = persona_pb2.Persona()
    forged.CopyFrom(signed)
    forged.signature = Ed25519PrivateKey.generate().sign(bytes.fromhex(signed.bundle_digest))
    bad = await refused(client.update_persona(forged, "signature"))
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PERSONA_SIGNATURE_INVALID")

    signed.system_prompt = "You help, differently."
    changed = await client.update_persona(signed, "system_prompt")
    assert (changed.signature, changed.signing_key) == (b"", "")

    # Signed at creation: the client computes the digest the same way (see bundle.py).
    draft = persona_message(client.tenant, display_name="Born signed")
    digest = await _digest_of(client, draft)
    born = await client.create_persona(
        "born-signed", display_name="Born signed", signature=SIGNER.sign(bytes.fromhex(digest)), signing_key=KEY_ID
    )
    assert (born.bundle_digest, born.signing_key) == (digest, KEY_ID)


async def _digest_of(client: Client, persona: persona_pb2.Persona) -> str:
    """The digest the service computes for a bundle (from an unsigned copy, then deleted)."""
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    reply = await client.personas.CreatePersona(
        persona_service_pb2.CreatePersonaRequest(parent=client.tenant, persona_id=probe, persona=persona)
    )
    await client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=reply.persona.name))
    return reply.persona.bundle_digest


async def test_concurrent_creates_with_one_request_id_make_one_persona(client: Client) -> None:
    request = persona_service_pb2.CreatePersonaRequest(
        parent=client.tenant,
        persona_id="once",
        persona=persona_message(client.tenant),
        request_id=str(uuid.uuid4()),
    )
    replies = await asyncio.gather(*(client.personas.CreatePersona(request, timeout=10) for _ in range(5)))
    assert len({reply.persona.etag for reply in replies}) == 1
    request.persona.tone = "other"
    reused = await refused(client.personas.CreatePersona(request))
    assert (reused.code, reused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_concurrent_updates_of_one_etag_let_one_win(client: Client) -> None:
    made = await client.create_persona("contested")
    patches = []
    for index in range(4):
        patch = persona_pb2.Persona()
        patch.CopyFrom(made)
        patch.tone = f"tone {index}"
        patches.append(patch)
    outcomes = await asyncio.gather(*(client.update_persona(p, "tone") for p in patches), return_exceptions=True)
    winners = [o for o in outcomes if isinstance(o, persona_pb2.Persona)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert all(loser.code() == grpc.StatusCode.ABORTED for loser in losers)
    assert len(losers) == 3


async def test_a_tenant_replaces_a_built_in_persona_by_updating_it(client: Client) -> None:
    name = client.persona_name("coder")
    builtin = (await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name))).persona
    builtin.tone = "terse"
    own = await client.update_persona(builtin, "tone")
    assert own.tone == "terse"
    assert own.HasField("create_time")
    refused_delete = await refused(
        client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=client.persona_name("default")))
    )
    assert (refused_delete.code, refused_delete.metadata.get("built_in")) == (grpc.StatusCode.NOT_FOUND, "true")
    await client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=name, etag=own.etag))
    back = (await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name))).persona
    assert back.tone != "terse"
    assert not back.HasField("create_time")


async def test_personas_page_by_display_name(client: Client) -> None:
    for index in range(7):
        await client.create_persona(f"p{index}", display_name=f"Persona {6 - index}")
    names: list[str] = []
    token = ""
    while True:
        page = await client.personas.ListPersonas(
            persona_service_pb2.ListPersonasRequest(parent=client.tenant, page_size=3, page_token=token)
        )
        assert len(page.personas) <= 3
        names += [p.display_name for p in page.personas]
        token = page.next_page_token
        if not token:
            break
    assert names == ["Agent", "Coder", *[f"Persona {i}" for i in range(7)]]


# -- models ---------------------------------------------------------------------------------------


async def test_the_deployment_models_are_registered(client: Client) -> None:
    tiny = (await client.models.GetModel(model_service_pb2.GetModelRequest(name=TINY))).model
    assert tiny.served_model == "skm-tiny-untrained"
    assert tiny.endpoint_uri.endswith("/v1")
    assert "UNTRAINED" in tiny.display_name
    assert list(tiny.capabilities) == [model_pb2.MODEL_CAPABILITY_CHAT, model_pb2.MODEL_CAPABILITY_STRUCTURED_OUTPUT]
    assert (tiny.context_length, tiny.input_cost_per_million_tokens.units) == (8192, 0)
    embedders = await client.models.ListModels(
        model_service_pb2.ListModelsRequest(capability=model_pb2.MODEL_CAPABILITY_EMBEDDINGS)
    )
    assert [(m.name, m.embedding_dimensions, m.endpoint_uri) for m in embedders.models] == [(MINILM, 384, "local:")]
    missing = await refused(client.models.GetModel(model_service_pb2.GetModelRequest(name="models/nope")))
    assert (missing.code, missing.reason, missing.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        {"model": "models/nope"},
    )
    malformed = await refused(client.models.GetModel(model_service_pb2.GetModelRequest(name="skm-tiny-untrained")))
    assert malformed.reason == "INVALID_RESOURCE_NAME"


async def test_operators_register_and_change_models(client: Client) -> None:
    name = f"models/test-{uuid.uuid4().hex[:8]}"
    model = model_pb2.Model(
        name=name,
        display_name="Test model",
        endpoint_uri="https://llm.example.com/v1",
        served_model="org/test",
        credential_secret="TEST_LLM_KEY",
        context_length=8192,
        input_cost_per_million_tokens=money_pb2.Money(currency_code="USD", nanos=150_000_000),
        capabilities=[model_pb2.MODEL_CAPABILITY_CHAT, model_pb2.MODEL_CAPABILITY_TOOL_CALLS],
    )
    made = (await client.models.CreateModel(model_service_pb2.CreateModelRequest(model=model))).model
    assert made.etag
    assert made.input_cost_per_million_tokens.nanos == 150_000_000
    taken = await refused(client.models.CreateModel(model_service_pb2.CreateModelRequest(model=model)))
    assert (taken.code, taken.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_ALREADY_EXISTS")
    bad = model_pb2.Model()
    bad.CopyFrom(model)
    bad.name, bad.endpoint_uri, bad.context_length = "models/other", "not a url", -1
    invalid = await refused(client.models.CreateModel(model_service_pb2.CreateModelRequest(model=bad)))
    assert (invalid.code, invalid.reason, invalid.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_MODEL",
        ["model.endpoint_uri", "model.context_length"],
    )
    made.context_length = 16384
    changed = (
        await client.models.UpdateModel(
            model_service_pb2.UpdateModelRequest(
                model=made, update_mask=field_mask_pb2.FieldMask(paths=["context_length"])
            )
        )
    ).model
    assert (changed.context_length, changed.create_time) == (16384, made.create_time)
    stale = await refused(
        client.models.UpdateModel(
            model_service_pb2.UpdateModelRequest(
                model=made, update_mask=field_mask_pb2.FieldMask(paths=["context_length"])
            )
        )
    )
    assert stale.reason == "ETAG_MISMATCH"


# -- model profiles and resolution -------------------------------------------------------------------


async def test_defaults_resolve_for_a_tenant_without_profiles(client: Client) -> None:
    # The deployment defaults name the catalogue's real models (this service runs without
    # the local engine's SKM_LLM_MODELS, so nothing replaces them).
    primary = await client.resolve(PRIMARY)
    assert [m.name for m in primary.model_tiers] == [REAL_05, REAL_15]
    assert [m.served_model for m in primary.model_tiers] == [
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    ]
    assert (primary.role, primary.model_profile, primary.max_output_tokens) == (PRIMARY, "", 512)
    assert primary.HasField("temperature")
    assert primary.temperature == pytest.approx(0.2)
    for role in (PRE_SLM, UTILITY):
        assert [m.name for m in (await client.resolve(role, PROD)).model_tiers] == [REAL_05]
    embedding = await client.resolve(EMBEDDING)
    assert [(m.name, m.embedding_dimensions) for m in embedding.model_tiers] == [(MINILM, 384)]
    assert not embedding.HasField("temperature")


async def test_profiles_apply_and_resolution_follows_precedence(client: Client) -> None:
    created = await client.model_profiles.CreateModelProfile(
        model_profile_service_pb2.CreateModelProfileRequest(
            parent=client.tenant,
            model_profile=model_profile_pb2.ModelProfile(
                role=PRIMARY, mode=DEV, model_tiers=[LARGE], temperature=0.1, max_output_tokens=256
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=client.admin,
    )
    profile = created.model_profile
    assert profile.name == f"{client.tenant}/modelProfiles/primary-developer"
    again = await refused(
        client.model_profiles.CreateModelProfile(
            model_profile_service_pb2.CreateModelProfileRequest(
                parent=client.tenant,
                model_profile=model_profile_pb2.ModelProfile(role=PRIMARY, mode=DEV, model_tiers=[TINY]),
            )
        )
    )
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_PROFILE_ALREADY_EXISTS")

    from_profile = await client.resolve(PRIMARY)
    assert ([m.name for m in from_profile.model_tiers], from_profile.model_profile) == ([LARGE], profile.name)
    assert (from_profile.temperature, from_profile.max_output_tokens) == (0.1, 256)
    # Other modes still use the deployment default.
    assert (await client.resolve(PRIMARY, PROD)).model_profile == ""

    await client.create_persona(
        "picky", model_preferences=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=[TINY], temperature=0.5)]
    )
    with_persona = await client.resolve(PRIMARY, persona=client.persona_name("picky"))
    assert ([m.name for m in with_persona.model_tiers], with_persona.temperature) == ([TINY], 0.5)
    assert with_persona.max_output_tokens == 256
    with_session = await client.resolve(
        PRIMARY,
        persona=client.persona_name("picky"),
        overrides=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=[LARGE, TINY], max_output_tokens=32)],
    )
    assert [m.name for m in with_session.model_tiers] == [LARGE, TINY]
    assert (with_session.temperature, with_session.max_output_tokens) == (0.5, 32)

    listed = await client.model_profiles.ListModelProfiles(
        model_profile_service_pb2.ListModelProfilesRequest(parent=client.tenant, role=PRIMARY)
    )
    assert [p.name for p in listed.model_profiles] == [profile.name]
    profile.model_tiers[:] = [TINY, LARGE]
    updated = (
        await client.model_profiles.UpdateModelProfile(
            model_profile_service_pb2.UpdateModelProfileRequest(
                model_profile=profile, update_mask=field_mask_pb2.FieldMask(paths=["model_tiers"])
            )
        )
    ).model_profile
    assert list(updated.model_tiers) == [TINY, LARGE]
    immutable = await refused(
        client.model_profiles.UpdateModelProfile(
            model_profile_service_pb2.UpdateModelProfileRequest(
                model_profile=updated, update_mask=field_mask_pb2.FieldMask(paths=["mode"])
            )
        )
    )
    assert (immutable.code, immutable.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")
    await client.model_profiles.DeleteModelProfile(
        model_profile_service_pb2.DeleteModelProfileRequest(name=profile.name, etag=updated.etag)
    )
    assert (await client.resolve(PRIMARY)).model_profile == ""
    missing = await refused(
        client.model_profiles.GetModelProfile(model_profile_service_pb2.GetModelProfileRequest(name=profile.name))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_PROFILE_NOT_FOUND")


async def test_resolution_and_profile_errors(client: Client) -> None:
    ghost = await refused(
        client.resolve(PRIMARY, overrides=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=["models/ghost"])])
    )
    assert (ghost.code, ghost.reason, ghost.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        {"model": "models/ghost", "source": "session override"},
    )
    no_role = await refused(
        client.resolve(type_model_pb2.MODEL_ROLE_UNSPECIFIED, deployment_mode_pb2.DEPLOYMENT_MODE_UNSPECIFIED)
    )
    assert (no_role.code, no_role.reason, no_role.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_MODEL_PROFILE",
        ["role", "mode"],
    )
    foreign = await refused(client.resolve(PRIMARY, persona="tenants/elsewhere/personas/default"))
    assert (foreign.code, foreign.reason) == (grpc.StatusCode.NOT_FOUND, "PERSONA_NOT_FOUND")
    unknown_tier = await refused(
        client.model_profiles.CreateModelProfile(
            model_profile_service_pb2.CreateModelProfileRequest(
                parent=client.tenant,
                model_profile=model_profile_pb2.ModelProfile(role=UTILITY, mode=DEV, model_tiers=["models/ghost"]),
            )
        )
    )
    assert (unknown_tier.code, unknown_tier.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    unfit = await refused(
        client.model_profiles.CreateModelProfile(
            model_profile_service_pb2.CreateModelProfileRequest(
                parent=client.tenant,
                model_profile=model_profile_pb2.ModelProfile(role=EMBEDDING, mode=DEV, model_tiers=[TINY]),
            )
        )
    )
    assert (unfit.code, unfit.reason, unfit.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_MODEL_PROFILE",
        ["model_profile.model_tiers[0]"],
    )
    bad_parent = await refused(
        client.model_profiles.ListModelProfiles(model_profile_service_pb2.ListModelProfilesRequest(parent="tenants"))
    )
    assert bad_parent.reason == "INVALID_RESOURCE_NAME"


async def test_a_restart_migrates_idempotently_and_keeps_unchanged_models(
    settings: ProfilesSettings, client: Client
) -> None:
    before = (await client.models.GetModel(model_service_pb2.GetModelRequest(name=TINY))).model
    spec = await build(settings, RuntimeSettings())
    async with serving(spec, record_spans=False) as second, signed_channel(second.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        after = (await stub.GetModel(model_service_pb2.GetModelRequest(name=TINY))).model
    assert after == before
