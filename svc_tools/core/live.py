"""What ExecuteTool streams follow live: the runs this process drives, and the store's
change feed for the ones driven elsewhere.

A Run fans one drive's updates out to every stream that subscribed to it; output is cut
into chunks with their offsets within each stream. Changes turns the store's feed into
wake-ups for streams waiting on an execution and cancel requests for local runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from skm_runtime.access import Decision
from svc_tools.model import Decided, Execution, ExecutionState, Finished, Output, Stream, Update
from svc_tools.ports import ExecutionStore

log = logging.getLogger("skm.tools")

MAX_CHUNK_BYTES = 16 * 1024


class Moved:
    """Sent to a run's subscribers when its drive ended here without a result (another
    process drives it now, or this one is stopping)."""


MOVED = Moved()
RunItem = Update | BaseException | Moved


class Run:
    """One execution being driven by this process, and the streams that follow it."""

    def __init__(self, execution: Execution, *, cancel: bool = False) -> None:
        self.execution = execution
        self.cancel_requested = execution.cancel_requested or cancel
        # Set by the drive's first step; until then a cancel request is only recorded
        # (cancelling a task that has not started would skip its handlers).
        self.started = False
        # Set while the result is being stored: too late to cancel.
        self.finishing = False
        self.task: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[RunItem]] = set()
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._ended: RunItem | None = None
        self._done = asyncio.Event()

    @property
    def name(self) -> str:
        return self.execution.name

    def state(self) -> ExecutionState:
        return self.execution.state

    def subscribe(self) -> tuple[Decision | None, asyncio.Queue[RunItem]]:
        """The decision so far and a queue of everything after it (no await in between)."""
        queue: asyncio.Queue[RunItem] = asyncio.Queue()
        if self._ended is not None:
            queue.put_nowait(self._ended)
        else:
            self._subscribers.add(queue)
        decided = self.execution.decision if self.execution.state is not ExecutionState.CHECKING else None
        return decided, queue

    def unsubscribe(self, queue: asyncio.Queue[RunItem]) -> None:
        self._subscribers.discard(queue)

    def publish(self, update: Update) -> None:
        for queue in self._subscribers:
            queue.put_nowait(update)

    def output(self, stream: Stream, data: bytes) -> None:
        for start in range(0, len(data), MAX_CHUNK_BYTES):
            piece = data[start : start + MAX_CHUNK_BYTES]
            self.publish(Output(stream, piece, self._offsets[stream]))
            self._offsets[stream] += len(piece)

    def end(self, last: RunItem) -> None:
        """The drive is over: `last` is a Finished, an error, or MOVED."""
        self._ended = last
        for queue in self._subscribers:
            queue.put_nowait(last)
        self._subscribers.clear()
        self._done.set()

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.started and self.task is not None and not self.task.done() and not self.finishing:
            self.task.cancel()

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()


async def relay(run: Run, sent_decision: bool) -> AsyncIterator[Update]:
    """A run's updates for one stream, the decision at most once, until its result; ends
    early (without a result) when the drive moved away, and raises the drive's error."""
    decided, queue = run.subscribe()
    try:
        if decided is not None and not sent_decision:
            sent_decision = True
            yield Decided(decided)
        while True:
            item = await queue.get()
            if isinstance(item, Moved):
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Decided):
                if sent_decision:
                    continue
                sent_decision = True
            yield item
            if isinstance(item, Finished):
                return
    finally:
        run.unsubscribe(queue)


class Changes:
    """The store's change feed, as wake-ups for waiters and cancel requests for local runs."""

    def __init__(self, store: ExecutionStore, on_cancel: Callable[[str], None]) -> None:
        self._store = store
        self._on_cancel = on_cancel
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="tools-changes")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def wait_for(self, name: str, wait_seconds: float) -> None:
        """Wait until the store reports a change of `name`, or `wait_seconds`."""
        event = asyncio.Event()
        self._watchers.setdefault(name, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(wait_seconds, 0.0))
        finally:
            watchers = self._watchers.get(name)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[name]

    async def _listen(self) -> None:
        while True:
            try:
                async with self._store.changes() as feed:
                    async for change in feed:
                        for event in self._watchers.get(change.name, ()):
                            event.set()
                        if change.cancel_requested:
                            self._on_cancel(change.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the change feed; listening again")
                await asyncio.sleep(1.0)
