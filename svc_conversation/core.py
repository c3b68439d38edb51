"""svc_conversation's core: sessions, turns, user interventions and attached streams.

State lives in PostgreSQL (sessions, turns, append-only events, outbox) and is mirrored
for quick reads in Redis; a process holds a session in memory only while it runs one of
its turns or streams it. Running turns carry a lease: the process renews it while the
turn runs, and when a process dies another one (or the same one after its restart, at
once, since its runner id is stable) takes the turn over and resumes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.tools.v1 import execution_pb2, tool_service_pb2
from skm.type.v1 import deployment_mode_pb2, policy_decision_pb2
from skm_runtime.errors import FieldViolation, InvalidArgument
from skm_runtime.interceptors import outliving_context
from svc_conversation import audit
from svc_conversation.adapters.mesh import GrpcPolicy, GrpcProfiles, GrpcTools, HoldRequest
from svc_conversation.adapters.openai import ChatRequest, ModelCallFailed, OpenAICompatibleClient
from svc_conversation.adapters.postgres import (
    Command,
    Lease,
    PostgresSessionStore,
    SessionGone,
    split_name,
    turn_ordinal,
)
from svc_conversation.errors import (
    DependencyUnavailable,
    EtagMismatch,
    InvalidPageToken,
    InvalidSession,
    InvalidToolChoice,
    InvalidUpdateMask,
    MessageEmpty,
    MessageTooLong,
    NoLargerModel,
    PermissionDenied,
    PersonaNotSigned,
    PrincipalMissing,
    RequestIdReused,
    SequenceOutOfRange,
    SessionNotFound,
    TurnAwaitingApproval,
    TurnInProgress,
    TurnNotActive,
    TurnNotFound,
    TurnNotInterrupted,
    TurnNotResumable,
    TurnOwnerChanged,
    TurnOwnerUnreachable,
)
from svc_conversation.fitting import estimated_tokens, fit_messages
from svc_conversation.loop import PRIMARY, UTILITY, TurnRun, preprocessed
from svc_conversation.model import ApprovalState, Persona, Principal, ResolvedProfile, ToolSpec, TurnCommand
from svc_conversation.refresh import RefreshingCache
from svc_conversation.sessions import ACTIVE, TERMINAL, Closed, Live, LiveEvents, SessionHandle, Subscriber, timestamp
from svc_conversation.settings import ConversationSettings
from svc_conversation.toolcall import SUBORDINATE_TOOL, ToolCall

log = logging.getLogger("skm.conversation")

Turn = turn_pb2.Turn
Session = session_pb2.Session
Intervention = session_event_pb2.Intervention
MAX_TEXT = 32_768
_INTERRUPT_WAIT = 0.15
# Answers of svc_profiles (personas, a role's resolution) and svc_tools (the catalogue) are
# used as they are while fresh, then refreshed off the turn's path until stale (refresh.py).
_PROFILE_SECONDS = (5.0, 60.0)
_CATALOGUE_SECONDS = (30.0, 300.0)
# A turn's ordinal in its name: ASCII digits, no leading zero, within Postgres' integer.
_ORDINAL = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ORDINAL = 2**31 - 1
_SUBORDINATE_NAMESPACE = uuid.UUID("c4b1f1a2-77e4-4a57-9d0f-5a9f3b2e8c64")
# Holds of subordinate spawns: their request ids are derived from the turn and the tool call.
_SPAWN_HOLD_NAMESPACE = uuid.UUID("8e3a6f0c-1d2b-4c7e-9b5a-3f6d2e1c0a94")
# A held spawn that will not run: the tool call's failure reason and message.
_SPAWN_REFUSED = {
    ApprovalState.REJECTED: (execution_pb2.FAILURE_REASON_REJECTED, "an operator rejected spawning a subordinate"),
    ApprovalState.EXPIRED: (
        execution_pb2.FAILURE_REASON_APPROVAL_EXPIRED,
        "nobody approved spawning a subordinate before its approval expired",
    ),
    ApprovalState.CANCELLED: (execution_pb2.FAILURE_REASON_CANCELLED, "the held spawn was withdrawn"),
    ApprovalState.TAKEN: (
        execution_pb2.FAILURE_REASON_INTERRUPTED,
        "the approved spawn was claimed by another executor",
    ),
}
# A forwarded intervention that finds the turn gone from its owner is routed again, this often.
_ROUTE_ATTEMPTS = 3


class HotState(Protocol):
    async def mirror(self, session: Session) -> None: ...

    async def forget(self, name: str) -> None: ...


class TurnOwners(Protocol):
    """The other processes that run turns, reached over the mesh: ``intervene`` sends an
    intervention to the process at ``address`` and returns its answer. It raises
    TurnOwnerUnreachable when that process cannot be reached, TurnOwnerChanged when it no
    longer runs the turn, and passes on any other error it answers with."""

    async def intervene(self, address: str, principal: Principal, command: TurnCommand) -> Turn: ...


class SessionStreams(LiveEvents, Protocol):
    """The live events of every process, for streams attached where a session's turn does
    not run: what :meth:`follow` names is read from ``after`` on and handed to ``deliver``
    (with the sequence that read started after, and each event with the sequence its
    publisher published before it); ``lost`` names a followed session whose events can no
    longer be read."""

    def start(self, deliver: Callable[[str, int, list[Live]], None], lost: Callable[[str], None]) -> None: ...

    def follow(self, session: str, after: int) -> None: ...

    def unfollow(self, session: str) -> None: ...


def _cancelled(future: asyncio.Future[Any] | None) -> None:
    """Stops work started for a request that will not use it."""
    if future is not None:
        future.cancel()
        future.add_done_callback(lambda done: done.cancelled() or done.exception())


def _uuid(value: str, field: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a UUID", violations=[FieldViolation(field, "required: a UUID")]
        ) from None


def _page_token(token: str) -> dict[str, object]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise InvalidPageToken("the page token is not one this service issued") from None
    if not isinstance(value, dict):
        raise InvalidPageToken("the page token is not one this service issued")
    return value


def _token(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _page_size(size: int, default: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative", violations=[FieldViolation("page_size", "negative")])
    return min(size or default, 1000)


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class Conversation:
    def __init__(
        self,
        store: PostgresSessionStore,
        hot: HotState,
        profiles: GrpcProfiles,
        tools: GrpcTools,
        policy: GrpcPolicy,
        llm: OpenAICompatibleClient,
        settings: ConversationSettings,
        *,
        runner_id: str,
        streams: SessionStreams | None = None,
        owners: TurnOwners | None = None,
        address: str = "",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.owners = owners
        # Where the other processes dial this one (stored with this runner's leases).
        self.address = address
        self.streams = streams
        self.hot = hot
        self.profiles = profiles
        self.tools = tools
        self.policy = policy
        self.llm = llm
        self.settings = settings
        self.runner_id = runner_id
        self._now = now
        self._handles: dict[str, SessionHandle] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._catalogue: RefreshingCache[str, list[ToolSpec]] = RefreshingCache(
            fresh=_CATALOGUE_SECONDS[0], stale=_CATALOGUE_SECONDS[1]
        )
        self._personas: RefreshingCache[str, Persona] = RefreshingCache(
            fresh=_PROFILE_SECONDS[0], stale=_PROFILE_SECONDS[1]
        )
        self._resolved: RefreshingCache[tuple[str, int, int, str, bytes], ResolvedProfile] = RefreshingCache(
            fresh=_PROFILE_SECONDS[0], stale=_PROFILE_SECONDS[1]
        )
        self._mirrors: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._summaries: dict[str, tuple[int, str]] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Resumes this runner's own turns left running by its previous incarnation."""
        if self.streams is not None:
            self.streams.start(self._relay, self._lost)
        await self.maintain(own_first=True)

    async def close(self) -> None:
        """Stops every runner without changing its turn (the next owner resumes it) and
        ends every attached stream with UNAVAILABLE."""
        for handle in self._handles.values():
            if handle.run is not None:
                handle.run.detached = True
        runners = [h.runner for h in self._handles.values() if h.runner is not None and not h.runner.done()]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(runner, 5.0)
        for handle in self._handles.values():
            handle.close_streams("SHUTDOWN")
        if self._mirrors:
            await asyncio.wait(list(self._mirrors.values()), timeout=2.0)
        for cache in (self._catalogue, self._personas, self._resolved):
            await cache.close()

    async def maintain(self, *, own_first: bool = False) -> None:
        """Renews the leases of running turns, takes over abandoned ones, drops idle sessions."""
        now = self._now()
        lease = self._lease()
        running = [name for name, h in self._handles.items() if h.runner is not None and not h.runner.done()]
        await self.store.renew(lease, running)
        # At start, this runner's own turns count as abandoned at once.
        cutoff = now + timedelta(days=3650) if own_first else now
        for name in await self._take(cutoff, lease, own_first):
            with contextlib.suppress(SessionNotFound):
                # Held here while another process ran the turn: its numbers are stale.
                handle = await self._handle(name, fresh=True)
                turn = handle.turn
                if turn is not None and turn.state in ACTIVE and (handle.runner is None or handle.runner.done()):
                    log.info("resuming a turn another runner left behind")
                    self._start_runner(handle, turn, self._owner_principal(handle.session))
        idle_before = time.monotonic() - self.settings.idle_evict_seconds
        for name, handle in list(self._handles.items()):
            if handle.idle() and handle.last_used < idle_before:
                del self._handles[name]

    async def _take(self, cutoff: datetime, lease: Lease, own_first: bool) -> list[str]:
        if own_first:
            own = await self.store.take_own(lease)
            return own + await self.store.take_orphans(lease, self._now())
        return await self.store.take_orphans(lease, cutoff)

    def _lease(self) -> Lease:
        """This runner's hold on a turn, from now on."""
        return Lease(self.runner_id, self.address, self._now() + timedelta(seconds=self.settings.lease_seconds))

    # -- shared helpers for the loop -------------------------------------------------

    async def persona(self, name: str, principal: Principal) -> Persona:
        return await self._personas.get(name, lambda: self.profiles.persona(name, principal))

    async def resolve(self, principal: Principal, role: int, session: Session) -> ResolvedProfile:
        """A role's models for the session."""
        overrides = list(session.model_overrides)
        key = (
            principal.tenant,
            role,
            session.mode,
            session.persona,
            b"".join(o.SerializeToString() for o in overrides),
        )
        mode, persona = session.mode, session.persona
        return await self._resolved.get(key, lambda: self.profiles.resolve(principal, role, mode, persona, overrides))

    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        return await self._catalogue.get(principal.tenant, lambda: self.tools.catalogue(principal))

    async def step(
        self,
        handle: SessionHandle,
        turn: Turn,
        principal: Principal,
        payloads: list[tuple[str, object]],
        *,
        alive: Callable[[], bool] | None = None,
        lease: Lease | None = None,
    ) -> list[session_event_pb2.SessionEvent]:
        events = await handle.step(
            turn,
            payloads,
            audit_of=lambda evs: audit.records_for(handle.session, principal, turn, evs),
            alive=alive,
            lease=lease,
        )
        self._mirror_soon(handle)
        return events

    def _mirror_soon(self, handle: SessionHandle) -> None:
        """Mirrors the session's newest state to Redis off the turn's path: one write at a
        time per session, the last one always with the newest state."""
        name = handle.name
        self._dirty.add(name)
        if name in self._mirrors:
            return

        async def mirror() -> None:
            try:
                while name in self._dirty:
                    self._dirty.discard(name)
                    await self._mirror(handle)
            finally:
                self._mirrors.pop(name, None)

        self._mirrors[name] = asyncio.create_task(mirror())

    async def _mirror(self, handle: SessionHandle) -> None:
        try:
            await self.hot.mirror(handle.session)
        except Exception:  # noqa: BLE001  # the mirror is a cache; Postgres has the truth
            log.warning("could not mirror session state to Redis")

    async def history(self, handle: SessionHandle, turn: Turn) -> list[dict[str, str]]:
        """Earlier turns of the session as user/assistant messages (answered ones only)."""
        ordinal = turn_ordinal(turn.name)
        messages: list[dict[str, str]] = []
        after = 0
        while True:
            turns = await self.store.list_turns(handle.name, after, 500)
            for earlier in turns:
                if turn_ordinal(earlier.name) >= ordinal:
                    return messages
                if earlier.response_text and earlier.state == Turn.STATE_COMPLETED:
                    messages.append({"role": "user", "content": earlier.input_text})
                    messages.append({"role": "assistant", "content": earlier.response_text})
            if len(turns) < 500:
                return messages
            after = turn_ordinal(turns[-1].name)

    async def compress(
        self, run: TurnRun, messages: list[dict[str, str]], primary: ResolvedProfile
    ) -> list[dict[str, str]]:
        """``messages`` made to fit the primary model's context window.

        Past ``compress_at_context_share`` of the window, the oldest history is summarised
        by the UTILITY model (the two newest messages stay as they are). If the prompt would
        still leave no room for the answer, the longest messages lose their middle.
        Sizes are estimated at ``bytes_per_token`` bytes of UTF-8 per token (no engine
        tokenizer is asked: a cheap estimate, on the safe side by default).
        """
        window = min(tier.context_length for tier in primary.tiers)
        per_token = self.settings.bytes_per_token
        if (
            estimated_tokens(messages, per_token) > window * self.settings.compress_at_context_share
            and len(messages) >= 4
        ):
            system, rest = messages[0], messages[1:]
            keep = rest[-2:]
            older = rest[:-2]
            key = run.handle.name
            cached = self._summaries.get(key)
            if cached is not None and cached[0] == len(older):
                summary = cached[1]
            else:
                summary = await self._summarise(run, older)
                self._summaries[key] = (len(older), summary)
            messages = [system, {"role": "user", "content": f"Summary of the conversation so far: {summary}"}, *keep]
        answer = primary.max_output_tokens or 512
        return fit_messages(messages, int((window - answer) * 0.9 * per_token))

    async def _summarise(self, run: TurnRun, older: list[dict[str, str]]) -> str:
        session = run.handle.session
        profile = await self.resolve(run.principal, UTILITY, session)
        window = min((tier.context_length for tier in profile.tiers), default=4096)
        room = int((window - min(profile.max_output_tokens or 256, 256)) * 0.8 * self.settings.bytes_per_token)
        # The newest part of what is summarised, as much as the UTILITY model can read.
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in older).encode()[-room:].decode(errors="ignore")
        request = ChatRequest(
            messages=[
                {"role": "system", "content": "Summarise this conversation in a few sentences, keeping facts."},
                {"role": "user", "content": transcript},
            ],
            max_tokens=min(profile.max_output_tokens or 256, 256),
        )
        for tier in profile.tiers:
            try:
                result = await self.llm.complete(tier, request)
            except ModelCallFailed as failure:
                await run.record_model_call(0, failure.stats, UTILITY, failure.reason)
                continue
            await run.record_model_call(0, result.stats, UTILITY, "")
            return result.text
        # No utility model answered: keep the newest part of the transcript instead.
        return transcript[-2000:]

    async def subordinate_depth(self, session: Session) -> int:
        """How many superiors the session has."""
        depth = 0
        superior = session.superior_session
        while superior and depth < 16:
            depth += 1
            found = await self.store.get_session(superior)
            superior = found[0].superior_session if found is not None else ""
        return depth

    async def subordinate(
        self,
        run: TurnRun,
        requested: session_event_pb2.ToolCallRequested,
        call: ToolCall,
        *,
        known_verdict: bool = False,
    ) -> execution_pb2.ToolResult:
        """call_subordinate: svc_policy decides whether the persona may spawn a subordinate
        (of its own persona); the subordinate is a session of its own, whose first turn runs
        to its end here and whose answer is the tool's result.

        A spawn policy answers REQUIRES_APPROVAL is held in svc_policy's requeue store with
        the whole request, and the turn waits AWAITING_APPROVAL (the verdict event names the
        blocked action) until an operator decides: an approved spawn is claimed, the turn
        runs on (RUNNING), the subordinate is spawned and the outcome completes the claim; a
        rejected or expired one fails the tool call with the operator's note. Hold, claim and
        subordinate are keyed by the turn and the tool call, so a turn resumed after an
        interrupt or a restart finds the same blocked action, and a spawn it claimed before
        finds the same subordinate (created once) instead of starting another. An interrupt
        stops the wait only: the entry stays for the operator. With ``known_verdict`` (a
        resumed tool call), the verdict is not recorded again, and a recorded verdict that
        held the spawn decides again: its blocked action is waited for or claimed (a claim
        made before is the same claim), whatever svc_policy would answer now.
        """
        session = run.handle.session
        tool_call_id = requested.tool_call_id
        persona_object = f"persona:{session.persona}"
        # The spawn's own id: the hold's, the claim's and the subordinate's (its session
        # and first turn), so a repeated or resumed tool call finds what it started before.
        spawn = f"{run.turn.name}#{tool_call_id}"
        request_id = str(uuid.uuid5(_SUBORDINATE_NAMESPACE, spawn))
        hold = HoldRequest(
            request_id=str(uuid.uuid5(_SPAWN_HOLD_NAMESPACE, spawn)),
            payload=tool_service_pb2.ExecuteToolRequest(
                tool=requested.tool,
                arguments_json=requested.arguments_json,
                request_id=request_id,
                persona=session.persona,
                turn=run.turn.name,
                tool_call_id=tool_call_id,
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
            decision = await self.policy.check(run.principal, persona_object, "can_spawn", persona_object, hold=hold)
        held = decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL and bool(decision.blocked_action)
        if not known_verdict:
            await run.record_verdict(tool_call_id, decision)
        elif held and run.turn.state != Turn.STATE_AWAITING_APPROVAL:
            await self._turn_state(run, Turn.STATE_AWAITING_APPROVAL)
        if decision.verdict != policy_decision_pb2.VERDICT_ALLOW and not held:
            return await self._spawn_failed(
                run,
                tool_call_id,
                execution_pb2.FAILURE_REASON_DENIED,
                f"spawning a subordinate: {decision.reason or 'NOT_HELD'}",
            )
        if held:
            approval = await self.policy.approval(run.principal, decision.blocked_action, spawn)
            refused = _SPAWN_REFUSED.get(approval.state)
            if refused is not None:
                note = f": {approval.note}" if approval.note else ""
                return await self._spawn_failed(run, tool_call_id, refused[0], refused[1] + note)
            # Claimed: from here on this turn runs the spawn; a restart resumes the same one.
            await self._turn_state(run, Turn.STATE_RUNNING)
        try:
            created, finished = await self._spawned(run, session, call, request_id)
        except asyncio.CancelledError:
            if held and not run.detached:
                # Interrupted by the user: the subordinate stopped with the superior.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self.policy.complete(
                            run.principal, decision.blocked_action, spawn, succeeded=False, failure_reason="INTERRUPTED"
                        )
                    )
            raise
        if finished is not None and finished.state == Turn.STATE_COMPLETED:
            result = execution_pb2.ToolResult(
                success=execution_pb2.ToolSuccess(output_json=json.dumps({"response": finished.response_text}))
            )
        else:
            state = Turn.State.Name(finished.state) if finished is not None else "UNKNOWN"
            result = execution_pb2.ToolResult(
                failure=execution_pb2.ToolFailure(
                    reason=execution_pb2.FAILURE_REASON_TOOL_ERROR, message=f"the subordinate's turn ended {state}"
                )
            )
        if held:
            succeeded = result.HasField("success")
            await self.policy.complete(
                run.principal,
                decision.blocked_action,
                spawn,
                succeeded=succeeded,
                failure_reason="" if succeeded else "TOOL_ERROR",
            )
        await run.step(
            (
                "tool_call_result",
                session_event_pb2.ToolCallResult(tool_call_id=tool_call_id, execution=created.name, result=result),
            )
        )
        return result

    async def _recorded_verdict(self, run: TurnRun, tool_call_id: str) -> policy_decision_pb2.PolicyDecision | None:
        """The verdict the turn recorded for the tool call, if any (its last)."""
        events = await self.store.list_events(run.handle.name, 0, 100_000, turn=turn_ordinal(run.turn.name))
        found = None
        for event in events:
            if (
                event.WhichOneof("event") == "tool_call_verdict"
                and event.tool_call_verdict.tool_call_id == tool_call_id
            ):
                found = event.tool_call_verdict.decision
        return found

    async def _spawned(
        self, run: TurnRun, session: Session, call: ToolCall, request_id: str
    ) -> tuple[Session, Turn | None]:
        """The subordinate session and its first turn once that has ended. Both are created
        under ``request_id``: a second call (a resumed turn) finds them instead."""
        message = str(call.tool_args.get("message", ""))[:MAX_TEXT] or "(no task given)"
        child = Session(persona=session.persona, mode=session.mode, display_name="subordinate")
        child.model_overrides.extend(session.model_overrides)
        created = await self.create_session(
            run.principal, run.principal.tenant, child, request_id, superior=session.name
        )
        turn = await self.send_message(run.principal, created.name, message, request_id, "")
        try:
            while True:
                handle = await self._handle(created.name)
                if handle.runner is not None and not handle.runner.done():
                    await asyncio.shield(handle.runner)
                finished = await self.store.get_turn(created.name, turn_ordinal(turn.name))
                if finished is None or finished.state not in ACTIVE:
                    return created, finished
                # Run elsewhere (e.g. taken over after a restart): wait for its end.
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            # The superior was interrupted: its subordinate stops with it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.interrupt(run.principal, turn.name, str(uuid.uuid4())))
            raise

    async def _turn_state(self, run: TurnRun, state: Turn.State.ValueType) -> None:
        if run.turn.state != state:
            run.turn.state = state
            await run.step(("turn_state_changed", session_event_pb2.TurnStateChanged(state=state)))

    async def _spawn_failed(
        self, run: TurnRun, tool_call_id: str, reason: execution_pb2.FailureReason.ValueType, message: str
    ) -> execution_pb2.ToolResult:
        """The call_subordinate tool call fails without a spawn; a waiting turn runs on."""
        result = execution_pb2.ToolResult(failure=execution_pb2.ToolFailure(reason=reason, message=message))
        payloads: list[tuple[str, object]] = []
        if run.turn.state == Turn.STATE_AWAITING_APPROVAL:
            run.turn.state = Turn.STATE_RUNNING
            payloads.append(("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_RUNNING)))
        payloads.append(
            ("tool_call_result", session_event_pb2.ToolCallResult(tool_call_id=tool_call_id, result=result))
        )
        await run.step(*payloads)
        return result

    # -- handles ---------------------------------------------------------------------

    async def _handle(self, name: str, *, fresh: bool = False) -> SessionHandle:
        """The session's handle; with ``fresh``, one that runs no turn here is brought up to
        what is stored (another process may have written the session since it was loaded)."""
        handle = self._handles.get(name)
        if handle is not None and not handle.deleted:
            handle.last_used = time.monotonic()
            if fresh:
                await self._refresh(handle, lock=True)
            return handle
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            handle = self._handles.get(name)
            if handle is not None and not handle.deleted:
                return handle
            found = await self.store.session_state(name)
            if found is None:
                raise SessionNotFound(f"session {name!r} does not exist", metadata={"session": name})
            session, reserved, turn = found
            handle = SessionHandle(self.store, session, reserved, self.streams)
            handle.turn = turn
            self._handles[name] = handle
        self._loading.pop(name, None)
        return handle

    async def _refresh(self, handle: SessionHandle, *, lock: bool = False) -> None:
        """Brings a handle that runs no turn here up to what is stored (with ``lock``, taking
        the handle's lock for it; without, the caller holds it)."""
        if handle.running():
            return
        if lock:
            async with handle.lock:
                await self._refresh(handle)
            return
        found = await self.store.session_state(handle.name)
        if found is None:
            return  # deleted: the caller's next write finds out
        handle.refresh(*found)

    @staticmethod
    def _owner_principal(session: Session) -> Principal:
        tenant, _ = split_name(session.name)
        return Principal(tenant=tenant, user=session.owner)

    def _check_tenant(self, principal: Principal | None, name: str) -> Principal:
        if principal is None:
            raise PrincipalMissing("the call carries no principal the mesh signed")
        tenant = name.split("/sessions/")[0]
        if not name.startswith("tenants/") or "/" in tenant.removeprefix("tenants/"):
            raise InvalidSession(f"{name!r} is not a session name", metadata={"session": name})
        if tenant != principal.tenant:
            # Another tenant's session looks exactly like one that does not exist.
            raise SessionNotFound(f"session {name!r} does not exist", metadata={"session": name})
        return principal

    async def _session_for(self, principal: Principal | None, name: str) -> SessionHandle:
        name = name.strip()
        session_name = name.split("/turns/")[0]
        parts = session_name.split("/")
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "sessions" or not parts[1] or not parts[3]:
            raise InvalidSession(f"{name!r} is not a session name", metadata={"session": name})
        self._check_tenant(principal, session_name)
        return await self._handle(session_name)

    # -- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        principal: Principal | None,
        parent: str,
        session: Session,
        request_id: str,
        *,
        superior: str = "",
    ) -> Session:
        if principal is None:
            raise PrincipalMissing("the call carries no principal the mesh signed")
        if parent != principal.tenant:
            raise PermissionDenied("sessions are created in the caller's own tenant", metadata={"parent": parent})
        violations = []
        if not session.persona.startswith(f"{parent}/personas/") or session.persona.count("/") != 3:
            violations.append(FieldViolation("session.persona", f"required: a persona of {parent}"))
        if session.mode == deployment_mode_pb2.DEPLOYMENT_MODE_UNSPECIFIED:
            violations.append(FieldViolation("session.mode", "required"))
        if len(session.display_name) > 200:
            violations.append(FieldViolation("session.display_name", "at most 200 characters"))
        roles = [o.role for o in session.model_overrides]
        if len(roles) != len(set(roles)):
            violations.append(FieldViolation("session.model_overrides", "at most one override per role"))
        if request_id:
            try:
                uuid.UUID(request_id)
            except ValueError:
                violations.append(FieldViolation("request_id", "a UUID"))
        if violations:
            raise InvalidSession("the session is not valid", violations=violations)
        persona = await self.persona(session.persona, principal)
        if session.mode != deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER and not persona.signed:
            raise PersonaNotSigned(
                "only signed personas run in TEST and PRODUCTION mode", metadata={"persona": session.persona}
            )
        sid = uuid.uuid4().hex
        name = f"{parent}/sessions/{sid}"
        created = Session()
        created.CopyFrom(session)
        created.name = name
        created.persona_bundle_digest = persona.bundle_digest
        created.state = Session.STATE_IDLE
        created.owner = principal.user
        created.superior_session = superior
        created.current_turn = ""
        created.last_sequence = 0
        created.acknowledged_sequence = 0
        created.create_time.CopyFrom(timestamp())
        created.update_time.CopyFrom(created.create_time)
        created.etag = uuid.uuid4().hex
        # The owner relationship first: without it nobody could use the session, and a
        # session row that fails to follow leaves only a harmless tuple behind.
        await self.policy.own_session(principal, name)
        stored, _ = await self.store.create_session(created, request_id or None, ())
        return stored

    async def get_session(self, principal: Principal | None, name: str) -> Session:
        handle = await self._session_for(principal, name)
        # Where no turn runs here, another process may have written the session since.
        await self._refresh(handle, lock=True)
        return handle.session

    async def list_sessions(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Session], str]:
        if principal is None:
            raise PrincipalMissing("the call carries no principal the mesh signed")
        if parent != principal.tenant:
            raise PermissionDenied("sessions are listed in the caller's own tenant", metadata={"parent": parent})
        size = _page_size(page_size, 50)
        after = None
        if page_token:
            token = _page_token(page_token)
            try:
                after = (datetime.fromisoformat(str(token["t"])), str(token["id"]))
            except (KeyError, ValueError):
                raise InvalidPageToken("the page token is not one this service issued") from None
        operator = await self._operates(principal, parent)
        sessions = await self.store.list_sessions(parent, None if operator else principal.user, size + 1, after)
        next_token = ""
        if len(sessions) > size:
            sessions = sessions[:size]
            last = sessions[-1]
            next_token = _token(
                {"t": last.update_time.ToDatetime().replace(tzinfo=UTC).isoformat(), "id": split_name(last.name)[1]}
            )
        return sessions, next_token

    async def _operates(self, principal: Principal, tenant: str) -> bool:
        """Whether policy says the caller operates the tenant (not the token's roles). When
        svc_policy cannot answer, the caller sees only their own sessions."""
        try:
            decision = await self.policy.check(principal, f"user:{principal.user}", "can_operate", f"tenant:{tenant}")
        except DependencyUnavailable:
            return False
        return decision.verdict == policy_decision_pb2.VERDICT_ALLOW

    async def update_session(self, principal: Principal | None, session: Session, paths: Sequence[str]) -> Session:
        handle = await self._session_for(principal, session.name)
        allowed = {"display_name", "model_overrides"}
        if not paths or not set(paths) <= allowed:
            raise InvalidUpdateMask(f"update_mask must name some of {sorted(allowed)}")
        if len(session.display_name) > 200:
            raise InvalidSession(
                "display_name is too long", violations=[FieldViolation("session.display_name", "at most 200")]
            )
        async with handle.lock:
            if session.etag and session.etag != handle.session.etag:
                raise EtagMismatch("the session changed since it was read", metadata={"etag": handle.session.etag})
            updated = Session()
            updated.CopyFrom(handle.session)
            if "display_name" in paths:
                updated.display_name = session.display_name
            if "model_overrides" in paths:
                roles = [o.role for o in session.model_overrides]
                if len(roles) != len(set(roles)):
                    raise InvalidSession(
                        "at most one override per role",
                        violations=[FieldViolation("session.model_overrides", "one per role")],
                    )
                del updated.model_overrides[:]
                updated.model_overrides.extend(session.model_overrides)
            updated.update_time.CopyFrom(timestamp())
            updated.etag = uuid.uuid4().hex
        await handle.save_session(updated)
        self._mirror_soon(handle)
        return updated

    async def delete_session(self, principal: Principal | None, name: str, etag: str) -> None:
        handle = await self._session_for(principal, name)
        if etag and etag != handle.session.etag:
            raise EtagMismatch("the session changed since it was read", metadata={"etag": handle.session.etag})
        if handle.turn is not None and handle.turn.state in ACTIVE:
            await self._stop_runner(handle)
        handle.deleted = True
        await self.store.delete_session(handle.name)
        handle.close_streams("DELETED")
        self._handles.pop(handle.name, None)
        self._dirty.discard(handle.name)
        pending = self._mirrors.get(handle.name)
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        with contextlib.suppress(Exception):
            await self.hot.forget(handle.name)

    # -- turns -----------------------------------------------------------------------

    async def _turn(self, principal: Principal | None, name: str, *, fresh: bool = False) -> tuple[SessionHandle, Turn]:
        """The turn and its session's handle; with ``fresh``, a handle that runs no turn
        here is first brought up to what is stored."""
        parts = name.split("/")
        if len(parts) != 6 or parts[4] != "turns" or not _ORDINAL.fullmatch(parts[5]) or int(parts[5]) > _MAX_ORDINAL:
            raise TurnNotFound(f"{name!r} is not a turn name", metadata={"turn": name})
        try:
            handle = await self._session_for(principal, name)
        except SessionNotFound:
            raise TurnNotFound(f"turn {name!r} does not exist", metadata={"turn": name}) from None
        if fresh:
            await self._refresh(handle, lock=True)
        ordinal = int(parts[5])
        # A handle that runs no turn here may hold an older copy (another process may run
        # the turn, or have run it since): the stored one counts, unless just read.
        if handle.turn is not None and turn_ordinal(handle.turn.name) == ordinal and (fresh or handle.running()):
            return handle, handle.turn
        turn = await self.store.get_turn(handle.name, ordinal)
        if turn is None:
            raise TurnNotFound(f"turn {name!r} does not exist", metadata={"turn": name})
        return handle, turn

    async def get_turn(self, principal: Principal | None, name: str) -> Turn:
        return (await self._turn(principal, name))[1]

    async def list_turns(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Turn], str]:
        handle = await self._session_for(principal, parent)
        size = _page_size(page_size, 50)
        after = 0
        if page_token:
            value = _page_token(page_token).get("after")
            if not isinstance(value, int):
                raise InvalidPageToken("the page token is not one this service issued")
            after = value
        turns = await self.store.list_turns(handle.name, after, size + 1)
        token = ""
        if len(turns) > size:
            turns = turns[:size]
            token = _token({"after": turn_ordinal(turns[-1].name)})
        return turns, token

    async def list_turn_events(
        self, principal: Principal | None, parent: str, page_size: int, page_token: str
    ) -> tuple[list[session_event_pb2.SessionEvent], str]:
        handle, turn = await self._turn(principal, parent)
        size = _page_size(page_size, 200)
        after = 0
        if page_token:
            value = _page_token(page_token).get("after")
            if not isinstance(value, int):
                raise InvalidPageToken("the page token is not one this service issued")
            after = value
        events = await self.store.list_events(handle.name, after, size + 1, turn=turn_ordinal(turn.name))
        token = ""
        if len(events) > size:
            events = events[:size]
            token = _token({"after": events[-1].sequence})
        return events, token

    def _start_runner(
        self, handle: SessionHandle, turn: Turn, principal: Principal, head_start: asyncio.Future[Any] | None = None
    ) -> None:
        run = TurnRun(self, handle, turn, principal, head_start=head_start)

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
        # The turn outlives the call that started it (SendMessage, ResumeTurn...): its calls
        # into the mesh, e.g. a spawn an operator approves an hour later, are not cut to
        # that call's deadline.
        handle.runner = asyncio.create_task(guarded(), name=f"turn {turn.name}", context=outliving_context())
        # Streams attached here follow the turn in process while it runs here, and the
        # session's Redis Stream otherwise.
        self._follow_changed(handle)
        handle.runner.add_done_callback(lambda _: self._follow_changed(handle))

    async def _stop_runner(self, handle: SessionHandle) -> None:
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

    async def send_message(
        self, principal: Principal | None, session_name: str, text: str, request_id: str, tool_choice: str
    ) -> Turn:
        handle = await self._session_for(principal, session_name)
        assert principal is not None
        if not text.strip():
            raise MessageEmpty("the message is empty")
        if len(text) > MAX_TEXT:
            raise MessageTooLong(f"the message is longer than {MAX_TEXT} characters", metadata={"limit": str(MAX_TEXT)})
        _uuid(request_id, "request_id")
        head_start = None
        if handle.turn is None or handle.turn.state not in ACTIVE:
            # The pre-processing (the PRE_SLM's call, most of the wait before the first
            # token) starts now, while the turn is checked and stored.
            head_start = asyncio.ensure_future(preprocessed(self, principal, handle.session, text))
        try:
            # With no turn running here, another process may have run one since this copy
            # of the session was read: read it again, in the same time as the request id.
            existing, _ = await asyncio.gather(
                self.store.turn_by_request(handle.name, request_id),
                self._refresh(handle, lock=True),
            )
            if existing is not None:
                if existing.input_text == text and not existing.rerun_of:
                    return existing
                raise RequestIdReused(
                    "this request_id was used for another message", metadata={"request_id": request_id}
                )
            if tool_choice:
                persona = await self.persona(handle.session.persona, principal)
                if tool_choice not in persona.allowed_tools:
                    raise InvalidToolChoice(
                        f"{tool_choice!r} is not a tool of this session's persona",
                        metadata={"tool_choice": tool_choice},
                    )
            turn = await self._new_turn(
                handle, principal, text, request_id, tool_choice=tool_choice, head_start=head_start
            )
            head_start = None  # the turn's runner has it
            return turn
        finally:
            _cancelled(head_start)

    async def _new_turn(
        self,
        handle: SessionHandle,
        principal: Principal,
        text: str,
        request_id: str,
        *,
        tool_choice: str = "",
        rerun_of: Turn | None = None,
        start_tier: int = 0,
        intervention_id: str = "",
        head_start: asyncio.Future[Any] | None = None,
    ) -> Turn:
        if handle.turn is not None and handle.turn.state in ACTIVE:
            raise TurnInProgress(
                "a turn of this session is running; interrupt it or nudge it", metadata={"turn": handle.turn.name}
            )
        ordinal = (turn_ordinal(handle.turn.name) if handle.turn is not None else 0) + 1
        turn = Turn(
            name=f"{handle.name}/turns/{ordinal}",
            state=Turn.STATE_RUNNING,
            input_text=text,
            request_id=request_id,
            start_tier=start_tier,
        )
        turn.create_time.CopyFrom(timestamp())
        if rerun_of is not None:
            turn.rerun_of = rerun_of.name
            # The original turn records the rerun before the new turn's first event.
            intervention = session_event_pb2.Intervention(
                kind=session_event_pb2.Intervention.KIND_RERUN, request_id=intervention_id, rerun_turn=turn.name
            )
            await handle.step(
                rerun_of,
                [("intervention", intervention)],
                audit_of=lambda evs: audit.records_for(handle.session, principal, rerun_of, evs),
                commands=[Command(intervention_id, "RERUN", turn_ordinal(rerun_of.name), _fingerprint("RERUN"))],
            )
        await handle.step(
            turn,
            [
                ("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_RUNNING)),
                (
                    "user_message",
                    session_event_pb2.UserMessage(text=text, request_id=request_id, tool_choice=tool_choice),
                ),
            ],
            audit_of=lambda evs: audit.records_for(handle.session, principal, turn, evs),
            lease=self._lease(),
        )
        self._mirror_soon(handle)
        self._start_runner(handle, turn, principal, head_start)
        return turn

    # -- interventions -----------------------------------------------------------------
    #
    # A turn runs in the process that holds its lease. An intervention acts where the turn
    # runs: one that reaches another process while that lease is live is forwarded to the
    # address stored with it (``routed`` marks a forwarded one, which is never forwarded
    # again). Where that process cannot be reached, nothing is written here (the process
    # would overwrite it): the caller retries, and once the lease has run out the turn is
    # taken over and the intervention acts where it then runs.

    async def _routed(
        self,
        principal: Principal | None,
        command: TurnCommand,
        routed: bool,
        here: Callable[[SessionHandle, Turn, Principal], Awaitable[Turn]],
    ) -> Turn:
        for _ in range(_ROUTE_ATTEMPTS):
            handle, turn = await self._turn(principal, command.turn, fresh=True)
            assert principal is not None  # _turn checked it
            owner = await self._owner(handle, turn, routed)
            if owner is None or self.owners is None:
                return await here(handle, turn, principal)
            with contextlib.suppress(TurnOwnerChanged):
                return await self.owners.intervene(owner, principal, command)
            # The turn left that process meanwhile: read it again.
        raise TurnOwnerUnreachable(
            "the turn keeps moving between processes; retry", metadata={"turn": command.turn}, retry_after_seconds=1.0
        )

    async def _owner(self, handle: SessionHandle, turn: Turn, routed: bool) -> str | None:
        """The address of the process that runs the turn, if that is another one and its
        lease is live; None when the intervention acts here."""
        if handle.running() or turn.state not in ACTIVE:
            return None
        found = await self.store.lease(handle.name, turn_ordinal(turn.name))
        if found is None:
            return None
        stored, lease = found
        if stored.state not in ACTIVE or lease is None or lease.runner == self.runner_id or lease.until <= self._now():
            return None
        if routed:
            raise TurnOwnerChanged("this process does not run the turn", metadata={"turn": turn.name})
        if not lease.address or self.owners is None:
            raise TurnOwnerUnreachable(
                "the turn runs in a process that cannot be dialled; retry once its lease runs out",
                metadata={"turn": turn.name},
                retry_after_seconds=1.0,
            )
        return lease.address

    async def interrupt(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        command = TurnCommand("INTERRUPT", name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._interrupt(h, t, p, request_id))

    async def _interrupt(self, handle: SessionHandle, turn: Turn, principal: Principal, request_id: str) -> Turn:
        name = turn.name
        if turn.state == Turn.STATE_INTERRUPTED:
            return turn
        if turn.state not in ACTIVE:
            raise TurnNotActive("the turn has ended", metadata={"turn": name})
        await self._stop_runner(handle)
        turn = handle.turn if handle.turn is not None and handle.turn.name == turn.name else turn
        await self._intervene(handle, turn, principal, Intervention.KIND_INTERRUPT, request_id, Turn.STATE_INTERRUPTED)
        return turn

    async def _intervene(
        self,
        handle: SessionHandle,
        turn: Turn,
        principal: Principal,
        kind: Intervention.Kind.ValueType,
        request_id: str,
        state: Turn.State.ValueType,
        *,
        lease: Lease | None = None,
    ) -> None:
        """Records an intervention and the state it puts the turn in (with ``lease``, this
        runner's hold on the turn it goes on to run)."""
        turn.state = state
        await self.step(
            handle,
            turn,
            principal,
            [
                ("intervention", Intervention(kind=kind, request_id=request_id)),
                ("turn_state_changed", session_event_pb2.TurnStateChanged(state=state)),
            ],
            lease=lease,
        )

    def _newest(self, handle: SessionHandle, turn: Turn) -> bool:
        return handle.turn is not None and handle.turn.name == turn.name

    async def resume(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        command = TurnCommand("RESUME", name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._resume(h, t, p, request_id))

    async def _resume(self, handle: SessionHandle, turn: Turn, principal: Principal, request_id: str) -> Turn:
        name = turn.name
        if turn.state != Turn.STATE_INTERRUPTED:
            raise TurnNotInterrupted("only an interrupted turn can be resumed", metadata={"turn": name})
        if not self._newest(handle, turn):
            raise TurnNotResumable("a newer turn exists", metadata={"turn": name})
        turn = handle.turn or turn
        await self._intervene(
            handle, turn, principal, Intervention.KIND_RESUME, request_id, Turn.STATE_RUNNING, lease=self._lease()
        )
        self._start_runner(handle, turn, principal)
        return turn

    async def nudge(
        self, principal: Principal | None, name: str, text: str, request_id: str, *, routed: bool = False
    ) -> Turn:
        command = TurnCommand("NUDGE", name, request_id, text)
        return await self._routed(principal, command, routed, lambda h, t, p: self._nudge(h, t, p, text, request_id))

    async def _nudge(self, handle: SessionHandle, turn: Turn, principal: Principal, text: str, request_id: str) -> Turn:
        name = turn.name
        if len(text) > MAX_TEXT:
            raise MessageTooLong(f"the guidance is longer than {MAX_TEXT} characters")
        _uuid(request_id, "request_id")
        done = await self.store.command(handle.name, request_id)
        if done is not None:
            if done.kind == "NUDGE" and done.fingerprint == _fingerprint("NUDGE", name, text):
                return handle.turn if handle.turn is not None and handle.turn.name == name else turn
            raise RequestIdReused("this request_id was used for another command", metadata={"request_id": request_id})
        if turn.state == Turn.STATE_AWAITING_APPROVAL:
            raise TurnAwaitingApproval("the turn waits for an operator's decision", metadata={"turn": name})
        if turn.state not in (Turn.STATE_RUNNING, Turn.STATE_INTERRUPTED):
            raise TurnNotActive("the turn has ended", metadata={"turn": name})
        if not self._newest(handle, turn):
            raise TurnNotResumable("a newer turn exists", metadata={"turn": name})
        await self._stop_runner(handle)
        turn = handle.turn or turn
        payloads: list[tuple[str, object]] = [
            (
                "intervention",
                session_event_pb2.Intervention(
                    kind=session_event_pb2.Intervention.KIND_NUDGE, request_id=request_id, text=text
                ),
            )
        ]
        if turn.state != Turn.STATE_RUNNING:
            turn.state = Turn.STATE_RUNNING
            payloads.append(("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_RUNNING)))
        await handle.step(
            turn,
            payloads,
            audit_of=lambda evs: audit.records_for(handle.session, principal, turn, evs),
            commands=[Command(request_id, "NUDGE", turn_ordinal(name), _fingerprint("NUDGE", name, text))],
            lease=self._lease(),
        )
        self._start_runner(handle, turn, principal)
        return turn

    async def rerun(self, principal: Principal | None, name: str, request_id: str, *, routed: bool = False) -> Turn:
        command = TurnCommand("RERUN", name, request_id)
        return await self._routed(principal, command, routed, lambda h, t, p: self._rerun(h, t, p, request_id))

    async def _rerun(self, handle: SessionHandle, original: Turn, principal: Principal, request_id: str) -> Turn:
        name = original.name
        _uuid(request_id, "request_id")
        done = await self.store.command(handle.name, request_id)
        if done is not None:
            again = await self.store.turn_by_request(handle.name, request_id)
            if done.kind == "RERUN" and again is not None and again.rerun_of == name:
                return again
            raise RequestIdReused("this request_id was used for another command", metadata={"request_id": request_id})
        if handle.turn is not None and handle.turn.state in ACTIVE:
            raise TurnInProgress("a turn of this session is running", metadata={"turn": handle.turn.name})
        if original.state not in TERMINAL | {Turn.STATE_INTERRUPTED}:
            raise TurnInProgress("the turn is still running", metadata={"turn": name})
        events = await self.store.list_events(handle.name, 0, 100_000, turn=turn_ordinal(name))
        answered = [
            e.model_call.usage.tier
            for e in events
            if e.WhichOneof("event") == "model_call"
            and not e.model_call.failure_reason
            and e.model_call.usage.role == PRIMARY
        ]
        start = (answered[-1] if answered else original.start_tier) + 1
        session = handle.session
        primary = await self.resolve(principal, PRIMARY, session)
        if start >= len(primary.tiers):
            raise NoLargerModel("the turn was answered by the largest model tier", metadata={"turn": name})
        return await self._new_turn(
            handle,
            principal,
            original.input_text,
            request_id,
            rerun_of=original,
            start_tier=start,
            intervention_id=request_id,
        )

    # -- attached streams ------------------------------------------------------------

    async def acknowledge(self, principal: Principal | None, session_name: str, sequence: int) -> None:
        handle = await self._session_for(principal, session_name)
        if sequence <= handle.session.acknowledged_sequence:
            return
        updated = Session()
        updated.CopyFrom(handle.session)
        updated.acknowledged_sequence = min(sequence, handle.session.last_sequence)
        await handle.save_session(updated)

    async def attach(
        self, principal: Principal | None, session_name: str, after: int | None
    ) -> tuple[Session, int, AsyncIterator[session_event_pb2.SessionEvent]]:
        """The session as of now, where the replay starts, and every event after it: stored
        ones first, then live ones, in order and without duplicates."""
        handle = await self._session_for(principal, session_name)
        async with handle.lock:
            # Where the turn runs in another process, this one's copy of the session may
            # be behind (last_sequence, reservations): take the stored one.
            await self._refresh(handle)
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
        self,
        handle: SessionHandle,
        subscriber: Subscriber,
        after: int,
        unstored: list[session_event_pb2.SessionEvent],
    ) -> AsyncIterator[session_event_pb2.SessionEvent]:
        cursor = after
        try:
            while True:
                batch = await self.store.list_events(handle.name, cursor, 1000)
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
            self._follow_changed(handle)
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
            self._follow_changed(handle)

    def _follow_changed(self, handle: SessionHandle) -> None:
        """Follows the session's Redis Stream while streams are attached here and its turn
        does not run here (then the turn's events come in process, without the Redis hop)."""
        if self.streams is None:
            return
        following = [s.cursor for s in handle.subscribers if s.following]
        if following and not handle.running() and not handle.deleted:
            self.streams.follow(handle.name, min(following))
        else:
            self.streams.unfollow(handle.name)

    def _relay(self, name: str, read_after: int, items: list[Live]) -> None:
        handle = self._handles.get(name)
        if handle is not None and not handle.running():
            handle.relay(read_after, items)

    def _lost(self, name: str) -> None:
        """The session's Redis Stream cannot be read: streams that follow it end, so their
        clients re-attach (and read what is stored from Postgres)."""
        handle = self._handles.get(name)
        if handle is None:
            if self.streams is not None:
                self.streams.unfollow(name)
            return
        if not handle.running():
            handle.close_streams("UNAVAILABLE")
        self._follow_changed(handle)


class StreamClosed(Exception):
    """The stream ended on the server's side: DELETED, SHUTDOWN, OVERFLOW, or the live
    events could not be followed (GAP, UNAVAILABLE)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
