"""What svc_conversation's core needs from the world, as protocols its adapters implement
(adapters/) and tests fake in memory (tests/support/conversation_memory.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from skm_runtime.access import AccessCheck, Approval, Decision, Hold, Outcome, Payload, Principal
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from svc_conversation.model import (
    Budget,
    CallStats,
    ChatRequest,
    ChatResult,
    Command,
    ExecutionUpdate,
    Lease,
    Loaded,
    ModelTier,
    PersonaBrief,
    ResolvedProfile,
    Session,
    SessionEvent,
    ToolRequest,
    ToolSpec,
    Turn,
    TurnCommand,
    Write,
)


class SessionStore(Protocol):
    """Durable sessions, turns, their append-only events and accepted commands.

    A write is one transaction (``write``): its events, turns, the session, the ids of the
    commands it accepts, the lease it sets and the audit records of its events, all or
    nothing; it raises ``errors.SessionGone`` when the session was deleted meanwhile.
    Sequence numbers come from the core; the store keeps the highest reserved one, so a
    process that takes a session over starts after every number handed out before.
    """

    async def create_session(self, session: Session, request_id: str | None) -> tuple[Session, bool]:
        """Stores a new session; with a request_id its owner used before, returns that
        session instead, and False."""
        ...

    async def get_session(self, name: str) -> tuple[Session, int] | None:
        """The session and its reserved sequence."""
        ...

    async def load(self, name: str) -> Loaded | None:
        """The session, its reserved sequence and its current turn, in one read."""
        ...

    async def list_sessions(
        self, tenant: str, owner: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[Session]:
        """The tenant's sessions (``owner``'s only, unless None), the most recently updated
        first, after (update_time, session id) ``after``."""
        ...

    async def delete_session(self, name: str) -> None: ...

    async def reserve(self, name: str, upto: int) -> None:
        """Reserves sequence numbers up to ``upto`` (never lowers the reservation)."""
        ...

    async def write(self, write: Write) -> None: ...

    async def get_turn(self, session: str, ordinal: int) -> Turn | None: ...

    async def turn_by_request(self, session: str, request_id: str) -> Turn | None: ...

    async def list_turns(self, session: str, after_ordinal: int, limit: int) -> list[Turn]:
        """Turns by ordinal, after ``after_ordinal``."""
        ...

    async def list_events(
        self, session: str, after_sequence: int, limit: int, *, turn: int | None = None
    ) -> list[SessionEvent]:
        """Events by sequence, after ``after_sequence`` (of turn ordinal ``turn`` only)."""
        ...

    async def command(self, session: str, request_id: str) -> Command | None: ...

    async def renew(self, lease: Lease, sessions: Sequence[str]) -> None:
        """Extends the lease of ``lease.runner`` on the active turns of ``sessions``."""
        ...

    async def take_own(self, lease: Lease) -> list[str]:
        """The sessions of the active turns ``lease.runner`` holds (left by its previous
        incarnation), their leases renewed."""
        ...

    async def take_orphans(self, lease: Lease, now: datetime, limit: int = 50) -> list[str]:
        """Takes active turns whose lease ran out before ``now`` (or that never had one);
        returns their sessions."""
        ...

    async def lease(self, session: str, ordinal: int) -> tuple[Turn, Lease | None] | None:
        """The turn as stored and the lease it carries (None: no runner has held it)."""
        ...


class HotState(Protocol):
    """A mirror of what each session does now, for quick reads (Postgres has the truth)."""

    async def mirror(self, session: Session) -> None: ...

    async def forget(self, name: str) -> None: ...


# A live event and the sequence its publisher published before it.
Live = tuple[SessionEvent, int]


class LiveEvents(Protocol):
    """Where a process publishes its sessions' events for the other processes."""

    def publish(self, session: str, event: SessionEvent, prev: int) -> None:
        """Queues the event; never waits (the token path calls it)."""
        ...


class SessionStreams(LiveEvents, Protocol):
    """The live events of every process, for streams attached where a session's turn does
    not run: what :meth:`follow` names is read from ``after`` on and handed to ``deliver``
    (with the sequence that read started after, and each event with the sequence its
    publisher published before it); ``lost`` names a followed session whose events can no
    longer be read."""

    def start(self, deliver: Callable[[str, int, list[Live]], None], lost: Callable[[str], None]) -> None: ...

    def follow(self, session: str, after: int) -> None: ...

    def unfollow(self, session: str) -> None: ...


class TurnOwners(Protocol):
    """The other processes that run turns, reached over the mesh: ``intervene`` sends an
    intervention to the process at ``address`` and returns its answer. It raises
    TurnOwnerUnreachable when that process cannot be reached, TurnOwnerChanged when it no
    longer runs the turn, and passes on any other error it answers with."""

    async def intervene(self, address: str, principal: Principal, command: TurnCommand) -> Turn: ...


class Profiles(Protocol):
    """svc_profiles: personas and the models a role resolves to. Raises
    DependencyUnavailable when it cannot be reached, PersonaNotFound for no such persona."""

    async def persona(self, name: str, principal: Principal) -> PersonaBrief: ...

    async def resolve(
        self,
        principal: Principal,
        role: ModelRole,
        mode: DeploymentMode | None,
        persona: str,
        overrides: Sequence[ModelOverride],
    ) -> ResolvedProfile: ...


class ToolExecution(Protocol):
    """An ExecuteTool call in progress: iterate for its updates (raises ToolCallRejected
    when svc_tools refuses the call, DependencyUnavailable when it is away), cancel to stop
    reading it."""

    def __aiter__(self) -> AsyncIterator[ExecutionUpdate]: ...

    def cancel(self) -> None: ...


class ToolRunner(Protocol):
    """svc_tools: the catalogue and the executions of tool calls."""

    async def catalogue(self, principal: Principal) -> list[ToolSpec]: ...

    def execute(self, principal: Principal, request: ToolRequest) -> ToolExecution: ...

    async def cancel(self, principal: Principal, execution: str) -> None:
        """Stops an execution; one that finished or cannot be reached is left as it is."""
        ...

    def payload(self, request: ToolRequest) -> Payload:
        """The request as svc_policy holds it for an operator (opaque to the core)."""
        ...


class PolicyGate(Protocol):
    """svc_policy: decisions, the owner relationship of a session, and the exactly-once
    protocol of an action it holds for an operator (hold, wait, claim, complete).
    Raises DependencyUnavailable when svc_policy cannot be reached."""

    async def own_session(self, principal: Principal, session: str) -> None: ...

    async def check(self, principal: Principal, check: AccessCheck, hold: Hold | None = None) -> Decision:
        """With ``hold``, a REQUIRES_APPROVAL answer is held for an operator in the same
        call (the decision names the blocked action); the same ``hold.request_id`` names
        the same one."""
        ...

    async def approval(self, principal: Principal, blocked_action: str, claim_id: str) -> Approval:
        """Waits for the operator's decision, and claims an approved action with
        ``claim_id`` before answering CLAIMED (again CLAIMED for a claim made before)."""
        ...

    async def complete(self, principal: Principal, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        """Reports the outcome of a claimed action (idempotent; retried in the background
        where svc_policy cannot take it now)."""
        ...

    async def close(self) -> None: ...


class Budgets(Protocol):
    """The tenant's model budgets (svc_policy's model_budget objects) and what has been
    spent on each (svc_analytics)."""

    async def budget(self, principal: Principal, role: ModelRole) -> Budget | None:
        """The principal's tenant's budget for the role's model calls, None when it has none.
        Its ``spent_usd`` is None when the spend cannot be known now (the check then fails
        closed). Raises DependencyUnavailable when svc_policy cannot say whether it exists."""
        ...


OnDelta = Callable[[str], Awaitable[None]]
OnCut = Callable[[CallStats], None]


class ChatModel(Protocol):
    """The OpenAI-compatible engines. Raises ``errors.ModelCallFailed`` (with what the
    call consumed) when a call gives no usable answer."""

    async def chat(
        self, tier: ModelTier, request: ChatRequest, on_delta: OnDelta, *, on_cut: OnCut | None = None
    ) -> ChatResult:
        """One streamed completion; ``on_delta`` gets each piece of text. Cancelled, it
        calls ``on_cut`` with what the call consumed, at once, and lets the cancellation go on."""
        ...

    async def complete(self, tier: ModelTier, request: ChatRequest) -> ChatResult:
        """A completion whose text is only needed whole."""
        ...


class Limits(Protocol):
    """The core's settings (ConversationSettings has them all)."""

    @property
    def max_iterations(self) -> int: ...

    @property
    def delta_tick_ms(self) -> int: ...

    @property
    def delta_max_tokens(self) -> int: ...

    @property
    def tool_timeout_seconds(self) -> float: ...

    @property
    def compress_at_context_share(self) -> float: ...

    @property
    def bytes_per_token(self) -> float: ...

    @property
    def max_subordinate_depth(self) -> int: ...

    @property
    def refuse_prompt_injection(self) -> bool: ...

    @property
    def lease_seconds(self) -> float: ...

    @property
    def idle_evict_seconds(self) -> float: ...
