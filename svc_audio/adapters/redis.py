"""The StreamDirectory port in Redis: which svc_audio replica holds each live voice stream.

Key `skm:audio:voice-stream:{voice stream name}` -> the holder's address, expiring `ttl`
after its last claim: the holder claims again while the stream lives, so a replica that
dies without releasing stops being found once its claim expires. A release deletes the key
only while it still names this store's own claim (a compare-and-delete script), so a
replica releasing late never removes a claim another one made meanwhile.
"""

from __future__ import annotations

import logging
import math

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from skm_runtime.errors import ServiceUnavailable

log = logging.getLogger("skm.audio.directory")

PREFIX = "skm:audio:voice-stream:"
# KEYS: the stream's key. ARGV: the holder that claimed it here.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    log.warning("the voice-stream directory cannot be reached", extra={"fields": {"error": type(exc).__name__}})
    return ServiceUnavailable("the voice-stream directory cannot be reached", metadata={"error": type(exc).__name__})


class RedisStreamDirectory:
    """Voice stream -> holder address, shared by every replica through Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE)
        # What this store claimed each stream as: a release deletes only that.
        self._claimed: dict[str, str] = {}

    @classmethod
    def connect(cls, url: str) -> RedisStreamDirectory:
        # A pooled connection outlives a Redis restart only as a dead socket: without a retry
        # (a pool made by from_url has none) the first command after it fails. Every command
        # here may be repeated (SET, GET, the compare-and-delete), so it is retried on a new
        # connection.
        return cls(
            aioredis.from_url(
                url,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
                decode_responses=True,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            )
        )

    async def close(self) -> None:
        await self._redis.aclose()

    async def claim(self, voice_stream: str, holder: str, ttl_seconds: float) -> None:
        """Names `holder` as the stream's, for `ttl_seconds` (at least 1 ms) from now;
        claiming again refreshes it."""
        try:
            await self._redis.set(PREFIX + voice_stream, holder, px=max(1, math.ceil(ttl_seconds * 1000)))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        self._claimed[voice_stream] = holder

    async def holder(self, voice_stream: str) -> str | None:
        try:
            value = await self._redis.get(PREFIX + voice_stream)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return None if value is None else str(value)

    async def release(self, voice_stream: str) -> None:
        """Forgets the stream's claim if it is still the one this store made (else nothing)."""
        holder = self._claimed.pop(voice_stream, None)
        if holder is None:
            return
        try:
            await self._release(keys=[PREFIX + voice_stream], args=[holder])
        except RedisError as exc:
            # Put back, so a retried release can still delete it (the TTL does otherwise).
            self._claimed.setdefault(voice_stream, holder)
            raise _unavailable(exc) from exc
