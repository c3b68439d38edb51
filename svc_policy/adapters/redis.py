"""Redis for svc_policy: the index of blocked actions, and the channel its changes go out on.

The change feed publishes on skm_runtime.policy_changes.CHANGES_CHANNEL after every relationship
write or delete, so policy clients and the other svc_policy processes empty their decision
caches (see skm_runtime/policy_client.py for the staleness bounds that follow).

The index, for fast listing by tenant and state:

One sorted set per (tenant, state), `skm:policy:blocked:{tenant}:{state}`, scored by
creation time in microseconds, and a hash per tenant of each entry's version (the row's
change counter in Postgres, `version`, never a clock). Postgres stays the source of truth;
the index is only trusted while it is known to be whole:
- An entry is indexed after each committed change by one script that moves it to its
  state's set only if its version is not older than the indexed one, so a late or
  repeated write (a rebuild racing a decision) never puts an entry back in an old state.
- `skm:policy:blocked:ready` says the index was built; a rebuild sets it when done (and
  never deletes it, so one process's rebuild sends no other to rebuild too). A Redis that
  restarted without its data has lost it: listing then reads Postgres and the index is
  rebuilt. A Redis restored from an older snapshot keeps the marker but not the newer
  entries: flush the index's keys after such a restore (the stack's Redis keeps no data).
- A process whose index write failed (Redis unreachable) lists from Postgres and
  rebuilds the index once Redis answers again (svc_policy/adapters/postgres.py). Until
  then, other processes may list from the index without that one change.
- Listing keeps only the entries Postgres has in the states asked for, so an entry the
  index still holds under an older state is never shown under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from skm_runtime.access import HeldState
from skm_runtime.policy_changes import CHANGES_CHANNEL, change_message
from svc_policy.model import BlockedAction

log = logging.getLogger("skm.policy.index")
# How long a write call may wait for its announcement before going on without it.
_ANNOUNCE_SECONDS = 0.5
_PREFIX = "skm:policy:blocked"


_READY = f"{_PREFIX}:ready"
# KEYS: the tenant's version hash, the entry's state set, the other states' sets.
# ARGV: name, version (the row's change counter), score (create time, µs).
_PUT = """
local indexed = redis.call('HGET', KEYS[1], ARGV[1])
if indexed and tonumber(indexed) > tonumber(ARGV[2]) then
  return 0
end
for i = 3, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _key(tenant: str, state: str) -> str:
    return f"{_PREFIX}:{tenant}:{state}"


def _versions(tenant: str) -> str:
    return f"{_PREFIX}:{tenant}:changes"


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


class RedisBlockedIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._put_script = client.register_script(_PUT)
        # Index writes this process failed to make; listing trusts the index only when a
        # rebuild started after the last of them has finished.
        self._misses = 0
        self._whole = False

    @classmethod
    def connect(cls, url: str) -> RedisBlockedIndex:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True))

    async def close(self) -> None:
        await self._redis.aclose()

    @property
    def stale(self) -> bool:
        """Whether this process may not trust the index: never built here, a write was
        missed, or the ready marker was found gone. The store rebuilds it then."""
        return not self._whole

    async def put(self, action: BlockedAction, version: int) -> None:
        """Index an entry's current state (after its change committed; `version`: the row's
        change counter); a failure marks the index stale instead of failing the change."""
        try:
            await self._put(action, version)
        except RedisError as exc:
            self._misses += 1
            self._whole = False
            log.warning("blocked-action index not updated", extra={"fields": {"error": type(exc).__name__}})

    async def _put(self, action: BlockedAction, version: int) -> None:
        others = [_key(action.tenant, state.value) for state in HeldState if state is not action.state]
        await self._put_script(
            keys=[_versions(action.tenant), _key(action.tenant, action.state.value), *others],
            args=[action.name, version, _micros(action.create_time)],
        )

    async def rebuild(self, actions: AsyncIterator[tuple[BlockedAction, int]]) -> int:
        """Index every stored entry (with its version), then mark the index whole. Raises
        RedisError when Redis fails on the way (this process then keeps listing from
        Postgres)."""
        misses = self._misses
        count = 0
        async for action, version in actions:
            await self._put(action, version)
            count += 1
        await self._redis.set(_READY, "1")
        self._whole = misses == self._misses
        return count

    async def page(self, tenant: str, states: Sequence[str], offset: int, limit: int) -> list[str] | None:
        """Names oldest first, or None when the index cannot be trusted or Redis cannot
        answer (list from Postgres then)."""
        if not self._whole:
            return None
        keys = [_key(tenant, state) for state in (states or [s.value for s in HeldState])]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(_READY)
                for key in keys:
                    # One state: the page itself; several: each state's first offset+limit.
                    first, last = (offset, offset + limit - 1) if len(keys) == 1 else (0, offset + limit - 1)
                    pipe.zrange(key, first, last, withscores=True)
                ready, *ranges = await pipe.execute()
        except RedisError as exc:
            log.warning("blocked-action index unavailable", extra={"fields": {"error": type(exc).__name__}})
            return None
        if not ready:
            self._whole = False
            return None
        if len(keys) == 1:
            return [str(name) for name, _score in ranges[0]]
        scored = sorted((float(score), str(name)) for entries in ranges for name, score in entries)
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
