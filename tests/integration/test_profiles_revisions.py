"""Revisions of personas and model profiles through svc_profiles's gRPC API on a real
PostgreSQL: listing, "{name}@{revision_id}", rollback, authors and origins, the errors a client
sees, and the migration that gives rows stored before revisions existed their revision 1."""

from __future__ import annotations

import asyncpg
import grpc
from google.protobuf import field_mask_pb2

from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    persona_pb2,
    persona_service_pb2,
    revision_pb2,
)
from skm.type.v1 import money_pb2
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_stack import RunningStack
from svc_profiles.__main__ import build
from svc_profiles.settings import ProfilesSettings
from tests.integration.test_profiles_service import (
    LARGE,
    PRIMARY,
    PROD,
    TINY,
    Client,
    client,
    profiles,
    refused,
    settings,
)
from tests.support.runtime import serving

__all__ = ["client", "profiles", "settings"]  # fixtures, imported for these tests

CREATE = revision_pb2.Revision.ORIGIN_CREATE
UPDATE = revision_pb2.Revision.ORIGIN_UPDATE
ROLLBACK = revision_pb2.Revision.ORIGIN_ROLLBACK


def _ids(personas: list[persona_pb2.Persona] | list[model_profile_pb2.ModelProfile]) -> list[str]:
    return [p.revision.revision_id for p in personas]


async def test_persona_revisions_get_and_rollback(client: Client) -> None:
    made = await client.create_persona("helper")
    alice = f"{client.tenant}/users/alice"
    assert (made.revision.revision_id, made.revision.origin, made.revision.author) == ("1", CREATE, alice)
    assert made.revision.create_time == made.create_time
    changed = await client.update_persona(
        persona_pb2.Persona(name=made.name, etag=made.etag, system_prompt="You help, briefly."), "system_prompt"
    )
    assert (changed.revision.revision_id, changed.revision.origin, changed.revision.author) == ("2", UPDATE, alice)

    listed = await client.personas.ListPersonaRevisions(
        persona_service_pb2.ListPersonaRevisionsRequest(name=made.name), metadata=client.admin, timeout=10
    )
    assert _ids(list(listed.personas)) == ["2", "1"]
    assert listed.next_page_token == ""
    assert listed.personas[1] == made, "a revision is the persona as it was, byte for byte"
    first = await client.personas.GetPersona(
        persona_service_pb2.GetPersonaRequest(name=f"{made.name}@1"), metadata=client.admin, timeout=10
    )
    assert first.persona == made

    stale = await refused(
        client.personas.RollbackPersona(
            persona_service_pb2.RollbackPersonaRequest(name=made.name, revision_id="1", etag=made.etag),
            metadata=client.admin,
        )
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    for call in (
        client.personas.RollbackPersona(
            persona_service_pb2.RollbackPersonaRequest(name=made.name, revision_id="7"), metadata=client.admin
        ),
        client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=f"{made.name}@7"), metadata=client.admin),
    ):
        missing = await refused(call)
        assert (missing.code, missing.reason, missing.domain) == (
            grpc.StatusCode.NOT_FOUND,
            "REVISION_NOT_FOUND",
            "profiles.skm",
        )
        assert missing.metadata["revision_id"] == "7"

    back = await client.personas.RollbackPersona(
        persona_service_pb2.RollbackPersonaRequest(name=made.name, revision_id="1", etag=changed.etag),
        metadata=client.admin,
        timeout=10,
    )
    assert back.persona.system_prompt == "You help."
    assert back.persona.bundle_digest == made.bundle_digest
    assert (back.persona.revision.revision_id, back.persona.revision.origin) == ("3", ROLLBACK)
    assert back.persona.revision.note == "rollback to revision 1"
    assert back.persona.revision.author == alice

    page = await client.personas.ListPersonaRevisions(
        persona_service_pb2.ListPersonaRevisionsRequest(name=made.name, page_size=2), metadata=client.admin
    )
    rest = await client.personas.ListPersonaRevisions(
        persona_service_pb2.ListPersonaRevisionsRequest(name=made.name, page_size=2, page_token=page.next_page_token),
        metadata=client.admin,
    )
    assert _ids(list(page.personas)) == ["3", "2"]
    assert _ids(list(rest.personas)) == ["1"]


async def test_another_tenants_revisions_are_not_found(client: Client) -> None:
    made = await client.create_persona("secret")
    stranger = principal_metadata(principal_message("tenants/stranger", "tenants/stranger/users/eve", ["admin"]))
    for call in (
        client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=f"{made.name}@1"), metadata=stranger),
        client.personas.ListPersonaRevisions(
            persona_service_pb2.ListPersonaRevisionsRequest(name=made.name), metadata=stranger
        ),
        client.personas.RollbackPersona(
            persona_service_pb2.RollbackPersonaRequest(name=made.name, revision_id="1"), metadata=stranger
        ),
    ):
        hidden = await refused(call)
        assert (hidden.code, hidden.reason) == (grpc.StatusCode.NOT_FOUND, "PERSONA_NOT_FOUND")


async def test_a_mesh_caller_without_a_user_is_the_author_as_a_service(client: Client) -> None:
    made = await client.create_persona("helper")
    service = principal_metadata(principal_message(client.tenant, "", []))
    reply = await client.personas.UpdatePersona(
        persona_service_pb2.UpdatePersonaRequest(
            persona=persona_pb2.Persona(name=made.name, etag=made.etag, tone="calm"),
            update_mask=field_mask_pb2.FieldMask(paths=["tone"]),
        ),
        metadata=service,
        timeout=10,
    )
    author = reply.persona.revision.author
    assert author.startswith("services/"), author
    assert author != "services/unknown", author


async def test_built_in_personas_have_no_revisions(client: Client) -> None:
    name = client.persona_name("default")
    builtin = (await client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name))).persona
    assert not builtin.HasField("revision")
    listed = await client.personas.ListPersonaRevisions(persona_service_pb2.ListPersonaRevisionsRequest(name=name))
    assert list(listed.personas) == []


async def test_a_deleted_personas_revisions_stay_for_its_sessions(client: Client, stack: RunningStack) -> None:
    """Sessions pinned to a revision keep running it after DeletePersona; a persona made again
    with the id numbers its revisions after the old ones, so "{name}@{n}" keeps its meaning."""
    made = await client.create_persona("helper")
    await client.update_persona(persona_pb2.Persona(name=made.name, etag=made.etag, tone="cold"), "tone")
    await client.personas.DeletePersona(persona_service_pb2.DeletePersonaRequest(name=made.name), metadata=client.admin)
    gone = await refused(
        client.personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=made.name), metadata=client.admin)
    )
    assert gone.reason == "PERSONA_NOT_FOUND"
    pinned = (
        await client.personas.GetPersona(
            persona_service_pb2.GetPersonaRequest(name=f"{made.name}@2"), metadata=client.admin
        )
    ).persona
    assert (pinned.tone, pinned.revision.revision_id) == ("cold", "2")
    again = await client.create_persona("helper")
    assert again.revision.revision_id == "3"


async def test_model_profile_revisions_and_rollback_keep_auto_select(client: Client) -> None:
    stub = client.model_profiles
    made = (
        await stub.CreateModelProfile(
            model_profile_service_pb2.CreateModelProfileRequest(
                parent=client.tenant,
                model_profile=model_profile_pb2.ModelProfile(
                    role=PRIMARY,
                    mode=PROD,
                    model_tiers=[TINY],
                    auto_select_bounds=model_profile_pb2.AutoSelectBounds(
                        max_cost_per_million_tokens=money_pb2.Money(currency_code="USD", units=3), min_quality=0.6
                    ),
                ),
            ),
            metadata=client.admin,
            timeout=10,
        )
    ).model_profile
    assert made.revision.revision_id == "1"
    assert made.auto_select_bounds.min_quality == 0.6
    bad = await refused(
        stub.UpdateModelProfile(
            model_profile_service_pb2.UpdateModelProfileRequest(
                model_profile=model_profile_pb2.ModelProfile(
                    name=made.name, etag=made.etag, auto_select_bounds=model_profile_pb2.AutoSelectBounds(min_quality=2)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["auto_select_bounds"]),
            ),
            metadata=client.admin,
        )
    )
    assert bad.reason == "INVALID_MODEL_PROFILE"
    assert "model_profile.auto_select_bounds.min_quality" in bad.fields
    changed = (
        await stub.UpdateModelProfile(
            model_profile_service_pb2.UpdateModelProfileRequest(
                model_profile=model_profile_pb2.ModelProfile(
                    name=made.name, etag=made.etag, model_tiers=[LARGE, TINY], auto_select=True
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["model_tiers", "auto_select", "auto_select_bounds"]),
            ),
            metadata=client.admin,
            timeout=10,
        )
    ).model_profile
    assert changed.revision.revision_id == "2"
    assert not changed.HasField("auto_select_bounds")

    earlier = await stub.GetModelProfile(
        model_profile_service_pb2.GetModelProfileRequest(name=f"{made.name}@1"), metadata=client.admin
    )
    assert earlier.model_profile == made
    missing = await refused(
        stub.GetModelProfile(
            model_profile_service_pb2.GetModelProfileRequest(name=f"{made.name}@3"), metadata=client.admin
        )
    )
    assert missing.reason == "REVISION_NOT_FOUND"
    stale = await refused(
        stub.RollbackModelProfile(
            model_profile_service_pb2.RollbackModelProfileRequest(name=made.name, revision_id="1", etag=made.etag),
            metadata=client.admin,
        )
    )
    assert stale.reason == "ETAG_MISMATCH"

    back = (
        await stub.RollbackModelProfile(
            model_profile_service_pb2.RollbackModelProfileRequest(name=made.name, revision_id="1", etag=changed.etag),
            metadata=client.admin,
            timeout=10,
        )
    ).model_profile
    assert list(back.model_tiers) == [TINY], "auto_select keeps its current value"
    assert back.auto_select, "auto_select keeps its current value"
    assert back.auto_select_bounds == made.auto_select_bounds
    assert (back.revision.revision_id, back.revision.origin, back.revision.note) == (
        "3",
        ROLLBACK,
        "rollback to revision 1",
    )
    listed = await stub.ListModelProfileRevisions(
        model_profile_service_pb2.ListModelProfileRevisionsRequest(name=made.name), metadata=client.admin
    )
    assert _ids(list(listed.model_profiles)) == ["3", "2", "1"]
    resolved = await client.resolve(PRIMARY, PROD)
    assert [m.name for m in resolved.model_tiers] == [TINY]


async def test_a_pinned_persona_resolves_with_that_revisions_preferences(client: Client) -> None:
    prefer = model_profile_pb2.ModelOverride
    made = await client.create_persona("helper", model_preferences=[prefer(role=PRIMARY, model_tiers=[LARGE])])
    await client.update_persona(
        persona_pb2.Persona(
            name=made.name, etag=made.etag, model_preferences=[prefer(role=PRIMARY, model_tiers=[TINY])]
        ),
        "model_preferences",
    )
    pinned = await client.resolve(PRIMARY, persona=f"{made.name}@1")
    current = await client.resolve(PRIMARY, persona=made.name)
    assert [m.name for m in pinned.model_tiers] == [LARGE]
    assert [m.name for m in current.model_tiers] == [TINY]


async def test_rows_stored_before_revisions_become_revision_1(
    settings: ProfilesSettings, client: Client, stack: RunningStack
) -> None:
    made = await client.create_persona("old")
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        # As a database made before revisions existed holds it.
        await connection.execute("DELETE FROM profiles.persona_revisions WHERE tenant = $1", client.tenant)
        await connection.execute(
            "UPDATE profiles.personas SET revision_id = 0, revision_author = '' WHERE tenant = $1", client.tenant
        )
    finally:
        await connection.close()
    spec = await build(settings, RuntimeSettings())
    async with serving(spec, record_spans=False) as second, signed_channel(second.target) as channel:
        migrated = Client(client.tenant, channel)
        got = await migrated.personas.GetPersona(
            persona_service_pb2.GetPersonaRequest(name=f"{made.name}@1"), metadata=migrated.admin
        )
        changed = await migrated.update_persona(persona_pb2.Persona(name=made.name, etag=made.etag, tone="new"), "tone")
    assert got.persona.revision.revision_id == "1"
    assert got.persona.system_prompt == made.system_prompt
    assert changed.revision.revision_id == "2"
