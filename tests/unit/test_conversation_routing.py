"""Interventions at the core: one for a turn whose live lease another process holds goes to
that process (and is written nowhere here); one forwarded here for a turn this process does
not run is refused so the sender reads again; where the lease ran out it acts here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from skm.conversation.v1 import session_pb2, turn_pb2
from skm_runtime.access import Principal
from svc_conversation.adapters.records import EncodedSessionStore
from svc_conversation.core import Conversation
from svc_conversation.errors import TurnOwnerChanged, TurnOwnerUnreachable
from svc_conversation.model import Lease, TurnCommand
from svc_conversation.settings import ConversationSettings

NAME = "tenants/t1/sessions/s1"
TURN = f"{NAME}/turns/1"
ALICE = Principal("tenants/t1", "tenants/t1/users/alice", ("member",))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
Turn = turn_pb2.Turn


class Store:
    """One session whose first turn runs, and the lease that turn carries."""

    def __init__(self, lease: Lease | None) -> None:
        self.session = session_pb2.Session(name=NAME, current_turn=TURN, last_sequence=5)
        self.turn = Turn(name=TURN, state=Turn.STATE_RUNNING, last_sequence=5)
        self.held = lease
        self.writes: list[Any] = []

    async def session_state(self, name: str) -> tuple[session_pb2.Session, int, Turn]:
        return session_pb2.Session.FromString(self.session.SerializeToString()), 5, await self.get_turn(name, 1)

    async def get_turn(self, name: str, ordinal: int) -> Turn:
        return Turn.FromString(self.turn.SerializeToString())

    async def lease(self, name: str, ordinal: int) -> tuple[Turn, Lease | None]:
        return Turn.FromString(self.turn.SerializeToString()), self.held

    async def write(self, write: Any) -> None:
        self.writes.append(write)


class Owners:
    """The other processes: what was sent where, answered as ``answer`` says."""

    def __init__(self, answer: Exception | None = None) -> None:
        self.answer = answer
        self.sent: list[tuple[str, TurnCommand]] = []

    async def intervene(self, address: str, principal: Principal, command: TurnCommand) -> Turn:
        self.sent.append((address, command))
        if self.answer is not None:
            raise self.answer
        return Turn(name=command.turn, state=Turn.STATE_INTERRUPTED)


def core(store: Store, owners: Owners) -> Conversation:
    return Conversation(
        EncodedSessionStore(cast(Any, store)),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        ConversationSettings(),
        runner_id="here",
        owners=owners,
        address="127.0.0.1:1",
        now=lambda: NOW,
    )


def live(runner: str = "there") -> Lease:
    return Lease(runner, "127.0.0.1:2", NOW + timedelta(seconds=10))


async def test_an_interrupt_for_a_turn_another_process_runs_goes_there_and_writes_nothing_here() -> None:
    store, owners = Store(live()), Owners()
    turn = await core(store, owners).interrupt(ALICE, TURN, "r1")
    assert turn.state == Turn.STATE_INTERRUPTED
    assert owners.sent == [("127.0.0.1:2", TurnCommand("INTERRUPT", TURN, "r1"))]
    assert store.writes == []


async def test_a_nudge_keeps_its_guidance_on_the_way() -> None:
    store, owners = Store(live()), Owners()
    await core(store, owners).nudge(ALICE, TURN, "shorter, please", "r2")
    assert owners.sent == [("127.0.0.1:2", TurnCommand("NUDGE", TURN, "r2", "shorter, please"))]


async def test_an_unreachable_owner_is_answered_with_unavailable_and_nothing_is_written() -> None:
    store = Store(live())
    owners = Owners(TurnOwnerUnreachable("gone", metadata={"turn": TURN}))
    with pytest.raises(TurnOwnerUnreachable):
        await core(store, owners).interrupt(ALICE, TURN, "r1")
    assert store.writes == []


async def test_a_forwarded_intervention_for_a_turn_run_elsewhere_is_refused_not_forwarded_again() -> None:
    store, owners = Store(live()), Owners()
    with pytest.raises(TurnOwnerChanged):
        await core(store, owners).interrupt(ALICE, TURN, "r1", routed=True)
    assert owners.sent == []
    assert store.writes == []


async def test_an_owner_that_no_longer_runs_the_turn_makes_the_sender_read_again() -> None:
    store, owners = Store(live()), Owners(TurnOwnerChanged("moved"))
    with pytest.raises(TurnOwnerUnreachable):
        await core(store, owners).interrupt(ALICE, TURN, "r1")
    # Read again each time; still held elsewhere, so never written here.
    assert len(owners.sent) == 3
    assert store.writes == []


@pytest.mark.parametrize("lease", [None, live("here"), Lease("there", "127.0.0.1:2", NOW - timedelta(seconds=1))])
async def test_an_interrupt_acts_here_when_no_other_process_holds_a_live_lease(lease: Lease | None) -> None:
    store, owners = Store(lease), Owners()
    turn = await core(store, owners).interrupt(ALICE, TURN, "r1")
    assert turn.state == Turn.STATE_INTERRUPTED
    assert owners.sent == []
    [write] = store.writes
    assert [t.state for t in write.turns] == [Turn.STATE_INTERRUPTED]


async def test_a_resume_here_takes_the_lease_with_this_process_s_address() -> None:
    store, owners = Store(live()), Owners()
    store.turn.state = Turn.STATE_INTERRUPTED
    store.session.state = session_pb2.Session.STATE_INTERRUPTED
    made = core(store, owners)
    started: list[str] = []
    made._turns.start_runner = lambda handle, turn, principal, head_start=None: started.append(turn.name)  # type: ignore[method-assign]  # no loop in a unit test
    turn = await made.resume(ALICE, TURN, "r3")
    assert turn.state == Turn.STATE_RUNNING
    assert owners.sent == []
    assert started == [TURN]
    [write] = store.writes
    assert write.lease == Lease("here", "127.0.0.1:1", NOW + timedelta(seconds=ConversationSettings().lease_seconds))
