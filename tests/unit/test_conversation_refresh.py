"""svc_conversation's RefreshingCache: fresh answers as they are, older ones while a refresh
runs in the background, stale ones waited for; a failed refresh keeps the old answer."""

from __future__ import annotations

import asyncio

import pytest

from svc_conversation.refresh import RefreshingCache


class Source:
    """Answers "v1", "v2", ... in turn; can be told to fail or to wait."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("the other service is down")
        return f"v{self.calls}"


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fresh_then_refreshed_in_the_background_then_waited_for() -> None:
    now = [0.0]
    cache: RefreshingCache[str, str] = RefreshingCache(fresh=5, stale=60, clock=lambda: now[0])
    source = Source()
    assert await cache.get("k", source.fetch) == "v1"
    now[0] = 4.9
    assert await cache.get("k", source.fetch) == "v1"
    assert source.calls == 1, "a fresh answer is used as it is"

    now[0] = 10.0
    source.gate = asyncio.Event()
    assert await cache.get("k", source.fetch) == "v1", "an older answer is used at once"
    assert await cache.get("k", source.fetch) == "v1"
    await settled()
    assert source.calls == 2, "one refresh per key at a time"
    source.gate.set()
    await settled()
    assert await cache.get("k", source.fetch) == "v2", "the refresh serves the next caller"

    now[0] = 100.0  # v2 was fetched at 10: now stale, so it is waited for
    source.gate = None
    assert await cache.get("k", source.fetch) == "v3"
    await cache.close()


async def test_a_failed_refresh_keeps_the_old_answer_until_it_is_stale() -> None:
    now = [0.0]
    cache: RefreshingCache[str, str] = RefreshingCache(fresh=5, stale=60, clock=lambda: now[0])
    source = Source()
    assert await cache.get("k", source.fetch) == "v1"
    source.fail = True
    now[0] = 30.0
    assert await cache.get("k", source.fetch) == "v1"
    await settled()
    assert await cache.get("k", source.fetch) == "v1"
    now[0] = 61.0
    with pytest.raises(RuntimeError):
        await cache.get("k", source.fetch)
    await cache.close()


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="fresh"):
        RefreshingCache(fresh=10, stale=5)
