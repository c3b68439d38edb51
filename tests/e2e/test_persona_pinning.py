"""Sessions keep the persona revision they started with, through Envoy, with the real engine:
a persona upgraded to a new revision (another system prompt, another preferred model) does
not change a running session's turns, while a session created after the upgrade runs the
new revision."""

from __future__ import annotations

from typing import Any

from google.protobuf import field_mask_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.profiles.v1 import model_profile_pb2, persona_pb2, persona_service_pb2, persona_service_pb2_grpc
from skm.type.v1 import model_pb2
from skm_stack import RunningStack
from tests.e2e.profiles import tenant_admin
from tests.e2e.test_conversation import Client, _read_turn, _tenant

TINY = "models/skm-tiny-untrained"
LARGE = "models/skm-tiny-untrained-large"
PRIMARY = model_pb2.MODEL_ROLE_PRIMARY


def _models(events: list[Any]) -> set[str]:
    """The models the turn's PRIMARY calls went to."""
    return {
        e.model_call.usage.model
        for e in events
        if e.WhichOneof("event") == "model_call" and e.model_call.usage.role == PRIMARY
    }


async def _turn_models(client: Client, session: str, after: int = 0) -> set[str]:
    stream = client.events(session, after)
    turn = await client.send(session, "hello")
    return _models(await _read_turn(stream, turn.name))


async def _update(admin: Client, persona: persona_pb2.Persona, prompt: str, model: str) -> persona_pb2.Persona:
    reply = await persona_service_pb2_grpc.PersonaServiceStub(admin.channel).UpdatePersona(
        persona_service_pb2.UpdatePersonaRequest(
            persona=persona_pb2.Persona(
                name=persona.name,
                etag=persona.etag,
                system_prompt=prompt,
                model_preferences=[model_profile_pb2.ModelOverride(role=PRIMARY, model_tiers=[model])],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["system_prompt", "model_preferences"]),
        ),
        metadata=admin.metadata,
        timeout=10,
    )
    return reply.persona


async def test_a_session_keeps_its_persona_revision_across_an_upgrade(mesh: RunningStack) -> None:
    tenant, client = await _tenant(mesh)
    admin = await tenant_admin(mesh, tenant)
    personas = persona_service_pb2_grpc.PersonaServiceStub(admin.channel)
    name = f"tenants/{tenant}/personas/default"
    builtin = (
        await personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name), metadata=admin.metadata)
    ).persona
    assert not builtin.HasField("revision")

    # The tenant's own "default": revision 1 prefers TINY, revision 2 LARGE.
    first = await _update(admin, builtin, "You are the first revision.", TINY)
    assert first.revision.revision_id == "1"
    pinned = await client.session()
    assert pinned.persona_revision_id == "1"
    assert await _turn_models(client, pinned.name) == {TINY}

    second = await _update(admin, first, "You are the second revision.", LARGE)
    assert second.revision.revision_id == "2"
    upgraded = await client.session()
    assert upgraded.persona_revision_id == "2"

    got = await client.stub.GetSession(pb.GetSessionRequest(name=pinned.name), metadata=client.metadata, timeout=10)
    assert got.session.persona_revision_id == "1"
    assert got.session.persona_bundle_digest == first.bundle_digest
    assert await _turn_models(client, pinned.name, got.session.last_sequence) == {TINY}, "still revision 1"
    assert await _turn_models(client, upgraded.name) == {LARGE}, "a new session runs revision 2"
