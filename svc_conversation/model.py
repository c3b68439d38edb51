"""Plain values the agent loop works with, independent of gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    role: int
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
class Persona:
    name: str
    system_prompt: str
    allowed_tools: tuple[str, ...]  # tool ids, e.g. "code_execution"
    bundle_digest: str = ""
    signed: bool = False
    memory_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model is shown it."""

    id: str  # "code_execution"
    description: str
    arguments_schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str  # "tenants/{tenant}"
    user: str  # "tenants/{tenant}/users/{user}"
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnCommand:
    """An intervention in a turn, as forwarded to the process that runs the turn."""

    kind: str  # "INTERRUPT", "RESUME", "NUDGE" or "RERUN"
    turn: str  # "tenants/{tenant}/sessions/{session}/turns/{ordinal}"
    request_id: str
    text: str = ""  # NUDGE's guidance


class ApprovalState(StrEnum):
    """How the wait for an operator's decision on a held action ended."""

    CLAIMED = "CLAIMED"  # approved and claimed by this caller: run it, once
    REJECTED = "REJECTED"  # an operator said no
    EXPIRED = "EXPIRED"  # nobody decided in time, nobody claimed the approval in time, or it is gone
    CANCELLED = "CANCELLED"  # withdrawn by the requesting service
    TAKEN = "TAKEN"  # claimed with another claim id: never run here


@dataclass(frozen=True, slots=True)
class Approval:
    state: ApprovalState
    note: str = ""  # the operator's note
