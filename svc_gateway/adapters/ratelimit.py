"""Rate limits as token buckets in Redis, one per tenant and one per user.

A bucket holds up to `burst` calls and refills at `rate` per second. One Lua script takes a
call from every bucket of a call at once, atomically and in one round trip, so every gateway
copy shares the same budget: either each bucket has room and each gives one call, or none
gives anything and the answer names the first bucket without room (a user over their limit
does not spend their tenant's budget). When Redis cannot answer, calls are let through (and
logged): a broken rate limiter must not take the platform down; authorization, which does
fail closed, is not affected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("skm.gateway.ratelimit")

# KEYS: one hash per bucket. ARGV: now, then rate and burst of each bucket in KEYS' order.
# Returns "" when every bucket gave a call, else "{index}:{seconds to wait}" (index from 1).
_TAKE = """
local now = tonumber(ARGV[1])
local tokens, refused, wait = {}, 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local held = redis.call('HMGET', key, 't', 's')
  local t, s = tonumber(held[1]), tonumber(held[2])
  if t == nil or s == nil then t = burst; s = now end
  t = math.min(burst, t + math.max(0, now - s) * rate)
  tokens[i] = t
  if refused == 0 and t < 1 then refused = i; wait = (1 - t) / rate end
end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local t = tokens[i]
  if refused == 0 then t = t - 1 end
  redis.call('HSET', key, 't', t, 's', now)
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
if refused == 0 then return '' end
return refused .. ':' .. tostring(wait)
"""


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, limits: Mapping[str, tuple[float, float]]) -> None:
        """`limits`: per scope ("tenant", "user"), (calls per second, burst)."""
        self._redis = client
        self._limits = dict(limits)
        self._take = client.register_script(_TAKE)

    @classmethod
    def connect(cls, url: str, limits: Mapping[str, tuple[float, float]]) -> RedisRateLimiter:
        client = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, limits)

    async def close(self) -> None:
        await self._redis.aclose()

    async def take(self, buckets: Sequence[tuple[str, str]]) -> tuple[str, float] | None:
        keys: list[str] = []
        args: list[float] = [time.time()]
        # One hash tag for all keys of a take (the first bucket's key: the tenant), so that
        # the script's keys share a slot and it also runs on a Redis Cluster.
        tag = buckets[0][1] if buckets else ""
        for scope, key in buckets:
            rate, burst = self._limits[scope]
            keys.append(f"skm:gateway:rate:{{{tag}}}:{scope}:{key}")
            args += (rate, burst)
        try:
            answer = await self._take(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable; call let through", extra={"fields": {"error": type(exc).__name__}})
            return None
        if not answer:
            return None
        index, _, wait = (answer.decode() if isinstance(answer, bytes) else str(answer)).partition(":")
        return buckets[int(index) - 1][0], float(wait)
