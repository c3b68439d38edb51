"""call_subordinate: a turn spawns a subordinate session of its own persona, whose first
turn runs to its end and whose answer is the tool's result.

svc_policy decides whether the persona may spawn. A spawn it answers REQUIRES_APPROVAL for
is held in svc_policy's store with the whole request, and the turn waits
AWAITING_APPROVAL (the verdict event names the blocked action) until an operator decides:
an approved spawn is claimed, the turn runs on (RUNNING), the subordinate is spawned and
the outcome completes the claim; a rejected or expired one fails the tool call with the
operator's note. Hold, claim and subordinate are keyed by the turn and the tool call, so a
turn resumed after an interrupt or a restart finds the same blocked action, and a spawn it
claimed before finds the same subordinate (created once) instead of starting another. An
interrupt stops the wait only: the entry stays for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Protocol

from skm_runtime.access import (
    AccessCheck,
    ApprovalState,
    Decision,
    Hold,
    Outcome,
    Principal,
    Verdict,
)
from skm_runtime.values import FailureReason
from svc_conversation.core.loop import TurnRun
from svc_conversation.model import (
    ACTIVE,
    EventPayload,
    Session,
    ToolCallRequested,
    ToolCallResult,
    ToolCallVerdict,
    ToolFailure,
    ToolRequest,
    ToolResult,
    ToolSuccess,
    Turn,
    TurnState,
    TurnStateChanged,
    turn_ordinal,
)
from svc_conversation.ports import PolicyGate, SessionStore, ToolRunner
from svc_conversation.toolcall import SUBORDINATE_TOOL, ToolCall

MAX_TEXT = 32_768
_SUBORDINATE_NAMESPACE = uuid.UUID("c4b1f1a2-77e4-4a57-9d0f-5a9f3b2e8c64")
# Holds of subordinate spawns: their request ids are derived from the turn and the tool call.
_SPAWN_HOLD_NAMESPACE = uuid.UUID("8e3a6f0c-1d2b-4c7e-9b5a-3f6d2e1c0a94")
# A held spawn that will not run: the tool call's failure reason and message.
_SPAWN_REFUSED = {
    ApprovalState.REJECTED: (FailureReason.REJECTED, "an operator rejected spawning a subordinate"),
    ApprovalState.EXPIRED: (
        FailureReason.APPROVAL_EXPIRED,
        "nobody approved spawning a subordinate before its approval expired",
    ),
    ApprovalState.CANCELLED: (FailureReason.CANCELLED, "the held spawn was withdrawn"),
    ApprovalState.TAKEN: (FailureReason.INTERRUPTED, "the approved spawn was claimed by another executor"),
}


class Subordinates(Protocol):
    """The use cases a spawn runs the subordinate with (the Conversation's own)."""

    async def create_session(
        self,
        principal: Principal | None,
        parent: str,
        session: Session,
        request_id: str,
        *,
        superior: str = "",
        persona_revision: str = "",
    ) -> Session: ...

    async def send_message(
        self, principal: Principal | None, session_name: str, text: str, request_id: str, tool_choice: str
    ) -> Turn: ...

    async def interrupt(self, principal: Principal | None, name: str, request_id: str) -> Turn: ...

    def runner(self, session: str) -> asyncio.Task[None] | None:
        """The task that runs a turn of the session in this process, if any."""
        ...


class Spawns:
    def __init__(self, store: SessionStore, policy: PolicyGate, tools: ToolRunner, subordinates: Subordinates) -> None:
        self._store = store
        self._policy = policy
        self._tools = tools
        self._subordinates = subordinates

    async def depth(self, session: Session) -> int:
        """How many superiors the session has."""
        depth = 0
        superior = session.superior_session
        while superior and depth < 16:
            depth += 1
            found = await self._store.get_session(superior)
            superior = found[0].superior_session if found is not None else ""
        return depth

    async def spawn(
        self, run: TurnRun, requested: ToolCallRequested, call: ToolCall, *, known_verdict: bool
    ) -> ToolResult:
        """Runs the call_subordinate tool call ``requested`` of ``run``'s turn. With
        ``known_verdict`` (a resumed tool call), the verdict is not recorded again, and a
        recorded verdict that held the spawn decides again: its blocked action is waited
        for or claimed (a claim made before is the same claim), whatever svc_policy would
        answer now."""
        session = run.handle.session
        tool_call_id = requested.tool_call_id
        persona_object = f"persona:{session.persona}"
        # The spawn's own id: the hold's, the claim's and the subordinate's (its session
        # and first turn), so a repeated or resumed tool call finds what it started before.
        spawn = f"{run.turn.name}#{tool_call_id}"
        request_id = str(uuid.uuid5(_SUBORDINATE_NAMESPACE, spawn))
        hold = Hold(
            request_id=str(uuid.uuid5(_SPAWN_HOLD_NAMESPACE, spawn)),
            payload=self._tools.payload(
                ToolRequest(
                    tool=requested.tool,
                    arguments_json=requested.arguments_json,
                    request_id=request_id,
                    persona=session.persona,
                    turn=run.turn.name,
                    tool_call_id=tool_call_id,
                )
            ),
            summary=f"{SUBORDINATE_TOOL} (a subordinate session) for {run.principal.user} as {session.persona}"[:300],
            session=session.name,
        )
        recorded = await self._recorded_verdict(run, tool_call_id) if known_verdict else None
        if recorded is not None and recorded.blocked_action:
            # Held before: the operator's decision on that entry stands, and a spawn claimed
            # before the interrupt or restart may already have run; a fresh check could deny
            # it now, or allow it unheld, and leave the entry EXECUTING for ever.
            decision = recorded
        else:
            check = AccessCheck(persona_object, "can_spawn", persona_object)
            decision = await self._policy.check(run.principal, check, hold)
        held = decision.verdict == Verdict.REQUIRES_APPROVAL and bool(decision.blocked_action)
        if not known_verdict:
            await run.record_verdict(tool_call_id, decision)
        elif held and run.turn.state != TurnState.AWAITING_APPROVAL:
            await run.set_state(TurnState.AWAITING_APPROVAL)
        if decision.verdict != Verdict.ALLOW and not held:
            return await _failed(
                run, tool_call_id, FailureReason.DENIED, f"spawning a subordinate: {decision.reason or 'NOT_HELD'}"
            )
        if held:
            approval = await self._policy.approval(run.principal, decision.blocked_action, spawn)
            refused = _SPAWN_REFUSED.get(approval.state)
            if refused is not None:
                note = f": {approval.note}" if approval.note else ""
                return await _failed(run, tool_call_id, refused[0], refused[1] + note)
            # Claimed: from here on this turn runs the spawn; a restart resumes the same one.
            await run.set_state(TurnState.RUNNING)
        try:
            created, finished = await self._spawned(run, session, call, request_id)
        except asyncio.CancelledError:
            if held and not run.detached:
                # Interrupted by the user: the subordinate stopped with the superior.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._policy.complete(
                            run.principal, decision.blocked_action, spawn, Outcome(False, "INTERRUPTED")
                        )
                    )
            raise
        result: ToolResult
        if finished is not None and finished.state == TurnState.COMPLETED:
            result = ToolSuccess(json.dumps({"response": finished.response_text}))
        else:
            state = f"STATE_{finished.state.name}" if finished is not None else "UNKNOWN"
            result = ToolFailure(FailureReason.TOOL_ERROR, f"the subordinate's turn ended {state}")
        if held:
            succeeded = isinstance(result, ToolSuccess)
            await self._policy.complete(
                run.principal, decision.blocked_action, spawn, Outcome(succeeded, "" if succeeded else "TOOL_ERROR")
            )
        await run.step(ToolCallResult(tool_call_id, result, created.name))
        return result

    async def _recorded_verdict(self, run: TurnRun, tool_call_id: str) -> Decision | None:
        """The verdict the turn recorded for the tool call, if any (its last)."""
        events = await self._store.list_events(run.handle.name, 0, 100_000, turn=turn_ordinal(run.turn.name))
        found = None
        for event in events:
            if isinstance(event.payload, ToolCallVerdict) and event.payload.tool_call_id == tool_call_id:
                found = event.payload.decision
        return found

    async def _spawned(
        self, run: TurnRun, session: Session, call: ToolCall, request_id: str
    ) -> tuple[Session, Turn | None]:
        """The subordinate session and its first turn once that has ended. Both are created
        under ``request_id``: a second call (a resumed turn) finds them instead."""
        message = str(call.tool_args.get("message", ""))[:MAX_TEXT] or "(no task given)"
        child = Session(
            name="",
            persona=session.persona,
            mode=session.mode,
            display_name="subordinate",
            model_overrides=session.model_overrides,
        )
        subordinates = self._subordinates
        # The subordinate runs on its superior's persona revision, whatever the persona became.
        created = await subordinates.create_session(
            run.principal,
            run.principal.tenant,
            child,
            request_id,
            superior=session.name,
            persona_revision=session.persona_revision_id,
        )
        turn = await subordinates.send_message(run.principal, created.name, message, request_id, "")
        try:
            while True:
                runner = subordinates.runner(created.name)
                if runner is not None and not runner.done():
                    await asyncio.shield(runner)
                finished = await self._store.get_turn(created.name, turn_ordinal(turn.name))
                if finished is None or finished.state not in ACTIVE:
                    return created, finished
                # Run elsewhere (e.g. taken over after a restart): wait for its end.
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            # The superior was interrupted: its subordinate stops with it.
            with contextlib.suppress(Exception):
                await asyncio.shield(subordinates.interrupt(run.principal, turn.name, str(uuid.uuid4())))
            raise


async def _failed(run: TurnRun, tool_call_id: str, reason: FailureReason, message: str) -> ToolResult:
    """The call_subordinate tool call fails without a spawn; a waiting turn runs on."""
    result = ToolFailure(reason, message)
    payloads: list[EventPayload] = []
    if run.turn.state == TurnState.AWAITING_APPROVAL:
        run.change(state=TurnState.RUNNING)
        payloads.append(TurnStateChanged(TurnState.RUNNING))
    payloads.append(ToolCallResult(tool_call_id, result))
    await run.step(*payloads)
    return result
