"""Rate limits as token buckets in Redis, one per tenant and one per user.

A bucket holds up to `burst` calls and refills at `rate` per second; one Lua script takes a
call atomically, so every gateway copy shares the same budget. When Redis cannot answer,
calls are let through (and logged): a broken rate limiter must not take the platform down;
authorization, which does fail closed, is not affected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("skm.gateway.ratelimit")

_TAKE = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 't'))
local stamp = tonumber(redis.call('HGET', KEYS[1], 's'))
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tokens == nil then tokens = burst; stamp = now end
tokens = math.min(burst, tokens + (now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tokens, 's', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
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

    async def take(self, scope: str, key: str) -> float:
        rate, burst = self._limits[scope]
        try:
            wait = await self._take(keys=[f"skm:gateway:rate:{scope}:{key}"], args=[time.time(), rate, burst])
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable; call let through", extra={"fields": {"error": type(exc).__name__}})
            return 0.0
        return float(wait)
