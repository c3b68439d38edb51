"""The agent loop of one turn (Agent Zero's, made distributed).

Each iteration: the model (PRIMARY role, tier by tier on failure) writes one JSON tool
call, streamed token by token; the call goes to svc_tools (which asks svc_policy first and
may hold it for an operator); its result goes back into the context. The `response` tool
ends the turn. The context is rebuilt from the stored events of the turn, so a turn that
was interrupted, nudged, or left behind by a process that died resumes where it stopped:
a tool call that has no result yet is asked for again with the same request id, and
svc_tools attaches to the execution it already has instead of running it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import duration_pb2

from skm.conversation.v1 import session_event_pb2, session_pb2, turn_pb2
from skm.tools.v1 import execution_pb2
from skm.type.v1 import model_pb2 as type_model_pb2
from skm.type.v1 import money_pb2, policy_decision_pb2
from svc_conversation import preprocess
from svc_conversation.adapters.mesh import ToolCallRejected
from svc_conversation.adapters.openai import ChatRequest, ModelCallFailed
from svc_conversation.errors import DependencyUnavailable
from svc_conversation.fitting import fit_messages
from svc_conversation.model import CallStats, Persona, Principal, ResolvedProfile, ToolSpec
from svc_conversation.toolcall import (
    RESPONSE_TOOL,
    SUBORDINATE_TOOL,
    ToolCall,
    decoding_schema,
    format_instructions,
    parse_reply,
    reply_json,
)

if TYPE_CHECKING:
    from svc_conversation.core import Conversation
    from svc_conversation.sessions import SessionHandle

log = logging.getLogger("skm.conversation.loop")

Turn = turn_pb2.Turn
Intervention = session_event_pb2.Intervention
PRIMARY = type_model_pb2.MODEL_ROLE_PRIMARY
PRE_SLM = type_model_pb2.MODEL_ROLE_PRE_SLM
UTILITY = type_model_pb2.MODEL_ROLE_UTILITY
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


def usage_of(stats: CallStats, role: int) -> type_model_pb2.ModelUsage:
    usage = type_model_pb2.ModelUsage(
        model=stats.model,
        role=type_model_pb2.ModelRole.ValueType(role),
        tier=stats.tier,
        input_tokens=stats.input_tokens,
        output_tokens=stats.output_tokens,
        tokens_per_second=stats.tokens_per_second,
        input_tokens_estimated=stats.input_tokens_estimated,
    )
    if stats.time_to_first_token is not None:
        usage.time_to_first_token.CopyFrom(_duration(stats.time_to_first_token))
    usage.duration.CopyFrom(_duration(stats.duration))
    units = int(stats.cost)
    usage.cost.CopyFrom(
        money_pb2.Money(currency_code=stats.currency, units=units, nanos=round((stats.cost - units) * 1e9))
    )
    return usage


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _result_text(result: execution_pb2.ToolResult) -> str:
    if result.HasField("success"):
        text = result.success.output_json
    else:
        reason = execution_pb2.FailureReason.Name(result.failure.reason).removeprefix("FAILURE_REASON_")
        text = json.dumps({"error": reason, "message": result.failure.message})
    return text[:_RESULT_CHARS]


@dataclass
class _Context:
    """What the turn has done so far, read back from its stored events."""

    messages: list[dict[str, str]]
    tool_choice: str
    # A tool call without a result yet (resume it), and the calls whose verdict is stored.
    open_call: session_event_pb2.ToolCallRequested | None
    verdicts: set[str]


Attempt = tuple[CallStats, str]  # a model call's figures, and its failure reason ("" if it answered)


async def preprocessed(
    c: Conversation, principal: Principal, session: session_pb2.Session, text: str
) -> tuple[preprocess.Verdict, list[Attempt]]:
    """The pre-processing verdict of a message (heuristics, then the PRE_SLM's intent and
    slots) and the PRE_SLM calls it took. It reads and writes nothing of the turn, so it can
    start before the turn is stored (see Conversation.send_message)."""
    verdict = preprocess.heuristics(text, refuse_injection=c.settings.refuse_prompt_injection)
    attempts: list[Attempt] = []
    if verdict.refused:
        return verdict, attempts
    try:
        profile = await c.resolve(principal, PRE_SLM, session)
    except DependencyUnavailable:
        return verdict, attempts
    window = min((tier.context_length for tier in profile.tiers), default=4096)
    room = int((window - 128) * 0.9 * c.settings.bytes_per_token)
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
            result = await c.llm.complete(tier, request)
        except ModelCallFailed as failure:
            attempts.append((failure.stats, failure.reason))
            continue
        attempts.append((result.stats, ""))
        return preprocess.with_intent(verdict, result.text), attempts
    return verdict, attempts


class TurnRun:
    """Runs (or resumes) one turn until it ends, is interrupted, or this process stops."""

    def __init__(
        self,
        conversation: Conversation,
        handle: SessionHandle,
        turn: Turn,
        principal: Principal,
        *,
        head_start: asyncio.Future[tuple[preprocess.Verdict, list[Attempt]]] | None = None,
    ) -> None:
        self.c = conversation
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
        # The pre-processing, when it was started before the turn was stored.
        self.head_start = head_start
        # A write left running while the loop goes on (see _preprocess).
        self._write: asyncio.Future[list[session_event_pb2.SessionEvent]] | None = None

    # -- event helpers ---------------------------------------------------------------

    async def step(self, *payloads: tuple[str, object]) -> list[session_event_pb2.SessionEvent]:
        await self._written()
        # A stopped run's step is refused under the session's lock (see SessionHandle.step).
        return await self.c.step(self.handle, self.turn, self.principal, list(payloads), alive=self._alive)

    async def _written(self) -> None:
        """Waits for the write left running, if any (its failure is this run's failure)."""
        write, self._write = self._write, None
        if write is not None:
            await write

    def _alive(self) -> bool:
        return not self.stopped

    async def _end(self, state: int, reason: str = "", *, error: str = "", message: str = "") -> None:
        self.turn.state = Turn.State.ValueType(state)
        self.turn.failure_reason = reason if state in (Turn.STATE_FAILED, Turn.STATE_REFUSED) else ""
        payloads: list[tuple[str, object]] = []
        if error:
            payloads.append(("error", session_event_pb2.TurnError(reason=error, message=message)))
        payloads.append(
            ("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.State.ValueType(state), reason=reason))
        )
        await self.step(*payloads)

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._stop_tool()
            raise
        except TurnFailed as failure:
            await self._end(Turn.STATE_FAILED, failure.reason, error=failure.reason, message=failure.message)
        except DependencyUnavailable as error:
            await self._end(Turn.STATE_FAILED, error.reason, error=error.reason, message=error.message)
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
            await asyncio.shield(self.c.tools.cancel(self.principal, self.current_execution))

    async def _run(self) -> None:
        session = self.handle.session
        # What the turn needs from elsewhere, asked all at once.
        persona, catalogue, primary, depth = await asyncio.gather(
            self.c.persona(session.persona, self.principal),
            self.c.catalogue(self.principal),
            self.c.resolve(self.principal, PRIMARY, session),
            self.c.subordinate_depth(session),
        )
        offered = [tool for tool in catalogue if tool.id in persona.allowed_tools or tool.id == RESPONSE_TOOL]
        if depth >= self.c.settings.max_subordinate_depth:
            offered = [tool for tool in offered if tool.id != SUBORDINATE_TOOL]
        if self.turn.HasField("preprocessing"):
            context = await self._context(persona, offered)
        else:
            # The pre-processing runs while the context is read back.
            context, refused = await asyncio.gather(self._context(persona, offered), self._preprocess())
            if refused:
                return
        if not primary.tiers:
            raise TurnFailed("ALL_MODEL_TIERS_FAILED", "no model is configured for the PRIMARY role")
        if context.open_call is not None:
            call = ToolCall(context.open_call.tool.rsplit("/", 1)[-1], json.loads(context.open_call.arguments_json))
            known = context.open_call.tool_call_id in context.verdicts
            if call.tool_name == SUBORDINATE_TOOL:
                # E.g. a spawn held for an operator: it finds its blocked action again.
                result = await self.c.subordinate(self, context.open_call, call, known_verdict=known)
            else:
                result = await self._tool(context.open_call, known_verdict=known)
            context.messages.extend(self._exchange(call, result))
        while True:
            iteration = self.turn.iterations + 1
            last = iteration >= self.c.settings.max_iterations
            tools = offered
            if last:
                tools = [t for t in offered if t.id == RESPONSE_TOOL]
            elif iteration == 1 and context.tool_choice:
                tools = [t for t in offered if t.id == context.tool_choice] or offered
            messages = await self._compressed(context.messages + self.notes, primary)
            text = await self._call_primary(primary, iteration, messages, tools)
            parsed = parse_reply(text)
            allowed = {t.id for t in tools}
            if parsed is None or parsed.tool_name not in allowed:
                self.turn.iterations = iteration
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
            self.turn.iterations = iteration
            if call.tool_name == RESPONSE_TOOL:
                answer = str(call.tool_args.get("text", ""))
                self.turn.response_text = answer
                self.turn.state = Turn.STATE_COMPLETED
                await self.step(
                    ("final_response", session_event_pb2.FinalResponse(text=answer)),
                    ("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_COMPLETED)),
                )
                return
            self.notes.clear()
            tool_call_id = f"call_{iteration}"
            requested = session_event_pb2.ToolCallRequested(
                tool_call_id=tool_call_id,
                iteration=iteration,
                tool=f"{self.principal.tenant}/tools/{call.tool_name}",
                arguments_json=json.dumps(call.tool_args, ensure_ascii=False),
            )
            await self.step(("tool_call_requested", requested))
            if call.tool_name == SUBORDINATE_TOOL:
                result = await self.c.subordinate(self, requested, call)
            else:
                result = await self._tool(requested, known_verdict=False)
            context.messages.extend(self._exchange(call, result))

    def _exchange(self, call: ToolCall, result: execution_pb2.ToolResult) -> list[dict[str, str]]:
        return [
            {"role": "assistant", "content": reply_json(call)},
            {"role": "user", "content": f"Result of {call.tool_name}: {_result_text(result)}"},
        ]

    async def _context(self, persona: Persona, offered: Sequence[ToolSpec]) -> _Context:
        system = persona.system_prompt.strip() + "\n\n" + format_instructions(offered)
        messages = [{"role": "system", "content": system}]
        messages.extend(await self.c.history(self.handle, self.turn))
        events = await self.c.store.list_events(
            self.handle.name, 0, 100_000, turn=int(self.turn.name.rsplit("/", 1)[1])
        )
        tool_choice = ""
        open_call: session_event_pb2.ToolCallRequested | None = None
        verdicts: set[str] = set()
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "user_message":
                messages.append({"role": "user", "content": event.user_message.text})
                tool_choice = event.user_message.tool_choice
            elif kind == "tool_call_requested":
                open_call = event.tool_call_requested
            elif kind == "tool_call_verdict":
                verdicts.add(event.tool_call_verdict.tool_call_id)
            elif kind == "tool_call_result" and open_call is not None:
                call = ToolCall(open_call.tool.rsplit("/", 1)[-1], json.loads(open_call.arguments_json or "{}"))
                messages.extend(self._exchange(call, event.tool_call_result.result))
                open_call = None
            elif (
                kind == "intervention"
                and event.intervention.kind == Intervention.KIND_NUDGE
                and event.intervention.text
            ):
                # A nudge's guidance joins the context where it was given.
                messages.append({"role": "user", "content": event.intervention.text})
        return _Context(messages, tool_choice, open_call, verdicts)

    # -- pre-processing --------------------------------------------------------------

    async def _preprocess(self) -> bool:
        """Records the pre-processing verdict; True when the message is refused.

        The verdict's write is left running (`_write`) so the PRIMARY call starts at once;
        every later write, and the first token delta, wait for it first, so the stored and
        streamed order is unchanged."""
        started = self.head_start or asyncio.ensure_future(
            preprocessed(self.c, self.principal, self.handle.session, self.turn.input_text)
        )
        self.head_start = None
        verdict, attempts = await started
        calls = [self._model_call_event(0, stats, PRE_SLM, failure) for stats, failure in attempts]
        message = turn_pb2.PreprocessingVerdict(
            intent=verdict.intent,
            intent_confidence=verdict.intent_confidence,
            slots=dict(verdict.slots),
            safety_flags=[turn_pb2.SafetyFlag.Value(f"SAFETY_FLAG_{flag}") for flag in verdict.flags],
            refused=verdict.refused,
            refusal_reason=verdict.refusal_reason,
        )
        self.turn.preprocessing.CopyFrom(message)
        if verdict.refused:
            refusal = preprocess.REFUSAL_TEXT.get(verdict.refusal_reason, "I can't help with this message.")
            self.turn.response_text = refusal
            self.turn.state = Turn.STATE_REFUSED
            self.turn.failure_reason = verdict.refusal_reason
            await self.step(
                ("preprocessing", message),
                ("final_response", session_event_pb2.FinalResponse(text=refusal)),
                (
                    "turn_state_changed",
                    session_event_pb2.TurnStateChanged(state=Turn.STATE_REFUSED, reason=verdict.refusal_reason),
                ),
            )
            return True
        # The pre-SLM's calls are recorded right after the verdict they served.
        self._write = asyncio.ensure_future(
            self.c.step(self.handle, self.turn, self.principal, [("preprocessing", message), *calls], alive=self._alive)
        )
        return False

    # -- model calls -----------------------------------------------------------------

    def _model_call_event(
        self, iteration: int, stats: CallStats, role: int, failure: str, *, interrupted: bool = False
    ) -> tuple[str, object]:
        usage = usage_of(stats, role)
        self.turn.model_calls.append(usage)
        return "model_call", session_event_pb2.ModelCall(
            iteration=iteration, usage=usage, failure_reason=failure, interrupted=interrupted
        )

    async def record_model_call(self, iteration: int, stats: CallStats, role: int, failure: str) -> None:
        await self.step(self._model_call_event(iteration, stats, role, failure))

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

        async def on_delta(text: str) -> None:
            if self._write is not None:
                await self._written()
            await self.handle.delta(self.turn, iteration, text, alive=self._alive)

        def on_cut(stats: CallStats) -> None:
            # Called as the interrupt's cancellation unwinds the call, before the interrupt
            # writes anything (it waits for this run to end): this run may write nothing
            # more, so the call goes with the intervention's own step, and the stop waits
            # for nothing new.
            if self.stopped and not self.detached:
                self.handle.carry(self.turn, self._model_call_event(iteration, stats, PRIMARY, "", interrupted=True))

        start = min(self.turn.start_tier, len(profile.tiers) - 1)
        for tier in profile.tiers[start:]:
            try:
                result = await self.c.llm.chat(tier, request, on_delta, on_cut=on_cut)
            except ModelCallFailed as failure:
                log.warning("model %s failed (%s); trying the next tier", tier.name, failure.reason)
                await self.record_model_call(iteration, failure.stats, PRIMARY, failure.reason)
                continue
            await self.record_model_call(iteration, result.stats, PRIMARY, "")
            return result.text
        raise TurnFailed("ALL_MODEL_TIERS_FAILED", "every model tier of the PRIMARY role failed")

    async def _compressed(self, messages: list[dict[str, str]], primary: ResolvedProfile) -> list[dict[str, str]]:
        return await self.c.compress(self, messages, primary)

    # -- tools -----------------------------------------------------------------------

    def _request_id(self, tool_call_id: str) -> str:
        return str(uuid.uuid5(_TOOL_NAMESPACE, f"{self.turn.name}#{tool_call_id}"))

    async def _tool(
        self, requested: session_event_pb2.ToolCallRequested, *, known_verdict: bool
    ) -> execution_pb2.ToolResult:
        tool_call_id = requested.tool_call_id
        stream = self.c.tools.execute(
            self.principal,
            tool=requested.tool,
            arguments_json=requested.arguments_json,
            request_id=self._request_id(tool_call_id),
            persona=self.handle.session.persona,
            turn=self.turn.name,
            tool_call_id=tool_call_id,
            timeout_seconds=self.c.settings.tool_timeout_seconds,
        )
        result: execution_pb2.ToolResult | None = None
        try:
            async for update in stream:
                kind = update.WhichOneof("update")
                if kind == "accepted":
                    self.current_execution = update.accepted.execution
                elif kind == "decision":
                    if not known_verdict:
                        await self.record_verdict(tool_call_id, update.decision)
                elif kind == "progress":
                    await self._progress(tool_call_id, progress=update.progress)
                elif kind == "output":
                    await self._progress(tool_call_id, output=update.output)
                elif kind == "result":
                    result = update.result
        except ToolCallRejected as rejected:
            result = execution_pb2.ToolResult(
                failure=execution_pb2.ToolFailure(
                    reason=execution_pb2.FAILURE_REASON_TOOL_ERROR, message=f"{rejected.reason}: {rejected.message}"
                )
            )
        finally:
            if result is None:
                with contextlib.suppress(Exception):
                    stream.cancel()
        if result is None:
            raise DependencyUnavailable("svc_tools ended the execution stream without a result")
        payloads: list[tuple[str, object]] = []
        if self.turn.state == Turn.STATE_AWAITING_APPROVAL:
            self.turn.state = Turn.STATE_RUNNING
            payloads.append(("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_RUNNING)))
        payloads.append(
            (
                "tool_call_result",
                session_event_pb2.ToolCallResult(
                    tool_call_id=tool_call_id, execution=self.current_execution, result=result
                ),
            )
        )
        await self.step(*payloads)
        self.current_execution = ""
        return result

    async def record_verdict(self, tool_call_id: str, decision: policy_decision_pb2.PolicyDecision) -> None:
        payloads: list[tuple[str, object]] = [
            ("tool_call_verdict", session_event_pb2.ToolCallVerdict(tool_call_id=tool_call_id, decision=decision))
        ]
        if decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL:
            self.turn.state = Turn.STATE_AWAITING_APPROVAL
            payloads.append(
                ("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_AWAITING_APPROVAL))
            )
        await self.step(*payloads)

    async def _progress(self, tool_call_id: str, **update: Any) -> None:
        payloads: list[tuple[str, object]] = []
        if self.turn.state == Turn.STATE_AWAITING_APPROVAL:
            # Output flows only once the call runs: the operator approved it.
            self.turn.state = Turn.STATE_RUNNING
            payloads.append(("turn_state_changed", session_event_pb2.TurnStateChanged(state=Turn.STATE_RUNNING)))
        payloads.append(
            (
                "tool_call_progress",
                session_event_pb2.ToolCallProgress(
                    tool_call_id=tool_call_id, execution=self.current_execution, **update
                ),
            )
        )
        await self.step(*payloads)
