"""svc_tools's domain: the tool catalogue, executions, their decisions and results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Who asks and what svc_policy answers are the mesh's shared access domain.
from skm_runtime.access import Decision, Principal
from skm_runtime.values import FailureReason

# JSON-like values (tool arguments, JSON schemas, policy condition contexts).
JsonObject = Mapping[str, Any]


class RiskLevel(enum.Enum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class ExecutionSide(enum.Enum):
    """Which service performs a call of the tool."""

    TOOL_SERVICE = "TOOL_SERVICE"
    CONVERSATION = "CONVERSATION"


@dataclass(frozen=True, slots=True)
class Tool:
    """One catalogue entry; `id` is the last segment of its name ("code_execution")."""

    id: str
    description: str
    arguments_schema: JsonObject
    risk_level: RiskLevel
    side: ExecutionSide
    # Wall-clock limit of a run when the request sets none.
    default_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What svc_policy keeps when the run needs approval (see skm.policy.v1.Hold)."""

    request_id: str
    summary: str
    session: str


class ExecutionState(enum.Enum):
    CHECKING = "CHECKING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.SUCCEEDED, ExecutionState.FAILED)


@dataclass(frozen=True, slots=True)
class Success:
    """The tool did its job; `output_json` is its documented JSON payload."""

    output_json: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The tool did not do its job; `message` is safe for the user and the model."""

    reason: FailureReason
    message: str


Result = Success | Failure


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of a tool, from acceptance to its single result.

    Besides what the wire's Execution shows, it keeps what is needed to carry the run on
    after a restart (timeout, policy context, request id and its fingerprint) and the
    state of the approval protocol (`claimed`: svc_policy bound the blocked action to this
    execution; `completion_reported`: svc_policy was told the outcome).
    """

    name: str
    tool: str
    arguments_json: str
    principal: Principal
    request_id: str
    fingerprint: str
    state: ExecutionState
    create_time: datetime
    persona: str = ""
    turn: str = ""
    tool_call_id: str = ""
    timeout_seconds: float = 30.0
    policy_context: JsonObject = field(default_factory=dict)
    decision: Decision | None = None
    result: Result | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    claimed: bool = False
    completion_reported: bool = False
    cancel_requested: bool = False
    trace_id: str = ""

    @property
    def tenant(self) -> str:
        return "/".join(self.name.split("/")[:2])

    @property
    def tool_id(self) -> str:
        return self.tool.rsplit("/", 1)[-1]


# -- what an ExecuteTool stream carries -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    execution: str


@dataclass(frozen=True, slots=True)
class Decided:
    decision: Decision


@dataclass(frozen=True, slots=True)
class Progressed:
    message: str
    fraction: float | None = None


class Stream(enum.Enum):
    STDOUT = "STDOUT"
    STDERR = "STDERR"


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes of one stream; `offset` is where they start within that stream."""

    stream: Stream
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class Finished:
    result: Result


Update = Accepted | Decided | Progressed | Output | Finished


# -- the sandbox ------------------------------------------------------------------------


class Runtime(enum.Enum):
    """What runs the code in the sandbox (Agent Zero's code_execution runtimes)."""

    PYTHON = "python"
    TERMINAL = "terminal"


@dataclass(frozen=True, slots=True)
class SandboxJob:
    runtime: Runtime
    code: str
    timeout_seconds: float


class SandboxEnd(enum.Enum):
    """How a sandboxed run ended."""

    # The code exited by itself (any status).
    EXITED = "EXITED"
    # The wall-clock timeout ran out; the sandbox was killed.
    TIMEOUT = "TIMEOUT"
    # More output than the cap; the sandbox was killed, the rest discarded.
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    # The kernel stopped it at a resource limit (CPU seconds, file size).
    RESOURCE_LIMIT = "RESOURCE_LIMIT"
    # Killed by a signal nobody in SKM sent (e.g. SIGSEGV).
    SIGNALLED = "SIGNALLED"


@dataclass(frozen=True, slots=True)
class SandboxOutcome:
    """The end of one sandboxed run, with the tails of its output kept in memory."""

    end: SandboxEnd
    exit_code: int
    stdout_tail: bytes
    stderr_tail: bytes
    # Which limit or signal, for messages ("CPU time", "file size", "SIGSEGV").
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    """An ExecuteTool call as the core sees it (see skm.tools.v1.ExecuteToolRequest)."""

    tool: str
    arguments_json: str
    request_id: str
    persona: str = ""
    turn: str = ""
    tool_call_id: str = ""
    # None: the tool's default.
    timeout_seconds: float | None = None
    policy_context: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """An execution changed in the store, or a caller asked for it to stop."""

    name: str
    cancel_requested: bool = False


# -- memory and knowledge ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Space:
    """Vectors searched together: one memory namespace or one knowledge base of a tenant,
    embedded by one model (vectors of different models are never compared)."""

    tenant: str
    # "tenants/{t}/memoryNamespaces/{n}", "tenants/{t}/users/{u}/memoryNamespaces/main",
    # or "tenants/{t}/knowledgeBases/{kb}".
    name: str
    model: str


@dataclass(frozen=True, slots=True)
class VectorPoint:
    id: str
    vector: list[float]


@dataclass(frozen=True, slots=True)
class Hit:
    """A stored vector near a query; `score` is the cosine similarity, -1..1."""

    space: Space
    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Memory:
    """One saved memory. `author` is the user it was saved for; `persona` the agent's
    persona, if any; `execution` the memory_save run that saved it."""

    id: str
    tenant: str
    namespace: str
    text: str
    model: str
    create_time: datetime
    author: str
    persona: str = ""
    execution: str = ""

    @property
    def space(self) -> Space:
        return Space(self.tenant, self.namespace, self.model)


@dataclass(frozen=True, slots=True)
class Recalled:
    memory: Memory
    score: float


class MemoryOperationKind(enum.Enum):
    SAVE = "SAVE"
    LOAD = "LOAD"
    DELETE = "DELETE"
    FORGET = "FORGET"


@dataclass(frozen=True, slots=True)
class MemoryOperation:
    """What a memory tool did, for the audit log (skm.events.v1.MemoryOperation)."""

    kind: MemoryOperationKind
    namespace: str
    memory_ids: tuple[str, ...]
    execution: Execution

    @property
    def tenant(self) -> str:
        return self.execution.tenant


@dataclass(frozen=True, slots=True)
class Document:
    """A document of a tenant's knowledge base (without its content)."""

    name: str
    title: str
    mime_type: str
    sha256: str
    chunk_count: int
    model: str
    create_time: datetime
    creator: str = ""

    @property
    def tenant(self) -> str:
        return "/".join(self.name.split("/")[:2])

    @property
    def knowledge_base(self) -> str:
        return "/".join(self.name.split("/")[:4])

    @property
    def space(self) -> Space:
        return Space(self.tenant, self.knowledge_base, self.model)


@dataclass(frozen=True, slots=True)
class NewDocument:
    title: str
    mime_type: str
    content: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document, embedded on its own; `ordinal` counts from 0."""

    id: str
    document: str
    ordinal: int
    text: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk recalled for a query, with its document."""

    document: Document
    chunk: Chunk
    score: float


@dataclass(frozen=True, slots=True)
class Access:
    """A permission a tool run needs besides can_execute on the tool, e.g. can_write on
    "memory_namespace:tenants/t1/memoryNamespaces/solutions"."""

    relation: str
    object: str
