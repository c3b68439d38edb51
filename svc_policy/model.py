"""svc_policy's own domain: relationships, the blocked actions it holds, constitutions.

What svc_policy shares with every caller (Principal, AccessCheck, Verdict, Decision, Hold,
HeldState, ...) is declared once in skm_runtime.access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from skm_runtime.access import AccessCheck, Decision, HeldState, JsonObject, Outcome, Payload, Principal


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
    state: HeldState
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
