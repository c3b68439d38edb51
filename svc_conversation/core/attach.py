"""Streams attached to a session: the stored events first, then the live ones, each once
and in order.

While a session's turn runs in this process, its events reach the streams attached here
in process. Otherwise they come from the session's live events (a Redis Stream) that the
process running the turn publishes, followed while streams are attached here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from skm_runtime.access import Principal
from svc_conversation.core.handles import Closed, Handles, SessionHandle, Subscriber
from svc_conversation.core.names import session_name
from svc_conversation.errors import SequenceOutOfRange, StreamClosed
from svc_conversation.model import Session, SessionEvent
from svc_conversation.ports import Live, SessionStore, SessionStreams


class Attachments:
    def __init__(self, store: SessionStore, handles: Handles, streams: SessionStreams | None) -> None:
        self._store = store
        self._handles = handles
        self._streams = streams

    def start(self) -> None:
        if self._streams is not None:
            self._streams.start(self.relay, self.lost)

    async def attach(
        self, principal: Principal | None, name: str, after: int | None
    ) -> tuple[Session, int, AsyncIterator[SessionEvent]]:
        """The session as of now, where the replay starts (``after``, or the session's
        acknowledged sequence), and every event after it. The events raise StreamClosed
        when the stream ends on the server's side."""
        _, name = session_name(principal, name)
        handle = await self._handles.get(name)
        async with handle.lock:
            # Where the turn runs in another process, this one's copy of the session may
            # be behind (last_sequence, reservations): take the stored one.
            await self._handles.refresh(handle)
            start = handle.session.acknowledged_sequence if after is None else after
            # A client may have seen token deltas up to the reserved block that a process
            # which died never stored: resuming after one of those is fine.
            if start < 0 or start > max(handle.session.last_sequence, handle.reserved):
                raise SequenceOutOfRange(
                    f"after_sequence must be between 0 and {handle.session.last_sequence}",
                    metadata={"last_sequence": str(handle.session.last_sequence)},
                )
            subscriber, snapshot, unstored = handle.subscribe(start)
        return snapshot, start, self._events(handle, subscriber, start, unstored)

    async def _events(
        self, handle: SessionHandle, subscriber: Subscriber, after: int, unstored: list[SessionEvent]
    ) -> AsyncIterator[SessionEvent]:
        cursor = after
        try:
            while True:
                batch = await self._store.list_events(handle.name, cursor, 1000)
                for event in batch:
                    cursor = subscriber.cursor = event.sequence
                    yield event
                if len(batch) < 1000:
                    break
            for event in unstored:
                if event.sequence > cursor:
                    cursor = subscriber.cursor = event.sequence
                    yield event
            subscriber.horizon = max(subscriber.horizon, cursor)
            subscriber.following = True
            self.follow_changed(handle)
            while True:
                item = await subscriber.queue.get()
                if isinstance(item, Closed):
                    raise StreamClosed(item.reason)
                event, prev = item
                # Two sources (this process's turn, the Redis Stream) may hand out the same
                # event, or one the client saw in the replay: each goes out once, in order.
                if event.sequence <= cursor:
                    continue
                if prev > cursor:
                    # Something between was lost (trimmed, dropped while Redis was down, or
                    # still on its way from the process that ran the turn before): the
                    # client re-attaches after `cursor` and reads it from Postgres.
                    raise StreamClosed("GAP")
                cursor = subscriber.cursor = event.sequence
                yield event
        finally:
            handle.unsubscribe(subscriber)
            self.follow_changed(handle)

    def follow_changed(self, handle: SessionHandle) -> None:
        """Follows the session's live events while streams are attached here and its turn
        does not run here (then the turn's events come in process, without the Redis hop)."""
        if self._streams is None:
            return
        following = [s.cursor for s in handle.subscribers if s.following]
        if following and not handle.running() and not handle.deleted:
            self._streams.follow(handle.name, min(following))
        else:
            self._streams.unfollow(handle.name)

    def relay(self, name: str, read_after: int, items: list[Live]) -> None:
        """Hands what was read of a followed session's live events to its streams."""
        handle = self._handles.find(name)
        if handle is not None and not handle.running():
            handle.relay(read_after, items)

    def lost(self, name: str) -> None:
        """The session's live events cannot be read: streams that follow them end, so their
        clients re-attach (and read what is stored)."""
        handle = self._handles.find(name)
        if handle is None:
            if self._streams is not None:
                self._streams.unfollow(name)
            return
        if not handle.running():
            handle.close_streams("UNAVAILABLE")
        self.follow_changed(handle)
