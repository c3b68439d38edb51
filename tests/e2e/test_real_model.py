"""The agent with a REAL pretrained model, through Envoy, as a user would talk to it.

The mesh's own engine serves the tiny untrained models (fast fixtures); this module starts
a second engine with the catalogue's real models and points a tenant's profiles at
Qwen2.5-Coder-0.5B-Instruct, at temperature 0, so its answers are deterministic. No
``tool_choice`` forces the model's hand: it chooses the tools itself, under the default
persona and the platform's constrained tool-call format.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from skm.conversation.v1 import turn_pb2
from skm.profiles.v1 import model_pb2 as profiles_model_pb2
from skm.type.v1 import model_pb2
from skm_stack import RunningStack
from skm_stack.catalogue import real_llms
from tests.e2e.profiles import CHAT, register_model, set_profile, tenant_admin
from tests.e2e.test_conversation import Client, _kinds, _read_turn, _tenant

pytestmark = pytest.mark.timeout(300)

Turn = turn_pb2.Turn
ROLES = (model_pb2.MODEL_ROLE_PRIMARY, model_pb2.MODEL_ROLE_PRE_SLM, model_pb2.MODEL_ROLE_UTILITY)


async def _tenant_on_the_real_model(mesh: RunningStack, engine: RunningStack) -> Client:
    """A tenant whose every chat role runs the real 0.5B model at temperature 0."""
    tenant, client = await _tenant(mesh)
    tier0 = real_llms()[0]
    assert engine.llm is not None
    assert engine.llm.models[0].alias == tier0.alias
    model = f"models/e2e-real-{uuid.uuid4().hex[:8]}"
    await register_model(
        mesh,
        name=model,
        display_name=f"{tier0.alias} (REAL) on the test's own engine",
        endpoint_uri=engine.llm_url,
        served_model=tier0.alias,
        context_length=tier0.context_length,
        capabilities=[CHAT, profiles_model_pb2.MODEL_CAPABILITY_STRUCTURED_OUTPUT],
    )
    admin = await tenant_admin(mesh, tenant)
    for role in ROLES:
        await set_profile(admin, role, [model], temperature=0.0, max_output_tokens=256)
    return client


async def _turn(client: Client, text: str) -> tuple[list[Any], Any]:
    session = await client.session()
    stream = client.events(session.name)
    turn = await client.send(session.name, text)
    events = await _read_turn(stream, turn.name)
    return events, events[-1]


async def test_the_real_model_answers_a_question_of_fact(mesh: RunningStack, real_engine: RunningStack) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    events, last = await _turn(client, "What is the capital of France?")
    assert last.turn_state_changed.state == Turn.STATE_COMPLETED, _kinds(events)
    kinds = _kinds(events)
    assert "token_delta" in kinds
    answer = events[kinds.index("final_response")].final_response.text
    assert "Paris" in answer, answer
    primary = [e.model_call for e in events if e.WhichOneof("event") == "model_call" and e.model_call.usage.role == 2]
    assert primary
    assert primary[0].usage.model.startswith("models/e2e-real-")


async def test_the_real_model_works_out_a_sum_with_python(mesh: RunningStack, real_engine: RunningStack) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    events, last = await _turn(client, "Work out 6 times 7 with Python.")
    kinds = _kinds(events)
    assert last.turn_state_changed.state == Turn.STATE_COMPLETED, kinds
    requested = [e.tool_call_requested for e in events if e.WhichOneof("event") == "tool_call_requested"]
    assert requested
    assert requested[0].tool.endswith("/tools/code_execution")
    arguments = json.loads(requested[0].arguments_json)
    assert arguments.get("runtime") == "python"
    results = [e.tool_call_result.result for e in events if e.WhichOneof("event") == "tool_call_result"]
    assert results
    assert results[0].HasField("success")
    assert "42" in results[0].success.output_json
    answer = events[kinds.index("final_response")].final_response.text
    assert "42" in answer, answer
