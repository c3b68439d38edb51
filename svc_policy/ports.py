"""What svc_policy's core needs from the world, as protocols its adapters implement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from skm_runtime.access import AccessCheck
from svc_policy.model import BlockedAction, Relationship


class Authorizer(Protocol):
    """The authorization engine (OpenFGA): answers relation checks, stores relationships.

    Raises `svc_policy.errors.PolicyBackendUnavailable` when it cannot be reached and
    `svc_policy.errors.InvalidCheck` / `InvalidRelationship` for questions or tuples the
    authorization model cannot express (unknown type or relation, malformed id).
    """

    def defines(self, object_type: str, relation: str) -> bool:
        """Whether the pinned authorization model defines `relation` on `object_type`."""
        ...

    async def check(self, checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        """One answer per check, in order. A condition whose parameters are missing from
        the check's context counts as not met (False). `fresh` asks the engine for its
        most consistent answer."""
        ...

    async def ping(self) -> None:
        """Return when the engine is up and can answer; raise PolicyBackendUnavailable
        otherwise. Cheap: svc_policy asks every second."""
        ...

    async def write(self, relationships: Sequence[Relationship]) -> None:
        """All or none; writing an existing relationship is not an error."""
        ...

    async def delete(self, relationships: Sequence[Relationship]) -> None:
        """All or none; deleting a missing relationship is not an error."""
        ...

    async def read(
        self, subject: str, relation: str, object_: str, page_size: int, page_token: str
    ) -> tuple[list[Relationship], str]:
        """Relationships matching the filter (empty subject/relation match any; `object_`
        is "{type}:{id}" or "{type}:"), and the next page token ("" at the end)."""
        ...


class ChangeFeed(Protocol):
    """Where svc_policy announces a change of a tenant's relationships to every process
    that caches decisions (svc_policy's own copies and the policy clients)."""

    async def relationships_changed(self, tenant: str) -> None:
        """Announce it once the change is stored. Never raises: an announcement that cannot
        be made leaves those caches to their TTL."""
        ...


class BlockedActionStore(Protocol):
    """Durable requeue store (Postgres) of actions waiting for, or resolved by, a human."""

    async def hold(self, action: BlockedAction) -> BlockedAction:
        """Insert a PENDING action; with an existing (tenant, request_id), return that one."""
        ...

    async def get(self, name: str) -> BlockedAction | None: ...

    async def list_page(
        self, tenant: str, states: Sequence[str], session: str, page_size: int, page_token: str
    ) -> tuple[list[BlockedAction], str]:
        """Oldest first; empty `states` / `session` match any."""
        ...

    async def save_transition(self, before: BlockedAction, after: BlockedAction) -> bool:
        """Write `after` only if the stored row still equals `before` (compare-and-set on
        state and update_time), together with its outbox event. False if it changed."""
        ...

    async def expiring(self, now: datetime, limit: int) -> list[BlockedAction]:
        """PENDING or APPROVED entries whose expire_time has passed."""
        ...

    def watch(self, keys: Sequence[str]) -> AbstractAsyncContextManager[AsyncIterator[BlockedAction]]:
        """A live feed of later changes to the named entries ("tenants/{t}/*" for all of a
        tenant's), subscribed on entering the context."""
        ...
