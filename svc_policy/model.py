"""svc_policy's domain: authorization questions, decisions, relationships, blocked actions."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# JSON-like values, as carried by google.protobuf.Struct (condition contexts).
JsonObject = Mapping[str, Any]


class Verdict(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    REQUIRES_APPROVAL = "REQUIRES_APPROVAL"


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


@dataclass(frozen=True, slots=True)
class Condition:
    """A named condition of the authorization model with the parameters a tuple fixes."""

    name: str
    context: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Relationship:
    """`subject` has `relation` on `object` (optionally only under `condition`)."""

    subject: str
    relation: str
    object: str
    condition: Condition | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asked: tenant "tenants/{t}", user "tenants/{t}/users/{u}", and roles."""

    tenant: str
    user: str = ""
    roles: tuple[str, ...] = ()


class BlockedState(enum.Enum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    EXECUTING = "EXECUTING"
    EXECUTED = "EXECUTED"


@dataclass(frozen=True, slots=True)
class Payload:
    """The held request, opaque to svc_policy: a protobuf Any's type URL and bytes."""

    type_url: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    succeeded: bool
    failure_reason: str = ""


@dataclass(frozen=True, slots=True)
class BlockedAction:
    """An action that waits for an operator, then runs at most once."""

    name: str
    request_id: str
    principal: Principal
    check: AccessCheck
    decision: Decision
    payload: Payload
    summary: str
    session: str
    state: BlockedState
    create_time: datetime
    update_time: datetime
    expire_time: datetime
    resolve_time: datetime | None = None
    resolver: str = ""
    note: str = ""
    claim_id: str = ""
    outcome: Outcome | None = None

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def etag(self) -> str:
        """Changes with every state change; approvals and rejections may require it."""
        return f'W/"{int(self.update_time.timestamp() * 1_000_000)}"'


@dataclass(frozen=True, slots=True)
class Hold:
    """What to keep in the requeue store when a check requires approval."""

    request_id: str
    payload: Payload
    summary: str = ""
    session: str = ""


@dataclass(frozen=True, slots=True)
class Constitution:
    """A tenant's constitution document; its SHA-256 is what tokens must carry."""

    tenant: str
    content: str
    sha256: str
    update_time: datetime | None = None
    updater: str = ""

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'
