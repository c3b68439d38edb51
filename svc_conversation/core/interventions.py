"""A user's interventions in a turn: interrupt, resume, nudge, rerun.

A turn runs in the process that holds its lease. An intervention acts where the turn
runs: one that reaches another process while that lease is live is forwarded to the
address stored with it (``routed`` marks a forwarded one, which is never forwarded
again). Where that process cannot be reached, nothing is written here (the process would
overwrite it): the caller retries, and once the lease has run out the turn is taken over
and the intervention acts where it then runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

from skm_runtime.access import Principal
from skm_runtime.values import ModelRole
from svc_conversation.core.handles import SessionHandle
from svc_conversation.core.leases import Leases
from svc_conversation.core.lookups import Lookups
from svc_conversation.core.mirror import Mirror
from svc_conversation.core.names import check_uuid, fingerprint
from svc_conversation.core.turns import MAX_TEXT, Turns
from svc_conversation.errors import (
    MessageTooLong,
    NoLargerModel,
    RequestIdReused,
    TurnAwaitingApproval,
    TurnInProgress,
    TurnNotActive,
    TurnNotInterrupted,
    TurnNotResumable,
    TurnOwnerChanged,
    TurnOwnerUnreachable,
)
from svc_conversation.model import (
    ACTIVE,
    TERMINAL,
    Command,
    CommandKind,
    EventPayload,
    Intervention,
    InterventionKind,
    Lease,
    ModelCall,
    Turn,
    TurnCommand,
    TurnState,
    TurnStateChanged,
    turn_ordinal,
)
from svc_conversation.ports import SessionStore, TurnOwners

# A forwarded intervention that finds the turn gone from its owner is routed again, this often.
_ROUTE_ATTEMPTS = 3

Here = Callable[[SessionHandle, Turn, Principal], Awaitable[Turn]]


class Interventions:
    def __init__(
        self,
        store: SessionStore,
        turns: Turns,
        leases: Leases,
        lookups: Lookups,
        mirror: Mirror,
        owners: TurnOwners | None,
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._turns = turns
        self._leases = leases
        self._lookups = lookups
        self._owners = owners

    async def interrupt(self, principal: Principal | None, name: str, request_id: str, *, routed: bool) -> Turn:
        command = TurnCommand(CommandKind.INTERRUPT, name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._interrupt(h, t, p, request_id))

    async def resume(self, principal: Principal | None, name: str, request_id: str, *, routed: bool) -> Turn:
        command = TurnCommand(CommandKind.RESUME, name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._resume(h, t, p, request_id))

    async def nudge(self, principal: Principal | None, name: str, text: str, request_id: str, *, routed: bool) -> Turn:
        command = TurnCommand(CommandKind.NUDGE, name, request_id, text)
        return await self._routed(principal, command, routed, lambda h, t, p: self._nudge(h, t, p, text, request_id))

    async def rerun(self, principal: Principal | None, name: str, request_id: str, *, routed: bool) -> Turn:
        command = TurnCommand(CommandKind.RERUN, name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._rerun(h, t, p, request_id))

    async def _routed(self, principal: Principal | None, command: TurnCommand, routed: bool, here: Here) -> Turn:
        for _ in range(_ROUTE_ATTEMPTS):
            handle, turn = await self._turns.turn(principal, command.turn, fresh=True)
            assert principal is not None  # turn() checked it
            owner = await self._leases.owner(handle, turn, routed=routed, dialable=self._owners is not None)
            if owner is None or self._owners is None:
                return await here(handle, turn, principal)
            with contextlib.suppress(TurnOwnerChanged):
                return await self._owners.intervene(owner, principal, command)
            # The turn left that process meanwhile: read it again.
        raise TurnOwnerUnreachable(
            "the turn keeps moving between processes; retry", metadata={"turn": command.turn}, retry_after_seconds=1.0
        )

    async def _intervene(
        self,
        handle: SessionHandle,
        turn: Turn,
        principal: Principal,
        payloads: list[EventPayload],
        *,
        commands: tuple[Command, ...] = (),
        lease: Lease | None = None,
    ) -> Turn:
        """Records an intervention and what it did to the turn (with ``lease``, this
        runner's hold on the turn it goes on to run)."""
        stored, _ = await handle.step(turn, payloads, actor=principal, commands=commands, lease=lease)
        self._mirror.soon(handle)
        return stored

    @staticmethod
    def _newest(handle: SessionHandle, turn: Turn) -> Turn | None:
        """The handle's copy of ``turn`` when it is the session's newest, else None."""
        return handle.turn if handle.turn is not None and handle.turn.name == turn.name else None

    async def _interrupt(self, handle: SessionHandle, turn: Turn, principal: Principal, request_id: str) -> Turn:
        if turn.state == TurnState.INTERRUPTED:
            return turn
        if turn.state not in ACTIVE:
            raise TurnNotActive("the turn has ended", metadata={"turn": turn.name})
        await self._turns.stop_runner(handle)
        turn = replace(self._newest(handle, turn) or turn, state=TurnState.INTERRUPTED)
        return await self._intervene(
            handle,
            turn,
            principal,
            [Intervention(InterventionKind.INTERRUPT, request_id), TurnStateChanged(TurnState.INTERRUPTED)],
        )

    async def _resume(self, handle: SessionHandle, turn: Turn, principal: Principal, request_id: str) -> Turn:
        if turn.state != TurnState.INTERRUPTED:
            raise TurnNotInterrupted("only an interrupted turn can be resumed", metadata={"turn": turn.name})
        newest = self._newest(handle, turn)
        if newest is None:
            raise TurnNotResumable("a newer turn exists", metadata={"turn": turn.name})
        turn = await self._intervene(
            handle,
            replace(newest, state=TurnState.RUNNING),
            principal,
            [Intervention(InterventionKind.RESUME, request_id), TurnStateChanged(TurnState.RUNNING)],
            lease=self._leases.lease(),
        )
        self._turns.start_runner(handle, turn, principal)
        return turn

    async def _nudge(self, handle: SessionHandle, turn: Turn, principal: Principal, text: str, request_id: str) -> Turn:
        name = turn.name
        if len(text) > MAX_TEXT:
            raise MessageTooLong(f"the guidance is longer than {MAX_TEXT} characters")
        check_uuid(request_id, "request_id")
        done = await self._store.command(handle.name, request_id)
        if done is not None:
            if done.kind == "NUDGE" and done.fingerprint == fingerprint("NUDGE", name, text):
                return self._newest(handle, turn) or turn
            raise RequestIdReused("this request_id was used for another command", metadata={"request_id": request_id})
        if turn.state == TurnState.AWAITING_APPROVAL:
            raise TurnAwaitingApproval("the turn waits for an operator's decision", metadata={"turn": name})
        if turn.state not in (TurnState.RUNNING, TurnState.INTERRUPTED):
            raise TurnNotActive("the turn has ended", metadata={"turn": name})
        if self._newest(handle, turn) is None:
            raise TurnNotResumable("a newer turn exists", metadata={"turn": name})
        await self._turns.stop_runner(handle)
        turn = self._newest(handle, turn) or turn
        payloads: list[EventPayload] = [Intervention(InterventionKind.NUDGE, request_id, text)]
        if turn.state != TurnState.RUNNING:
            turn = replace(turn, state=TurnState.RUNNING)
            payloads.append(TurnStateChanged(TurnState.RUNNING))
        turn = await self._intervene(
            handle,
            turn,
            principal,
            payloads,
            commands=(Command(request_id, "NUDGE", turn_ordinal(name), fingerprint("NUDGE", name, text)),),
            lease=self._leases.lease(),
        )
        self._turns.start_runner(handle, turn, principal)
        return turn

    async def _rerun(self, handle: SessionHandle, original: Turn, principal: Principal, request_id: str) -> Turn:
        name = original.name
        check_uuid(request_id, "request_id")
        done = await self._store.command(handle.name, request_id)
        if done is not None:
            again = await self._store.turn_by_request(handle.name, request_id)
            if done.kind == "RERUN" and again is not None and again.rerun_of == name:
                return again
            raise RequestIdReused("this request_id was used for another command", metadata={"request_id": request_id})
        active = handle.active_turn()
        if active is not None:
            raise TurnInProgress("a turn of this session is running", metadata={"turn": active.name})
        if original.state not in TERMINAL | {TurnState.INTERRUPTED}:
            raise TurnInProgress("the turn is still running", metadata={"turn": name})
        events = await self._store.list_events(handle.name, 0, 100_000, turn=turn_ordinal(name))
        answered = [
            e.payload.usage.tier
            for e in events
            if isinstance(e.payload, ModelCall)
            and not e.payload.failure_reason
            and e.payload.usage.role == ModelRole.PRIMARY
        ]
        start = (answered[-1] if answered else original.start_tier) + 1
        primary = await self._lookups.resolve(principal, ModelRole.PRIMARY, handle.session)
        if start >= len(primary.tiers):
            raise NoLargerModel("the turn was answered by the largest model tier", metadata={"turn": name})
        return await self._turns.new_turn(
            handle, principal, original.input_text, request_id, rerun_of=original, start_tier=start
        )
