"""svc_conversation's domain: sessions, turns, the events of a turn, and the values the agent
loop works with. Plain frozen dataclasses and enums, no gRPC and no generated code
(convert.py maps them to and from skm.conversation.v1 at the edges).

The enums declared here are numbered as their protobuf counterparts, so that converting one
is a matter of its number and a stored name never has to be parsed. The value types other
services speak too (ModelRole, DeploymentMode, Money, ModelOverride, FailureReason) come
from skm_runtime.values; convert.py maps those by name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from skm_runtime.access import Decision, Principal
from skm_runtime.values import DeploymentMode, FailureReason, ModelOverride, ModelRole, Money


class SessionState(enum.IntEnum):
    """What a session is doing: the state of its current turn, or IDLE."""

    UNSPECIFIED = 0
    IDLE = 1
    RUNNING = 2
    AWAITING_APPROVAL = 3
    INTERRUPTED = 4


class TurnState(enum.IntEnum):
    UNSPECIFIED = 0
    RUNNING = 1
    AWAITING_APPROVAL = 2
    INTERRUPTED = 3
    COMPLETED = 4
    FAILED = 5
    REFUSED = 6


# A turn in one of these runs (in some process); one in TERMINAL never changes again.
ACTIVE = frozenset({TurnState.RUNNING, TurnState.AWAITING_APPROVAL})
TERMINAL = frozenset({TurnState.COMPLETED, TurnState.FAILED, TurnState.REFUSED})


class InterventionKind(enum.IntEnum):
    UNSPECIFIED = 0
    INTERRUPT = 1
    NUDGE = 2
    RESUME = 3
    RERUN = 4


class OutputStream(enum.IntEnum):
    UNSPECIFIED = 0
    STDOUT = 1
    STDERR = 2


# -- sessions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    name: str  # "tenants/{tenant}/sessions/{session}"
    persona: str = ""  # "tenants/{tenant}/personas/{persona}"
    mode: DeploymentMode | None = None  # None: unspecified (invalid)
    display_name: str = ""
    persona_bundle_digest: str = ""
    model_overrides: tuple[ModelOverride, ...] = ()
    state: SessionState = SessionState.UNSPECIFIED
    current_turn: str = ""
    owner: str = ""  # "tenants/{tenant}/users/{user}"
    superior_session: str = ""  # the session whose turn spawned this one, if any
    last_sequence: int = 0
    acknowledged_sequence: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    # The persona's revision loaded at creation, which every turn runs on; "" for a built-in
    # persona (it has no revisions) and for sessions made before revisions existed.
    persona_revision_id: str = ""

    @property
    def pinned_persona(self) -> str:
        """The persona as the session's turns load it: "{persona}@{revision}" when pinned,
        else the persona itself (its current version)."""
        return f"{self.persona}@{self.persona_revision_id}" if self.persona_revision_id else self.persona


# -- turns -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """What one model call consumed, as recorded on the turn and in its event.

    Durations are whole nanoseconds (as stored), so a usage read back and written again
    is the same usage."""

    model: str = ""
    role: ModelRole | None = None  # None: unspecified
    tier: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    time_to_first_token_ns: int | None = None
    duration_ns: int = 0
    tokens_per_second: float = 0.0
    cost: Money = field(default_factory=Money)
    input_tokens_estimated: bool = False


@dataclass(frozen=True, slots=True)
class Screening:
    """What the layer before the primary model made of a message: the heuristics' safety
    flags ("PROMPT_INJECTION", "PII"), the pre-SLM's intent and slots, and whether the
    message is refused (see preprocess.py)."""

    intent: str = ""
    intent_confidence: float = 0.0
    slots: Mapping[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    refused: bool = False
    refusal_reason: str = ""


@dataclass(frozen=True, slots=True)
class Turn:
    name: str  # "tenants/{tenant}/sessions/{session}/turns/{ordinal}"
    state: TurnState = TurnState.UNSPECIFIED
    input_text: str = ""
    request_id: str = ""
    rerun_of: str = ""  # the turn this one answers again, with a larger model
    start_tier: int = 0
    screening: Screening | None = None
    response_text: str = ""
    model_calls: tuple[ModelUsage, ...] = ()
    iterations: int = 0
    failure_reason: str = ""
    first_sequence: int = 0
    last_sequence: int = 0
    create_time: datetime | None = None
    end_time: datetime | None = None


def turn_ordinal(name: str) -> int:
    """The ordinal of "…/turns/{ordinal}"."""
    return int(name.rsplit("/", 1)[1])


def split_name(name: str) -> tuple[str, str]:
    """("tenants/t", "s") of "tenants/t/sessions/s"."""
    tenant, _, session = name.partition("/sessions/")
    return tenant, session


# -- what a turn's events say ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolSuccess:
    output_json: str


@dataclass(frozen=True, slots=True)
class ToolFailure:
    reason: FailureReason | None  # None: the wire's UNSPECIFIED
    message: str = ""


ToolResult = ToolSuccess | ToolFailure


@dataclass(frozen=True, slots=True)
class Progress:
    message: str = ""
    fraction: float | None = None


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: OutputStream
    data: bytes
    offset: int = 0


@dataclass(frozen=True, slots=True)
class TurnStateChanged:
    state: TurnState
    reason: str = ""


# A fact for the policy conditions of a turn's tool calls: a finite number, a string or a bool.
PolicyFact = float | str | bool
# The facts a caller inside the mesh gave with a message (SendMessageRequest.policy_context),
# e.g. the voice channel's {"agitation_score": 0.82}: every tool call of the turn passes them
# on to svc_tools (ExecuteToolRequest.policy_context), whose policy conditions read them.
PolicyContext = Mapping[str, PolicyFact]


@dataclass(frozen=True, slots=True)
class UserMessage:
    text: str
    request_id: str = ""
    tool_choice: str = ""
    # Stored with the message, so a turn resumed by another process still has them.
    policy_context: PolicyContext = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Intervention:
    kind: InterventionKind
    request_id: str = ""
    text: str = ""  # a nudge's guidance
    rerun_turn: str = ""  # the turn a rerun started


@dataclass(frozen=True, slots=True)
class TokenDelta:
    iteration: int
    text: str


@dataclass(frozen=True, slots=True)
class ModelCall:
    iteration: int
    usage: ModelUsage
    failure_reason: str = ""
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    tool_call_id: str
    iteration: int
    tool: str  # "tenants/{tenant}/tools/{tool}"
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ToolCallVerdict:
    tool_call_id: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class ToolCallProgress:
    tool_call_id: str
    execution: str = ""
    progress: Progress | None = None
    output: OutputChunk | None = None


@dataclass(frozen=True, slots=True)
class ToolCallResult:
    tool_call_id: str
    result: ToolResult
    execution: str = ""  # the tool's execution, or the subordinate session


@dataclass(frozen=True, slots=True)
class FinalResponse:
    text: str


@dataclass(frozen=True, slots=True)
class TurnError:
    reason: str
    message: str = ""


EventPayload = (
    TurnStateChanged
    | UserMessage
    | Intervention
    | Screening
    | TokenDelta
    | ModelCall
    | ToolCallRequested
    | ToolCallVerdict
    | ToolCallProgress
    | ToolCallResult
    | FinalResponse
    | TurnError
)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One numbered event of a session's log; ``payload`` None for a kind this version
    does not know."""

    sequence: int
    turn: str
    payload: EventPayload | None
    create_time: datetime | None = None


# -- storage -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """A runner's hold on a turn: who runs it, where that process is dialled, until when."""

    runner: str
    address: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Command:
    """An accepted command's idempotency record."""

    request_id: str
    kind: str  # "NUDGE" or "RERUN"
    turn: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as a write stores it; ``delta``: a token delta, dropped once its turn ends."""

    event: SessionEvent
    turn: int
    delta: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """Everything one transaction writes for a session, with the audit records of its
    events (``actor`` is whom they are recorded for; None: no audit records)."""

    session: Session
    reserved_sequence: int
    turns: tuple[Turn, ...] = ()
    events: tuple[StoredEvent, ...] = ()
    commands: tuple[Command, ...] = ()
    # Turns whose token deltas are dropped (they ended; their text is in final_response).
    compact_turns: tuple[int, ...] = ()
    # Runner lease to set on the written turns (None keeps what is there).
    lease: Lease | None = None
    actor: Principal | None = None


@dataclass(frozen=True, slots=True)
class Loaded:
    """A session as stored, the sequence numbers reserved for it, and its current turn."""

    session: Session
    reserved: int
    turn: Turn | None


# -- what the loop works with ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelTier:
    """One model of a resolved profile, with everything needed to call it."""

    name: str  # "models/{model}"
    tier: int
    endpoint_uri: str
    served_model: str
    credential_secret: str = ""
    context_length: int = 4096
    input_cost_per_million: float = 0.0
    output_cost_per_million: float = 0.0
    currency: str = "USD"
    structured_output: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedProfile:
    role: ModelRole
    tiers: tuple[ModelTier, ...]
    temperature: float | None = None
    max_output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CallStats:
    model: str
    tier: int
    input_tokens: int
    output_tokens: int
    time_to_first_token: float | None
    duration: float
    tokens_per_second: float
    cost: float
    currency: str = "USD"
    # input_tokens is the engine tokenizer's count of the prompt laid out as ChatML, not the
    # engine's count of the prompt it ran: the engine reported no usage (see adapters.openai).
    input_tokens_estimated: bool = False


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: Sequence[Mapping[str, str]]
    temperature: float | None = None
    max_tokens: int = 0
    # Constrain the reply to this JSON schema when the model supports structured output.
    json_schema: Mapping[str, Any] | None = None
    schema_name: str = "reply"


@dataclass(slots=True)
class ChatResult:
    text: str
    stats: CallStats
    finish_reason: str = ""


@dataclass(frozen=True, slots=True)
class PersonaBrief:
    """What a turn needs of a persona (svc_profiles keeps the whole of it)."""

    name: str
    system_prompt: str
    allowed_tools: tuple[str, ...]  # tool ids, e.g. "code_execution"
    bundle_digest: str = ""
    signed: bool = False
    memory_namespaces: tuple[str, ...] = ()
    revision_id: str = ""  # "" for a built-in persona, which has no revisions
    # Example exchanges (user text, answer) shown to the model before the session's own turns.
    examples: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model is shown it."""

    id: str  # "code_execution"
    description: str
    arguments_schema: dict[str, Any] = field(default_factory=dict)


class CommandKind(enum.StrEnum):
    INTERRUPT = "INTERRUPT"
    RESUME = "RESUME"
    NUDGE = "NUDGE"
    RERUN = "RERUN"


@dataclass(frozen=True, slots=True)
class TurnCommand:
    """An intervention in a turn, as forwarded to the process that runs the turn."""

    kind: CommandKind
    turn: str  # "tenants/{tenant}/sessions/{session}/turns/{ordinal}"
    request_id: str
    text: str = ""  # NUDGE's guidance


# -- a tool call's execution, as svc_tools streams it -----------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionAccepted:
    execution: str  # "tenants/{tenant}/executions/{id}"


@dataclass(frozen=True, slots=True)
class ExecutionDecided:
    decision: Decision


@dataclass(frozen=True, slots=True)
class ExecutionProgressed:
    progress: Progress | None = None
    output: OutputChunk | None = None


@dataclass(frozen=True, slots=True)
class ExecutionFinished:
    result: ToolResult


ExecutionUpdate = ExecutionAccepted | ExecutionDecided | ExecutionProgressed | ExecutionFinished


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """One ExecuteTool call of the loop: ``request_id`` derives from the turn and the tool
    call, so a resumed call attaches to the execution svc_tools already has."""

    tool: str
    arguments_json: str
    request_id: str
    persona: str
    turn: str
    tool_call_id: str
    timeout_seconds: float = 0.0
    # The turn's policy facts (its UserMessage's), for svc_policy's conditions.
    policy_context: PolicyContext = field(default_factory=dict)


# -- the Converse stream -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    session: str
    text: str
    request_id: str
    tool_choice: str = ""
    # As received, not yet checked (empty when the stream is a public call: see api.py).
    policy_context: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Acknowledge:
    sequence: int


@dataclass(frozen=True, slots=True)
class TurnIntervention:
    """interrupt_turn, resume_turn, nudge_turn or rerun_turn of a Converse stream."""

    kind: CommandKind
    turn: str
    request_id: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Configure:
    """The config a Converse stream starts with (allowed there only)."""

    after_sequence: int | None = None  # None: after the session's acknowledged sequence


@dataclass(frozen=True, slots=True)
class NoCommand:
    """A message that carries no command."""


ConverseCommandKind = Configure | SendMessage | Acknowledge | TurnIntervention | NoCommand


@dataclass(frozen=True, slots=True)
class ConverseCommand:
    """One message of a Converse stream: the session it names ("" for none) and its command."""

    session: str
    command: ConverseCommandKind


@dataclass(frozen=True, slots=True)
class Attached:
    session: Session
    after_sequence: int


@dataclass(frozen=True, slots=True)
class CommandRejected:
    request_id: str
    code: int
    reason: str
    message: str


ConverseOutput = Attached | SessionEvent | CommandRejected


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's model budget for one role: its svc_policy object
    ("model_budget:tenants/{t}/modelBudgets/{role}"), and what the tenant has spent on the
    role's calls this calendar month, in USD (None when svc_analytics cannot say now)."""

    object: str
    spent_usd: float | None
