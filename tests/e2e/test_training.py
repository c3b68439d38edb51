"""Training mode through Envoy, on the whole mesh: an operator marks a completed turn of a
DEVELOPER-mode session, and it becomes an example of a new persona revision with its lineage
(svc_profiles reads the turn from svc_conversation as the operator); a session created after
that runs the new revision. The fixture model is UNTRAINED: its answer is meaningless text,
which is all the example needs to carry."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1.turn_pb2 import Turn
from skm.profiles.v1 import persona_service_pb2, persona_service_pb2_grpc, revision_pb2
from skm_stack import RunningStack
from tests.e2e.profiles import tenant_admin
from tests.e2e.test_conversation import _read_turn, _tenant


def _reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


async def test_an_operator_turns_a_marked_exchange_into_a_persona_revision(mesh: RunningStack) -> None:
    tenant, alice = await _tenant(mesh)
    admin = await tenant_admin(mesh, tenant)
    personas = persona_service_pb2_grpc.PersonaServiceStub(admin.channel)
    name = f"tenants/{tenant}/personas/default"

    session = await alice.session()
    stream = alice.events(session.name)
    turn = await alice.send(session.name, "What is the capital of France?")
    events = await _read_turn(stream, turn.name)
    assert events[-1].turn_state_changed.state == Turn.STATE_COMPLETED
    answered = await alice.stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=alice.metadata, timeout=10)

    trained = (
        await personas.TrainPersona(
            persona_service_pb2.TrainPersonaRequest(name=name, turns=[turn.name]), metadata=admin.metadata, timeout=30
        )
    ).persona
    assert [(e.user_text, e.agent_text, e.source_turn) for e in trained.examples] == [
        ("What is the capital of France?", answered.turn.response_text, turn.name)
    ]
    assert trained.revision.origin == revision_pb2.Revision.ORIGIN_TRAINING
    assert trained.revision.author == f"tenants/{tenant}/users/ada"
    assert list(trained.lineage.training_sessions) == [session.name]
    assert (trained.lineage.parent_persona, trained.lineage.operator) == (name, f"tenants/{tenant}/users/ada")
    assert not trained.signature

    # The revision is what new sessions run; the stored persona says so.
    stored = (
        await personas.GetPersona(persona_service_pb2.GetPersonaRequest(name=name), metadata=admin.metadata)
    ).persona
    assert stored.revision.revision_id == trained.revision.revision_id
    assert len(stored.examples) == 1
    later = await alice.session()
    assert later.persona_revision_id == trained.revision.revision_id

    # A member is not an operator; a turn that does not exist trains nothing.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await persona_service_pb2_grpc.PersonaServiceStub(alice.channel).TrainPersona(
            persona_service_pb2.TrainPersonaRequest(name=name, turns=[turn.name]), metadata=alice.metadata, timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await personas.TrainPersona(
            persona_service_pb2.TrainPersonaRequest(name=name, turns=[f"{session.name}/turns/999"]),
            metadata=admin.metadata,
            timeout=30,
        )
    assert (missing.value.code(), _reason(missing.value)) == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND")
