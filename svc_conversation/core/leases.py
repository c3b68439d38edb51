"""This runner's leases on the turns it runs.

A running turn carries a lease: the process renews it while the turn runs, and when a
process dies another one (or the same one after its restart, at once, since its runner id
is stable) takes the turn over and resumes it. An intervention acts where the turn runs:
:meth:`Leases.owner` says whether that is another process, and where it is dialled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from svc_conversation.core.handles import SessionHandle
from svc_conversation.errors import TurnOwnerChanged, TurnOwnerUnreachable
from svc_conversation.model import ACTIVE, Lease, Turn, turn_ordinal
from svc_conversation.ports import SessionStore

# At start, this runner's own turns count as abandoned at once.
_OWN_FIRST = timedelta(days=3650)


class Leases:
    def __init__(
        self,
        store: SessionStore,
        *,
        runner_id: str,
        address: str,
        seconds: float,
        now: Callable[[], datetime],
    ) -> None:
        self._store = store
        self.runner_id = runner_id
        # Where the other processes dial this one (stored with this runner's leases).
        self.address = address
        self._seconds = seconds
        self.now = now

    def lease(self) -> Lease:
        """This runner's hold on a turn, from now on."""
        return Lease(self.runner_id, self.address, self.now() + timedelta(seconds=self._seconds))

    async def renew(self, sessions: Sequence[str]) -> None:
        await self._store.renew(self.lease(), sessions)

    async def take(self, *, own_first: bool) -> list[str]:
        """The sessions whose active turns this runner takes over now: those whose lease
        ran out, and first (at start) its own from before a restart."""
        lease = self.lease()
        if own_first:
            own = await self._store.take_own(lease)
            return own + await self._store.take_orphans(lease, self.now())
        return await self._store.take_orphans(lease, self.now())

    async def owner(self, handle: SessionHandle, turn: Turn, *, routed: bool, dialable: bool) -> str | None:
        """The address of the process that runs the turn, if that is another one and its
        lease is live; None when an intervention acts here. ``routed``: the intervention
        was forwarded here (it is never forwarded again); ``dialable``: other processes
        can be reached from here."""
        if handle.running() or turn.state not in ACTIVE:
            return None
        found = await self._store.lease(handle.name, turn_ordinal(turn.name))
        if found is None:
            return None
        stored, lease = found
        if stored.state not in ACTIVE or lease is None or lease.runner == self.runner_id or lease.until <= self.now():
            return None
        if routed:
            raise TurnOwnerChanged("this process does not run the turn", metadata={"turn": turn.name})
        if not lease.address or not dialable:
            raise TurnOwnerUnreachable(
                "the turn runs in a process that cannot be dialled; retry once its lease runs out",
                metadata={"turn": turn.name},
                retry_after_seconds=1.0,
            )
        return lease.address
