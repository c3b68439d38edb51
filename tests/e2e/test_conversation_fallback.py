"""The PRIMARY role's fallback chain, through Envoy, with the real engine: a model that
cannot be reached is recorded as a failed call and the next model in the chain answers."""

from __future__ import annotations

import uuid

from skm.profiles.v1 import model_pb2 as profiles_model_pb2
from skm.type.v1 import model_pb2
from skm_stack import RunningStack
from tests.e2e.profiles import CHAT, register_model, set_profile, tenant_admin
from tests.e2e.test_conversation import TERMINAL, _read_turn, _tenant
from tests.support.ports import free_port

TINY = "models/skm-tiny-untrained"
PRIMARY = model_pb2.MODEL_ROLE_PRIMARY


async def test_a_model_that_cannot_be_reached_falls_back_to_the_next_in_the_chain(mesh: RunningStack) -> None:
    tenant, client = await _tenant(mesh)
    # Nothing listens on this port: every call to the model fails to connect.
    broken = f"models/unreachable-{uuid.uuid4().hex[:8]}"
    await register_model(
        mesh,
        name=broken,
        display_name="unreachable",
        endpoint_uri=f"http://127.0.0.1:{free_port()}/v1",
        served_model="nothing",
        capabilities=[CHAT, profiles_model_pb2.MODEL_CAPABILITY_TOOL_CALLS],
    )
    admin = await tenant_admin(mesh, tenant)
    await set_profile(admin, PRIMARY, [broken, TINY])

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
