"""The session's newest state, mirrored to the hot state (Redis) off the turn's path."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from svc_conversation.core.handles import SessionHandle
from svc_conversation.ports import HotState

log = logging.getLogger("skm.conversation")


class Mirror:
    """One write at a time per session, the last one always with the newest state."""

    def __init__(self, hot: HotState) -> None:
        self._hot = hot
        self._writing: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()

    def soon(self, handle: SessionHandle) -> None:
        name = handle.name
        self._dirty.add(name)
        if name in self._writing:
            return

        async def mirror() -> None:
            try:
                while name in self._dirty:
                    self._dirty.discard(name)
                    await self._mirror(handle)
            finally:
                self._writing.pop(name, None)

        self._writing[name] = asyncio.create_task(mirror())

    async def _mirror(self, handle: SessionHandle) -> None:
        try:
            await self._hot.mirror(handle.session)
        except Exception:  # noqa: BLE001  # the mirror is a cache; Postgres has the truth
            log.warning("could not mirror session state to Redis")

    async def forget(self, name: str) -> None:
        """Drops a deleted session's mirror, once the write under way (if any) is done."""
        self._dirty.discard(name)
        pending = self._writing.get(name)
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        with contextlib.suppress(Exception):
            await self._hot.forget(name)

    async def close(self) -> None:
        if self._writing:
            await asyncio.wait(list(self._writing.values()), timeout=2.0)
