"""svc_tools's ToolService use cases: list_tools, execute, get_execution, cancel_execution,
and the process's start, close and maintain.

An execution is driven by one task of one process (svc_tools.core.leases) through its
states (svc_tools.core.executions). The drive is not tied to the ExecuteTool stream that
started it: streams subscribe to it (svc_tools.core.live), and a caller that comes back
with the same request_id attaches to the same execution instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from skm_runtime.access import Principal
from svc_tools.catalogue import TOOLS
from svc_tools.core.acceptance import accept_request
from svc_tools.core.approvals import Approvals
from svc_tools.core.arguments import ArgumentSchemas
from svc_tools.core.executions import Executions
from svc_tools.core.leases import Leases
from svc_tools.core.listing import Catalogue
from svc_tools.core.live import Changes, Run, relay
from svc_tools.core.names import own_execution
from svc_tools.errors import ExecutionFinished, ExecutionNotFound, RequestIdReused
from svc_tools.model import (
    Accepted,
    Decided,
    ExecuteRequest,
    Execution,
    ExecutionState,
    Finished,
    Tool,
    Update,
)
from svc_tools.ports import ExecutionStore, PolicyGate, Sandbox, ToolRunner

log = logging.getLogger("skm.tools")

# How long CancelExecution waits for another process to stop an execution it drives.
CANCEL_WAIT_SECONDS = 10.0
# How often a stream following an execution driven elsewhere looks at it without a notice.
FOLLOW_POLL_SECONDS = 1.0
# How many executions one maintenance pass takes over or reports at most.
MAINTAIN_BATCH = 100


class Tools:
    """The tool service's use cases over its ports."""

    def __init__(
        self,
        store: ExecutionStore,
        policy: PolicyGate,
        sandbox: Sandbox,
        *,
        now: Callable[[], datetime],
        max_timeout_seconds: float = 300.0,
        catalogue: Sequence[Tool] = TOOLS,
        runners: Sequence[ToolRunner] = (),
        instance: str = "",
    ) -> None:
        self._store = store
        self._now = now
        self._max_timeout = max_timeout_seconds
        self._catalogue = Catalogue(catalogue)
        self._schemas = ArgumentSchemas(self._catalogue.tools)
        self._leases = Leases(store, instance)
        self._executions = Executions(store, Approvals(policy), sandbox, self._leases, now=now, runners=runners)
        self._changes = Changes(store, self._cancel_here)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for changes made by other processes (cancel requests, results)."""
        self._changes.start()

    async def close(self) -> None:
        """Stop every drive of this process: running sandboxes are killed and their
        executions end INTERRUPTED; held and checking ones are left for any process."""
        await self._leases.stop()
        await self._changes.close()

    async def maintain(self) -> None:
        """One pass of housekeeping: renew this process's leases, take over executions
        whose process died, and report outcomes svc_policy has not heard of yet."""
        await self._leases.renew()
        for orphan in await self._store.orphans(MAINTAIN_BATCH):
            if self._leases.run_of(orphan.name) is None:
                await self._adopt(orphan.name)
        for finished in await self._store.unreported(MAINTAIN_BATCH):
            await self._executions.report(finished)

    # -- the catalogue ---------------------------------------------------------------

    def list_tools(self, parent: str, page_size: int, page_token: str) -> tuple[list[Tool], str]:
        return self._catalogue.list_tools(parent, page_size, page_token)

    # -- executions ------------------------------------------------------------------

    async def execute(
        self, request: ExecuteRequest, principal: Principal | None, *, trusted_context: bool, trace_id: str = ""
    ) -> AsyncIterator[Update]:
        """Accept (or attach to) an execution and follow it to its single result."""
        execution = accept_request(
            request,
            principal,
            catalogue=self._catalogue,
            schemas=self._schemas,
            max_timeout_seconds=self._max_timeout,
            now=self._now(),
            trusted_context=trusted_context,
            trace_id=trace_id,
        )
        stored, created = await self._store.create(execution, self._leases.me)
        if not created:
            if stored.fingerprint != execution.fingerprint:
                raise RequestIdReused(
                    "this request_id was used for another request", metadata={"request_id": request.request_id}
                )
            log.info("attached to an execution", extra={"fields": {"execution": stored.name}})
        else:
            # Started before anything is sent: the run does not depend on the stream.
            self._leases.start(stored, self._executions.drive)
        yield Accepted(stored.name)
        async for update in self._follow(stored):
            yield update

    async def get_execution(self, name: str, principal: Principal | None) -> Execution:
        execution = await self._store.get(own_execution(name, principal))
        if execution is None:
            raise ExecutionNotFound("no such execution", metadata={"name": name})
        return execution

    async def cancel_execution(self, name: str, principal: Principal | None) -> Execution:
        execution = await self.get_execution(name, principal)
        if execution.state.terminal:
            raise ExecutionFinished("the execution already has its result", metadata={"name": name})
        run = self._leases.run_of(name) or await self._adopt(name, cancel=True)
        if run is not None:
            run.cancel()
            await run.wait()
        else:
            # Driven by another process: ask it, and wait for the outcome.
            await self._store.request_cancel(name)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANCEL_WAIT_SECONDS
            while not execution.state.terminal and loop.time() < deadline:
                await self._changes.wait_for(name, min(FOLLOW_POLL_SECONDS, deadline - loop.time()))
                execution = await self._store.get(name) or execution
                if not execution.state.terminal and (run := await self._adopt(name, cancel=True)) is not None:
                    run.cancel()
                    await run.wait()
        return await self._store.get(name) or execution

    # -- following -------------------------------------------------------------------

    async def _follow(self, execution: Execution) -> AsyncIterator[Update]:
        """The decision (once) and the result of an execution, with live output when this
        process drives it; takes it over when nobody does."""
        sent_decision = False
        while True:
            if execution.decision is not None and execution.state is not ExecutionState.CHECKING and not sent_decision:
                sent_decision = True
                yield Decided(execution.decision)
            if execution.state.terminal:
                assert execution.result is not None  # terminal executions have their result
                yield Finished(execution.result)
                return
            run = self._leases.run_of(execution.name) or await self._adopt(execution.name)
            if run is not None:
                async for update in relay(run, sent_decision):
                    if isinstance(update, Decided):
                        sent_decision = True
                    yield update
                    if isinstance(update, Finished):
                        return
            else:
                await self._changes.wait_for(execution.name, FOLLOW_POLL_SECONDS)
            execution = await self._store.get(execution.name) or execution

    async def _adopt(self, name: str, *, cancel: bool = False) -> Run | None:
        return await self._leases.adopt(name, self._executions.drive, cancel=cancel)

    def _cancel_here(self, name: str) -> None:
        """Another process asked for `name` to stop: stop it if this process drives it."""
        run = self._leases.run_of(name)
        if run is not None:
            run.cancel()
