"""In-memory implementations of svc_conversation's ports (svc_conversation/ports.py), for
unit tests of its core: they keep state and order, hold leases and let them expire, as
the real adapters do. tests/integration/test_conversation_ports.py runs one behaviour
suite over MemorySessionStore and PostgresSessionStore, so what a unit test relies on
here is what PostgreSQL does.

Besides the ports: a scripted chat model (replies written by the test, streamed token by
token, a call that hangs until it is cancelled), svc_tools with tools the test writes,
svc_policy with rules and a queue of held actions an operator decides, and a bus that
carries live events and forwarded interventions between several Conversation objects
(the "processes" of a test) that share one store.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from skm_runtime.access import (
    AccessCheck,
    Approval,
    Decision,
    HeldState,
    Hold,
    Outcome,
    Payload,
    Principal,
    Verdict,
)
from skm_runtime.held_actions import ClaimAnswer, HeldActions, HeldEntry, MemoryPendingReports, ReportAnswer
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from svc_conversation.core import Conversation
from svc_conversation.errors import (
    DependencyUnavailable,
    ModelCallFailed,
    PersonaNotFound,
    SessionGone,
    ToolCallRejected,
    TurnOwnerUnreachable,
)
from svc_conversation.model import (
    ACTIVE,
    CallStats,
    ChatRequest,
    ChatResult,
    Command,
    CommandKind,
    ExecutionAccepted,
    ExecutionDecided,
    ExecutionFinished,
    ExecutionProgressed,
    ExecutionUpdate,
    Lease,
    Loaded,
    ModelTier,
    PersonaBrief,
    Progress,
    ResolvedProfile,
    Session,
    SessionEvent,
    ToolRequest,
    ToolResult,
    ToolSpec,
    ToolSuccess,
    Turn,
    TurnCommand,
    Write,
    split_name,
    turn_ordinal,
)
from svc_conversation.ports import Live, OnCut, OnDelta
from svc_conversation.settings import ConversationSettings

# -- the session store -------------------------------------------------------------------


@dataclass
class _TurnRow:
    turn: Turn
    runner: str | None = None
    address: str | None = None
    until: datetime | None = None


@dataclass
class _SessionRow:
    session: Session
    request_id: str | None
    reserved: int = 0
    turns: dict[int, _TurnRow] = field(default_factory=dict)
    # sequence -> (event, turn ordinal, token delta)
    events: dict[int, tuple[SessionEvent, int, bool]] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)


class MemorySessionStore:
    """The SessionStore port in a dict; ``audited`` holds (actor, event) of every audited
    event written, in order (what the outbox would publish)."""

    def __init__(self) -> None:
        self._rows: dict[str, _SessionRow] = {}
        self.audited: list[tuple[Principal, SessionEvent]] = []
        self.writes: list[Write] = []
        # Set to make the next writes fail (a lost database).
        self.failing: BaseException | None = None

    async def create_session(self, session: Session, request_id: str | None) -> tuple[Session, bool]:
        tenant, _ = split_name(session.name)
        if request_id is not None:
            for row in self._rows.values():
                if (
                    row.request_id == request_id
                    and row.session.owner == session.owner
                    and split_name(row.session.name)[0] == tenant
                ):
                    return row.session, False
        if session.name in self._rows:
            raise RuntimeError("session id collision")
        self._rows[session.name] = _SessionRow(session, request_id)
        return session, True

    async def get_session(self, name: str) -> tuple[Session, int] | None:
        row = self._rows.get(name)
        return None if row is None else (row.session, row.reserved)

    async def load(self, name: str) -> Loaded | None:
        row = self._rows.get(name)
        if row is None:
            return None
        newest = row.turns[max(row.turns)].turn if row.turns and row.session.current_turn else None
        return Loaded(row.session, row.reserved, newest)

    async def list_sessions(
        self, tenant: str, owner: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[Session]:
        def key(session: Session) -> tuple[datetime, str]:
            return (session.update_time or datetime.min.replace(tzinfo=UTC), split_name(session.name)[1])

        found = [
            row.session
            for row in self._rows.values()
            if split_name(row.session.name)[0] == tenant and (owner is None or row.session.owner == owner)
        ]
        found.sort(key=key, reverse=True)
        if after is not None:
            found = [s for s in found if key(s) < after]
        return found[:limit]

    async def delete_session(self, name: str) -> None:
        self._rows.pop(name, None)

    async def reserve(self, name: str, upto: int) -> None:
        row = self._rows.get(name)
        if row is not None:
            row.reserved = max(row.reserved, upto)

    async def write(self, write: Write) -> None:
        if self.failing is not None:
            raise self.failing
        row = self._rows.get(write.session.name)
        if row is None:
            raise SessionGone(write.session.name)
        self.writes.append(write)
        row.session = write.session
        row.reserved = max(row.reserved, write.reserved_sequence)
        for turn in write.turns:
            ordinal = turn_ordinal(turn.name)
            stored = row.turns.get(ordinal)
            if stored is None:
                stored = row.turns[ordinal] = _TurnRow(turn)
            stored.turn = turn
            if write.lease is not None:
                stored.runner, stored.address, stored.until = write.lease.runner, write.lease.address, write.lease.until
        for item in write.events:
            # Primary key: a number is stored once.
            if item.event.sequence in row.events:
                raise RuntimeError(f"event {item.event.sequence} exists")
            row.events[item.event.sequence] = (item.event, item.turn, item.delta)
        for sequence, (_, ordinal, delta) in list(row.events.items()):
            if delta and ordinal in write.compact_turns:
                del row.events[sequence]
        for command in write.commands:
            row.commands.setdefault(command.request_id, command)
        if write.actor is not None:
            self.audited.extend((write.actor, item.event) for item in write.events if not item.delta)

    async def get_turn(self, session: str, ordinal: int) -> Turn | None:
        row = self._rows.get(session)
        found = row.turns.get(ordinal) if row is not None else None
        return None if found is None else found.turn

    async def turn_by_request(self, session: str, request_id: str) -> Turn | None:
        row = self._rows.get(session)
        for stored in row.turns.values() if row is not None else ():
            if stored.turn.request_id == request_id:
                return stored.turn
        return None

    async def list_turns(self, session: str, after_ordinal: int, limit: int) -> list[Turn]:
        row = self._rows.get(session)
        if row is None:
            return []
        return [row.turns[o].turn for o in sorted(row.turns) if o > after_ordinal][:limit]

    async def list_events(
        self, session: str, after_sequence: int, limit: int, *, turn: int | None = None
    ) -> list[SessionEvent]:
        row = self._rows.get(session)
        if row is None:
            return []
        found = [
            row.events[s][0]
            for s in sorted(row.events)
            if s > after_sequence and (turn is None or row.events[s][1] == turn)
        ]
        return found[:limit]

    async def command(self, session: str, request_id: str) -> Command | None:
        row = self._rows.get(session)
        return None if row is None else row.commands.get(request_id)

    def _active(self) -> list[tuple[str, _TurnRow]]:
        return [
            (name, stored)
            for name, row in self._rows.items()
            for stored in row.turns.values()
            if stored.turn.state in ACTIVE
        ]

    async def renew(self, lease: Lease, sessions: Sequence[str]) -> None:
        for name, stored in self._active():
            if stored.runner == lease.runner and name in sessions:
                stored.until, stored.address = lease.until, lease.address

    async def take_own(self, lease: Lease) -> list[str]:
        taken = []
        for name, stored in self._active():
            if stored.runner == lease.runner:
                stored.until, stored.address = lease.until, lease.address
                taken.append(name)
        return taken

    async def take_orphans(self, lease: Lease, now: datetime, limit: int = 50) -> list[str]:
        taken = []
        for name, stored in self._active():
            if len(taken) >= limit:
                break
            if stored.until is None or stored.until < now:
                stored.runner, stored.address, stored.until = lease.runner, lease.address, lease.until
                taken.append(name)
        return taken

    async def lease(self, session: str, ordinal: int) -> tuple[Turn, Lease | None] | None:
        row = self._rows.get(session)
        stored = row.turns.get(ordinal) if row is not None else None
        if stored is None:
            return None
        if stored.runner is None or stored.until is None:
            return stored.turn, None
        return stored.turn, Lease(stored.runner, stored.address or "", stored.until)


class MemoryHotState:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def mirror(self, session: Session) -> None:
        self.sessions[session.name] = session

    async def forget(self, name: str) -> None:
        self.sessions.pop(name, None)


# -- between "processes" -----------------------------------------------------------------


class LiveBus:
    """The live events of every process (what Redis Streams are): per session, its entries
    in sequence order (an entry at or below the newest is refused, as XADD refuses it)."""

    def __init__(self) -> None:
        self.entries: dict[str, list[Live]] = {}
        self.readers: list[MemorySessionStreams] = []

    def add(self, session: str, event: SessionEvent, prev: int) -> None:
        entries = self.entries.setdefault(session, [])
        if entries and entries[-1][0].sequence >= event.sequence:
            return
        entries.append((event, prev))
        for reader in self.readers:
            reader.wake(session)

    def after(self, session: str, sequence: int) -> list[Live]:
        return [entry for entry in self.entries.get(session, []) if entry[0].sequence > sequence]


class MemorySessionStreams:
    """One process's view of the LiveBus: what it publishes goes there; what it follows is
    read from there (soon, as a reader task would) and delivered."""

    def __init__(self, bus: LiveBus) -> None:
        self._bus = bus
        self._after: dict[str, int] = {}
        self._deliver: Callable[[str, int, list[Live]], None] = lambda _n, _a, _e: None
        self._lost: Callable[[str], None] = lambda _n: None
        bus.readers.append(self)

    def start(self, deliver: Callable[[str, int, list[Live]], None], lost: Callable[[str], None]) -> None:
        self._deliver, self._lost = deliver, lost

    def publish(self, session: str, event: SessionEvent, prev: int) -> None:
        self._bus.add(session, event, prev)

    def follow(self, session: str, after: int) -> None:
        current = self._after.get(session)
        if current is not None and current <= after:
            return
        self._after[session] = after
        self.wake(session)

    def unfollow(self, session: str) -> None:
        self._after.pop(session, None)

    def wake(self, session: str) -> None:
        if session in self._after:
            asyncio.get_running_loop().call_soon(self._read, session)

    def _read(self, session: str) -> None:
        after = self._after.get(session)
        if after is None:
            return
        entries = self._bus.after(session, after)
        if entries:
            self._after[session] = entries[-1][0].sequence
            self._deliver(session, after, entries)

    def lose(self, session: str) -> None:
        """The live events of ``session`` can no longer be read."""
        self._lost(session)


class MemoryTurnOwners:
    """The processes of a test by address: an intervention goes to the Conversation there,
    marked as forwarded."""

    def __init__(self) -> None:
        self.processes: dict[str, Conversation] = {}
        self.sent: list[tuple[str, TurnCommand]] = []

    async def intervene(self, address: str, principal: Principal, command: TurnCommand) -> Turn:
        self.sent.append((address, command))
        target = self.processes.get(address)
        if target is None:
            raise TurnOwnerUnreachable("nobody listens there", metadata={"turn": command.turn})
        if command.kind == CommandKind.INTERRUPT:
            return await target.interrupt(principal, command.turn, command.request_id, routed=True)
        if command.kind == CommandKind.RESUME:
            return await target.resume(principal, command.turn, command.request_id, routed=True)
        if command.kind == CommandKind.NUDGE:
            return await target.nudge(principal, command.turn, command.text, command.request_id, routed=True)
        return await target.rerun(principal, command.turn, command.request_id, routed=True)


# -- svc_profiles, svc_tools, svc_policy -------------------------------------------------


def tier(n: int, name: str = "") -> ModelTier:
    return ModelTier(name or f"models/m{n}", n, "memory://engine", name or f"m{n}", context_length=8192)


class MemoryProfiles:
    """Personas by name, and per role the tiers it resolves to (overrides ignored)."""

    def __init__(self, personas: Sequence[PersonaBrief], tiers: dict[ModelRole, tuple[ModelTier, ...]]) -> None:
        self.personas = {persona.name: persona for persona in personas}
        self.tiers = tiers
        self.asked: list[tuple[ModelRole, tuple[ModelOverride, ...]]] = []
        # The persona of each resolution ("{persona}@{revision}" for a pinned one).
        self.resolved_for: list[str] = []
        self.unavailable = False

    async def persona(self, name: str, principal: Principal) -> PersonaBrief:
        if self.unavailable:
            raise DependencyUnavailable("svc_profiles is away")
        if name not in self.personas:
            raise PersonaNotFound(f"persona {name!r} does not exist")
        return self.personas[name]

    async def resolve(
        self,
        principal: Principal,
        role: ModelRole,
        mode: DeploymentMode | None,
        persona: str,
        overrides: Sequence[ModelOverride],
    ) -> ResolvedProfile:
        if self.unavailable:
            raise DependencyUnavailable("svc_profiles is away")
        self.asked.append((role, tuple(overrides)))
        self.resolved_for.append(persona)
        return ResolvedProfile(role, self.tiers.get(role, ()), max_output_tokens=256)


# A tool of the test: its arguments in, its updates out (the last a result).
ToolScript = Callable[[dict[str, Any]], AsyncIterator[ExecutionUpdate]]


async def _echo(arguments: dict[str, Any]) -> AsyncIterator[ExecutionUpdate]:
    yield ExecutionDecided(Decision(Verdict.ALLOW, "ALLOWED"))
    yield ExecutionProgressed(Progress("running"))
    yield ExecutionFinished(ToolSuccess(json.dumps({"echo": arguments})))


class _Execution:
    def __init__(self, updates: AsyncIterator[ExecutionUpdate]) -> None:
        self._updates = updates
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[ExecutionUpdate]:
        return self._updates

    def cancel(self) -> None:
        self.cancelled = True


class MemoryToolRunner:
    """svc_tools with the tools the test writes; ``echo`` answers with its arguments. One
    execution per request id: a call repeated with it attaches to the same (its script is
    not run again)."""

    RESPONSE = ToolSpec("response", "answer the user", {"type": "object", "properties": {"text": {"type": "string"}}})
    SUBORDINATE = ToolSpec(
        "call_subordinate", "ask a subordinate", {"type": "object", "properties": {"message": {"type": "string"}}}
    )

    def __init__(self, scripts: dict[str, ToolScript] | None = None) -> None:
        self.scripts: dict[str, ToolScript] = {"echo": _echo, **(scripts or {})}
        self.requests: list[ToolRequest] = []
        self.cancelled: list[str] = []
        self._executions: dict[str, str] = {}
        self._results: dict[str, ToolResult] = {}
        self._numbers = itertools.count(1)

    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        tools = [ToolSpec(name, f"the {name} tool", {"type": "object"}) for name in self.scripts]
        return [self.RESPONSE, self.SUBORDINATE, *tools]

    def execute(self, principal: Principal, request: ToolRequest) -> _Execution:
        self.requests.append(request)
        return _Execution(self._run(principal, request))

    async def _run(self, principal: Principal, request: ToolRequest) -> AsyncIterator[ExecutionUpdate]:
        name = request.tool.rsplit("/", 1)[-1]
        script = self.scripts.get(name)
        if script is None:
            raise ToolCallRejected("TOOL_NOT_FOUND", f"no tool {name!r}")
        if request.request_id not in self._executions:
            self._executions[request.request_id] = f"{principal.tenant}/executions/e{next(self._numbers)}"
        execution = self._executions[request.request_id]
        yield ExecutionAccepted(execution)
        done = self._results.get(request.request_id)
        if done is not None:
            yield ExecutionFinished(done)
            return
        async for update in script(json.loads(request.arguments_json or "{}")):
            if isinstance(update, ExecutionFinished):
                self._results[request.request_id] = update.result
            yield update

    async def cancel(self, principal: Principal, execution: str) -> None:
        self.cancelled.append(execution)

    def payload(self, request: ToolRequest) -> Payload:
        return Payload("memory/ToolRequest", json.dumps(dataclasses.asdict(request)).encode())


@dataclass
class HeldAction:
    name: str
    principal: Principal
    hold: Hold
    state: HeldState = HeldState.PENDING
    note: str = ""
    claim_id: str = ""
    outcome: Outcome | None = None


class _Calls:
    """MemoryPolicyGate's store as the held-action protocol's PolicyCalls port."""

    def __init__(self, gate: MemoryPolicyGate) -> None:
        self._gate = gate

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        raise NotImplementedError("checks go through MemoryPolicyGate.check")

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        raise NotImplementedError("holds go through MemoryPolicyGate.check")

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        return await self._gate.resolved(principal, name)

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer:
        return await self._gate.claim(principal, name, claim_id)

    async def complete(self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome) -> ReportAnswer:
        return await self._gate.report(principal, name, claim_id, outcome)

    async def cancel(self, principal: Principal | None, name: str) -> None:
        raise NotImplementedError("svc_conversation withdraws nothing")


class MemoryPolicyGate:
    """svc_policy: a verdict per relation (ALLOW unless ``rules`` says otherwise); a check
    REQUIRES_APPROVAL with a hold keeps a held action (one per hold request id) that the
    test decides with :meth:`decide`; a waiter claims an approved one (once)."""

    def __init__(self, rules: dict[str, Verdict] | None = None) -> None:
        self.rules = rules or {}
        self.owners: list[tuple[str, str]] = []
        self.checks: list[AccessCheck] = []
        self.held: dict[str, HeldAction] = {}
        self._by_request: dict[str, str] = {}
        self._changed = asyncio.Condition()
        self.closed = False
        # The wait, claim and outcome go through the shared protocol, as in the real adapter.
        self._protocol = HeldActions(_Calls(self), MemoryPendingReports())

    async def own_session(self, principal: Principal, session: str) -> None:
        self.owners.append((principal.user, session))

    async def check(self, principal: Principal, check: AccessCheck, hold: Hold | None = None) -> Decision:
        self.checks.append(check)
        verdict = self.rules.get(check.relation, Verdict.ALLOW)
        if verdict != Verdict.REQUIRES_APPROVAL or hold is None:
            return Decision(verdict, f"RULE_{verdict.value}")
        name = self._by_request.get(hold.request_id)
        if name is None:
            name = f"{principal.tenant}/blockedActions/b{len(self.held) + 1}"
            self._by_request[hold.request_id] = name
            self.held[name] = HeldAction(name, principal, hold)
        return Decision(verdict, "NEEDS_APPROVAL", blocked_action=name)

    async def decide(self, name: str, state: HeldState, note: str = "") -> None:
        """An operator's decision (APPROVED, REJECTED...) on a held action."""
        async with self._changed:
            self.held[name] = replace(self.held[name], state=state, note=note)
            self._changed.notify_all()

    async def pending(self) -> HeldAction:
        """The first action held and not decided yet, once there is one."""
        while True:
            for action in self.held.values():
                if action.state == HeldState.PENDING:
                    return action
            await asyncio.sleep(0.005)

    async def approval(self, principal: Principal, blocked_action: str, claim_id: str) -> Approval:
        return await self._protocol.approval(principal, blocked_action, claim_id)

    async def complete(self, principal: Principal, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        await self._protocol.complete(principal, blocked_action, claim_id, outcome)

    # -- svc_policy's answers, as the shared held-action protocol asks them (PolicyCalls) ---

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        async with self._changed:
            await self._changed.wait_for(lambda: self.held[name].state != HeldState.PENDING)
            action = self.held[name]
            return HeldEntry(name, action.state, action.note, action.claim_id)

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer:
        action = self.held[name]
        if action.state in (HeldState.EXECUTING, HeldState.EXECUTED) and action.claim_id == claim_id:
            return ClaimAnswer.CLAIMED
        if action.state != HeldState.APPROVED:
            return ClaimAnswer.CHANGED
        self.held[name] = replace(action, state=HeldState.EXECUTING, claim_id=claim_id)
        return ClaimAnswer.CLAIMED

    async def report(self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome) -> ReportAnswer:
        action = self.held[name]
        if action.claim_id != claim_id or action.state not in (HeldState.EXECUTING, HeldState.EXECUTED):
            return ReportAnswer.REFUSED
        self.held[name] = replace(action, state=HeldState.EXECUTED, outcome=outcome)
        return ReportAnswer.TAKEN

    async def close(self) -> None:
        await self._protocol.close()
        self.closed = True


# -- the chat model ----------------------------------------------------------------------


def reply(tool: str, **arguments: Any) -> str:
    """A model reply calling ``tool``."""
    return json.dumps({"thoughts": ["."], "tool_name": tool, "tool_args": arguments})


def answer(text: str) -> str:
    return reply("response", text=text)


@dataclass(frozen=True)
class Fail:
    """A model call that fails (before any token) with ``reason``."""

    reason: str = "MODEL_UNAVAILABLE"


@dataclass(frozen=True)
class Hang:
    """A model call that streams ``text`` and then waits until it is cancelled."""

    text: str = ""


Script = str | Fail | Hang


class ScriptedChatModel:
    """The ChatModel port, answering each PRIMARY call with the next of ``script`` (text is
    streamed 4 characters a delta), and every other call (pre-SLM, summaries) with
    ``other``. ``requests`` holds each call's tier and messages."""

    def __init__(self, *script: Script, other: str = '{"intent": "chat", "confidence": 0.9, "slots": {}}') -> None:
        self.script = list(script)
        self.other = other
        self.requests: list[tuple[ModelTier, ChatRequest]] = []
        self.hanging = asyncio.Event()

    def _stats(self, tier: ModelTier, output: int) -> CallStats:
        return CallStats(tier.name, tier.tier, 10, output, 0.01, 0.02, 100.0, 0.000_123, "USD")

    async def chat(
        self, tier: ModelTier, request: ChatRequest, on_delta: OnDelta, *, on_cut: OnCut | None = None
    ) -> ChatResult:
        self.requests.append((tier, copy.deepcopy(request)))
        step = self.script.pop(0) if self.script else answer("(the script ran out)")
        if isinstance(step, Fail):
            raise ModelCallFailed(step.reason, "scripted", self._stats(tier, 0))
        text = step.text if isinstance(step, Hang) else step
        sent = 0
        try:
            for index in range(0, len(text), 4):
                await on_delta(text[index : index + 4])
                sent += 1
            if isinstance(step, Hang):
                self.hanging.set()
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            if on_cut is not None:
                on_cut(self._stats(tier, sent))
            raise
        return ChatResult(text, self._stats(tier, sent))

    async def complete(self, tier: ModelTier, request: ChatRequest) -> ChatResult:
        self.requests.append((tier, copy.deepcopy(request)))
        return ChatResult(self.other, self._stats(tier, 1))


# -- a clock -----------------------------------------------------------------------------


class Clock:
    """Time as the test moves it."""

    def __init__(self, at: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


async def settle(condition: Callable[[], bool] | Callable[[], Awaitable[bool]], *, seconds: float = 5.0) -> None:
    """Waits until ``condition`` holds."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > until:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.002)


# -- a world of processes ----------------------------------------------------------------

TENANT = "tenants/t1"
ALICE = Principal(TENANT, f"{TENANT}/users/alice", ("member",))
PERSONA = f"{TENANT}/personas/helper"


@dataclass
class World:
    """What the processes of a test share: the store, svc_profiles, svc_tools, svc_policy,
    the model, the live events, the clock."""

    llm: ScriptedChatModel
    tools: MemoryToolRunner = field(default_factory=MemoryToolRunner)
    policy: MemoryPolicyGate = field(default_factory=MemoryPolicyGate)
    store: MemorySessionStore = field(default_factory=MemorySessionStore)
    hot: MemoryHotState = field(default_factory=MemoryHotState)
    bus: LiveBus = field(default_factory=LiveBus)
    owners: MemoryTurnOwners = field(default_factory=MemoryTurnOwners)
    clock: Clock = field(default_factory=Clock)
    profiles: MemoryProfiles = field(
        default_factory=lambda: MemoryProfiles(
            [PersonaBrief(PERSONA, "You help.", ("echo", "call_subordinate", "slow"), signed=True)],
            {ModelRole.PRIMARY: (tier(0), tier(1)), ModelRole.PRE_SLM: (tier(9, "models/pre"),)},
        )
    )

    def process(self, address: str = "10.0.0.1:1", **limits: Any) -> Conversation:
        """A svc_conversation process on ``address`` (also its runner id)."""
        made = Conversation(
            self.store,
            self.hot,
            self.profiles,
            self.tools,
            self.policy,
            self.llm,
            ConversationSettings(**limits),
            runner_id=address,
            streams=MemorySessionStreams(self.bus),
            owners=self.owners,
            address=address,
            now=self.clock,
        )
        self.owners.processes[address] = made
        return made


async def new_session(process: Conversation, principal: Principal = ALICE) -> Session:
    return await process.create_session(
        principal, principal.tenant, Session(name="", persona=PERSONA, mode=DeploymentMode.DEVELOPER), ""
    )


async def finished(process: Conversation, session: str) -> Turn:
    """The session's newest turn once its run here has ended."""
    runner = process.runner(session)
    if runner is not None:
        await runner
    found = await process._handles.get(session)  # the test looks at what the process holds
    assert found.turn is not None
    return found.turn


def payloads(store: MemorySessionStore, session: str, kind: type) -> list[Any]:
    """The payloads of ``kind`` of the session's stored events, in order."""
    row = store._rows[session]  # the fake's own state
    return [row.events[s][0].payload for s in sorted(row.events) if isinstance(row.events[s][0].payload, kind)]


PRIMARY, PRE_SLM, UTILITY = ModelRole.PRIMARY, ModelRole.PRE_SLM, ModelRole.UTILITY
