"""Persona bundles in svc_profiles's core, over in-memory ports: trusted keys, install,
upgrade, the four attacks (tampered, wrong key, expired key, replayed version), uninstall and
rollback, with svc_policy's relationships and the audit events."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable, SkmError
from svc_profiles import bundle_file
from svc_profiles.adapters.bundle_keys import BundleAwarePersonaKeys
from svc_profiles.adapters.keys import Ed25519PersonaKeys
from svc_profiles.bundle import canonical_json
from svc_profiles.core import Profiles
from svc_profiles.core.bundles import Bundles, relationships_of
from svc_profiles.errors import (
    BundleKeyExpired,
    BundleKeyNotTrusted,
    BundleMalformed,
    BundleSignatureInvalid,
    BundleVersionNotNewer,
    InvalidPersona,
    InvalidTrustedKey,
    PersonaNotFound,
    PersonaNotFromBundle,
    PersonaSignatureInvalid,
    RequestIdReused,
    TrustedKeyAlreadyExists,
    TrustedKeyNotFound,
)
from svc_profiles.model import BundlePermissions, Persona, Relationship, RevisionOrigin, TrustedKey
from tests.support.bundles_memory import MemoryBundleStore
from tests.support.tenants_memory import MemoryTenantPolicy
from tests.unit.test_profiles_core import DEFAULTS, Clock, MemoryStore

T = "tenants/acme"
PUBLISHER = "tenants/pub"
NAME = f"{T}/personas/helper"
REQUEST = "6f1c8e4a-3b2d-4c5e-9f80-1a2b3c4d5e6f"
ADMIN = Principal(tenant=T, user=f"{T}/users/alice")


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclasses.dataclass
class World:
    bundles: Bundles
    profiles: Profiles
    personas: MemoryStore
    store: MemoryBundleStore
    policy: MemoryTenantPolicy
    clock: Clock
    key: Ed25519PrivateKey

    def relationships(self) -> set[Relationship]:
        return set(self.policy.relationships.get(T, set()))

    def bundle(self, version: int, key_id: str = "acme-pub", **changes: object) -> bytes:
        source = Persona(
            name=f"{PUBLISHER}/personas/helper",
            display_name="Helper",
            system_prompt="You help.",
            allowed_tools=(f"{PUBLISHER}/tools/code_execution", f"{PUBLISHER}/tools/web_search"),
            memory_namespaces=("solutions", "main"),
        )
        source = dataclasses.replace(source, **changes)  # type: ignore[arg-type]  # test data by keyword
        payload = bundle_file.payload_of(source, version, key_id, datetime(2026, 10, 1, tzinfo=UTC))
        return bundle_file.signed_file(payload, key_id, self.key.sign(payload))


@pytest.fixture
async def world() -> World:
    personas = MemoryStore()
    clock = Clock()
    profiles = Profiles(personas, BundleAwarePersonaKeys(Ed25519PersonaKeys({})), DEFAULTS, now=clock)
    await profiles.start()
    store = MemoryBundleStore()
    policy = MemoryTenantPolicy()
    key = Ed25519PrivateKey.generate()
    bundles = Bundles(profiles, store, policy, now=clock)
    await bundles.create_trusted_key(
        T, "acme-pub", TrustedKey("", _raw(key), clock.time + timedelta(days=365), "ACME"), ADMIN
    )
    return World(bundles, profiles, personas, store, policy, clock, key)


def _grants(tools: tuple[str, ...], read: tuple[str, ...], write: tuple[str, ...]) -> set[Relationship]:
    return set(relationships_of(NAME, BundlePermissions(tools, read, write)))


FULL = _grants(("code_execution", "web_search"), ("solutions",), ("solutions",))


# -- trusted keys ------------------------------------------------------------------------------


async def test_keys_are_listed_by_id_in_pages(world: World) -> None:
    for key_id in ("zeta", "beta"):
        await world.bundles.create_trusted_key(
            T, key_id, TrustedKey("", b"\x01" * 32, world.clock.time + timedelta(days=1)), ADMIN
        )
    page, token = await world.bundles.list_trusted_keys(T, 2, "", ADMIN)
    assert [k.key_id for k in page] == ["acme-pub", "beta"]
    rest, end = await world.bundles.list_trusted_keys(T, 2, token, ADMIN)
    assert [k.key_id for k in rest] == ["zeta"]
    assert end == ""
    assert page[0].name == f"{T}/trustedKeys/acme-pub"
    assert page[0].display_name == "ACME"


@pytest.mark.parametrize(
    ("key_id", "public_key", "days", "field"),
    [
        ("Bad_Id", b"\x01" * 32, 1, "trusted_key_id"),
        ("ok", b"\x01" * 31, 1, "trusted_key.public_key"),
        ("ok", b"\x01" * 32, -1, "trusted_key.expire_time"),
        ("ok", b"\x01" * 32, None, "trusted_key.expire_time"),
    ],
)
async def test_invalid_keys_are_refused(
    world: World, key_id: str, public_key: bytes, days: int | None, field: str
) -> None:
    expiry = None if days is None else world.clock.time + timedelta(days=days)
    with pytest.raises(InvalidTrustedKey) as raised:
        await world.bundles.create_trusted_key(T, key_id, TrustedKey("", public_key, expiry), ADMIN)
    assert [v.field for v in raised.value.violations] == [field]


async def test_a_key_id_is_trusted_once_and_deleted_once(world: World) -> None:
    with pytest.raises(TrustedKeyAlreadyExists):
        await world.bundles.create_trusted_key(
            T, "acme-pub", TrustedKey("", b"\x01" * 32, world.clock.time + timedelta(days=1)), ADMIN
        )
    await world.bundles.delete_trusted_key(f"{T}/trustedKeys/acme-pub", ADMIN)
    with pytest.raises(TrustedKeyNotFound):
        await world.bundles.delete_trusted_key(f"{T}/trustedKeys/acme-pub", ADMIN)


async def test_another_tenants_keys_do_not_exist_for_a_caller(world: World) -> None:
    other = Principal(tenant="tenants/globex", user="tenants/globex/users/bob")
    with pytest.raises(TrustedKeyNotFound):
        await world.bundles.delete_trusted_key(f"{T}/trustedKeys/acme-pub", other)


# -- install and upgrade -------------------------------------------------------------------


async def test_an_install_stores_a_signed_revision_and_writes_exactly_its_permissions(world: World) -> None:
    installed = await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    assert installed.name == NAME
    assert installed.allowed_tools == (f"{T}/tools/code_execution", f"{T}/tools/web_search")
    assert installed.signing_key == f"{T}/trustedKeys/acme-pub"
    assert len(installed.signature) == 64
    assert installed.bundle_version == 1
    assert installed.revision is not None
    assert installed.revision.origin is RevisionOrigin.BUNDLE_INSTALL
    assert installed.revision.author == ADMIN.user
    assert "version 1" in installed.revision.note
    # Shown signed (what svc_conversation runs in TEST and PRODUCTION).
    assert (await world.profiles.get_persona(NAME, ADMIN)).signature == installed.signature
    # Only shared areas: "main" is each user's own namespace.
    assert world.relationships() == FULL
    (event,) = world.store.installed
    assert (event.persona, event.version, event.previous_version, event.key_id) == (NAME, 1, 0, "acme-pub")
    assert event.bundle_digest == installed.bundle_digest
    assert event.revision_id == "1"
    assert world.store.refused == []


async def test_an_upgrade_replaces_the_relationships_the_old_version_had(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    upgraded = await world.bundles.install_bundle(
        T,
        world.bundle(5, allowed_tools=(f"{PUBLISHER}/tools/web_search",), memory_namespaces=("fragments",)),
        "",
        ADMIN,
    )
    assert upgraded.revision is not None
    assert upgraded.revision.revision_id == "2"
    assert world.relationships() == _grants(("web_search",), ("fragments",), ("fragments",))
    assert [(e.version, e.previous_version) for e in world.store.installed] == [(1, 0), (5, 1)]


async def test_a_retry_with_the_same_request_id_returns_the_first_install(world: World) -> None:
    first = await world.bundles.install_bundle(T, world.bundle(1), REQUEST, ADMIN)
    again = await world.bundles.install_bundle(T, world.bundle(1), REQUEST, ADMIN)
    assert again.etag == first.etag
    with pytest.raises(RequestIdReused):
        await world.bundles.install_bundle(T, world.bundle(2), REQUEST, ADMIN)


# -- refusals: nothing installed, the audit says why ----------------------------------------


async def _refused(world: World, data: bytes, error: type[SkmError]) -> None:
    personas_before = dict(world.personas.personas)
    relationships_before = world.relationships()
    installed_before = list(world.store.installed)
    with pytest.raises(error):
        await world.bundles.install_bundle(T, data, "", ADMIN)
    assert world.personas.personas == personas_before
    assert world.relationships() == relationships_before
    assert world.store.installed == installed_before
    assert world.store.refused[-1].reason == error.reason
    assert world.store.refused[-1].tenant == T


async def test_a_tampered_bundle_is_refused(world: World) -> None:
    data = world.bundle(1).replace(b"You help.", b"You obey.")
    await _refused(world, data, BundleSignatureInvalid)
    # A payload that does not verify is not trusted to name anything.
    assert (world.store.refused[-1].persona, world.store.refused[-1].version) == ("", 0)
    assert world.store.refused[-1].key_id == "acme-pub"


async def test_a_bundle_signed_with_another_key_is_refused(world: World) -> None:
    world.key = Ed25519PrivateKey.generate()
    await _refused(world, world.bundle(1), BundleSignatureInvalid)


async def test_a_key_the_tenant_does_not_trust_is_refused(world: World) -> None:
    await _refused(world, world.bundle(1, key_id="stranger"), BundleKeyNotTrusted)
    assert world.store.refused[-1].key_id == "stranger"


async def test_an_expired_key_is_refused(world: World) -> None:
    world.clock.time += timedelta(days=366)
    await _refused(world, world.bundle(1), BundleKeyExpired)


@pytest.mark.parametrize("replayed", [1, 2])
async def test_an_older_or_the_same_version_replayed_is_refused(world: World, replayed: int) -> None:
    await world.bundles.install_bundle(T, world.bundle(2), "", ADMIN)
    await _refused(world, world.bundle(replayed, tone="sly"), BundleVersionNotNewer)
    refusal = world.store.refused[-1]
    assert (refusal.persona, refusal.version) == (NAME, replayed)
    assert (await world.profiles.get_persona(NAME, ADMIN)).tone == ""


async def test_a_malformed_bundle_is_refused(world: World) -> None:
    await _refused(world, b"hello", BundleMalformed)


async def test_an_invalid_persona_in_a_verified_bundle_is_refused(world: World) -> None:
    await _refused(world, world.bundle(1, system_prompt=" "), InvalidPersona)


async def test_a_persona_not_installed_from_a_bundle_is_not_replaced(world: World) -> None:
    await world.profiles.create_persona(
        T, "helper", Persona(name="", display_name="Mine", system_prompt="Mine."), "", ADMIN
    )
    await _refused(world, world.bundle(1), PersonaNotFromBundle)


async def test_a_built_in_persona_is_not_replaced_by_a_bundle(world: World) -> None:
    await _refused(world, world.bundle(1, name=f"{PUBLISHER}/personas/default"), PersonaNotFromBundle)


async def test_an_unreachable_svc_policy_stores_nothing_and_is_no_refusal(world: World) -> None:
    world.policy.reachable = False
    with pytest.raises(ServiceUnavailable):
        await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    assert world.personas.personas == {}
    assert world.store.refused == []
    assert world.store.installed == []


async def test_a_failed_store_takes_back_what_svc_policy_was_given(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    world.store.fail_record_install = True
    with pytest.raises(ServiceUnavailable):
        await world.bundles.install_bundle(T, world.bundle(2, allowed_tools=(f"{PUBLISHER}/tools/shell",)), "", ADMIN)
    assert world.relationships() == FULL
    # The persona revision was written; the same bundle again finishes the install.
    done = await world.bundles.install_bundle(
        T, world.bundle(2, allowed_tools=(f"{PUBLISHER}/tools/shell",)), "", ADMIN
    )
    assert done.bundle_version == 2
    assert world.relationships() == _grants(("shell",), ("solutions",), ("solutions",))


# -- signatures of installed personas --------------------------------------------------------


async def test_no_one_can_claim_a_tenant_key_for_a_persona_by_hand(world: World) -> None:
    installed = await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    with pytest.raises(PersonaSignatureInvalid):
        await world.profiles.create_persona(
            T,
            "forged",
            Persona(
                name="",
                display_name="Forged",
                system_prompt="You help.",
                signature=installed.signature,
                signing_key=f"{T}/trustedKeys/acme-pub",
            ),
            "",
            ADMIN,
        )


async def test_an_installed_persona_stays_signed_after_its_key_is_deleted(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    await world.bundles.delete_trusted_key(f"{T}/trustedKeys/acme-pub", ADMIN)
    assert (await world.profiles.get_persona(NAME, ADMIN)).signature
    await _refused(world, world.bundle(2), BundleKeyNotTrusted)


# -- export, uninstall, rollback -------------------------------------------------------------


async def test_an_export_is_the_payload_of_the_persona(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    payload = await world.bundles.export_bundle(NAME, 9, "acme-pub", ADMIN)
    value = json.loads(payload)
    assert canonical_json(value) == payload
    assert (value["personaId"], value["version"], value["keyId"]) == ("helper", 9, "acme-pub")
    assert value["bundle"]["allowedTools"] == ["code_execution", "web_search"]
    with pytest.raises(InvalidPersona):
        await world.bundles.export_bundle(NAME, 0, "acme-pub", ADMIN)
    with pytest.raises(InvalidPersona):
        await world.bundles.export_bundle(NAME, 1, "Bad Key", ADMIN)


async def test_an_exported_revision_installs_as_a_new_version(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    payload = await world.bundles.export_bundle(f"{NAME}@1", 2, "acme-pub", ADMIN)
    data = bundle_file.signed_file(payload, "acme-pub", world.key.sign(payload))
    assert (await world.bundles.install_bundle(T, data, "", ADMIN)).bundle_version == 2


async def test_uninstall_removes_the_persona_and_every_relationship_it_wrote(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    await world.bundles.install_bundle(T, world.bundle(2, memory_namespaces=("fragments",)), "", ADMIN)
    await world.bundles.uninstall_persona(NAME, "", ADMIN)
    assert world.relationships() == set()
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(NAME, ADMIN)
    # Installable again from version 1: nothing of the old install is left.
    assert (await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)).revision is not None


async def test_only_installed_personas_are_uninstalled(world: World) -> None:
    await world.profiles.create_persona(
        T, "mine", Persona(name="", display_name="Mine", system_prompt="Mine."), "", ADMIN
    )
    with pytest.raises(PersonaNotFromBundle):
        await world.bundles.uninstall_persona(f"{T}/personas/mine", "", ADMIN)
    with pytest.raises(PersonaNotFound):
        await world.bundles.uninstall_persona(f"{T}/personas/none", "", ADMIN)


async def test_a_rollback_brings_back_the_relationships_of_that_revision(world: World) -> None:
    await world.bundles.install_bundle(T, world.bundle(1), "", ADMIN)
    await world.bundles.install_bundle(T, world.bundle(2, allowed_tools=(f"{PUBLISHER}/tools/shell",)), "", ADMIN)
    rolled = await world.bundles.rollback_persona(NAME, "1", "", ADMIN)
    assert rolled.revision is not None
    assert rolled.revision.origin is RevisionOrigin.ROLLBACK
    assert rolled.signature
    assert rolled.bundle_version == 1
    assert world.relationships() == FULL
    # Uninstalling after the rollback removes what the rollback wrote.
    await world.bundles.uninstall_persona(NAME, "", ADMIN)
    assert world.relationships() == set()


async def test_a_rollback_of_a_persona_not_from_a_bundle_touches_no_relationship(world: World) -> None:
    created = await world.profiles.create_persona(
        T, "mine", Persona(name="", display_name="Mine", system_prompt="Mine."), "", ADMIN
    )
    await world.profiles.update_persona(dataclasses.replace(created, tone="dry"), ["tone"], ADMIN)
    rolled = await world.bundles.rollback_persona(f"{T}/personas/mine", "1", "", ADMIN)
    assert rolled.tone == ""
    assert world.policy.writes == 0
