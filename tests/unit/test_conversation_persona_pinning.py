"""A session keeps the persona revision it was created on, at the core over in-memory ports:
its turns load "{persona}@{revision}" (system prompt, tools, model preferences) whatever the
persona becomes; a new session pins the persona's revision as it is at that moment."""

from __future__ import annotations

import uuid

import pytest

from skm_runtime.values import DeploymentMode, ModelRole
from svc_conversation.errors import PersonaNotFound
from svc_conversation.model import PersonaBrief, Session, ToolCallResult, TurnState
from tests.support.conversation_memory import (
    ALICE,
    PERSONA,
    TENANT,
    ScriptedChatModel,
    World,
    answer,
    finished,
    payloads,
    reply,
)


def _brief(prompt: str, revision: str) -> PersonaBrief:
    tools = ("echo", "call_subordinate")
    return PersonaBrief(PERSONA, prompt, tools, bundle_digest=f"digest-{revision}", signed=True, revision_id=revision)


def _release(world: World, prompt: str, revision: str) -> None:
    """svc_profiles after a change: the persona is this revision, and it stays readable by its id."""
    brief = _brief(prompt, revision)
    world.profiles.personas[PERSONA] = brief
    world.profiles.personas[f"{PERSONA}@{revision}"] = brief


def _system_prompts(world: World) -> list[str]:
    """The system message of each PRIMARY call, in order."""
    return [request.messages[0]["content"] for tier, request in world.llm.requests if tier.name != "models/pre"]


async def test_turns_run_on_the_revision_the_session_was_created_on() -> None:
    world = World(ScriptedChatModel(answer("one"), answer("two"), answer("three")))
    process = world.process()
    _release(world, "You are revision one.", "1")
    asked = Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER)
    pinned = await process.create_session(ALICE, TENANT, asked, str(uuid.uuid4()))
    assert pinned.persona_revision_id == "1"
    assert pinned.persona_bundle_digest == "digest-1"
    assert pinned.pinned_persona == f"{PERSONA}@1"

    _release(world, "You are revision two.", "2")
    await process.send_message(ALICE, pinned.name, "hi", str(uuid.uuid4()), "")
    await finished(process, pinned.name)
    upgraded = await process.create_session(ALICE, TENANT, asked, str(uuid.uuid4()))
    assert upgraded.persona_revision_id == "2", "a new session pins the persona as it is now"
    await process.send_message(ALICE, upgraded.name, "hi", str(uuid.uuid4()), "")
    await finished(process, upgraded.name)

    prompts = _system_prompts(world)
    assert prompts[0].startswith("You are revision one."), prompts[0][:80]
    assert prompts[-1].startswith("You are revision two."), prompts[-1][:80]
    resolved = [
        p
        for (role, _), p in zip(world.profiles.asked, world.profiles.resolved_for, strict=True)
        if role is ModelRole.PRIMARY
    ]
    assert resolved[0] == f"{PERSONA}@1"
    assert resolved[-1] == f"{PERSONA}@2"
    assert (await process.get_session(ALICE, pinned.name)).persona_revision_id == "1"


async def test_a_session_without_a_revision_runs_the_current_persona() -> None:
    """A built-in persona (no revisions), or a session stored before sessions were pinned."""
    world = World(ScriptedChatModel(answer("one")))
    process = world.process()
    world.profiles.personas[PERSONA] = _brief("You are built in.", "")
    session = await process.create_session(
        ALICE, TENANT, Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER), ""
    )
    assert session.persona_revision_id == ""
    assert session.pinned_persona == PERSONA
    world.profiles.personas[PERSONA] = _brief("You are built in, reconfigured.", "")
    await process.send_message(ALICE, session.name, "hi", str(uuid.uuid4()), "")
    await finished(process, session.name)
    assert _system_prompts(world)[0].startswith("You are built in, reconfigured.")


async def test_a_pinned_revision_that_became_another_persona_fails_the_turn() -> None:
    """The persona was deleted and made again with the same id: its revision "1" is not the
    one the session started on (another bundle digest), so the turn fails, never runs it."""
    world = World(ScriptedChatModel(answer("one")))
    process = world.process()
    _release(world, "You are revision one.", "1")
    session = await process.create_session(
        ALICE, TENANT, Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER), ""
    )
    world.profiles.personas[f"{PERSONA}@1"] = PersonaBrief(
        PERSONA, "You are someone else.", ("echo",), bundle_digest="digest-other", signed=True, revision_id="1"
    )
    await process.send_message(ALICE, session.name, "hi", str(uuid.uuid4()), "")
    turn = await finished(process, session.name)
    assert (turn.state, turn.failure_reason) == (TurnState.FAILED, "PERSONA_NOT_FOUND")
    assert _system_prompts(world) == []
    with pytest.raises(PersonaNotFound):
        await process.send_message(ALICE, session.name, "hi", str(uuid.uuid4()), "echo")


async def test_a_subordinate_runs_on_its_superiors_revision() -> None:
    world = World(ScriptedChatModel(reply("call_subordinate", message="sum 2+2"), answer("4"), answer("It is 4.")))
    process = world.process()
    _release(world, "You are revision one.", "1")
    session = await process.create_session(
        ALICE, TENANT, Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER), ""
    )
    _release(world, "You are revision two.", "2")
    await process.send_message(ALICE, session.name, "delegate", str(uuid.uuid4()), "")
    assert (await finished(process, session.name)).state == TurnState.COMPLETED
    [result] = payloads(world.store, session.name, ToolCallResult)
    found = await world.store.get_session(result.execution)
    assert found is not None
    subordinate, _ = found
    assert subordinate.superior_session == session.name
    assert subordinate.persona_revision_id == "1"
    assert all(prompt.startswith("You are revision one.") for prompt in _system_prompts(world))


async def test_a_personas_examples_precede_the_sessions_own_exchanges() -> None:
    """Training mode's examples are shown to the model as earlier exchanges, after the system
    prompt and before the session's own turns."""
    world = World(ScriptedChatModel(answer("first"), answer("second")))
    process = world.process()
    brief = PersonaBrief(
        PERSONA,
        "You are trained.",
        ("echo",),
        bundle_digest="digest-3",
        signed=False,
        revision_id="3",
        examples=(("What is 2+2?", "4."), ("Capital of France?", "Paris.")),
    )
    world.profiles.personas[PERSONA] = brief
    world.profiles.personas[f"{PERSONA}@3"] = brief
    session = await process.create_session(
        ALICE, TENANT, Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER), str(uuid.uuid4())
    )
    for text in ("hello", "again"):
        await process.send_message(ALICE, session.name, text, str(uuid.uuid4()), "")
        await finished(process, session.name)
    primary = [request for tier, request in world.llm.requests if tier.name != "models/pre"]
    assert [(m["role"], m["content"]) for m in primary[-1].messages[1:7]] == [
        ("user", "What is 2+2?"),
        ("assistant", "4."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "hello"),
        ("assistant", "first"),
    ]
