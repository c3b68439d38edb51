"""The agent loop of one turn (Agent Zero's, made distributed).

Each iteration: the model (PRIMARY role, tier by tier on failure) writes one JSON tool
call, streamed token by token; the call goes to svc_tools (which asks svc_policy first and
may hold it for an operator); its result goes back into the context. The `response` tool
ends the turn. The context is rebuilt from the stored events of the turn, so a turn that
was interrupted, nudged, or left behind by a process that died resumes where it stopped:
a tool call that has no result yet is asked for again with the same request id, and
svc_tools attaches to the execution it already has instead of running it twice. The facts
a caller inside the mesh sent with the message (its policy_context, e.g. the voice channel's
agitation score) are read back from the stored message too, and go with every tool call.

A run gets what it needs explicitly (:class:`LoopServices`); call_subordinate goes to a
:class:`Spawner` (core/spawns.py), which this module does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from skm_runtime.access import Decision, Principal, Verdict
from skm_runtime.values import FailureReason, ModelRole, Money
from svc_conversation import preprocess
from svc_conversation.core.budgets import BudgetGuard
from svc_conversation.core.compression import Compressor
from svc_conversation.core.handles import SessionHandle, TokenStream
from svc_conversation.core.lookups import Lookups
from svc_conversation.core.mirror import Mirror
from svc_conversation.errors import DependencyUnavailable, ModelCallFailed, PersonaNotFound, ToolCallRejected
from svc_conversation.fitting import fit_messages
from svc_conversation.model import (
    CallStats,
    ChatRequest,
    EventPayload,
    ExecutionAccepted,
    ExecutionDecided,
    ExecutionFinished,
    ExecutionProgressed,
    FinalResponse,
    Intervention,
    InterventionKind,
    ModelCall,
    ModelUsage,
    OutputChunk,
    PersonaBrief,
    PolicyContext,
    Progress,
    ResolvedProfile,
    Screening,
    Session,
    SessionEvent,
    ToolCallProgress,
    ToolCallRequested,
    ToolCallResult,
    ToolCallVerdict,
    ToolFailure,
    ToolRequest,
    ToolResult,
    ToolSpec,
    ToolSuccess,
    Turn,
    TurnError,
    TurnState,
    TurnStateChanged,
    UserMessage,
    turn_ordinal,
)
from svc_conversation.ports import ChatModel, Limits, OnDelta, SessionStore, ToolRunner
from svc_conversation.toolcall import (
    RESPONSE_TOOL,
    SUBORDINATE_TOOL,
    ToolCall,
    decoding_schema,
    format_instructions,
    parse_reply,
    reply_json,
)

log = logging.getLogger("skm.conversation.loop")

_TOOL_NAMESPACE = uuid.UUID("5f1e9a3c-9a52-4c55-8f0e-0c0f8f4a2b77")
# Tool results are cut to this many characters before they go back to the model.
_RESULT_CHARS = 8000


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class TurnFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def usage_of(stats: CallStats, role: ModelRole) -> ModelUsage:
    """A model call's figures as the turn records them."""
    units = int(stats.cost)
    return ModelUsage(
        model=stats.model,
        role=role,
        tier=stats.tier,
        input_tokens=stats.input_tokens,
        output_tokens=stats.output_tokens,
        time_to_first_token_ns=(
            int(stats.time_to_first_token * 1e9) if stats.time_to_first_token is not None else None
        ),
        duration_ns=int(stats.duration * 1e9),
        tokens_per_second=stats.tokens_per_second,
        cost=Money(stats.currency, units, round((stats.cost - units) * 1e9)),
        input_tokens_estimated=stats.input_tokens_estimated,
    )


def _result_text(result: ToolResult) -> str:
    if isinstance(result, ToolSuccess):
        text = result.output_json
    else:
        reason = "UNSPECIFIED" if result.reason is None else result.reason.name
        text = json.dumps({"error": reason, "message": result.message})
    return text[:_RESULT_CHARS]


def exchange(call: ToolCall, result: ToolResult) -> list[dict[str, str]]:
    """A tool call and its result, as they go back into the model's context."""
    return [
        {"role": "assistant", "content": reply_json(call)},
        {"role": "user", "content": f"Result of {call.tool_name}: {_result_text(result)}"},
    ]


@dataclass
class _Context:
    """What the turn has done so far, read back from its stored events."""

    messages: list[dict[str, str]]
    tool_choice: str
    # The facts the message came with, for every tool call of the turn (a resumed one too).
    policy_context: PolicyContext
    # A tool call without a result yet (resume it), and the calls whose verdict is stored.
    open_call: ToolCallRequested | None
    verdicts: set[str]


Attempt = tuple[CallStats, str]  # a model call's figures, and its failure reason ("" if it answered)


async def screened(
    lookups: Lookups, llm: ChatModel, limits: Limits, principal: Principal, session: Session, text: str
) -> tuple[Screening, list[Attempt]]:
    """The screening of a message (heuristics, then the PRE_SLM's intent and slots) and the
    PRE_SLM calls it took. It reads and writes nothing of the turn, so it can start before
    the turn is stored (see Turns.send_message)."""
    screening = preprocess.heuristics(text, refuse_injection=limits.refuse_prompt_injection)
    attempts: list[Attempt] = []
    if screening.refused:
        return screening, attempts
    try:
        profile = await lookups.resolve(principal, ModelRole.PRE_SLM, session)
    except DependencyUnavailable:
        return screening, attempts
    window = min((tier.context_length for tier in profile.tiers), default=4096)
    room = int((window - 128) * 0.9 * limits.bytes_per_token)
    request = ChatRequest(
        messages=fit_messages(
            [{"role": "system", "content": preprocess.INTENT_PROMPT}, {"role": "user", "content": text}], room
        ),
        temperature=0.0,
        max_tokens=min(profile.max_output_tokens or 128, 128),
        json_schema=preprocess.INTENT_SCHEMA,
        schema_name="intent",
    )
    for tier in profile.tiers:
        try:
            result = await llm.complete(tier, request)
        except ModelCallFailed as failure:
            attempts.append((failure.stats, failure.reason))
            continue
        attempts.append((result.stats, ""))
        return preprocess.with_intent(screening, result.text), attempts
    return screening, attempts


class Spawner(Protocol):
    """Runs call_subordinate for a turn (core/spawns.py)."""

    async def depth(self, session: Session) -> int:
        """How many superiors the session has."""
        ...

    async def spawn(
        self, run: TurnRun, requested: ToolCallRequested, call: ToolCall, *, known_verdict: bool
    ) -> ToolResult: ...


@dataclass(frozen=True)
class LoopServices:
    """What every run of this process uses."""

    store: SessionStore
    lookups: Lookups
    llm: ChatModel
    tools: ToolRunner
    limits: Limits
    mirror: Mirror
    compressor: Compressor
    spawner: Spawner
    # The tenants' model budgets; None where budgets are not checked (tests of other things).
    budgets: BudgetGuard | None = None


class TurnRun:
    """Runs (or resumes) one turn until it ends, is interrupted, or this process stops."""

    def __init__(
        self,
        services: LoopServices,
        handle: SessionHandle,
        turn: Turn,
        principal: Principal,
        *,
        head_start: asyncio.Future[tuple[Screening, list[Attempt]]] | None = None,
    ) -> None:
        self.services = services
        self.handle = handle
        self.turn = turn
        self.principal = principal
        self.notes: list[dict[str, str]] = []
        self.current_execution = ""
        # Set when this process stops: the running tool is left to finish for the next
        # owner of the turn (it asks again with the same request id) instead of cancelled.
        self.detached = False
        # Set when the user stopped this run (interrupt, nudge): it writes nothing more, even
        # if it has not unwound yet when the intervention's own events are written.
        self.stopped = False
        # The screening, when it was started before the turn was stored.
        self.head_start = head_start
        # A write left running while the loop goes on (see _screen).
        self._write: asyncio.Future[Any] | None = None

    # -- the turn and its events -----------------------------------------------------

    def change(self, **changes: Any) -> None:
        """Changes the turn in memory (stored with the next step); the session's handle
        sees it at once, unless this run was stopped."""
        self.turn = replace(self.turn, **changes)
        if not self.stopped:
            self.handle.turn = self.turn

    async def step(self, *payloads: EventPayload) -> list[SessionEvent]:
        await self._written()
        return await self._store(payloads)

    async def _store(self, payloads: Sequence[EventPayload]) -> list[SessionEvent]:
        # A stopped run's step is refused under the session's lock (see SessionHandle.step).
        stored, events = await self.handle.step(self.turn, payloads, actor=self.principal, alive=self._alive)
        # What the step numbered; what the run changed meanwhile (a write left running) stays.
        self.change(
            first_sequence=stored.first_sequence,
            last_sequence=max(stored.last_sequence, self.turn.last_sequence),
            end_time=stored.end_time,
        )
        self.services.mirror.soon(self.handle)
        return events

    async def _written(self) -> None:
        """Waits for the write left running, if any (its failure is this run's failure)."""
        write, self._write = self._write, None
        if write is not None:
            await write

    def _alive(self) -> bool:
        return not self.stopped

    async def set_state(self, state: TurnState) -> None:
        """Records a change of the turn's state (none if it is in it already)."""
        if self.turn.state != state:
            self.change(state=state)
            await self.step(TurnStateChanged(state))

    async def _end(self, state: TurnState, reason: str = "", *, error: str = "", message: str = "") -> None:
        self.change(state=state, failure_reason=reason if state in (TurnState.FAILED, TurnState.REFUSED) else "")
        payloads: list[EventPayload] = []
        if error:
            payloads.append(TurnError(error, message))
        payloads.append(TurnStateChanged(state, reason))
        await self.step(*payloads)

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._stop_tool()
            raise
        except TurnFailed as failure:
            await self._end(TurnState.FAILED, failure.reason, error=failure.reason, message=failure.message)
        except (DependencyUnavailable, PersonaNotFound) as error:
            # PersonaNotFound: the persona (or the revision the session runs on) is gone.
            await self._end(TurnState.FAILED, error.reason, error=error.reason, message=error.message)
        finally:
            # Left behind by a run that ended early: nobody awaits them any more.
            if self.head_start is not None:
                self.head_start.cancel()
                self.head_start.add_done_callback(_retrieved)
            if self._write is not None:
                self._write.add_done_callback(_retrieved)

    async def _stop_tool(self) -> None:
        if self.current_execution and not self.detached:
            # Interrupt: the execution stops now, not when svc_tools notices the lost stream.
            await asyncio.shield(self.services.tools.cancel(self.principal, self.current_execution))

    async def _run(self) -> None:
        services = self.services
        session = self.handle.session
        # What the turn needs from elsewhere, asked all at once.
        persona, catalogue, primary, depth = await asyncio.gather(
            services.lookups.session_persona(session, self.principal),
            services.lookups.catalogue(self.principal),
            services.lookups.resolve(self.principal, ModelRole.PRIMARY, session),
            services.spawner.depth(session),
        )
        offered = [tool for tool in catalogue if tool.id in persona.allowed_tools or tool.id == RESPONSE_TOOL]
        if depth >= services.limits.max_subordinate_depth:
            offered = [tool for tool in offered if tool.id != SUBORDINATE_TOOL]
        if self.turn.screening is not None:
            context = await self._context(persona, offered)
        else:
            # The screening runs while the context is read back.
            context, refused = await asyncio.gather(self._context(persona, offered), self._screen())
            if refused:
                return
        if not primary.tiers:
            raise TurnFailed("ALL_MODEL_TIERS_FAILED", "no model is configured for the PRIMARY role")
        if context.open_call is not None:
            call = ToolCall(context.open_call.tool.rsplit("/", 1)[-1], json.loads(context.open_call.arguments_json))
            known = context.open_call.tool_call_id in context.verdicts
            if call.tool_name == SUBORDINATE_TOOL:
                # E.g. a spawn held for an operator: it finds its blocked action again.
                result = await services.spawner.spawn(self, context.open_call, call, known_verdict=known)
            else:
                result = await self._tool(context.open_call, context.policy_context, known_verdict=known)
            context.messages.extend(exchange(call, result))
        while True:
            iteration = self.turn.iterations + 1
            last = iteration >= services.limits.max_iterations
            tools = offered
            if last:
                tools = [t for t in offered if t.id == RESPONSE_TOOL]
            elif iteration == 1 and context.tool_choice:
                tools = [t for t in offered if t.id == context.tool_choice] or offered
            messages = await services.compressor.compress(
                self.handle.name,
                self.principal,
                self.handle.session,
                context.messages + self.notes,
                primary,
                record=self.record_model_call,
            )
            text = await self._call_primary(primary, iteration, messages, tools)
            parsed = parse_reply(text)
            allowed = {t.id for t in tools}
            if parsed is None or parsed.tool_name not in allowed:
                self.change(iterations=iteration)
                if last:
                    raise TurnFailed("ITERATION_LIMIT_REACHED", "the iteration bound was reached without a response")
                problem = "not a JSON tool call" if parsed is None else f"{parsed.tool_name!r} is not one of your tools"
                self.notes.append({"role": "assistant", "content": text[:2000]})
                self.notes.append(
                    {
                        "role": "user",
                        "content": f"Your reply was {problem}. Answer with one JSON object calling one of: "
                        + ", ".join(sorted(allowed)),
                    }
                )
                continue
            call = parsed
            self.change(iterations=iteration)
            if call.tool_name == RESPONSE_TOOL:
                answer = str(call.tool_args.get("text", ""))
                self.change(response_text=answer, state=TurnState.COMPLETED)
                await self.step(FinalResponse(answer), TurnStateChanged(TurnState.COMPLETED))
                return
            self.notes.clear()
            requested = ToolCallRequested(
                tool_call_id=f"call_{iteration}",
                iteration=iteration,
                tool=f"{self.principal.tenant}/tools/{call.tool_name}",
                arguments_json=json.dumps(call.tool_args, ensure_ascii=False),
            )
            await self.step(requested)
            if call.tool_name == SUBORDINATE_TOOL:
                result = await services.spawner.spawn(self, requested, call, known_verdict=False)
            else:
                result = await self._tool(requested, context.policy_context, known_verdict=False)
            context.messages.extend(exchange(call, result))

    async def _context(self, persona: PersonaBrief, offered: Sequence[ToolSpec]) -> _Context:
        system = persona.system_prompt.strip() + "\n\n" + format_instructions(offered)
        messages = [{"role": "system", "content": system}]
        # The persona's examples (training mode) read as earlier exchanges of the session.
        for user_text, agent_text in persona.examples:
            messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": agent_text}]
        messages.extend(await self._history())
        events = await self.services.store.list_events(self.handle.name, 0, 100_000, turn=turn_ordinal(self.turn.name))
        tool_choice = ""
        policy_context: PolicyContext = {}
        open_call: ToolCallRequested | None = None
        verdicts: set[str] = set()
        for event in events:
            payload = event.payload
            if isinstance(payload, UserMessage):
                messages.append({"role": "user", "content": payload.text})
                tool_choice = payload.tool_choice
                policy_context = payload.policy_context
            elif isinstance(payload, ToolCallRequested):
                open_call = payload
            elif isinstance(payload, ToolCallVerdict):
                verdicts.add(payload.tool_call_id)
            elif isinstance(payload, ToolCallResult) and open_call is not None:
                call = ToolCall(open_call.tool.rsplit("/", 1)[-1], json.loads(open_call.arguments_json or "{}"))
                messages.extend(exchange(call, payload.result))
                open_call = None
            elif isinstance(payload, Intervention) and payload.kind == InterventionKind.NUDGE and payload.text:
                # A nudge's guidance joins the context where it was given.
                messages.append({"role": "user", "content": payload.text})
        return _Context(messages, tool_choice, policy_context, open_call, verdicts)

    async def _history(self) -> list[dict[str, str]]:
        """Earlier turns of the session as user/assistant messages (answered ones only)."""
        ordinal = turn_ordinal(self.turn.name)
        messages: list[dict[str, str]] = []
        after = 0
        while True:
            turns = await self.services.store.list_turns(self.handle.name, after, 500)
            for earlier in turns:
                if turn_ordinal(earlier.name) >= ordinal:
                    return messages
                if earlier.response_text and earlier.state == TurnState.COMPLETED:
                    messages.append({"role": "user", "content": earlier.input_text})
                    messages.append({"role": "assistant", "content": earlier.response_text})
            if len(turns) < 500:
                return messages
            after = turn_ordinal(turns[-1].name)

    # -- screening -------------------------------------------------------------------

    async def _screen(self) -> bool:
        """Records the screening; True when the message is refused.

        The screening's write is left running (`_write`) so the PRIMARY call starts at
        once; every later write, and the first token delta, wait for it first, so the
        stored and streamed order is unchanged."""
        services = self.services
        started = self.head_start or asyncio.ensure_future(
            screened(
                services.lookups,
                services.llm,
                services.limits,
                self.principal,
                self.handle.session,
                self.turn.input_text,
            )
        )
        self.head_start = None
        screening, attempts = await started
        calls = [self._model_call(0, stats, ModelRole.PRE_SLM, failure) for stats, failure in attempts]
        self.change(screening=screening)
        if screening.refused:
            refusal = preprocess.REFUSAL_TEXT.get(screening.refusal_reason, "I can't help with this message.")
            self.change(response_text=refusal, state=TurnState.REFUSED, failure_reason=screening.refusal_reason)
            await self.step(
                screening, FinalResponse(refusal), TurnStateChanged(TurnState.REFUSED, screening.refusal_reason)
            )
            return True
        # The pre-SLM's calls are recorded right after the screening they served.
        self._write = asyncio.ensure_future(self._store([screening, *calls]))
        return False

    # -- model calls -----------------------------------------------------------------

    def _model_call(
        self, iteration: int, stats: CallStats, role: ModelRole, failure: str, *, interrupted: bool = False
    ) -> ModelCall:
        """The event of a model call, counted on the turn."""
        usage = usage_of(stats, role)
        self.change(model_calls=(*self.turn.model_calls, usage))
        return ModelCall(iteration, usage, failure, interrupted)

    async def record_model_call(self, iteration: int, stats: CallStats, role: ModelRole, failure: str) -> None:
        await self.step(self._model_call(iteration, stats, role, failure))

    async def _call_primary(
        self, profile: ResolvedProfile, iteration: int, messages: list[dict[str, str]], tools: Sequence[ToolSpec]
    ) -> str:
        max_tokens = profile.max_output_tokens
        # Free strings are capped so that a whole reply fits the token limit even when every
        # token is a single byte (weak models): half of it for the arguments, a quarter for
        # the thoughts, the rest for the JSON around them.
        string_cap = max(32, min(max_tokens // 2, 4000)) if max_tokens else 4000
        request = ChatRequest(
            messages=messages,
            temperature=profile.temperature,
            max_tokens=max_tokens,
            json_schema=decoding_schema(tools, string_cap=string_cap),
            schema_name="tool_call",
        )

        def on_cut(stats: CallStats) -> None:
            # Called as the interrupt's cancellation unwinds the call, before the interrupt
            # writes anything (it waits for this run to end): this run may write nothing
            # more, so the call goes with the intervention's own step (which counts it on
            # the turn), and the stop waits for nothing new.
            if self.stopped and not self.detached:
                usage = usage_of(stats, ModelRole.PRIMARY)
                self.handle.carry(self.turn, ModelCall(iteration, usage, "", interrupted=True))

        if self.services.budgets is not None:
            refusal = await self.services.budgets.refusal(self.principal, ModelRole.PRIMARY)
            if refusal is not None:
                raise TurnFailed(
                    refusal.reason, f"the tenant's PRIMARY model budget refuses the call ({refusal.reason})"
                )
        limits = self.services.limits
        start = min(self.turn.start_tier, len(profile.tiers) - 1)
        for tier in profile.tiers[start:]:
            tokens = self.handle.tokens(
                self.turn, iteration, alive=self._alive, tick=limits.delta_tick_ms / 1000, limit=limits.delta_max_tokens
            )
            try:
                result = await self.services.llm.chat(tier, request, self._streamed(tokens), on_cut=on_cut)
            except ModelCallFailed as failure:
                log.warning("model %s failed (%s); trying the next tier", tier.name, failure.reason)
                await self.record_model_call(iteration, failure.stats, ModelRole.PRIMARY, failure.reason)
                continue
            finally:
                # Held text goes out with the step that follows (the model call's, or the
                # intervention's); a detached run's turn goes on elsewhere, without it.
                tokens.close(drop=self.detached)
            await self.record_model_call(iteration, result.stats, ModelRole.PRIMARY, "")
            return result.text
        raise TurnFailed("ALL_MODEL_TIERS_FAILED", "every model tier of the PRIMARY role failed")

    def _streamed(self, tokens: TokenStream) -> OnDelta:
        """What a model call does with each piece of its text."""

        async def on_delta(text: str) -> None:
            if self._write is not None:
                await self._written()
            await tokens.push(text)

        return on_delta

    # -- tools -----------------------------------------------------------------------

    def _request_id(self, tool_call_id: str) -> str:
        return str(uuid.uuid5(_TOOL_NAMESPACE, f"{self.turn.name}#{tool_call_id}"))

    async def _tool(
        self, requested: ToolCallRequested, policy_context: PolicyContext, *, known_verdict: bool
    ) -> ToolResult:
        tool_call_id = requested.tool_call_id
        stream = self.services.tools.execute(
            self.principal,
            ToolRequest(
                tool=requested.tool,
                arguments_json=requested.arguments_json,
                request_id=self._request_id(tool_call_id),
                persona=self.handle.session.persona,
                turn=self.turn.name,
                tool_call_id=tool_call_id,
                timeout_seconds=self.services.limits.tool_timeout_seconds,
                policy_context=policy_context,
            ),
        )
        result: ToolResult | None = None
        try:
            async for update in stream:
                if isinstance(update, ExecutionAccepted):
                    self.current_execution = update.execution
                elif isinstance(update, ExecutionDecided):
                    if not known_verdict:
                        await self.record_verdict(tool_call_id, update.decision)
                elif isinstance(update, ExecutionProgressed):
                    await self._progress(tool_call_id, update.progress, update.output)
                elif isinstance(update, ExecutionFinished):
                    result = update.result
        except ToolCallRejected as rejected:
            result = ToolFailure(FailureReason.TOOL_ERROR, f"{rejected.reason}: {rejected.message}")
        finally:
            if result is None:
                with contextlib.suppress(Exception):
                    stream.cancel()
        if result is None:
            raise DependencyUnavailable("svc_tools ended the execution stream without a result")
        payloads: list[EventPayload] = []
        if self.turn.state == TurnState.AWAITING_APPROVAL:
            self.change(state=TurnState.RUNNING)
            payloads.append(TurnStateChanged(TurnState.RUNNING))
        payloads.append(ToolCallResult(tool_call_id, result, self.current_execution))
        await self.step(*payloads)
        self.current_execution = ""
        return result

    async def record_verdict(self, tool_call_id: str, decision: Decision) -> None:
        payloads: list[EventPayload] = [ToolCallVerdict(tool_call_id, decision)]
        if decision.verdict == Verdict.REQUIRES_APPROVAL:
            self.change(state=TurnState.AWAITING_APPROVAL)
            payloads.append(TurnStateChanged(TurnState.AWAITING_APPROVAL))
        await self.step(*payloads)

    async def _progress(self, tool_call_id: str, progress: Progress | None, output: OutputChunk | None) -> None:
        payloads: list[EventPayload] = []
        if self.turn.state == TurnState.AWAITING_APPROVAL:
            # Output flows only once the call runs: the operator approved it.
            self.change(state=TurnState.RUNNING)
            payloads.append(TurnStateChanged(TurnState.RUNNING))
        payloads.append(ToolCallProgress(tool_call_id, self.current_execution, progress, output))
        await self.step(*payloads)
