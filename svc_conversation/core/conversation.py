"""svc_conversation's use cases, one method per RPC, over its ports.

State lives in the session store (sessions, turns, append-only events) and is mirrored
for quick reads in the hot state; a process holds a session in memory only while it runs
one of its turns or streams it. Each concern lives in a module of its own:

    handles.py        sessions in memory: numbering, storing and handing out events
    sessions.py       create, get, list, update, delete, acknowledge
    turns.py          send a message, read turns, run them in tasks
    interventions.py  interrupt, resume, nudge, rerun, where the turn runs
    attach.py         streams of a session's events, in process and across processes
    converse.py       the Converse stream: events out, commands in
    leases.py         this runner's leases on running turns
    loop.py           the agent loop of one turn
    spawns.py         call_subordinate
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime

from skm_runtime.access import Principal
from svc_conversation.core.attach import Attachments
from svc_conversation.core.budgets import BudgetGuard
from svc_conversation.core.compression import Compressor
from svc_conversation.core.converse import converse, stream_events
from svc_conversation.core.handles import Handles
from svc_conversation.core.interventions import Interventions
from svc_conversation.core.leases import Leases
from svc_conversation.core.lookups import Lookups
from svc_conversation.core.loop import LoopServices
from svc_conversation.core.mirror import Mirror
from svc_conversation.core.sessions import Sessions
from svc_conversation.core.spawns import Spawns
from svc_conversation.core.turns import Turns
from svc_conversation.model import Attached, ConverseCommand, ConverseOutput, Session, SessionEvent, Turn
from svc_conversation.ports import (
    Budgets,
    ChatModel,
    HotState,
    Limits,
    PolicyGate,
    Profiles,
    SessionStore,
    SessionStreams,
    ToolRunner,
    TurnOwners,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Conversation:
    def __init__(
        self,
        store: SessionStore,
        hot: HotState,
        profiles: Profiles,
        tools: ToolRunner,
        policy: PolicyGate,
        llm: ChatModel,
        limits: Limits,
        *,
        runner_id: str,
        streams: SessionStreams | None = None,
        owners: TurnOwners | None = None,
        address: str = "",
        now: Callable[[], datetime] = _utc_now,
        task_context: Callable[[], contextvars.Context] = contextvars.copy_context,
        budgets: Budgets | None = None,
    ) -> None:
        """``task_context``: the context a turn's task runs in (the trace of the call that
        started it goes on; the composition root also drops that call's deadline)."""
        self.llm = llm
        self._limits = limits
        self._handles = Handles(store, streams)
        self._lookups = Lookups(profiles, tools)
        self._mirror = Mirror(hot)
        self._leases = Leases(store, runner_id=runner_id, address=address, seconds=limits.lease_seconds, now=now)
        self._attachments = Attachments(store, self._handles, streams)
        services = LoopServices(
            store=store,
            lookups=self._lookups,
            llm=llm,
            tools=tools,
            limits=limits,
            mirror=self._mirror,
            compressor=Compressor(llm, self._lookups, limits),
            spawner=Spawns(store, policy, tools, self),
            budgets=None if budgets is None else BudgetGuard(budgets, policy),
        )
        self._turns = Turns(services, self._handles, self._leases, self._attachments, task_context=task_context)
        self._interventions = Interventions(store, self._turns, self._leases, self._lookups, self._mirror, owners)
        self._sessions = Sessions(store, self._handles, self._lookups, policy, self._mirror, self._turns)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Follows the other processes' live events and resumes this runner's own turns
        left running by its previous incarnation."""
        self._attachments.start()
        await self.maintain(own_first=True)

    async def close(self) -> None:
        """Stops every runner without changing its turn (the next owner resumes it) and
        ends every attached stream with UNAVAILABLE."""
        await self._turns.close()
        for handle in self._handles:
            handle.close_streams("SHUTDOWN")
        await self._mirror.close()
        await self._lookups.close()

    async def maintain(self, *, own_first: bool = False) -> None:
        """Renews the leases of running turns, takes over abandoned ones, drops idle sessions."""
        await self._leases.renew([handle.name for handle in self._handles if handle.running()])
        await self._turns.resume_taken(await self._leases.take(own_first=own_first))
        self._handles.evict_idle(time.monotonic() - self._limits.idle_evict_seconds)

    def runner(self, session: str) -> asyncio.Task[None] | None:
        handle = self._handles.find(session)
        return handle.runner if handle is not None else None

    # -- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        principal: Principal | None,
        parent: str,
        session: Session,
        request_id: str,
        *,
        superior: str = "",
        persona_revision: str = "",
    ) -> Session:
        return await self._sessions.create_session(
            principal, parent, session, request_id, superior=superior, persona_revision=persona_revision
        )

    async def get_session(self, principal: Principal | None, name: str) -> Session:
        return await self._sessions.get_session(principal, name)

    async def list_sessions(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Session], str]:
        return await self._sessions.list_sessions(principal, parent, page_size, page_token)

    async def update_session(self, principal: Principal | None, session: Session, paths: Sequence[str]) -> Session:
        return await self._sessions.update_session(principal, session, paths)

    async def delete_session(self, principal: Principal | None, name: str, etag: str) -> None:
        await self._sessions.delete_session(principal, name, etag)

    async def acknowledge(self, principal: Principal | None, session_name: str, sequence: int) -> None:
        await self._sessions.acknowledge(principal, session_name, sequence)

    # -- turns -----------------------------------------------------------------------

    async def get_turn(self, principal: Principal | None, name: str) -> Turn:
        return await self._turns.get_turn(principal, name)

    async def list_turns(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Turn], str]:
        return await self._turns.list_turns(principal, parent, page_size, page_token)

    async def list_turn_events(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[SessionEvent], str]:
        return await self._turns.list_turn_events(principal, parent, page_size, page_token)

    async def send_message(
        self,
        principal: Principal | None,
        session_name: str,
        text: str,
        request_id: str,
        tool_choice: str,
        *,
        policy_context: Mapping[str, object] | None = None,
    ) -> Turn:
        return await self._turns.send_message(
            principal, session_name, text, request_id, tool_choice, policy_context=policy_context
        )

    async def interrupt(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        return await self._interventions.interrupt(principal, name, request_id, routed=routed)

    async def resume(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        return await self._interventions.resume(principal, name, request_id, routed=routed)

    async def nudge(
        self, principal: Principal | None, name: str, text: str, request_id: str, *, routed: bool = False
    ) -> Turn:
        return await self._interventions.nudge(principal, name, text, request_id, routed=routed)

    async def rerun(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        return await self._interventions.rerun(principal, name, request_id, routed=routed)

    # -- streams ---------------------------------------------------------------------

    async def attach(
        self, principal: Principal | None, name: str, after: int | None
    ) -> tuple[Session, int, AsyncIterator[SessionEvent]]:
        """The session as of now, where the replay starts, and every event after it: stored
        ones first, then live ones, in order and without duplicates (StreamClosed ends them)."""
        return await self._attachments.attach(principal, name, after)

    def stream_events(
        self, principal: Principal | None, name: str, after: int | None
    ) -> AsyncIterator[Attached | SessionEvent]:
        return stream_events(self, principal, name, after)

    def converse(
        self, principal: Principal | None, messages: AsyncIterator[ConverseCommand]
    ) -> AsyncIterator[ConverseOutput]:
        return converse(self, principal, messages)
