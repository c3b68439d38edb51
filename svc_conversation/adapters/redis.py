"""Hot session state in Redis: what the session is doing now, for quick reads by any process.

A mirror, written after every stored step: Postgres has the truth, and a lost write here
is repaired by the next one. Keys: ``skm:conversation:session:{name}``, expiring a day
after the last change.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from skm.conversation.v1 import session_pb2

_PREFIX = "skm:conversation:session:"
_TTL_SECONDS = 86_400


class RedisHotState:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def open(cls, url: str) -> RedisHotState:
        return cls(aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0))

    async def close(self) -> None:
        await self._redis.aclose()

    async def mirror(self, session: session_pb2.Session) -> None:
        key = _PREFIX + session.name
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "state": session_pb2.Session.State.Name(session.state),
                    "current_turn": session.current_turn,
                    "last_sequence": session.last_sequence,
                    "etag": session.etag,
                },
            )
            pipe.expire(key, _TTL_SECONDS)
            await pipe.execute()

    async def forget(self, name: str) -> None:
        await self._redis.delete(_PREFIX + name)
