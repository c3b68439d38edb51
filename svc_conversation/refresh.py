"""A cache of answers from other services that refreshes them off the caller's path.

An answer younger than `fresh` seconds is used as it is. One between `fresh` and `stale`
seconds old is used too, and a refresh starts in the background for the callers after this
one (one refresh per key at a time). One older than `stale`, or none, is waited for. A
background refresh that fails keeps the old answer, until it is `stale` old.

So a change made elsewhere reaches callers within `fresh` seconds while they keep calling,
and otherwise from the second call after it, never later than `stale` seconds: the price of
never making a caller wait for an answer it had moments ago.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("skm.conversation.refresh")


class RefreshingCache(Generic[K, V]):
    def __init__(
        self,
        *,
        fresh: float,
        stale: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= fresh <= stale or max_entries < 1:
            raise ValueError("need 0 <= fresh <= stale and max_entries >= 1")
        self._fresh = fresh
        self._stale = stale
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._refreshing: dict[K, asyncio.Task[None]] = {}

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The answer for `key`: remembered, or `fetch()`ed now or in the background."""
        entry = self._entries.get(key)
        if entry is not None:
            age = self._clock() - entry[0]
            if age < self._fresh:
                return entry[1]
            if age < self._stale:
                if key not in self._refreshing:
                    self._refreshing[key] = asyncio.create_task(self._refresh(key, fetch))
                return entry[1]
        fetched_at = self._clock()
        value = await fetch()
        self._put(key, fetched_at, value)
        return value

    async def close(self) -> None:
        """Stops the refreshes under way."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refreshing.clear()

    async def _refresh(self, key: K, fetch: Callable[[], Awaitable[V]]) -> None:
        try:
            fetched_at = self._clock()
            self._put(key, fetched_at, await fetch())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  # the old answer stands until it is stale
            log.warning("a background refresh failed", extra={"fields": {"error": type(error).__name__}})
        finally:
            self._refreshing.pop(key, None)

    def _put(self, key: K, fetched_at: float, value: V) -> None:
        self._entries[key] = (fetched_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
