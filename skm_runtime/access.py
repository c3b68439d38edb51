"""The domain of access, shared by every service: who asks, what is asked, what svc_policy
answers, and the states of an action it holds for an operator.

Pure dataclasses and enums (no grpc, no generated code): each service's core works with
these, and each service converts them to and from skm.type.v1 / skm.policy.v1 messages at
its edge. They are declared here once, so "Principal" or "Verdict" means one thing across
the mesh.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# JSON-like values, as carried by google.protobuf.Struct (condition contexts).
JsonObject = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: tenant "tenants/{t}", user "tenants/{t}/users/{u}" (empty for a tenant's
    own service calls), role names ("member", "operator", ...), and the SHA-256 of the
    tenant's constitution the caller's token was issued under (admission checks it; other
    services leave it empty)."""

    tenant: str
    user: str = ""
    roles: tuple[str, ...] = ()
    constitution_sha256: str = ""


class Verdict(enum.Enum):
    """svc_policy's answer to one AccessCheck."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    REQUIRES_APPROVAL = "REQUIRES_APPROVAL"


# How restrictive a verdict is: the most restrictive of several checks wins.
RESTRICTIVENESS = {Verdict.ALLOW: 0, Verdict.REQUIRES_APPROVAL: 1, Verdict.DENY: 2}


@dataclass(frozen=True, slots=True)
class AccessCheck:
    """May `subject` have `relation` on `object`? Ids are "{type}:{SKM resource name}"."""

    subject: str
    relation: str
    object: str
    context: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict with its stable machine-readable reason (UPPER_SNAKE_CASE)."""

    verdict: Verdict
    reason: str
    decision_id: str = ""
    # "tenants/{t}/blockedActions/{id}" when the action was held for approval.
    blocked_action: str = ""
    # Answered from svc_policy's decision cache rather than by the engine.
    cached: bool = False


class HeldState(enum.Enum):
    """The states of an action svc_policy holds for an operator (skm.policy.v1.BlockedAction):
    PENDING until an operator decides or it expires; an APPROVED one is claimed (EXECUTING)
    by exactly one caller, who reports its outcome (EXECUTED)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    EXECUTING = "EXECUTING"
    EXECUTED = "EXECUTED"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a claimed action's run ended, as reported to svc_policy."""

    succeeded: bool
    failure_reason: str = ""


@dataclass(frozen=True, slots=True)
class Payload:
    """A held request, opaque to svc_policy: a protobuf Any's type URL and bytes."""

    type_url: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Hold:
    """What svc_policy keeps when a check requires approval (skm.policy.v1.Hold)."""

    # Derived from the action, so a repeated check finds the same entry.
    request_id: str
    # The full request to run once approved.
    payload: Payload
    # One line for operators, at most 300 characters, no personal data.
    summary: str = ""
    # "tenants/{t}/sessions/{s}" when the action belongs to a conversation.
    session: str = ""


class ApprovalState(enum.StrEnum):
    """How the wait for an operator's decision on a held action ended, for the caller."""

    CLAIMED = "CLAIMED"  # approved and claimed by this caller: run it, once
    REJECTED = "REJECTED"  # an operator said no
    EXPIRED = "EXPIRED"  # nobody decided in time, nobody claimed it in time, or it is gone
    CANCELLED = "CANCELLED"  # withdrawn by the requesting service
    TAKEN = "TAKEN"  # claimed with another claim id: never run here


@dataclass(frozen=True, slots=True)
class Approval:
    state: ApprovalState
    note: str = ""  # the operator's note
