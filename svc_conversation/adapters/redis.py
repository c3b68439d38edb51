"""Hot session state in Redis: what the session is doing now, for quick reads by any process.

A mirror, written after every stored step: Postgres has the truth, and a lost write here
is repaired by the next one. Keys: ``skm:conversation:session:{name}``, expiring a day
after the last change.

And the live events of every session, for the processes that do not run its turn
(:class:`RedisSessionStreams`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from skm.conversation.v1 import session_event_pb2
from svc_conversation import convert
from svc_conversation.model import Session, SessionEvent
from svc_conversation.ports import Live

log = logging.getLogger("skm.conversation")

_PREFIX = "skm:conversation:session:"
_TTL_SECONDS = 86_400
_EVENTS_PREFIX = "skm:conversation:events:"
# The reader's own stream, written to end its blocking XREAD when the followed set changes.
_WAKE_PREFIX = "skm:conversation:wake:"
_WAKE_TTL_SECONDS = 3600
# Events per pipeline; what queues up while one is in flight goes in the next.
_BATCH = 256
# Events waiting for the writer beyond this are dropped, oldest first (Redis is down or slow).
_QUEUE_LIMIT = 100_000
# Entries per session per XREAD.
_READ_COUNT = 1000
_RETRY_SECONDS = 0.5
_WARN_EVERY_SECONDS = 10.0


class RedisHotState:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def open(cls, url: str) -> RedisHotState:
        return cls(aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0))

    async def close(self) -> None:
        await self._redis.aclose()

    async def mirror(self, session: Session) -> None:
        key = _PREFIX + session.name
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "state": f"STATE_{session.state.name}",
                    "current_turn": session.current_turn,
                    "last_sequence": session.last_sequence,
                    "etag": session.etag,
                },
            )
            pipe.expire(key, _TTL_SECONDS)
            await pipe.execute()

    async def forget(self, name: str) -> None:
        await self._redis.delete(_PREFIX + name)


class RedisSessionStreams:
    """Every event a process publishes, in a Redis Stream per session, for the streams that
    other processes have attached to the session (cross-process live fan-out).

    Keys: ``skm:conversation:events:{session name}``; entry ids ``{sequence}-0``, so a
    stream is in sequence order and an event added twice (two writers, a retry) is refused
    rather than duplicated. Fields: ``e`` (the SessionEvent) and ``p`` (the sequence of the
    event its publisher published before it: a reader that has not seen ``p`` has missed
    something and must not go on). Streams are trimmed to about ``max_length`` entries and
    expire ``ttl_seconds`` after their last write.

    Writing never waits on Redis: :meth:`publish` queues the event for one background
    writer per process, which sends what has queued up in one pipeline at a time. When
    Redis cannot take it, the batch is dropped and logged (Postgres has every stored event;
    readers see the hole in ``p`` and re-attach).

    Reading: one task per process runs XREAD BLOCK over every session :meth:`follow` named,
    starting after the sequence given, and hands what it reads to ``deliver`` with the
    sequence it read after (every entry past that one, unless trimmed); when the set
    changes it is woken through a stream of its own, so a new follower costs no connection.
    When Redis cannot be read, ``lost`` is called for every followed session.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        max_length: int,
        ttl_seconds: int,
        block_seconds: float = 5.0,
    ) -> None:
        self._redis = client
        self._max_length = max_length
        self._ttl = ttl_seconds
        self._block_ms = int(block_seconds * 1000)
        self._queue: collections.deque[tuple[str, SessionEvent, int]] = collections.deque()
        self._queued = asyncio.Event()
        self._drained = asyncio.Event()
        self._after: dict[str, int] = {}
        # Which follow() call set each session's starting point: a read that began before
        # a later one must not move that point past what the later one asked for.
        self._rewound: dict[str, int] = {}
        self._follows = itertools.count(1)
        self._wake_key = f"{_WAKE_PREFIX}{uuid.uuid4().hex}"
        self._wake_after = "0-0"
        self._wake_sent = False
        self._changed = asyncio.Event()
        self._deliver: Callable[[str, int, list[Live]], None] = lambda _n, _a, _e: None
        self._lost: Callable[[str], None] = lambda _n: None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakers: set[asyncio.Task[None]] = set()
        self._warned = 0.0

    @classmethod
    def open(cls, url: str, *, max_length: int, ttl_seconds: int) -> RedisSessionStreams:
        block = 5.0
        # XREAD BLOCK holds its connection up to `block`: the socket must wait longer.
        client = aioredis.from_url(url, socket_timeout=block + 5.0, socket_connect_timeout=1.0)
        return cls(client, max_length=max_length, ttl_seconds=ttl_seconds, block_seconds=block)

    def start(
        self,
        deliver: Callable[[str, int, list[Live]], None],
        lost: Callable[[str], None],
    ) -> None:
        self._deliver, self._lost = deliver, lost
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="redis stream writer"),
            asyncio.create_task(self._read_forever(), name="redis stream reader"),
        ]

    async def close(self) -> None:
        # What is queued goes out first, briefly: followers elsewhere are waiting for it.
        if self._queue and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
        tasks, self._tasks = [*self._tasks, *self._wakers], []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._wake_key)
        await self._redis.aclose()

    # -- writing -------------------------------------------------------------------------

    def publish(self, session: str, event: SessionEvent, prev: int) -> None:
        if len(self._queue) >= _QUEUE_LIMIT:
            self._queue.popleft()
            self._warn("the Redis stream writer fell behind; dropping its oldest event")
        self._queue.append((session, event, prev))
        self._drained.clear()
        self._queued.set()

    async def _write_forever(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _BATCH))]
                await self._write(batch)
            self._drained.set()

    async def _write(self, batch: list[tuple[str, SessionEvent, int]]) -> None:
        keys = set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for session, event, prev in batch:
                key = _EVENTS_PREFIX + session
                keys.add(key)
                pipe.xadd(
                    key,
                    {"e": convert.event_to(event).SerializeToString(), "p": prev},
                    id=f"{event.sequence}-0",
                    maxlen=self._max_length,
                    approximate=True,
                )
            for key in keys:
                pipe.expire(key, self._ttl)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                self._warn("could not write live events to Redis; dropped", exc)
                return
        for result in results:
            # An id at or below the stream's newest is refused: already there (or a newer
            # writer took the session over); anything else is worth a line in the log.
            if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                self._warn("Redis refused a live event", result)

    def _warn(self, message: str, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_SECONDS:
            self._warned = now
            log.warning(message, extra={"fields": {"error": type(exc).__name__ if exc else ""}})

    # -- reading -------------------------------------------------------------------------

    def follow(self, session: str, after: int) -> None:
        """Reads ``session``'s stream from the entry after ``after`` on (again, if it was
        already read further: the followers drop what they saw)."""
        current = self._after.get(session)
        if current is not None and current <= after:
            return
        self._after[session] = after
        self._rewound[session] = next(self._follows)
        self._set_changed()

    def unfollow(self, session: str) -> None:
        if self._after.pop(session, None) is not None:
            self._rewound.pop(session, None)
            self._set_changed()

    def _set_changed(self) -> None:
        self._changed.set()
        if not self._wake_sent and self._tasks:
            self._wake_sent = True
            waker = asyncio.create_task(self._wake())
            self._wakers.add(waker)
            waker.add_done_callback(self._wakers.discard)

    async def _wake(self) -> None:
        """Ends the reader's blocking XREAD early, so it starts again with the new set."""
        try:
            await self._redis.xadd(self._wake_key, {"w": 1}, maxlen=16, approximate=False)
            await self._redis.expire(self._wake_key, _WAKE_TTL_SECONDS)
        except (RedisError, OSError):
            self._wake_sent = False  # the reader finds out itself that Redis is gone

    async def _read_forever(self) -> None:
        while True:
            if not self._after:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._wake_sent = False
            self._changed.clear()
            rewound = dict(self._rewound)
            read_from = dict(self._after)
            streams: dict[KeyT, StreamIdT] = {_EVENTS_PREFIX + name: f"{after}-0" for name, after in read_from.items()}
            streams[self._wake_key] = self._wake_after
            try:
                # RESP2, the client's protocol: [key, [(id, fields), ...]] per stream with news.
                reply = cast(
                    "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
                    await self._redis.xread(streams, count=_READ_COUNT, block=self._block_ms),
                )
            except (RedisError, OSError) as exc:
                self._warn("could not read live events from Redis; followers re-attach", exc)
                for name in list(self._after):
                    self._lost(name)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for key, entries in reply or []:
                key_text = key.decode()
                if key_text == self._wake_key:
                    self._wake_after = entries[-1][0].decode()
                    continue
                name = key_text.removeprefix(_EVENTS_PREFIX)
                if name not in self._after or name not in read_from:
                    continue
                events: list[Live] = []
                for _entry_id, fields in entries:
                    event = convert.event_of(session_event_pb2.SessionEvent.FromString(fields[b"e"]))
                    events.append((event, int(fields[b"p"])))
                if self._rewound.get(name) == rewound.get(name):
                    self._after[name] = max(self._after[name], events[-1][0].sequence)
                self._deliver(name, read_from[name], events)
