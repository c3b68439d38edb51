"""Redis for svc_policy: the index of blocked actions, and the channel its changes go out on.

The change feed publishes on skm_runtime.policy_changes.CHANGES_CHANNEL after every relationship
write or delete, so policy clients and the other svc_policy processes empty their decision
caches (see skm_runtime/policy_client.py for the staleness bounds that follow).

The index, for fast listing by tenant and state:

One sorted set per (tenant, state), `skm:policy:blocked:{tenant}:{state}`, scored by
creation time in microseconds; Postgres stays the source of truth. The index is updated
after each committed change and rebuilt from Postgres at start; when Redis cannot answer,
listing falls back to Postgres.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from skm_runtime.policy_changes import CHANGES_CHANNEL, change_message
from svc_policy.model import BlockedAction, BlockedState

log = logging.getLogger("skm.policy.index")
# How long a write call may wait for its announcement before going on without it.
_ANNOUNCE_SECONDS = 0.5
_PREFIX = "skm:policy:blocked"


def _key(tenant: str, state: str) -> str:
    return f"{_PREFIX}:{tenant}:{state}"


def _score(action: BlockedAction) -> float:
    return float(int(action.create_time.timestamp() * 1_000_000))


class RedisBlockedIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def connect(cls, url: str) -> RedisBlockedIndex:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True))

    async def close(self) -> None:
        await self._redis.aclose()

    async def put(self, action: BlockedAction) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for state in BlockedState:
                    if state is not action.state:
                        pipe.zrem(_key(action.tenant, state.value), action.name)
                pipe.zadd(_key(action.tenant, action.state.value), {action.name: _score(action)})
                await pipe.execute()
        except RedisError as exc:
            log.warning("blocked-action index not updated", extra={"fields": {"error": type(exc).__name__}})

    async def move(self, before: BlockedAction, after: BlockedAction) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(_key(before.tenant, before.state.value), before.name)
                pipe.zadd(_key(after.tenant, after.state.value), {after.name: _score(after)})
                await pipe.execute()
        except RedisError as exc:
            log.warning("blocked-action index not updated", extra={"fields": {"error": type(exc).__name__}})

    async def page(self, tenant: str, states: Sequence[str], offset: int, limit: int) -> list[str] | None:
        """Names oldest first, or None when Redis cannot answer (list from Postgres then)."""
        keys = [_key(tenant, state) for state in (states or [s.value for s in BlockedState])]
        try:
            if len(keys) == 1:
                return [str(name) for name in await self._redis.zrange(keys[0], offset, offset + limit - 1)]
            scored: list[tuple[float, str]] = []
            for key in keys:
                entries = await self._redis.zrange(key, 0, offset + limit - 1, withscores=True)
                # withscores: (name, score) pairs
                scored.extend((float(entry[1]), str(entry[0])) for entry in entries)
        except RedisError as exc:
            log.warning("blocked-action index unavailable", extra={"fields": {"error": type(exc).__name__}})
            return None
        scored.sort()
        return [name for _score, name in scored[offset : offset + limit]]


class RedisChangeFeed:
    """The ChangeFeed port on a Redis pub/sub channel."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def connect(cls, url: str) -> RedisChangeFeed:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True))

    async def close(self) -> None:
        await self._redis.aclose()

    async def relationships_changed(self, tenant: str) -> None:
        try:
            async with asyncio.timeout(_ANNOUNCE_SECONDS):
                await self._redis.publish(CHANGES_CHANNEL, change_message("relationships", tenant))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "a relationship change was not announced; other caches keep it for their TTL",
                extra={"fields": {"tenant": tenant, "error": type(exc).__name__}},
            )
