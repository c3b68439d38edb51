"""Which executions this process drives, under its lease in the store.

Each execution is driven by one task of one process; the store's lease says which process
(renewed by `renew`, taken over by another process once it runs out). A drive is not tied
to the call that started it: it runs in a task of its own, in a fresh context, so that it
does not inherit that call's deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from svc_tools.core.live import Run
from svc_tools.model import Execution
from svc_tools.ports import ExecutionStore

log = logging.getLogger("skm.tools")

# How long `stop` waits for this process's drives to end.
STOP_WAIT_SECONDS = 10.0

Drive = Callable[[Run], Coroutine[Any, Any, None]]


class Leases:
    """This process's drives: taking executions, starting and releasing their drives."""

    def __init__(self, store: ExecutionStore, instance: str = "") -> None:
        self._store = store
        # Which process drives an execution: this one, for as long as it lives.
        self.me = instance or f"tools-{uuid.uuid4()}"
        self._runs: dict[str, Run] = {}
        self.stopping = False

    def run_of(self, name: str) -> Run | None:
        """The run of `name` while this process drives it (not once its drive ended, even
        before its task is gone: a caller then looks at the store, and may take it again)."""
        run = self._runs.get(name)
        return run if run is not None and not run.ended else None

    def start(self, execution: Execution, drive: Drive, *, cancel: bool = False) -> Run:
        """Drive `execution`, which this process holds the lease of, in a task of its own."""
        run = Run(execution, cancel=cancel)
        self._runs[execution.name] = run
        run.task = asyncio.create_task(drive(run), name=f"drive {execution.name}", context=contextvars.Context())

        def forget(_: asyncio.Task[None]) -> None:
            # A later drive of the same execution may have replaced this one already.
            if self._runs.get(execution.name) is run:
                del self._runs[execution.name]

        run.task.add_done_callback(forget)
        return run

    async def adopt(self, name: str, drive: Drive, *, cancel: bool = False) -> Run | None:
        """Drive an execution nobody drives; None when another process does, or it ended."""
        if self.stopping:
            return None
        taken = await self._store.take(name, self.me)
        if taken is None:
            return self.run_of(name)
        return self.start(taken, drive, cancel=cancel)

    async def release(self, run: Run) -> None:
        """Stop driving a run that has no result, so that any process may take it."""
        try:
            await self._store.release(run.name, self.me)
        except Exception:
            log.exception("could not release an execution", extra={"fields": {"execution": run.name}})

    async def renew(self) -> None:
        await self._store.renew(self.me, list(self._runs))

    async def stop(self) -> None:
        """End every drive: a started one is cancelled; one not started yet sees
        `stopping` at its first step."""
        self.stopping = True
        runs = list(self._runs.values())
        for run in runs:
            if run.task is not None and run.started and not run.finishing:
                run.task.cancel()
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_SECONDS)
