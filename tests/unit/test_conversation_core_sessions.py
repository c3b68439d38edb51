"""Sessions at the core, over in-memory ports: created in the caller's tenant for a
persona (once per request id), listed page by page, updated against their etag,
acknowledged, and streamed to another process where the turn does not run."""

from __future__ import annotations

import uuid

import pytest

from skm_runtime.access import Principal, Verdict
from skm_runtime.errors import InvalidArgument
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from svc_conversation.errors import (
    EtagMismatch,
    InvalidSession,
    InvalidUpdateMask,
    PermissionDenied,
    PersonaNotSigned,
    PrincipalMissing,
    SequenceOutOfRange,
    SessionNotFound,
    TurnNotFound,
)
from svc_conversation.model import Session, SessionState, TurnState
from tests.support.conversation_memory import (
    ALICE,
    PERSONA,
    TENANT,
    ScriptedChatModel,
    World,
    answer,
    finished,
    new_session,
)

BOB = Principal(TENANT, f"{TENANT}/users/bob", ("member",))
MALLORY = Principal("tenants/t2", "tenants/t2/users/mallory", ("member",))


def rid() -> str:
    return str(uuid.uuid4())


async def test_a_session_is_created_once_per_request_id_and_owned_by_its_creator() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    request = rid()
    asked = Session(name="", persona=PERSONA, mode=DeploymentMode.PRODUCTION, display_name="trip")
    created = await process.create_session(ALICE, TENANT, asked, request)
    assert (created.owner, created.state, created.display_name) == (ALICE.user, SessionState.IDLE, "trip")
    assert created.name.startswith(f"{TENANT}/sessions/")
    assert created.etag
    assert (await process.create_session(ALICE, TENANT, asked, request)).name == created.name
    assert world.policy.owners[0] == (ALICE.user, created.name)


async def test_what_a_session_may_not_be() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    good = Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER)
    with pytest.raises(PrincipalMissing):
        await process.create_session(None, TENANT, good, "")
    with pytest.raises(PermissionDenied):
        await process.create_session(ALICE, "tenants/t2", good, "")
    with pytest.raises(InvalidSession) as invalid:
        await process.create_session(
            ALICE,
            TENANT,
            Session(
                name="",
                persona="tenants/t2/personas/x",
                model_overrides=(ModelOverride(ModelRole.PRIMARY), ModelOverride(ModelRole.PRIMARY)),
            ),
            "not-a-uuid",
        )
    fields = {v.field for v in invalid.value.violations}
    assert fields == {"session.persona", "session.mode", "session.model_overrides", "request_id"}
    world.profiles.personas[PERSONA] = world.profiles.personas[PERSONA].__class__(PERSONA, "x", (), signed=False)
    with pytest.raises(PersonaNotSigned):
        await process.create_session(ALICE, TENANT, Session(name="", persona=PERSONA, mode=DeploymentMode.TEST), "")


async def test_another_tenant_s_session_looks_like_none() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    session = await new_session(process)
    with pytest.raises(SessionNotFound):
        await process.get_session(MALLORY, session.name)
    with pytest.raises(InvalidSession):
        await process.get_session(ALICE, "sessions/x")
    with pytest.raises(TurnNotFound):
        await process.get_turn(ALICE, f"{session.name}/turns/01")
    with pytest.raises(InvalidArgument):
        await process.send_message(ALICE, session.name, "hi", "not-a-uuid", "")


async def test_sessions_are_listed_newest_first_page_by_page_and_operators_see_all() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    mine = [await new_session(process) for _ in range(3)]
    theirs = await new_session(process, BOB)
    world.policy.rules["can_operate"] = Verdict.DENY
    page, token = await process.list_sessions(ALICE, TENANT, 2, "")
    assert len(page) == 2
    assert token
    rest, last = await process.list_sessions(ALICE, TENANT, 2, token)
    assert {s.name for s in page + rest} == {s.name for s in mine}
    assert last == ""
    times = [s.update_time for s in page + rest]
    assert times == sorted(times, reverse=True)  # type: ignore[type-var]  # all set
    world.policy.rules["can_operate"] = Verdict.ALLOW
    everyone, _ = await process.list_sessions(ALICE, TENANT, 10, "")
    assert theirs.name in {s.name for s in everyone}


async def test_an_update_names_its_fields_and_loses_to_a_newer_etag() -> None:
    world = World(ScriptedChatModel())
    process = world.process()
    session = await new_session(process)
    renamed = await process.update_session(
        ALICE, Session(name=session.name, display_name="renamed", etag=session.etag), ["display_name"]
    )
    assert renamed.display_name == "renamed"
    assert renamed.etag != session.etag
    with pytest.raises(EtagMismatch):
        await process.update_session(ALICE, Session(name=session.name, etag=session.etag), ["display_name"])
    with pytest.raises(InvalidUpdateMask):
        await process.update_session(ALICE, Session(name=session.name), ["persona"])
    assert (await world.store.get_session(session.name) or (None,))[0] == renamed


async def test_a_stream_attached_where_the_turn_does_not_run_follows_it_there() -> None:
    world = World(ScriptedChatModel(answer("hello from A")))
    a, b = world.process("10.0.0.1:1"), world.process("10.0.0.2:1")
    session = await new_session(a)
    _, start, events = await b.attach(ALICE, session.name, None)
    assert start == 0
    await a.send_message(ALICE, session.name, "hi", rid(), "")
    done = await finished(a, session.name)
    seen = []
    while not seen or seen[-1] < done.last_sequence:
        seen.append((await anext(events)).sequence)
    # Each once, in order: the stored ones and the deltas A streamed.
    assert seen == sorted(set(seen))
    assert seen[0] == 1
    await b.acknowledge(ALICE, session.name, done.last_sequence)
    snapshot, start, _ = await b.attach(ALICE, session.name, None)
    assert start == done.last_sequence == snapshot.acknowledged_sequence
    with pytest.raises(SequenceOutOfRange):
        await b.attach(ALICE, session.name, -1)
    assert (await b.get_turn(ALICE, done.name)).state == TurnState.COMPLETED
    turns, _ = await b.list_turns(ALICE, session.name, 10, "")
    events_of_turn, token = await b.list_turn_events(ALICE, done.name, 2, "")
    assert [t.name for t in turns] == [done.name]
    assert len(events_of_turn) == 2
    assert token
