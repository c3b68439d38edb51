"""The PRIMARY role's fallback chain, through Envoy, with the real engine: a model that
cannot be reached is recorded as a failed call and the next model in the chain answers."""

from __future__ import annotations

import uuid

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.profiles.v1 import model_pb2 as profiles_model_pb2
from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)
from skm.type.v1 import deployment_mode_pb2, model_pb2
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from tests.e2e.test_conversation import TERMINAL, Client, _read_turn, _tenant, _token
from tests.support.ports import free_port

TINY = "models/skm-tiny-untrained"
PRIMARY = model_pb2.MODEL_ROLE_PRIMARY


async def test_a_model_that_cannot_be_reached_falls_back_to_the_next_in_the_chain(mesh: RunningStack) -> None:
    tenant, client = await _tenant(mesh)
    # Nothing listens on this port: every call to the model fails to connect.
    broken = f"models/unreachable-{uuid.uuid4().hex[:8]}"
    async with signed_channel(mesh.services["profiles"].addr) as profiles:
        await model_service_pb2_grpc.ModelServiceStub(profiles).CreateModel(
            model_service_pb2.CreateModelRequest(
                model=profiles_model_pb2.Model(
                    name=broken,
                    display_name="unreachable",
                    endpoint_uri=f"http://127.0.0.1:{free_port()}/v1",
                    served_model="nothing",
                    context_length=2048,
                    capabilities=[
                        profiles_model_pb2.MODEL_CAPABILITY_CHAT,
                        profiles_model_pb2.MODEL_CAPABILITY_TOOL_CALLS,
                    ],
                )
            ),
            timeout=10,
        )
    async with signed_channel(mesh.services["policy"].addr) as policy:
        await policy_service_pb2_grpc.PolicyServiceStub(policy).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[
                    access_pb2.Relationship(
                        subject=f"user:tenants/{tenant}/users/ada", relation="admin", object=f"tenant:tenants/{tenant}"
                    )
                ],
            ),
            timeout=10,
        )
    admin = Client(mesh, tenant, "ada")
    admin.metadata = (("authorization", f"Bearer {_token(mesh.state_dir, tenant, 'ada', roles=('admin',))}"),)
    await model_profile_service_pb2_grpc.ModelProfileServiceStub(admin.channel).CreateModelProfile(
        model_profile_service_pb2.CreateModelProfileRequest(
            parent=f"tenants/{tenant}",
            model_profile=model_profile_pb2.ModelProfile(
                role=PRIMARY, mode=deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER, model_tiers=[broken, TINY]
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=admin.metadata,
        timeout=10,
    )

    session = await client.session()
    stream = client.events(session.name)
    turn = await client.send(session.name, "hello")
    events = await _read_turn(stream, turn.name)
    calls = [
        e.model_call for e in events if e.WhichOneof("event") == "model_call" and e.model_call.usage.role == PRIMARY
    ]
    assert [(c.usage.model, c.failure_reason) for c in calls[:2]] == [(broken, "MODEL_UNAVAILABLE"), (TINY, "")]
    assert calls[0].failure_reason.isupper()
    ended = [e.turn_state_changed.state for e in events if e.WhichOneof("event") == "turn_state_changed"]
    assert ended[-1] in TERMINAL
