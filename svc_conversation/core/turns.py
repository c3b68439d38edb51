"""Turns: sending a message starts one, and its run goes on in a task of this process
until the turn ends, is interrupted, or the process stops (then the next holder of its
lease resumes it)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, InvalidArgument
from svc_conversation.core.attach import Attachments
from svc_conversation.core.handles import Handles, SessionHandle, now
from svc_conversation.core.leases import Leases
from svc_conversation.core.loop import LoopServices, TurnRun, screened
from svc_conversation.core.names import (
    after_of,
    check_uuid,
    fingerprint,
    page_size,
    session_name,
    token_of,
    turn_ordinal_of,
)
from svc_conversation.errors import (
    InvalidToolChoice,
    MessageEmpty,
    MessageTooLong,
    RequestIdReused,
    SessionGone,
    SessionNotFound,
    TurnInProgress,
    TurnNotFound,
)
from svc_conversation.model import (
    Command,
    Intervention,
    InterventionKind,
    PolicyContext,
    PolicyFact,
    SessionEvent,
    Turn,
    TurnState,
    TurnStateChanged,
    UserMessage,
    turn_ordinal,
)

log = logging.getLogger("skm.conversation")

MAX_TEXT = 32_768
MAX_POLICY_FACTS = 16
_INTERRUPT_WAIT = 0.15


def _cancelled(future: asyncio.Future[Any] | None) -> None:
    """Stops work started for a request that will not use it."""
    if future is not None:
        future.cancel()
        future.add_done_callback(lambda done: done.cancelled() or done.exception())


def policy_facts(sent: Mapping[str, object]) -> dict[str, PolicyFact]:
    """A message's policy_context, checked: at most MAX_POLICY_FACTS facts, each a finite
    number (as a float), a string or a bool; raises InvalidArgument naming every bad one."""
    violations: list[FieldViolation] = []
    if len(sent) > MAX_POLICY_FACTS:
        violations.append(FieldViolation("policy_context", f"more than {MAX_POLICY_FACTS} keys"))
    facts: dict[str, PolicyFact] = {}
    for key, value in sent.items():
        if isinstance(value, bool | str):
            facts[key] = value
        elif isinstance(value, int | float) and math.isfinite(value):
            facts[key] = float(value)
        else:
            violations.append(
                FieldViolation(f"policy_context.{key[:64]}", "must be a finite number, a string or a bool")
            )
    if violations:
        raise InvalidArgument(
            f"{violations[0].field}: {violations[0].description}",
            metadata={"limit": str(MAX_POLICY_FACTS)} if len(sent) > MAX_POLICY_FACTS else None,
            violations=violations,
        )
    return facts


class Turns:
    def __init__(
        self,
        services: LoopServices,
        handles: Handles,
        leases: Leases,
        attachments: Attachments,
        *,
        task_context: Callable[[], contextvars.Context],
    ) -> None:
        self._services = services
        self._store = services.store
        self._handles = handles
        self._leases = leases
        self._attachments = attachments
        self._task_context = task_context

    # -- reading ---------------------------------------------------------------------

    async def turn(self, principal: Principal | None, name: str, *, fresh: bool = False) -> tuple[SessionHandle, Turn]:
        """The turn and its session's handle; with ``fresh``, a handle that runs no turn
        here is first brought up to what is stored."""
        ordinal = turn_ordinal_of(name)
        try:
            _, session = session_name(principal, name)
            handle = await self._handles.get(session)
        except SessionNotFound:
            raise TurnNotFound(f"turn {name!r} does not exist", metadata={"turn": name}) from None
        if fresh:
            await self._handles.refresh(handle, lock=True)
        # A handle that runs no turn here may hold an older copy (another process may run
        # the turn, or have run it since): the stored one counts, unless just read.
        if handle.turn is not None and turn_ordinal(handle.turn.name) == ordinal and (fresh or handle.running()):
            return handle, handle.turn
        turn = await self._store.get_turn(handle.name, ordinal)
        if turn is None:
            raise TurnNotFound(f"turn {name!r} does not exist", metadata={"turn": name})
        return handle, turn

    async def get_turn(self, principal: Principal | None, name: str) -> Turn:
        return (await self.turn(principal, name))[1]

    async def list_turns(
        self, principal: Principal | None, parent: str, size: int, token: str
    ) -> tuple[list[Turn], str]:
        _, session = session_name(principal, parent)
        handle = await self._handles.get(session)
        size = page_size(size, 50)
        turns = await self._store.list_turns(handle.name, after_of(token), size + 1)
        next_token = ""
        if len(turns) > size:
            turns = turns[:size]
            next_token = token_of({"after": turn_ordinal(turns[-1].name)})
        return turns, next_token

    async def list_turn_events(
        self, principal: Principal | None, parent: str, size: int, token: str
    ) -> tuple[list[SessionEvent], str]:
        handle, turn = await self.turn(principal, parent)
        size = page_size(size, 200)
        events = await self._store.list_events(handle.name, after_of(token), size + 1, turn=turn_ordinal(turn.name))
        next_token = ""
        if len(events) > size:
            events = events[:size]
            next_token = token_of({"after": events[-1].sequence})
        return events, next_token

    # -- starting turns --------------------------------------------------------------

    async def send_message(
        self,
        principal: Principal | None,
        session: str,
        text: str,
        request_id: str,
        tool_choice: str,
        *,
        policy_context: Mapping[str, object] | None = None,
    ) -> Turn:
        """Starts the session's next turn with ``text``. ``policy_context``: facts for the
        policy conditions of the turn's tool calls, as a caller inside the mesh gave them (the
        servicer passes none for a public call); stored with the message."""
        principal, session = session_name(principal, session)
        handle = await self._handles.get(session)
        if not text.strip():
            raise MessageEmpty("the message is empty")
        if len(text) > MAX_TEXT:
            raise MessageTooLong(f"the message is longer than {MAX_TEXT} characters", metadata={"limit": str(MAX_TEXT)})
        check_uuid(request_id, "request_id")
        facts = policy_facts(policy_context or {})
        head_start = None
        if handle.active_turn() is None:
            # The screening (the PRE_SLM's call, most of the wait before the first token)
            # starts now, while the turn is checked and stored.
            services = self._services
            head_start = asyncio.ensure_future(
                screened(services.lookups, services.llm, services.limits, principal, handle.session, text)
            )
        try:
            # With no turn running here, another process may have run one since this copy
            # of the session was read: read it again, in the same time as the request id.
            existing, _ = await asyncio.gather(
                self._store.turn_by_request(handle.name, request_id),
                self._handles.refresh(handle, lock=True),
            )
            if existing is not None:
                if existing.input_text == text and not existing.rerun_of:
                    return existing
                raise RequestIdReused(
                    "this request_id was used for another message", metadata={"request_id": request_id}
                )
            if tool_choice:
                persona = await self._services.lookups.session_persona(handle.session, principal)
                if tool_choice not in persona.allowed_tools:
                    raise InvalidToolChoice(
                        f"{tool_choice!r} is not a tool of this session's persona",
                        metadata={"tool_choice": tool_choice},
                    )
            turn = await self.new_turn(
                handle,
                principal,
                text,
                request_id,
                tool_choice=tool_choice,
                policy_context=facts,
                head_start=head_start,
            )
            head_start = None  # the turn's runner has it
            return turn
        finally:
            _cancelled(head_start)

    async def new_turn(
        self,
        handle: SessionHandle,
        principal: Principal,
        text: str,
        request_id: str,
        *,
        tool_choice: str = "",
        policy_context: PolicyContext | None = None,
        rerun_of: Turn | None = None,
        start_tier: int = 0,
        head_start: asyncio.Future[Any] | None = None,
    ) -> Turn:
        """Stores the session's next turn and starts running it (with ``rerun_of``, the
        original records the rerun first, as the command ``request_id``)."""
        active = handle.active_turn()
        if active is not None:
            raise TurnInProgress(
                "a turn of this session is running; interrupt it or nudge it", metadata={"turn": active.name}
            )
        ordinal = (turn_ordinal(handle.turn.name) if handle.turn is not None else 0) + 1
        turn = Turn(
            name=f"{handle.name}/turns/{ordinal}",
            state=TurnState.RUNNING,
            input_text=text,
            request_id=request_id,
            start_tier=start_tier,
            rerun_of=rerun_of.name if rerun_of is not None else "",
            create_time=now(),
        )
        if rerun_of is not None:
            # The original turn records the rerun before the new turn's first event.
            await handle.step(
                rerun_of,
                [Intervention(InterventionKind.RERUN, request_id, rerun_turn=turn.name)],
                actor=principal,
                commands=[Command(request_id, "RERUN", turn_ordinal(rerun_of.name), fingerprint("RERUN"))],
            )
        turn, _ = await handle.step(
            turn,
            [
                TurnStateChanged(TurnState.RUNNING),
                UserMessage(text, request_id, tool_choice, dict(policy_context or {})),
            ],
            actor=principal,
            lease=self._leases.lease(),
        )
        self._services.mirror.soon(handle)
        self.start_runner(handle, turn, principal, head_start)
        return turn

    # -- runners ---------------------------------------------------------------------

    def start_runner(
        self, handle: SessionHandle, turn: Turn, principal: Principal, head_start: asyncio.Future[Any] | None = None
    ) -> None:
        run = TurnRun(self._services, handle, turn, principal, head_start=head_start)

        async def guarded() -> None:
            try:
                await run.run()
            except asyncio.CancelledError:
                raise
            except SessionGone:
                log.info("the session was deleted under its running turn")
            except Exception:
                # Left RUNNING on purpose: the lease runs out and the turn is resumed.
                log.exception("a turn's runner failed; the turn will be resumed")

        handle.run = run
        handle.turn = turn
        # The turn outlives the call that started it (SendMessage, ResumeTurn...): its calls
        # into the mesh, e.g. a spawn an operator approves an hour later, are not cut to
        # that call's deadline.
        handle.runner = asyncio.create_task(guarded(), name=f"turn {turn.name}", context=self._task_context())
        # Streams attached here follow the turn in process while it runs here, and the
        # session's live events otherwise.
        self._attachments.follow_changed(handle)
        handle.runner.add_done_callback(lambda _: self._attachments.follow_changed(handle))

    async def stop_runner(self, handle: SessionHandle) -> None:
        runner = handle.runner
        if runner is None or runner.done():
            return
        if handle.run is not None:
            handle.run.stopped = True
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(runner), _INTERRUPT_WAIT)
        if not runner.done():
            # It keeps unwinding (e.g. a slow cancel of a tool call); its events are stale.
            log.warning("a turn's runner took longer than %.0f ms to stop", _INTERRUPT_WAIT * 1000)

    async def resume_taken(self, names: list[str]) -> None:
        """Resumes the active turns of sessions whose leases this runner just took."""
        for name in names:
            with contextlib.suppress(SessionNotFound):
                # Held here while another process ran the turn: its numbers are stale.
                handle = await self._handles.get(name, fresh=True)
                turn = handle.active_turn()
                if turn is not None and not handle.running():
                    log.info("resuming a turn another runner left behind")
                    self.start_runner(handle, turn, Principal(handle.name.split("/sessions/")[0], handle.session.owner))

    async def close(self) -> None:
        """Stops every runner without changing its turn (the next owner resumes it)."""
        handles = list(self._handles)
        for handle in handles:
            if handle.run is not None:
                handle.run.detached = True
        runners = [h.runner for h in handles if h.runner is not None and not h.runner.done()]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(runner, 5.0)
