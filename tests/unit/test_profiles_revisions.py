"""Revisions of personas and model profiles in svc_profiles's core, over the in-memory store of
test_profiles_core: numbering, authors and origins, "{name}@{revision_id}", rollback, and the
resolution of a role for a persona pinned to a revision."""

from __future__ import annotations

import dataclasses

import pytest

from skm_runtime.access import Principal
from skm_runtime.values import ModelOverride, Money
from svc_profiles.bundle import bundle_digest
from svc_profiles.errors import (
    EtagMismatch,
    InvalidModelProfile,
    InvalidPageToken,
    InvalidResourceName,
    InvalidUpdateMask,
    ModelNotFound,
    ModelProfileNotFound,
    PersonaNotFound,
    RevisionNotFound,
)
from svc_profiles.model import AutoSelectBounds, ModelProfile, Persona, RevisionOrigin
from tests.unit.test_profiles_core import (
    BIG,
    DEV,
    LARGE,
    PRIMARY,
    PROD,
    T1,
    T2,
    TINY,
    World,
    fields_of,
    persona,
    sign,
    world,
)

__all__ = ["world"]  # the fixture, imported for these tests

ADMIN = Principal(T1, f"{T1}/users/ada", ("admin",))


def _revision(value: Persona | ModelProfile) -> tuple[str, RevisionOrigin, str, str]:
    assert value.revision is not None
    return value.revision.revision_id, value.revision.origin, value.revision.author, value.revision.note


async def _helper(world: World) -> Persona:
    return await world.profiles.create_persona(T1, "helper", persona(), "", ADMIN)


async def test_every_change_of_a_persona_is_a_numbered_revision_by_its_author(world: World) -> None:
    made = await _helper(world)
    assert _revision(made) == ("1", RevisionOrigin.CREATE, f"{T1}/users/ada", "")
    changed = await world.profiles.update_persona(
        dataclasses.replace(made, system_prompt="You help, briefly."), ["system_prompt"], ADMIN
    )
    assert _revision(changed) == ("2", RevisionOrigin.UPDATE, f"{T1}/users/ada", "")
    by_service = await world.profiles.update_persona(
        dataclasses.replace(changed, tone="calm"), ["tone"], Principal(T1), author="services/conversation"
    )
    assert _revision(by_service)[:3] == ("3", RevisionOrigin.UPDATE, "services/conversation")

    assert (await world.profiles.get_persona(made.name, None)).revision == by_service.revision
    first = await world.profiles.get_persona(f"{made.name}@1", None)
    assert (first.system_prompt, first.tone, first.etag) == ("You help.", "warm", made.etag)
    assert _revision(first)[0] == "1"

    listed, token = await world.profiles.list_persona_revisions(made.name, 0, "", None)
    assert [_revision(p)[0] for p in listed] == ["3", "2", "1"]
    assert token == ""
    page, token = await world.profiles.list_persona_revisions(made.name, 2, "", None)
    assert [_revision(p)[0] for p in page] == ["3", "2"]
    assert token
    rest, last = await world.profiles.list_persona_revisions(made.name, 2, token, None)
    assert [_revision(p)[0] for p in rest] == ["1"]
    assert last == ""
    with pytest.raises(InvalidPageToken):
        await world.profiles.list_persona_revisions(f"{T1}/personas/other", 2, token, None)


async def test_a_revision_that_does_not_exist_is_revision_not_found(world: World) -> None:
    made = await _helper(world)
    with pytest.raises(RevisionNotFound) as missing:
        await world.profiles.get_persona(f"{made.name}@2", None)
    assert missing.value.metadata["revision_id"] == "2"
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(f"{T1}/personas/nobody@1", None)
    for bad in ("@0", "@x", "@", "@01", "@1@2"):
        with pytest.raises(InvalidResourceName):
            await world.profiles.get_persona(made.name + bad, None)
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(f"{made.name}@1", Principal(T2, f"{T2}/users/eve"))
    with pytest.raises(PersonaNotFound):
        await world.profiles.list_persona_revisions(made.name, 0, "", Principal(T2, f"{T2}/users/eve"))
    with pytest.raises(PersonaNotFound):
        await world.profiles.list_persona_revisions(f"{T1}/personas/nobody", 0, "", None)


async def test_a_rollback_is_a_new_revision_with_the_earlier_values_and_signature(world: World) -> None:
    made = await _helper(world)
    signed = await world.profiles.update_persona(
        dataclasses.replace(made, signature=sign(world, made.bundle_digest), signing_key="publisher-1"),
        ["signature", "signing_key"],
        ADMIN,
    )
    changed = await world.profiles.update_persona(
        dataclasses.replace(
            signed, system_prompt="Something else.", model_preferences=(ModelOverride(PRIMARY, (BIG,)),)
        ),
        ["system_prompt", "model_preferences"],
        ADMIN,
    )
    assert not changed.signature, "a changed bundle is no longer signed"

    with pytest.raises(EtagMismatch):
        await world.profiles.rollback_persona(made.name, "2", signed.etag, ADMIN)
    with pytest.raises(RevisionNotFound):
        await world.profiles.rollback_persona(made.name, "9", "", ADMIN)
    with pytest.raises(InvalidResourceName):
        await world.profiles.rollback_persona(made.name, "", "", ADMIN)
    with pytest.raises(PersonaNotFound):
        await world.profiles.rollback_persona(made.name, "2", "", Principal(T2, f"{T2}/users/eve"))

    back = await world.profiles.rollback_persona(made.name, "2", changed.etag, ADMIN)
    assert _revision(back) == ("4", RevisionOrigin.ROLLBACK, f"{T1}/users/ada", "rollback to revision 2")
    assert (back.system_prompt, back.model_preferences) == ("You help.", ())
    assert back.signature == signed.signature
    assert back.signing_key == "publisher-1"
    assert back.bundle_digest == signed.bundle_digest == bundle_digest(back)
    assert back.create_time == made.create_time
    assert back.etag not in (made.etag, signed.etag, changed.etag)
    assert await world.profiles.get_persona(made.name, None) == back
    assert [_revision(p)[0] for p in (await world.profiles.list_persona_revisions(made.name, 0, "", None))[0]] == [
        "4",
        "3",
        "2",
        "1",
    ]


async def test_built_in_personas_have_no_revisions_until_the_tenant_replaces_one(world: World) -> None:
    name = f"{T1}/personas/default"
    builtin = await world.profiles.get_persona(name, None)
    assert builtin.built_in
    assert builtin.revision is None
    assert await world.profiles.list_persona_revisions(name, 0, "", None) == ([], "")
    with pytest.raises(RevisionNotFound):
        await world.profiles.get_persona(f"{name}@1", None)
    with pytest.raises(RevisionNotFound):
        await world.profiles.rollback_persona(name, "1", "", ADMIN)

    copy = await world.profiles.update_persona(dataclasses.replace(builtin, tone="dry"), ["tone"], ADMIN)
    assert _revision(copy) == ("1", RevisionOrigin.UPDATE, f"{T1}/users/ada", "")
    await world.profiles.delete_persona(name, copy.etag, ADMIN)
    assert (await world.profiles.get_persona(name, None)).revision is None
    # The deleted copy's revision stays for the sessions pinned to it.
    assert (await world.profiles.get_persona(f"{name}@1", None)).tone == "dry"


async def test_a_deleted_personas_revisions_stay_for_the_sessions_pinned_to_them(world: World) -> None:
    """DeletePersona: existing sessions keep running on the revision they loaded; new sessions
    cannot use the persona; one made again with the id numbers its revisions after the old."""
    made = await _helper(world)
    await world.profiles.update_persona(dataclasses.replace(made, tone="cold"), ["tone"], ADMIN)
    await world.profiles.delete_persona(made.name, "", ADMIN)
    with pytest.raises(PersonaNotFound):
        await world.profiles.get_persona(made.name, None)
    with pytest.raises(PersonaNotFound):
        await world.profiles.list_persona_revisions(made.name, 0, "", None)
    assert (await world.profiles.get_persona(f"{made.name}@2", None)).tone == "cold"
    again = await _helper(world)
    assert _revision(again)[0] == "3"
    assert (await world.profiles.get_persona(f"{made.name}@1", None)).tone == "warm"


async def test_revise_persona_is_the_write_of_other_origins(world: World) -> None:
    """What persona bundles and training use: their own origin, author and note."""
    made = await _helper(world)
    trained = await world.profiles.revise_persona(
        made, dataclasses.replace(made, tone="trained"), RevisionOrigin.TRAINING, f"{T1}/users/op", "3 examples"
    )
    assert _revision(trained) == ("2", RevisionOrigin.TRAINING, f"{T1}/users/op", "3 examples")
    installed = await world.profiles.revise_persona(
        None,
        persona(name=f"{T1}/personas/bundled", bundle_digest=bundle_digest(persona())),
        RevisionOrigin.BUNDLE_INSTALL,
        f"{T1}/users/ada",
        "version 7",
    )
    assert _revision(installed) == ("1", RevisionOrigin.BUNDLE_INSTALL, f"{T1}/users/ada", "version 7")
    with pytest.raises(EtagMismatch):
        await world.profiles.revise_persona(made, made, RevisionOrigin.UPDATE, "services/x", "")


async def test_a_pinned_persona_revision_resolves_with_its_own_preferences(world: World) -> None:
    made = await world.profiles.create_persona(
        T1, "helper", persona(model_preferences=(ModelOverride(PRIMARY, (LARGE,), temperature=0.1),)), "", ADMIN
    )
    await world.profiles.update_persona(
        dataclasses.replace(made, model_preferences=(ModelOverride(PRIMARY, (BIG,), temperature=0.9),)),
        ["model_preferences"],
        ADMIN,
    )
    pinned = await world.profiles.resolve(T1, PRIMARY, DEV, f"{made.name}@1", [])
    current = await world.profiles.resolve(T1, PRIMARY, DEV, made.name, [])
    assert [m.name for m in pinned.model_tiers] == [LARGE]
    assert pinned.temperature == 0.1
    assert [m.name for m in current.model_tiers] == [BIG]
    assert current.temperature == 0.9
    with pytest.raises(RevisionNotFound):
        await world.profiles.resolve(T1, PRIMARY, DEV, f"{made.name}@5", [])
    with pytest.raises(PersonaNotFound):
        await world.profiles.resolve(T1, PRIMARY, DEV, f"{T2}/personas/helper@1", [])


# -- model profiles ----------------------------------------------------------------------------


def _profile(**changes: object) -> ModelProfile:
    base = ModelProfile(name="", role=PRIMARY, mode=PROD, model_tiers=(TINY, LARGE), temperature=0.3)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test data by keyword


USD_2 = Money("USD", 2, 0)


async def test_profile_revisions_rollback_and_auto_select(world: World) -> None:
    made = await world.profiles.create_model_profile(
        T1, _profile(auto_select_bounds=AutoSelectBounds(USD_2, 0.5)), "", ADMIN
    )
    assert _revision(made) == ("1", RevisionOrigin.CREATE, f"{T1}/users/ada", "")
    assert made.auto_select_bounds == AutoSelectBounds(USD_2, 0.5)
    auto = await world.profiles.update_model_profile(
        dataclasses.replace(made, auto_select=True, auto_select_bounds=None),
        ["auto_select", "auto_select_bounds"],
        ADMIN,
    )
    assert _revision(auto)[:2] == ("2", RevisionOrigin.UPDATE)
    assert auto.auto_select_bounds is None
    chosen = await world.profiles.revise_model_profile(
        auto,
        dataclasses.replace(auto, model_tiers=(BIG, LARGE)),
        RevisionOrigin.AUTO_SELECT,
        "services/profiles",
        "run 1",
    )
    assert _revision(chosen) == ("3", RevisionOrigin.AUTO_SELECT, "services/profiles", "run 1")

    earlier = await world.profiles.get_model_profile(f"{made.name}@1", None)
    assert earlier.model_tiers == (TINY, LARGE)
    assert not earlier.auto_select
    with pytest.raises(RevisionNotFound):
        await world.profiles.get_model_profile(f"{made.name}@4", None)
    with pytest.raises(ModelProfileNotFound):
        await world.profiles.get_model_profile(f"{T1}/modelProfiles/primary-developer@1", None)
    with pytest.raises(ModelProfileNotFound):
        await world.profiles.list_model_profile_revisions(made.name, 0, "", Principal(T2, f"{T2}/users/eve"))

    with pytest.raises(EtagMismatch):
        await world.profiles.rollback_model_profile(made.name, "2", auto.etag, ADMIN)
    back = await world.profiles.rollback_model_profile(made.name, "2", chosen.etag, ADMIN)
    assert _revision(back) == ("4", RevisionOrigin.ROLLBACK, f"{T1}/users/ada", "rollback to revision 2")
    assert back.model_tiers == (TINY, LARGE), "the automatic change is undone, auto mode stays"
    assert back.auto_select, "the automatic change is undone, auto mode stays"
    first = await world.profiles.rollback_model_profile(made.name, "1", "", ADMIN)
    assert first.auto_select, "auto_select keeps its current value"
    assert first.auto_select_bounds == AutoSelectBounds(USD_2, 0.5)
    listed, _ = await world.profiles.list_model_profile_revisions(made.name, 0, "", None)
    assert [_revision(p)[0] for p in listed] == ["5", "4", "3", "2", "1"]

    del world.store.models[BIG]
    with pytest.raises(ModelNotFound):
        await world.profiles.rollback_model_profile(made.name, "3", "", ADMIN)

    await world.profiles.delete_model_profile(made.name, "", ADMIN)
    assert made.name not in world.store.profile_revisions


async def test_auto_select_bounds_are_checked(world: World) -> None:
    for bounds, field in [
        (AutoSelectBounds(min_quality=1.5), "model_profile.auto_select_bounds.min_quality"),
        (AutoSelectBounds(min_quality=-0.1), "model_profile.auto_select_bounds.min_quality"),
        (
            AutoSelectBounds(Money("EUR", 1, 0)),
            "model_profile.auto_select_bounds.max_cost_per_million_tokens.currency_code",
        ),
        (
            AutoSelectBounds(Money("", 1, 0)),
            "model_profile.auto_select_bounds.max_cost_per_million_tokens.currency_code",
        ),
        (AutoSelectBounds(Money("USD", -1, 0)), "model_profile.auto_select_bounds.max_cost_per_million_tokens"),
    ]:
        with pytest.raises(InvalidModelProfile) as refused:
            await world.profiles.create_model_profile(T1, _profile(auto_select_bounds=bounds), "", ADMIN)
        assert field in fields_of(refused.value), bounds
    made = await world.profiles.create_model_profile(T1, _profile(), "", ADMIN)
    assert made.auto_select_bounds is None
    with pytest.raises(InvalidUpdateMask):
        await world.profiles.update_model_profile(made, ["role"], ADMIN)
