"""Training mode in svc_profiles's core, over the in-memory store of test_profiles_core and an
in-memory svc_conversation: marked turns of DEVELOPER-mode sessions become examples of a new,
unsigned persona revision with its lineage; anything else is refused before anything is
written."""

from __future__ import annotations

import dataclasses

import pytest

from skm_runtime.access import Principal
from skm_runtime.values import DeploymentMode
from svc_profiles.bundle import bundle_digest
from svc_profiles.core.training import Training
from svc_profiles.errors import (
    EtagMismatch,
    InvalidPersona,
    PersonaNotFound,
    TrainingNotAllowed,
    TurnNotFound,
)
from svc_profiles.model import Exchange, Persona, RevisionOrigin
from tests.unit.test_profiles_core import T1, T2, World, persona, sign, world

__all__ = ["world"]  # the fixture, imported for these tests

ADMIN = Principal(T1, f"{T1}/users/ada", ("admin",))
OPERATOR = Principal(T1, f"{T1}/users/otto", ("operator",))
HELPER = f"{T1}/personas/helper"
S1, S2 = f"{T1}/sessions/s1", f"{T1}/sessions/s2"


class MemoryConversations:
    """svc_conversation's turns as training reads them (ports.Conversations), held in memory;
    a turn of another tenant is no turn for the caller, as svc_conversation answers it."""

    def __init__(self) -> None:
        self.exchanges: dict[str, Exchange] = {}
        self.asked_as: list[Principal] = []

    def add(
        self, turn: str, *, mode: DeploymentMode = DeploymentMode.DEVELOPER, persona: str = HELPER, done: bool = True
    ) -> str:
        session = turn.split("/turns/")[0]
        n = turn.rsplit("/", 1)[-1]
        self.exchanges[turn] = Exchange(turn, session, persona, mode, done, f"question {n}", f"answer {n}")
        return turn

    async def exchange(self, turn: str, principal: Principal) -> Exchange:
        self.asked_as.append(principal)
        found = self.exchanges.get(turn)
        if found is None or not turn.startswith(f"{principal.tenant}/"):
            raise TurnNotFound("no such turn", metadata={"turn": turn})
        return found


@pytest.fixture
def conversations() -> MemoryConversations:
    return MemoryConversations()


@pytest.fixture
def training(world: World, conversations: MemoryConversations) -> Training:
    return Training(world.profiles, conversations)


async def _signed_helper(world: World) -> Persona:
    digest = bundle_digest(dataclasses.replace(persona(), name=HELPER))
    return await world.profiles.create_persona(
        T1, "helper", persona(signature=sign(world, digest), signing_key="publisher-1"), "", ADMIN
    )


async def test_marked_turns_become_examples_of_a_new_unsigned_revision_with_lineage(
    world: World, conversations: MemoryConversations, training: Training
) -> None:
    base = await _signed_helper(world)
    assert base.signature
    turns = [conversations.add(f"{S1}/turns/1"), conversations.add(f"{S2}/turns/4"), conversations.add(f"{S1}/turns/2")]

    trained = await training.train_persona(HELPER, turns, base.etag, OPERATOR)

    assert [(e.user_text, e.agent_text, e.source_turn) for e in trained.examples] == [
        ("question 1", "answer 1", f"{S1}/turns/1"),
        ("question 4", "answer 4", f"{S2}/turns/4"),
        ("question 2", "answer 2", f"{S1}/turns/2"),
    ]
    assert trained.revision is not None
    assert base.revision is not None
    assert (trained.revision.revision_id, trained.revision.origin, trained.revision.author) == (
        str(int(base.revision.revision_id) + 1),
        RevisionOrigin.TRAINING,
        OPERATOR.user,
    )
    lineage = trained.lineage
    assert (lineage.parent_persona, lineage.parent_bundle_digest, lineage.parent_revision_id) == (
        HELPER,
        base.bundle_digest,
        base.revision.revision_id,
    )
    assert (lineage.training_sessions, lineage.operator) == ((S1, S2), OPERATOR.user)
    # What was signed is not what runs now: unsigned, with the digest of the new bundle.
    assert (trained.signature, trained.signing_key) == (b"", "")
    assert trained.bundle_digest == bundle_digest(trained) != base.bundle_digest
    assert all(p == OPERATOR for p in conversations.asked_as)
    # The persona as stored, and its parent revision unchanged.
    assert (await world.profiles.get_persona(HELPER, OPERATOR)).examples == trained.examples
    assert (await world.profiles.get_persona(f"{HELPER}@{base.revision.revision_id}", OPERATOR)).examples == ()

    # A second training keeps the earlier examples, oldest first.
    again = await training.train_persona(HELPER, [conversations.add(f"{S2}/turns/5")], "", OPERATOR)
    assert [e.source_turn for e in again.examples] == [*turns, f"{S2}/turns/5"]
    assert again.lineage.training_sessions == (S2,)


@pytest.mark.parametrize(
    ("mode", "persona_of_session", "done", "why"),
    [
        (DeploymentMode.PRODUCTION, HELPER, True, "its session is not in DEVELOPER mode"),
        (DeploymentMode.TEST, HELPER, True, "its session is not in DEVELOPER mode"),
        (DeploymentMode.DEVELOPER, f"{T1}/personas/other", True, "its session runs another persona"),
        (DeploymentMode.DEVELOPER, HELPER, False, "the turn did not complete"),
    ],
)
async def test_a_turn_that_cannot_train_the_persona_refuses_the_whole_request(
    world: World,
    conversations: MemoryConversations,
    training: Training,
    mode: DeploymentMode,
    persona_of_session: str,
    done: bool,
    why: str,
) -> None:
    base = await _signed_helper(world)
    good = conversations.add(f"{S1}/turns/1")
    bad = conversations.add(f"{S2}/turns/1", mode=mode, persona=persona_of_session, done=done)
    with pytest.raises(TrainingNotAllowed) as refused:
        await training.train_persona(HELPER, [good, bad], "", OPERATOR)
    assert refused.value.metadata == {"turn": bad, "why": why}
    assert await world.profiles.get_persona(HELPER, OPERATOR) == base


async def test_a_session_pinned_to_an_earlier_revision_still_trains_its_persona(
    world: World, conversations: MemoryConversations, training: Training
) -> None:
    await _signed_helper(world)
    turn = conversations.add(f"{S1}/turns/1", persona=f"{HELPER}@1")
    assert len((await training.train_persona(HELPER, [turn], "", OPERATOR)).examples) == 1


async def test_bad_requests_are_refused_before_svc_conversation_is_asked(
    world: World, conversations: MemoryConversations, training: Training
) -> None:
    base = await _signed_helper(world)
    for turns in ([], [f"{T1}/sessions/s1"], [f"{T2}/sessions/s1/turns/1"], [f"{S1}/turns/1", f"{S1}/turns/1"]):
        with pytest.raises(InvalidPersona):
            await training.train_persona(HELPER, turns, "", OPERATOR)
    with pytest.raises(InvalidPersona):
        await training.train_persona(HELPER, [f"{S1}/turns/{n}" for n in range(51)], "", OPERATOR)
    assert conversations.asked_as == []
    with pytest.raises(EtagMismatch):
        await training.train_persona(HELPER, [conversations.add(f"{S1}/turns/1")], "stale", OPERATOR)
    with pytest.raises(TurnNotFound):
        await training.train_persona(HELPER, [f"{S1}/turns/9"], "", OPERATOR)
    # Another tenant's persona does not exist for the caller; a call without a user trains nothing.
    with pytest.raises(PersonaNotFound):
        await training.train_persona(f"{T2}/personas/helper", [f"{S1}/turns/1"], "", OPERATOR)
    with pytest.raises(TrainingNotAllowed):
        await training.train_persona(HELPER, [f"{S1}/turns/1"], "", Principal(T1))
    assert await world.profiles.get_persona(HELPER, OPERATOR) == base


async def test_a_persona_holds_at_most_fifty_examples(
    world: World, conversations: MemoryConversations, training: Training
) -> None:
    await _signed_helper(world)
    first = [conversations.add(f"{S1}/turns/{n}") for n in range(1, 41)]
    current = await training.train_persona(HELPER, first, "", OPERATOR)
    more = [conversations.add(f"{S2}/turns/{n}") for n in range(1, 12)]
    with pytest.raises(InvalidPersona):
        await training.train_persona(HELPER, more, "", OPERATOR)
    assert await world.profiles.get_persona(HELPER, OPERATOR) == current
    assert len((await training.train_persona(HELPER, more[:10], "", OPERATOR)).examples) == 50


async def test_a_built_in_persona_trains_into_the_tenants_own_copy(
    world: World, conversations: MemoryConversations, training: Training
) -> None:
    built_in = f"{T1}/personas/default"
    before = await world.profiles.get_persona(built_in, OPERATOR)
    assert before.built_in
    turn = conversations.add(f"{S1}/turns/1", persona=built_in)
    trained = await training.train_persona(built_in, [turn], "", OPERATOR)
    assert not trained.built_in
    assert trained.revision is not None
    assert trained.revision.revision_id == "1"
    assert trained.lineage.parent_persona == built_in
    assert trained.system_prompt == before.system_prompt
