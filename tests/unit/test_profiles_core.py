"""svc_profiles's core over an in-memory store: personas (built-in ones, digests,
signatures), the registry, model profiles, role resolution, and the defaults file."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from skm.profiles.v1 import persona_pb2
from skm_runtime.access import Principal
from skm_runtime.errors import SkmError
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole, Money
from svc_profiles import convert
from svc_profiles.adapters.defaults import load_defaults, parse_defaults
from svc_profiles.adapters.keys import Ed25519PersonaKeys, Ed25519PersonaSigner, PersonaKeysInvalid
from svc_profiles.bundle import bundle_digest, bundle_json, canonical_json, number_text
from svc_profiles.core import Profiles
from svc_profiles.errors import (
    DefaultsInvalid,
    EtagMismatch,
    InvalidModel,
    InvalidModelProfile,
    InvalidPageToken,
    InvalidPersona,
    InvalidResourceName,
    InvalidUpdateMask,
    ModelAlreadyExists,
    ModelNotFound,
    ModelProfileAlreadyExists,
    ModelProfileNotFound,
    NoModelForRole,
    PersonaAlreadyExists,
    PersonaNotFound,
    PersonaSignatureInvalid,
    RequestIdReused,
)
from svc_profiles.model import (
    AutoSelected,
    BuiltInPersona,
    Capability,
    Defaults,
    Inserted,
    Lineage,
    Model,
    ModelProfile,
    Persona,
    PersonaCursor,
    RoleDefault,
)
from svc_profiles.settings import DEFAULTS_FILE

T1 = "tenants/acme"
T2 = "tenants/globex"
TINY = "models/skm-tiny-untrained"
LARGE = "models/skm-tiny-untrained-large"
BIG = "models/big-chat"
MINILM = "models/all-minilm-l6-v2"
PRIMARY, PRE_SLM, UTILITY, EMBEDDING = ModelRole.PRIMARY, ModelRole.PRE_SLM, ModelRole.UTILITY, ModelRole.EMBEDDING
DEV, TEST, PROD = DeploymentMode.DEVELOPER, DeploymentMode.TEST, DeploymentMode.PRODUCTION
REQUEST = "6f1c8e4a-3b2d-4c5e-9f80-1a2b3c4d5e6f"


class MemoryStore:
    """The store ports in memory, with the same compare-and-set rules as Postgres."""

    def __init__(self) -> None:
        self.personas: dict[str, tuple[Persona, str, str]] = {}
        self.models: dict[str, Model] = {}
        self.profiles: dict[str, tuple[ModelProfile, str, str]] = {}
        # name -> revision id -> the value as it was (written with each change, as Postgres does).
        self.persona_revisions: dict[str, dict[int, Persona]] = {}
        self.profile_revisions: dict[str, dict[int, ModelProfile]] = {}
        # Auto mode's events, each written with its revision.
        self.auto_selected: list[AutoSelected] = []

    async def get_persona(self, name: str) -> Persona | None:
        found = self.personas.get(name)
        return found[0] if found else None

    async def persona_by_request(self, tenant: str, request_id: str) -> tuple[Persona, str] | None:
        for persona, rid, fingerprint in self.personas.values():
            if request_id and rid == request_id and persona.tenant == tenant:
                return persona, fingerprint
        return None

    async def insert_persona(self, persona: Persona, request_id: str, fingerprint: str) -> Inserted:
        if persona.name in self.personas:
            return Inserted.NAME_TAKEN
        if request_id and await self.persona_by_request(persona.tenant, request_id):
            return Inserted.REQUEST_TAKEN
        self.personas[persona.name] = (persona, request_id, fingerprint)
        _record(self.persona_revisions, persona)
        return Inserted.INSERTED

    async def replace_persona(self, persona: Persona, etag: str) -> bool:
        found = self.personas.get(persona.name)
        if found is None or found[0].etag != etag:
            return False
        self.personas[persona.name] = (persona, found[1], found[2])
        _record(self.persona_revisions, persona)
        return True

    async def delete_persona(self, name: str, etag: str) -> bool:
        found = self.personas.get(name)
        if found is None or (etag and found[0].etag != etag):
            return False
        del self.personas[name]
        return True

    async def persona_revision(self, name: str, revision_id: int) -> Persona | None:
        return self.persona_revisions.get(name, {}).get(revision_id)

    async def list_persona_revisions(self, name: str, before: int, limit: int) -> list[Persona]:
        return _newest_first(self.persona_revisions.get(name, {}), before, limit)

    async def list_personas(self, tenant: str, after: PersonaCursor | None, limit: int) -> list[Persona]:
        mine = sorted(
            (p for p, _, _ in self.personas.values() if p.tenant == tenant),
            key=lambda p: (p.display_name, p.persona_id),
        )
        if after is not None:
            mine = [p for p in mine if (p.display_name, p.persona_id) > (after.display_name, after.persona_id)]
        return mine[:limit]

    async def stored_persona_ids(self, tenant: str, persona_ids: Collection[str]) -> set[str]:
        return {p.persona_id for p, _, _ in self.personas.values() if p.tenant == tenant} & set(persona_ids)

    async def get_models(self, names: Collection[str]) -> dict[str, Model]:
        return {name: self.models[name] for name in names if name in self.models}

    async def insert_model(self, model: Model) -> bool:
        if model.name in self.models:
            return False
        self.models[model.name] = model
        return True

    async def replace_model(self, model: Model, etag: str) -> bool:
        if self.models[model.name].etag != etag:
            return False
        self.models[model.name] = model
        return True

    async def upsert_models(self, models: Sequence[Model]) -> None:
        for model in models:
            old = self.models.get(model.name)
            if old is None:
                self.models[model.name] = model
            elif _values(old) != _values(model):
                self.models[model.name] = dataclasses.replace(model, create_time=old.create_time)

    async def list_models(self, capability: Capability | None, after: str, limit: int) -> list[Model]:
        found = [m for n, m in sorted(self.models.items()) if n > after]
        return [m for m in found if capability is None or capability in m.capabilities][:limit]

    async def get_model_profile(self, name: str) -> ModelProfile | None:
        found = self.profiles.get(name)
        return found[0] if found else None

    async def model_profile_by_request(self, tenant: str, request_id: str) -> tuple[ModelProfile, str] | None:
        for profile, rid, fingerprint in self.profiles.values():
            if request_id and rid == request_id and profile.name.startswith(tenant + "/"):
                return profile, fingerprint
        return None

    async def insert_model_profile(self, profile: ModelProfile, request_id: str, fingerprint: str) -> Inserted:
        if profile.name in self.profiles:
            return Inserted.NAME_TAKEN
        self.profiles[profile.name] = (profile, request_id, fingerprint)
        _record(self.profile_revisions, profile)
        return Inserted.INSERTED

    async def replace_model_profile(
        self, profile: ModelProfile, etag: str, auto_selected: AutoSelected | None = None
    ) -> bool:
        found = self.profiles.get(profile.name)
        if found is None or found[0].etag != etag:
            return False
        self.profiles[profile.name] = (profile, found[1], found[2])
        _record(self.profile_revisions, profile)
        if auto_selected is not None:
            self.auto_selected.append(auto_selected)
        return True

    async def delete_model_profile(self, name: str, etag: str) -> bool:
        found = self.profiles.get(name)
        if found is None or (etag and found[0].etag != etag):
            return False
        del self.profiles[name]
        self.profile_revisions.pop(name, None)
        return True

    async def model_profile_revision(self, name: str, revision_id: int) -> ModelProfile | None:
        return self.profile_revisions.get(name, {}).get(revision_id)

    async def list_model_profile_revisions(self, name: str, before: int, limit: int) -> list[ModelProfile]:
        return _newest_first(self.profile_revisions.get(name, {}), before, limit)

    async def list_model_profiles(self, tenant: str) -> list[ModelProfile]:
        return [p for p, _, _ in reversed(self.profiles.values()) if p.name.startswith(tenant + "/")]


def _record(revisions: dict[str, dict[int, Any]], value: Persona | ModelProfile) -> None:
    assert value.revision is not None, "the core stamps every stored value with its revision"
    number = int(value.revision.revision_id)
    kept = revisions.setdefault(value.name, {})
    assert number not in kept, "a revision is never overwritten"
    kept[number] = value


def _newest_first(revisions: dict[int, Any], before: int, limit: int) -> list[Any]:
    return [revisions[n] for n in sorted(revisions, reverse=True) if not before or n < before][:limit]


def _values(model: Model) -> Model:
    return dataclasses.replace(model, create_time=None, update_time=None, etag="")


class Clock:
    def __init__(self) -> None:
        self.time = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.time += timedelta(seconds=1)
        return self.time


def chat_model(name: str, context: int = 2048) -> Model:
    return Model(
        name=name,
        display_name=name.upper(),
        endpoint_uri="http://127.0.0.1:58090/v1",
        served_model=name.removeprefix("models/"),
        context_length=context,
        capabilities=(Capability.CHAT, Capability.STRUCTURED_OUTPUT),
    )


EMBEDDER = Model(
    name=MINILM,
    display_name="MiniLM",
    endpoint_uri="local:",
    served_model="all-minilm-l6-v2",
    context_length=256,
    capabilities=(Capability.EMBEDDINGS,),
    embedding_dimensions=384,
)

DEFAULTS = Defaults(
    models=(chat_model(TINY), chat_model(LARGE), chat_model(BIG, 32768), EMBEDDER),
    role_defaults=(
        RoleDefault(PRIMARY, (TINY, LARGE), temperature=0.7, max_output_tokens=512),
        RoleDefault(PRIMARY, (LARGE,), mode=PROD, temperature=0.5, max_output_tokens=256),
        RoleDefault(PRE_SLM, (TINY,), temperature=0.2, max_output_tokens=128),
        RoleDefault(EMBEDDING, (MINILM,)),
    ),
    personas=(
        BuiltInPersona(
            "default",
            "Agent",
            "You are Agent.",
            tool_ids=("code_execution", "response"),
            memory_namespaces=("main",),
        ),
        BuiltInPersona(
            "coder", "Coder", "You are Coder.", model_preferences=(ModelOverride(PRIMARY, temperature=0.2),)
        ),
    ),
)


@dataclasses.dataclass
class World:
    profiles: Profiles
    store: MemoryStore
    signer: Ed25519PrivateKey
    keys: Ed25519PersonaKeys


def _raw_public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def world_of(defaults: Defaults = DEFAULTS) -> World:
    signer = Ed25519PrivateKey.generate()
    keys = Ed25519PersonaKeys.load([f"publisher-1={_raw_public(signer)}"])
    store = MemoryStore()
    profiles = Profiles(store, keys, defaults, now=Clock())
    await profiles.start()
    return World(profiles, store, signer, keys)


@pytest.fixture
async def world() -> World:
    return await world_of()


def persona(**changes: object) -> Persona:
    base = Persona(
        name="",
        display_name="Helper",
        system_prompt="You help.",
        tone="warm",
        allowed_tools=(f"{T1}/tools/code_execution",),
        memory_namespaces=("main",),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test data by keyword


def sign(world: World, digest: str) -> bytes:
    return world.signer.sign(bytes.fromhex(digest))


def fields_of(error: SkmError) -> list[str]:
    return [v.field for v in error.violations]


# -- canonical JSON and the bundle digest ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # RFC 8785 section 3.2.2.3 and appendix B.
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (333333333.33333329, "333333333.3333333"),
        (4.5, "4.5"),
        (2e-3, "0.002"),
        (0.000001, "0.000001"),
        (1e30, "1e+30"),
        (123456789012345680000.0, "123456789012345680000"),
        (9007199254740992.0, "9007199254740992"),
        (-1.5e-9, "-1.5e-9"),
        (0.7, "0.7"),
        (100.0, "100"),
    ],
)
def test_numbers_are_written_as_ecmascript_does(value: float, text: str) -> None:
    assert number_text(value) == text


def test_canonical_json_sorts_keys_and_escapes_as_rfc8785() -> None:
    value = {"b": [1, 2.0, True, None], "a": 'é\n\u0001"\\', "\u20ac": 1, "\U0001f600": 2, "\ufb33": 3}
    # Keys by UTF-16 code units: the surrogate pair of U+1F600 (0xD83D) sorts before U+FB33.
    expected = '{"a":"é\\n\\u0001\\"\\\\","b":[1,2,true,null],"€":1,"\U0001f600":2,"\ufb33":3}'
    assert canonical_json(value) == expected.encode()


def test_the_bundle_is_the_proto3_json_mapping_of_its_fields() -> None:
    full = persona(
        name=f"{T1}/personas/helper",
        voice="voices/amy",
        model_preferences=(
            ModelOverride(PRIMARY, (TINY, LARGE), 0.0, 300),
            ModelOverride(UTILITY, temperature=1.25),
        ),
        knowledge_snapshot=f"{T1}/knowledgeBases/docs",
        signature=b"x" * 64,
        signing_key="k",
        lineage=Lineage(parent_persona=f"{T1}/personas/old"),
    )
    message = convert.persona_to(full)
    for output_only in ("name", "bundle_digest", "signature", "signing_key", "lineage", "etag"):
        message.ClearField(output_only)
    assert bundle_json(full) == json_format.MessageToDict(message)
    digest = hashlib.sha256(canonical_json(json_format.MessageToDict(message))).hexdigest()
    assert bundle_digest(full) == digest
    # temperature 0.0 is set (optional), so it counts; an unset one does not.
    assert bundle_json(full)["modelPreferences"][0]["temperature"] == 0.0


def test_the_digest_covers_the_bundle_and_nothing_else() -> None:
    base = persona(name=f"{T1}/personas/helper")
    digest = bundle_digest(base)
    assert len(digest) == 64
    assert digest == bundle_digest(dataclasses.replace(base, lineage=Lineage(parent_bundle_digest="0" * 64)))
    assert digest == bundle_digest(dataclasses.replace(base, name=f"{T2}/personas/other", etag="x"))
    for change in (
        {"display_name": "Helper!"},
        {"system_prompt": "You help. "},
        {"tone": ""},
        {"allowed_tools": ()},
        {"memory_namespaces": ("main", "solutions")},
        {"model_preferences": (ModelOverride(PRIMARY, temperature=0.5),)},
    ):
        assert bundle_digest(dataclasses.replace(base, **change)) != digest, change


# -- personas ----------------------------------------------------------------------------------------


async def test_a_persona_is_created_with_digest_times_and_etag(world: World) -> None:
    made = await world.profiles.create_persona(T1, "helper", persona(), "", None)
    assert made.name == f"{T1}/personas/helper"
    assert made.bundle_digest == bundle_digest(made)
    assert made.create_time == made.update_time is not None
    assert made.etag
    assert made.signature == b""
    assert await world.profiles.get_persona(made.name, None) == made
    with pytest.raises(PersonaAlreadyExists):
        await world.profiles.create_persona(T1, "helper", persona(), "", None)


async def test_every_bad_field_is_reported_at_once(world: World) -> None:
    bad = persona(
        display_name=" ",
        system_prompt="x" * (64 * 1024 + 1),
        voice="amy",
        allowed_tools=(f"{T2}/tools/code_execution", f"{T1}/tools/Bad Tool"),
        memory_namespaces=("main", "main"),
        model_preferences=(ModelOverride(None), ModelOverride(PRIMARY, temperature=2.5, max_output_tokens=-1)),
        knowledge_snapshot="kb",
        signature=b"s" * 64,
        lineage=Lineage(parent_bundle_digest="ABC", training_sessions=("sessions/1",)),
    )
    with pytest.raises(InvalidPersona) as raised:
        await world.profiles.create_persona(T1, "Bad_Id", bad, "not-a-uuid", None)
    assert fields_of(raised.value) == [
        "request_id",
        "persona_id",
        "persona.display_name",
        "persona.system_prompt",
        "persona.voice",
        "persona.allowed_tools[0]",
        "persona.allowed_tools[1]",
        "persona.memory_namespaces[1]",
        "persona.model_preferences[0].role",
        "persona.model_preferences[1].temperature",
        "persona.model_preferences[1].max_output_tokens",
        "persona.knowledge_snapshot",
        "persona.signature",
        "persona.lineage.parent_bundle_digest",
        "persona.lineage.training_sessions[0]",
    ]
    assert raised.value.reason == "INVALID_PERSONA"
    assert raised.value.domain == "profiles.skm"


async def test_preferences_must_name_registered_models_that_fit_the_role(world: World) -> None:
    unknown = persona(model_preferences=(ModelOverride(PRIMARY, (TINY, "models/nope")),))
    with pytest.raises(ModelNotFound) as raised:
        await world.profiles.create_persona(T1, "helper", unknown, "", None)
    assert raised.value.metadata == {"model": "models/nope", "field": "persona.model_preferences[0].model_tiers[1]"}
    unfit = persona(model_preferences=(ModelOverride(EMBEDDING, (TINY,)),))
    with pytest.raises(InvalidPersona) as invalid:
        await world.profiles.create_persona(T1, "helper", unfit, "", None)
    assert "lacks EMBEDDINGS" in invalid.value.violations[0].description


async def test_a_request_id_makes_create_idempotent(world: World) -> None:
    first = await world.profiles.create_persona(T1, "helper", persona(), REQUEST, None)
    again = await world.profiles.create_persona(T1, "helper", persona(), REQUEST, None)
    assert again == first
    with pytest.raises(RequestIdReused):
        await world.profiles.create_persona(T1, "helper", persona(tone="cold"), REQUEST, None)
    # The same key in another tenant is another request.
    other = await world.profiles.create_persona(T2, "helper", persona(allowed_tools=()), REQUEST, None)
    assert other.name == f"{T2}/personas/helper"


async def test_signatures_verify_against_the_digest_with_trusted_keys(world: World) -> None:
    digest = bundle_digest(persona(name=f"{T1}/personas/helper"))
    signed = await world.profiles.create_persona(
        T1, "helper", persona(signature=sign(world, digest), signing_key="publisher-1"), "", None
    )
    assert signed.bundle_digest == digest
    assert signed.signing_key == "publisher-1"
    with pytest.raises(PersonaSignatureInvalid) as wrong:
        await world.profiles.create_persona(
            T1,
            "other",
            persona(display_name="Other", signature=sign(world, digest), signing_key="publisher-1"),
            "",
            None,
        )
    assert wrong.value.metadata["bundle_digest"] != digest
    stranger = Ed25519PrivateKey.generate().sign(bytes.fromhex(digest))
    with pytest.raises(PersonaSignatureInvalid) as untrusted:
        await world.profiles.create_persona(T1, "x", persona(signature=stranger, signing_key="publisher-2"), "", None)
    assert "not one of the deployment's trusted" in untrusted.value.message
    with pytest.raises(PersonaSignatureInvalid):
        await world.profiles.create_persona(T1, "y", persona(signature=b"short", signing_key="publisher-1"), "", None)


async def test_a_bundle_change_without_a_new_signature_unsigns(world: World) -> None:
    digest = bundle_digest(persona(name=f"{T1}/personas/helper"))
    signed = await world.profiles.create_persona(
        T1, "helper", persona(signature=sign(world, digest), signing_key="publisher-1"), "", None
    )
    # Outside the bundle: the signature stays.
    lineage = Lineage(parent_persona=f"{T1}/personas/old", parent_bundle_digest="a" * 64)
    kept = await world.profiles.update_persona(dataclasses.replace(signed, lineage=lineage), ["lineage"], Principal(T1))
    assert kept.signature == signed.signature
    assert kept.lineage == lineage
    assert kept.etag != signed.etag
    # The bundle changes: unsigned.
    changed = await world.profiles.update_persona(dataclasses.replace(kept, tone="cold"), ["tone"], None)
    assert changed.signature == b""
    assert changed.signing_key == ""
    assert changed.bundle_digest != digest
    # Signed again, with the change and a signature of the new digest in one update.
    patch = dataclasses.replace(changed, tone="calm")
    new_digest = bundle_digest(patch)
    resigned = await world.profiles.update_persona(
        dataclasses.replace(patch, signature=sign(world, new_digest), signing_key="publisher-1"),
        ["tone", "signature", "signing_key"],
        None,
    )
    assert (resigned.bundle_digest, resigned.signing_key) == (new_digest, "publisher-1")
    # A signature of the old digest does not pass.
    with pytest.raises(PersonaSignatureInvalid):
        await world.profiles.update_persona(
            dataclasses.replace(resigned, tone="x", signature=sign(world, new_digest)), ["tone", "signature"], None
        )
    # Removing the signature removes its key.
    unsigned = await world.profiles.update_persona(dataclasses.replace(resigned, signature=b""), ["signature"], None)
    assert (unsigned.signature, unsigned.signing_key) == (b"", "")


async def test_a_persona_signed_by_a_key_no_longer_trusted_shows_unsigned(world: World) -> None:
    digest = bundle_digest(persona(name=f"{T1}/personas/helper"))
    await world.profiles.create_persona(
        T1, "helper", persona(signature=sign(world, digest), signing_key="publisher-1"), "", None
    )
    later = Profiles(world.store, Ed25519PersonaKeys({}), DEFAULTS, now=Clock())
    shown = await later.get_persona(f"{T1}/personas/helper", None)
    assert (shown.signature, shown.signing_key) == (b"", "")


async def test_update_checks_mask_and_etag(world: World) -> None:
    made = await world.profiles.create_persona(T1, "helper", persona(), "", None)
    with pytest.raises(InvalidUpdateMask):
        await world.profiles.update_persona(made, [], None)
    with pytest.raises(InvalidUpdateMask) as immutable:
        await world.profiles.update_persona(made, ["tone", "bundle_digest", "name"], None)
    assert immutable.value.metadata["paths"] == "bundle_digest,name"
    with pytest.raises(InvalidPersona):
        await world.profiles.update_persona(dataclasses.replace(made, etag=""), ["tone"], None)
    with pytest.raises(EtagMismatch):
        await world.profiles.update_persona(dataclasses.replace(made, etag="old"), ["tone"], None)
    with pytest.raises(InvalidPersona) as invalid:
        await world.profiles.update_persona(dataclasses.replace(made, display_name=""), ["display_name"], None)
    assert fields_of(invalid.value) == ["persona.display_name"]
    # "*" replaces every updatable field.
    whole = await world.profiles.update_persona(
        dataclasses.replace(made, display_name="New", tone="", allowed_tools=(), memory_namespaces=()), ["*"], None
    )
    assert (whole.display_name, whole.tone, whole.allowed_tools, whole.memory_namespaces) == ("New", "", (), ())
    assert whole.create_time == made.create_time
    assert whole.update_time is not None
    assert made.update_time is not None
    assert whole.update_time > made.update_time


async def test_delete_checks_the_etag_when_given(world: World) -> None:
    made = await world.profiles.create_persona(T1, "helper", persona(), "", None)
    with pytest.raises(EtagMismatch):
        await world.profiles.delete_persona(made.name, "stale", None)
    await world.profiles.delete_persona(made.name, made.etag, None)
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(made.name, None)
    with pytest.raises(PersonaNotFound):
        await world.profiles.delete_persona(made.name, "", None)
    again = await world.profiles.create_persona(T1, "helper", persona(), "", None)
    await world.profiles.delete_persona(again.name, "", None)


async def test_another_tenants_persona_does_not_exist_for_a_caller(world: World) -> None:
    made = await world.profiles.create_persona(T1, "helper", persona(), "", None)
    stranger = Principal(T2, f"{T2}/users/eve", ("admin",))
    for call in (
        world.profiles.get_persona(made.name, stranger),
        world.profiles.update_persona(made, ["tone"], stranger),
        world.profiles.delete_persona(made.name, "", stranger),
    ):
        with pytest.raises(PersonaNotFound):
            await call
    assert await world.profiles.get_persona(made.name, Principal(T1)) == made


@pytest.mark.parametrize(
    "name",
    [
        "",
        "personas/x",
        "tenants/acme/personas",
        "tenants//personas/x",
        "tenants/acme/models/x",
        "tenants/acme/personas/X",
    ],
)
async def test_malformed_persona_names(world: World, name: str) -> None:
    with pytest.raises(InvalidResourceName):
        await world.profiles.get_persona(name, None)


async def test_built_in_personas_exist_in_every_tenant_with_its_own_tools(world: World) -> None:
    for tenant in (T1, T2):
        agent = await world.profiles.get_persona(f"{tenant}/personas/default", Principal(tenant))
        assert agent.built_in
        assert agent.allowed_tools == (f"{tenant}/tools/code_execution", f"{tenant}/tools/response")
        assert agent.bundle_digest == bundle_digest(agent)
        assert agent.etag.startswith("builtin-")
        assert agent.create_time is None
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(f"{T1}/personas/nobody", None)


async def test_the_deployment_key_signs_built_in_personas_per_tenant() -> None:
    deployment = Ed25519PrivateKey.generate()
    signer = Ed25519PersonaSigner("deployment", deployment)
    keys = Ed25519PersonaKeys({}).trusting("deployment", signer.public_key)
    profiles = Profiles(MemoryStore(), keys, DEFAULTS, now=Clock(), builtin_signer=signer)
    await profiles.start()
    for tenant in (T1, T2):
        agent = await profiles.get_persona(f"{tenant}/personas/default", None)
        assert agent.signing_key == "deployment"
        assert keys.verify("deployment", agent.signature, bytes.fromhex(agent.bundle_digest))
    listed, _ = await profiles.list_personas(T1, 0, "", None)
    assert all(p.signature for p in listed)
    # The tenant's copy keeps the signature while its bundle is the signed one.
    agent = await profiles.get_persona(f"{T1}/personas/default", None)
    lineage = Lineage(parent_persona=agent.name, parent_bundle_digest=agent.bundle_digest)
    copy = await profiles.update_persona(dataclasses.replace(agent, lineage=lineage), ["lineage"], None)
    assert (copy.signature, copy.built_in) == (agent.signature, False)
    changed = await profiles.update_persona(dataclasses.replace(copy, tone="x"), ["tone"], None)
    assert changed.signature == b""
    untrusted = Profiles(MemoryStore(), Ed25519PersonaKeys({}), DEFAULTS, now=Clock(), builtin_signer=signer)
    with pytest.raises(DefaultsInvalid, match="not among the trusted keys"):
        await untrusted.start()


async def test_a_tenant_replaces_a_built_in_persona_and_gets_it_back(world: World) -> None:
    name = f"{T1}/personas/default"
    builtin = await world.profiles.get_persona(name, None)
    with pytest.raises(PersonaNotFound) as refused:
        await world.profiles.delete_persona(name, "", None)
    assert refused.value.metadata["built_in"] == "true"
    # An update stores the tenant's own copy (the etag read is the built-in's).
    with pytest.raises(EtagMismatch):
        await world.profiles.update_persona(dataclasses.replace(builtin, tone="x", etag="other"), ["tone"], None)
    own = await world.profiles.update_persona(dataclasses.replace(builtin, tone="gruff"), ["tone"], None)
    assert not own.built_in
    assert own.tone == "gruff"
    assert own.system_prompt == builtin.system_prompt
    assert (await world.profiles.get_persona(name, None)) == own
    assert (await world.profiles.get_persona(f"{T2}/personas/default", None)).built_in
    await world.profiles.delete_persona(name, own.etag, None)
    assert (await world.profiles.get_persona(name, None)) == builtin
    # Creating one with a built-in id replaces it too.
    created = await world.profiles.create_persona(T1, "coder", persona(display_name="My coder"), "", None)
    assert (await world.profiles.get_persona(f"{T1}/personas/coder", None)) == created


async def test_list_merges_built_in_personas_by_display_name_across_pages(world: World) -> None:
    for persona_id, title in [("zed", "Zed"), ("b", "Bee"), ("a2", "Ant"), ("a1", "Ant"), ("coder", "Coder 2")]:
        await world.profiles.create_persona(T1, persona_id, persona(display_name=title), "", None)
    seen: list[str] = []
    token = ""
    while True:
        page, token = await world.profiles.list_personas(T1, 2, token, None)
        assert len(page) <= 2
        seen += [p.persona_id for p in page]
        if not token:
            break
    # "coder" is the tenant's own (Coder 2), the built-in coder is gone; "default" is Agent.
    assert seen == ["default", "a1", "a2", "b", "coder", "zed"]
    everything, last = await world.profiles.list_personas(T1, 0, "", None)
    assert [p.persona_id for p in everything] == seen
    assert last == ""
    other, _ = await world.profiles.list_personas(T2, 0, "", None)
    assert [(p.display_name, p.built_in) for p in other] == [("Agent", True), ("Coder", True)]
    _, first_token = await world.profiles.list_personas(T1, 2, "", None)
    with pytest.raises(InvalidPageToken):
        await world.profiles.list_personas(T2, 2, first_token, None)
    with pytest.raises(InvalidPageToken):
        await world.profiles.list_personas(T1, 2, "garbage!", None)


# -- the model registry -------------------------------------------------------------------------


async def test_models_are_registered_validated_and_listed(world: World) -> None:
    model = dataclasses.replace(
        chat_model("models/llama-3.1-8b"),
        input_cost=Money("USD", 0, 150_000_000),
        credential_secret="LLAMA_API_KEY",
        capabilities=(Capability.CHAT, Capability.CHAT, Capability.TOOL_CALLS),
    )
    made = await world.profiles.create_model(model)
    assert made.capabilities == (Capability.CHAT, Capability.TOOL_CALLS)
    assert made.etag
    assert made.create_time
    assert await world.profiles.get_model("models/llama-3.1-8b") == made
    with pytest.raises(ModelAlreadyExists):
        await world.profiles.create_model(model)
    with pytest.raises(ModelNotFound):
        await world.profiles.get_model("models/nope")
    with pytest.raises(InvalidResourceName):
        await world.profiles.get_model("models/Bad_Name")
    bad = Model(
        name="models/Bad",
        display_name="",
        endpoint_uri="ftp://x",
        served_model="",
        context_length=0,
        capabilities=(),
        credential_secret="sk live key",
        input_cost=Money("usd", 1, 0),
        output_cost=Money("", -1, 0),
        embedding_dimensions=3,
    )
    with pytest.raises(InvalidModel) as invalid:
        await world.profiles.create_model(bad)
    assert fields_of(invalid.value) == [
        "model.name",
        "model.display_name",
        "model.endpoint_uri",
        "model.served_model",
        "model.credential_secret",
        "model.context_length",
        "model.input_cost_per_million_tokens.currency_code",
        "model.output_cost_per_million_tokens.currency_code",
        "model.output_cost_per_million_tokens",
        "model.capabilities",
        "model.embedding_dimensions",
    ]
    names = []
    token = ""
    while True:
        page, token = await world.profiles.list_models(None, 2, token)
        names += [m.name for m in page]
        if not token:
            break
    assert names == sorted([BIG, MINILM, TINY, LARGE, "models/llama-3.1-8b"])
    embedders, _ = await world.profiles.list_models(Capability.EMBEDDINGS, 0, "")
    assert [m.name for m in embedders] == [MINILM]
    _, chat_token = await world.profiles.list_models(Capability.CHAT, 1, "")
    with pytest.raises(InvalidPageToken):
        await world.profiles.list_models(None, 1, chat_token)


async def test_model_updates_keep_the_name_and_check_the_etag(world: World) -> None:
    current = await world.profiles.get_model(BIG)
    moved = await world.profiles.update_model(
        dataclasses.replace(current, endpoint_uri="https://llm.example.com/v1", display_name="ignored"),
        ["endpoint_uri"],
    )
    assert moved.endpoint_uri == "https://llm.example.com/v1"
    assert moved.display_name == current.display_name
    assert moved.etag != current.etag
    with pytest.raises(EtagMismatch):
        await world.profiles.update_model(current, ["endpoint_uri"])
    with pytest.raises(InvalidUpdateMask):
        await world.profiles.update_model(moved, ["name"])
    with pytest.raises(InvalidModel):
        await world.profiles.update_model(dataclasses.replace(moved, context_length=0), ["context_length"])


# -- model profiles ---------------------------------------------------------------------------


def profile(role: ModelRole | None = PRIMARY, mode: DeploymentMode | None = PROD, **changes: object) -> ModelProfile:
    base = ModelProfile("", role, mode, (BIG, TINY), temperature=0.4, max_output_tokens=1000)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test data by keyword


async def test_one_profile_per_role_and_mode(world: World) -> None:
    made = await world.profiles.create_model_profile(T1, profile(), REQUEST, None)
    assert made.name == f"{T1}/modelProfiles/primary-production"
    assert await world.profiles.create_model_profile(T1, profile(), REQUEST, None) == made
    with pytest.raises(RequestIdReused):
        await world.profiles.create_model_profile(T1, profile(max_output_tokens=5), REQUEST, None)
    with pytest.raises(ModelProfileAlreadyExists) as taken:
        await world.profiles.create_model_profile(T1, profile(model_tiers=(TINY,), max_output_tokens=0), "", None)
    assert taken.value.metadata["model_profile"] == made.name
    other = await world.profiles.create_model_profile(T1, profile(PRE_SLM, TEST, max_output_tokens=0), "", None)
    assert other.name == f"{T1}/modelProfiles/pre-slm-test"
    assert await world.profiles.get_model_profile(made.name, Principal(T1)) == made
    with pytest.raises(ModelProfileNotFound):
        await world.profiles.get_model_profile(made.name, Principal(T2))


async def test_profiles_are_validated(world: World) -> None:
    with pytest.raises(InvalidModelProfile) as invalid:
        await world.profiles.create_model_profile(
            T1, profile(None, None, model_tiers=(), temperature=-1.0, max_output_tokens=-5), "", None
        )
    assert fields_of(invalid.value) == [
        "model_profile.role",
        "model_profile.mode",
        "model_profile.model_tiers",
        "model_profile.temperature",
        "model_profile.max_output_tokens",
    ]
    with pytest.raises(InvalidModelProfile) as tiers:
        await world.profiles.create_model_profile(
            T1, profile(model_tiers=(TINY, TINY, "bad"), max_output_tokens=0), "", None
        )
    assert fields_of(tiers.value) == ["model_profile.model_tiers[2]", "model_profile.model_tiers[1]"]
    with pytest.raises(InvalidModelProfile):
        await world.profiles.create_model_profile(T1, profile(model_tiers=(TINY,) * 9), "", None)
    with pytest.raises(ModelNotFound) as unknown:
        await world.profiles.create_model_profile(T1, profile(model_tiers=(TINY, "models/gone")), "", None)
    assert unknown.value.metadata["model"] == "models/gone"
    with pytest.raises(InvalidModelProfile) as unfit:
        await world.profiles.create_model_profile(T1, profile(EMBEDDING, model_tiers=(TINY,)), "", None)
    assert "lacks EMBEDDINGS" in unfit.value.violations[0].description
    with pytest.raises(InvalidModelProfile) as too_long:
        await world.profiles.create_model_profile(T1, profile(max_output_tokens=4096), "", None)
    assert "do not fit models/skm-tiny-untrained's context of 2048" in too_long.value.violations[0].description


async def test_profiles_list_by_role_then_mode_update_and_delete(world: World) -> None:
    for role, mode in [(UTILITY, DEV), (PRIMARY, PROD), (PRIMARY, DEV), (PRE_SLM, TEST)]:
        await world.profiles.create_model_profile(T1, profile(role, mode, max_output_tokens=0), "", None)
    listed, token = await world.profiles.list_model_profiles(T1, None, None, 3, "", None)
    rest, end = await world.profiles.list_model_profiles(T1, None, None, 3, token, None)
    assert [(p.role, p.mode) for p in [*listed, *rest]] == [
        (PRE_SLM, TEST),
        (PRIMARY, DEV),
        (PRIMARY, PROD),
        (UTILITY, DEV),
    ]
    assert end == ""
    primaries, _ = await world.profiles.list_model_profiles(T1, PRIMARY, None, 0, "", None)
    assert [p.mode for p in primaries] == [DEV, PROD]
    with pytest.raises(InvalidPageToken):
        await world.profiles.list_model_profiles(T1, PRIMARY, None, 3, token, None)
    current = primaries[0]
    changed = await world.profiles.update_model_profile(
        dataclasses.replace(current, model_tiers=(LARGE,), temperature=None, role=UTILITY),
        ["model_tiers", "temperature"],
        None,
    )
    assert (changed.model_tiers, changed.temperature, changed.role) == ((LARGE,), None, PRIMARY)
    with pytest.raises(InvalidUpdateMask):
        await world.profiles.update_model_profile(changed, ["role"], None)
    with pytest.raises(EtagMismatch):
        await world.profiles.update_model_profile(current, ["auto_select"], None)
    with pytest.raises(EtagMismatch):
        await world.profiles.delete_model_profile(changed.name, current.etag, None)
    await world.profiles.delete_model_profile(changed.name, changed.etag, None)
    with pytest.raises(ModelProfileNotFound):
        await world.profiles.delete_model_profile(changed.name, "", None)


# -- resolution -----------------------------------------------------------------------------------


async def test_the_deployment_default_serves_a_tenant_without_profiles(world: World) -> None:
    resolved = await world.profiles.resolve(T1, PRIMARY, DEV, "", [])
    assert [m.name for m in resolved.model_tiers] == [TINY, LARGE]
    assert resolved.model_tiers[0].endpoint_uri == "http://127.0.0.1:58090/v1"
    assert (resolved.model_profile, resolved.temperature, resolved.max_output_tokens) == ("", 0.7, 512)
    # A mode-specific default wins in its mode.
    production = await world.profiles.resolve(T1, PRIMARY, PROD, "", [])
    assert ([m.name for m in production.model_tiers], production.temperature) == ([LARGE], 0.5)
    embedding = await world.profiles.resolve(T1, EMBEDDING, TEST, "", [])
    assert [m.embedding_dimensions for m in embedding.model_tiers] == [384]
    assert embedding.temperature is None
    with pytest.raises(NoModelForRole) as nothing:
        await world.profiles.resolve(T1, UTILITY, DEV, "", [])
    assert nothing.value.metadata == {"role": "UTILITY", "mode": "DEVELOPER"}
    # ...unless the session brings its own models.
    brought = await world.profiles.resolve(T1, UTILITY, DEV, "", [ModelOverride(UTILITY, (TINY,))])
    assert [m.name for m in brought.model_tiers] == [TINY]


async def test_precedence_session_over_persona_over_profile_over_default(world: World) -> None:
    base = await world.profiles.create_model_profile(
        T1, profile(PRIMARY, DEV, model_tiers=(BIG,), temperature=0.9, max_output_tokens=700), "", None
    )
    from_profile = await world.profiles.resolve(T1, PRIMARY, DEV, "", [])
    assert [m.name for m in from_profile.model_tiers] == [BIG]
    assert (from_profile.model_profile, from_profile.temperature, from_profile.max_output_tokens) == (
        base.name,
        0.9,
        700,
    )
    # The profile replaces the default entirely: its unset temperature is not the default's.
    await world.profiles.update_model_profile(dataclasses.replace(base, temperature=None), ["temperature"], None)
    assert (await world.profiles.resolve(T1, PRIMARY, DEV, "", [])).temperature is None

    prefs = (
        ModelOverride(PRIMARY, (LARGE, BIG), temperature=0.3),
        ModelOverride(UTILITY, (TINY,), temperature=0.0),
    )
    await world.profiles.create_persona(T1, "picky", persona(model_preferences=prefs), "", None)
    with_persona = await world.profiles.resolve(T1, PRIMARY, DEV, f"{T1}/personas/picky", [])
    assert [m.name for m in with_persona.model_tiers] == [LARGE, BIG]
    assert (with_persona.temperature, with_persona.max_output_tokens) == (0.3, 700)
    assert dict(with_persona.sources) == {
        "model_tiers": "persona preference",
        "temperature": "persona preference",
        "max_output_tokens": "tenant profile",
    }
    session = [ModelOverride(UTILITY, (BIG,)), ModelOverride(PRIMARY, temperature=1.5, max_output_tokens=64)]
    with_session = await world.profiles.resolve(T1, PRIMARY, DEV, f"{T1}/personas/picky", session)
    assert [m.name for m in with_session.model_tiers] == [LARGE, BIG]
    assert (with_session.temperature, with_session.max_output_tokens) == (1.5, 64)
    assert dict(with_session.sources)["model_tiers"] == "persona preference"
    # A persona preference applies over the deployment default too (no UTILITY default here).
    utility = await world.profiles.resolve(T1, UTILITY, DEV, f"{T1}/personas/picky", [])
    assert ([m.name for m in utility.model_tiers], utility.temperature) == ([TINY], 0.0)
    # The built-in coder prefers a lower temperature over the default's.
    coder = await world.profiles.resolve(T2, PRIMARY, DEV, f"{T2}/personas/coder", [])
    assert ([m.name for m in coder.model_tiers], coder.temperature, coder.max_output_tokens) == (
        [TINY, LARGE],
        0.2,
        512,
    )


async def test_resolution_errors_are_clear(world: World) -> None:
    with pytest.raises(ModelNotFound) as unknown:
        await world.profiles.resolve(T1, PRIMARY, DEV, "", [ModelOverride(PRIMARY, ("models/ghost",))])
    assert unknown.value.metadata == {"model": "models/ghost", "source": "session override"}
    with pytest.raises(PersonaNotFound):
        await world.profiles.resolve(T1, PRIMARY, DEV, f"{T1}/personas/nobody", [])
    with pytest.raises(PersonaNotFound):
        await world.profiles.resolve(T1, PRIMARY, DEV, f"{T2}/personas/default", [])
    with pytest.raises(InvalidModelProfile) as missing:
        await world.profiles.resolve(T1, None, None, "", [ModelOverride(PRIMARY), ModelOverride(PRIMARY)])
    assert fields_of(missing.value) == ["overrides[1].role", "role", "mode"]
    with pytest.raises(InvalidModelProfile) as unfit:
        await world.profiles.resolve(T1, EMBEDDING, DEV, "", [ModelOverride(EMBEDDING, (TINY,))])
    assert "lacks EMBEDDINGS" in unfit.value.violations[0].description
    with pytest.raises(InvalidResourceName):
        await world.profiles.resolve("acme", PRIMARY, DEV, "", [])


# -- the deployment defaults -------------------------------------------------------------------------


async def test_the_committed_defaults_start_and_resolve_as_documented() -> None:
    defaults = load_defaults(DEFAULTS_FILE, {"SKM_LLM_URL": "http://127.0.0.1:12345/v1"})
    world = await world_of(defaults)
    tiny = await world.profiles.get_model(TINY)
    assert tiny.endpoint_uri == "http://127.0.0.1:12345/v1"
    assert (tiny.served_model, tiny.context_length) == ("skm-tiny-untrained", 8192)
    assert tiny.capabilities == (Capability.CHAT, Capability.STRUCTURED_OUTPUT)
    assert tiny.input_cost.is_zero
    assert tiny.output_cost.is_zero
    for name in (TINY, LARGE):
        assert "UNTRAINED" in (await world.profiles.get_model(name)).display_name
    # The real models of the catalogue run every role (the tiny ones only where the engine
    # serves nothing else: tests/unit/test_profiles_engine.py).
    q05, q15 = "models/qwen2.5-coder-0.5b-instruct", "models/qwen2.5-coder-1.5b-instruct"
    for name in (q05, q15):
        real = await world.profiles.get_model(name)
        assert "REAL" in real.display_name
        assert real.capabilities == (Capability.CHAT, Capability.STRUCTURED_OUTPUT)
    expected = {PRIMARY: [q05, q15], PRE_SLM: [q05], UTILITY: [q05], EMBEDDING: [MINILM]}
    for role, tiers in expected.items():
        for mode in DeploymentMode:
            resolved = await world.profiles.resolve(T1, role, mode, "", [])
            assert [m.name for m in resolved.model_tiers] == tiers
    minilm = await world.profiles.get_model(MINILM)
    assert (minilm.endpoint_uri, minilm.embedding_dimensions, minilm.capabilities) == (
        "local:",
        384,
        (Capability.EMBEDDINGS,),
    )
    agent = await world.profiles.get_persona(f"{T1}/personas/default", None)
    assert [tool.rsplit("/", 1)[1] for tool in agent.allowed_tools] == [
        "code_execution",
        "response",
        "call_subordinate",
        "memory_save",
        "memory_load",
    ]
    assert '{"thoughts": [' in agent.system_prompt
    assert '"tool_name": ' in agent.system_prompt
    assert '"tool_args": {' in agent.system_prompt
    coder = await world.profiles.get_persona(f"{T1}/personas/coder", None)
    assert coder.display_name == "Coder"
    # Loaded without the variable, the endpoint falls back to the documented default.
    fallback = load_defaults(DEFAULTS_FILE, {})
    assert fallback.models[0].endpoint_uri == "http://127.0.0.1:58090/v1"


async def test_a_restart_keeps_unchanged_models_and_overwrites_changed_ones() -> None:
    world = await world_of()
    before = await world.profiles.get_model(TINY)
    again = Profiles(world.store, world.keys, DEFAULTS, now=Clock())
    await again.start()
    assert await again.get_model(TINY) == before
    moved = dataclasses.replace(DEFAULTS, models=(dataclasses.replace(chat_model(TINY), context_length=4096),))
    third = Profiles(world.store, world.keys, moved, now=Clock())
    await third.start()
    after = await third.get_model(TINY)
    assert after.context_length == 4096
    assert after.etag != before.etag
    assert after.create_time == before.create_time


def test_the_defaults_file_reports_every_problem() -> None:
    text = """
models:
  - name: models/a
    display_name: A
    endpoint_uri: ${HOME}/v1
    served_model: a
    context_length: many
    capabilities: [CHAT, TELEPATHY]
  - name: models/b
    endpoint_uri: ${SKM_NOT_SET_ANYWHERE}
role_defaults:
  - role: BOSS
    model_tiers: [models/a]
personas:
  - id: x
extra: 1
"""
    with pytest.raises(DefaultsInvalid) as raised:
        parse_defaults(text, "defaults.yaml", {})
    assert raised.value.problems == [
        "unknown sections: extra",
        "models[0].capabilities[1]: unknown value 'TELEPATHY'",
        "models[0].endpoint_uri: only SKM_* variables expand, not HOME",
        "models[0].context_length: required, a int",
        "models[1].capabilities: required, a list",
        "models[1].display_name: required, a str",
        "models[1].endpoint_uri: SKM_NOT_SET_ANYWHERE is not set and has no default",
        "models[1].served_model: required, a str",
        "models[1].context_length: required, a int",
        "role_defaults[0].role: unknown value 'BOSS'",
        "personas[0].display_name: required, a str",
        "personas[0].system_prompt: required, a str",
    ]
    with pytest.raises(DefaultsInvalid):
        parse_defaults("models: [", "defaults.yaml", {})
    assert parse_defaults("", "empty.yaml", {}) == Defaults()


async def test_defaults_that_break_the_rules_stop_the_start() -> None:
    broken = Defaults(
        models=(chat_model(TINY), dataclasses.replace(chat_model(TINY), endpoint_uri="nowhere")),
        role_defaults=(RoleDefault(PRIMARY, ("models/ghost",)), RoleDefault(EMBEDDING, (TINY,))),
        personas=(BuiltInPersona("Default", "", "prompt", tool_ids=("Bad Tool",)),),
    )
    with pytest.raises(DefaultsInvalid) as raised:
        await world_of(broken)
    assert raised.value.problems == [
        "models[1].endpoint_uri: expected an http(s) base URL, or local: for an in-process model",
        "models[1].name: models/skm-tiny-untrained listed twice",
        "personas[Default].id: 1-63 characters of [a-z0-9-], starting with a letter",
        "personas[Default].display_name: required",
        "personas[Default].allowed_tools[0]: expected tenants/example/tools/{tool}",
    ]
    unregistered = dataclasses.replace(broken, models=(chat_model(TINY),), personas=())
    with pytest.raises(DefaultsInvalid) as late:
        await world_of(unregistered)
    assert late.value.problems == [
        "role_defaults[0].model_tiers: models/ghost is not registered",
        "role_defaults[1].model_tiers[0]: models/skm-tiny-untrained cannot serve EMBEDDING: it lacks EMBEDDINGS",
    ]


# -- trusted keys ------------------------------------------------------------------------------------------


def test_trusted_keys_load_from_entries_and_a_folder(tmp_path: Path) -> None:
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = second.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "team-b.pem").write_bytes(pem)
    (tmp_path / "notes.txt").write_text("ignored")
    raw = _raw_public(first).rstrip("=").replace("+", "-").replace("/", "_")
    keys = Ed25519PersonaKeys.load([f"team-a={raw}"], tmp_path)
    assert keys.key_ids == ("team-a", "team-b")
    message = bytes(32)
    assert keys.verify("team-a", first.sign(message), message)
    assert keys.verify("team-b", second.sign(message), message)
    assert not keys.verify("team-b", first.sign(message), message)
    assert not keys.verify("team-c", first.sign(message), message)
    private = second.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "oops.pem").write_bytes(private)
    with pytest.raises(PersonaKeysInvalid, match="a private key"):
        Ed25519PersonaKeys.load([], tmp_path)
    with pytest.raises(PersonaKeysInvalid, match="not 32 base64"):
        Ed25519PersonaKeys.load(["k=AAAA"])
    with pytest.raises(PersonaKeysInvalid, match="expected key_id=BASE64"):
        Ed25519PersonaKeys.load(["just-a-key"])


def test_the_built_in_signing_key_loads_from_a_private_pem(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "deployment.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    signer = Ed25519PersonaSigner.load("deployment", path)
    assert Ed25519PersonaKeys({"deployment": key.public_key()}).verify("deployment", signer.sign(b"m"), b"m")
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PersonaKeysInvalid, match="not an unencrypted PEM private key"):
        Ed25519PersonaSigner.load("deployment", public)
    with pytest.raises(PersonaKeysInvalid, match="cannot be read"):
        Ed25519PersonaSigner.load("deployment", tmp_path / "missing.pem")
    with pytest.raises(PersonaKeysInvalid, match="given twice"):
        Ed25519PersonaKeys({"deployment": key.public_key()}).trusting("deployment", key.public_key())


def test_wire_personas_round_trip() -> None:
    full = persona(
        name=f"{T1}/personas/helper",
        model_preferences=(ModelOverride(PRIMARY, (TINY,), 0.0, 10),),
        signature=b"s" * 64,
        signing_key="k",
        lineage=Lineage(f"{T1}/personas/p", "a" * 64, (f"{T1}/sessions/s",)),
        etag="e",
    )
    message = convert.persona_to(full)
    assert message.model_preferences[0].HasField("temperature")
    assert convert.persona_of(persona_pb2.Persona.FromString(message.SerializeToString())) == full
    assert json.loads(canonical_json(bundle_json(full)))["displayName"] == "Helper"
