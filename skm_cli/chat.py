"""`skm chat`: a conversation with an agent over ConversationService.Converse.

One bidi stream carries the user's commands (send_message, interrupt_turn, ...) out and
the session's numbered events back. A turn does not depend on the stream, and the stream
may end under us (Envoy ends streams idle for 5 minutes, svc_conversation restarts), so
the reader re-attaches after the last event it saw and sends again the commands the server
has not answered yet (they carry idempotency keys).

Threads: a reader thread receives and shows the events; the main thread reads the user's
lines, sends commands and waits for their turns to end, so Ctrl-C (delivered to the main
thread) can interrupt a turn while the events keep flowing.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import grpc
import jwt
from google.protobuf import json_format

from skm.conversation.v1 import (
    conversation_service_pb2 as pb,
)
from skm.conversation.v1 import (
    conversation_service_pb2_grpc,
    session_event_pb2,
    session_pb2,
    turn_pb2,
)
from skm.profiles.v1 import model_service_pb2, model_service_pb2_grpc
from skm.tools.v1 import execution_pb2
from skm.type.v1 import deployment_mode_pb2, model_pb2, policy_decision_pb2
from skm_cli.errors import CallFailed, CliError, OutputClosed

Turn = turn_pb2.Turn
Metadata = tuple[tuple[str, str], ...]

MODES = {
    "developer": deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER,
    "test": deployment_mode_pb2.DEPLOYMENT_MODE_TEST,
    "production": deployment_mode_pb2.DEPLOYMENT_MODE_PRODUCTION,
}
DESCRIPTION = """\
Talk with an agent, through Envoy.

Without -m: type messages at the `you> ` prompt and watch each turn happen: the
model's raw output as it streams (the JSON tool call it writes), then a line per
model call, tool call, policy verdict, tool output and result, and the answer
(`agent> ...`).

With -m: send one message, show its turn, exit 0 if the turn COMPLETED and 1
otherwise. With --json: every server message as one JSON object per line on
stdout (for scripts); notes go to stderr.

Without --session a new session is created; its name goes to stderr, so you can
come back to it with --session."""
SLASH_HELP = """\
/resume        continue the interrupted turn
/nudge [TEXT]  regenerate the turn's current step, with TEXT as guidance
/rerun         answer the last message again, as a new turn, with the next larger model
/help          this list
/quit          leave (Ctrl-D too); a running turn goes on without you
Ctrl-C while a turn runs interrupts it; a second Ctrl-C leaves."""

# The turn states that end a wait: the terminal ones, and INTERRUPTED (the user decides next).
_END_STATES = frozenset({Turn.STATE_COMPLETED, Turn.STATE_FAILED, Turn.STATE_REFUSED, Turn.STATE_INTERRUPTED})
# A wait's outcome when the server rejected the command instead of running it.
_REJECTED = -1
# Stream endings worth re-attaching after: transport trouble, not a verdict on the request.
_REATTACH = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
_MAX_REATTACH = 5
_COMPACT = 240
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _note(text: str) -> None:
    print(f"skm: {text}", file=sys.stderr, flush=True)


def _compact(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _COMPACT else flat[: _COMPACT - 1] + "…"


def tenant_of(token: str) -> str:
    """The token's `tenant` claim, read without verifying the token (the service that admits the call verifies it)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as error:
        raise CliError(f"cannot read the token's tenant ({error}): pass --tenant") from None
    tenant = claims.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise CliError("the token has no tenant claim: pass --tenant")
    return tenant


class _SessionStream:
    """Converse calls on one session, one after another: each attaches after the last event
    seen by the one before, so the events read on without gaps or duplicates."""

    def __init__(
        self,
        stub: conversation_service_pb2_grpc.ConversationServiceStub,
        session: str,
        metadata: Metadata,
        after: int,
        on_response: Callable[[pb.ConverseResponse], None],
    ) -> None:
        self._stub = stub
        self._session = session
        self._metadata = metadata
        self._on_response = on_response
        self.cursor = after
        self._outbox: queue.Queue[tuple[str, pb.ConverseRequest]] = queue.Queue()
        # Commands the server has not answered (no event, no rejection) yet, by request_id.
        self._pending: dict[str, pb.ConverseRequest] = {}
        # What each call that died took from the outbox: it may or may not have reached the server.
        self._lost_calls: list[set[str]] = []
        self._lock = threading.Lock()
        self._call: Any = None
        self._closed = False
        self._attached = threading.Event()
        self.done = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, name="converse", daemon=True)

    def open(self) -> None:
        """Attaches; returns once `attached` arrived, raises the call's error if it did not."""
        self._thread.start()
        while not self._attached.wait(0.1):
            if self.done.is_set():
                self.raise_error()

    def send(self, request: pb.ConverseRequest, request_id: str) -> None:
        with self._lock:
            self._pending[request_id] = request
        self._outbox.put((request_id, request))

    def answered(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def raise_error(self) -> None:
        raise self.error if self.error is not None else CallFailed("the event stream stopped")

    def _requests(
        self, first: pb.ConverseRequest, alive: threading.Event, taken: set[str]
    ) -> Iterator[pb.ConverseRequest]:
        yield first
        while alive.is_set():
            try:
                request_id, request = self._outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if not alive.is_set():
                self._outbox.put((request_id, request))  # for the next call
                return
            taken.add(request_id)
            yield request

    def _send_unsure_again(self) -> None:
        """Sends again the commands a dead call may have lost. Called once the replay is over:
        a command that did reach the server has shown up in it by then (and is answered)."""
        with self._lock:
            for request_id in set().union(*self._lost_calls) & self._pending.keys():
                self._outbox.put((request_id, self._pending[request_id]))
            self._lost_calls.clear()

    def _read(self) -> None:
        try:
            self._read_calls()
        except BrokenPipeError:
            self.error = OutputClosed()
            with self._lock:
                call = self._call
            if call is not None:
                call.cancel()
        finally:
            self.done.set()

    def _read_calls(self) -> None:
        failures = 0
        while True:
            alive = threading.Event()
            alive.set()
            first = pb.ConverseRequest(session=self._session, config=pb.ConverseConfig(after_sequence=self.cursor))
            taken: set[str] = set()
            with self._lock:
                if self._closed:
                    return
                call = self._stub.Converse(self._requests(first, alive, taken), metadata=self._metadata)
                self._call = call
            ended: grpc.RpcError | None = None
            replay_end: int | None = None
            try:
                for response in call:
                    failures = 0
                    if response.HasField("attached"):
                        replay_end = response.attached.session.last_sequence
                    elif response.HasField("event"):
                        self.cursor = max(self.cursor, response.event.sequence)
                    self._on_response(response)
                    if response.HasField("attached"):
                        self._attached.set()
                    if self._lost_calls and replay_end is not None and self.cursor >= replay_end:
                        self._send_unsure_again()
            except grpc.RpcError as error:
                ended = error
            finally:
                alive.clear()
            with self._lock:
                if self._closed:
                    return
                self._lost_calls.append(taken)
            code = ended.code() if ended is not None else grpc.StatusCode.OK
            if not self._attached.is_set() or (ended is not None and code not in _REATTACH):
                self.error = ended
                return
            failures += 1
            if failures > _MAX_REATTACH:
                self.error = ended if ended is not None else CallFailed("the server keeps ending the event stream")
                return
            _note(f"the event stream ended ({code.name}); re-attaching after event {self.cursor}")
            time.sleep(min(8.0, 0.25 * 2**failures))


class _Json:
    """Every server message as one JSON object per line on stdout, nothing else."""

    def show(self, response: pb.ConverseResponse, own: bool) -> None:
        print(json.dumps(json_format.MessageToDict(response)), flush=True)

    def end_line(self) -> None:
        pass


class _Terminal:
    """The conversation for a person: model output as it streams, a compact line for the rest."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self._out = out
        self._interactive = interactive
        self._open = False  # a line of streamed tokens waits for its newline
        self._states: dict[str, int] = {}
        self._output: dict[tuple[str, str], _OutputLines] = {}
        self._show: dict[str, Callable[[Any], None]] = {
            "intervention": self._intervention,
            "preprocessing": self._preprocessing,
            "token_delta": self._tokens,
            "model_call": self._model_call,
            "tool_call_requested": self._tool_call,
            "tool_call_verdict": self._verdict,
            "tool_call_progress": self._progress,
            "tool_call_result": self._result,
            "final_response": lambda event: self._line(f"agent> {event.text}"),
            "error": lambda event: self._line(f"[error {event.reason}: {event.message}]"),
        }

    def show(self, response: pb.ConverseResponse, own: bool) -> None:
        kind = response.WhichOneof("response")
        if kind == "rejected":
            rejected = response.rejected
            reason = rejected.reason or _CODE_NAMES.get(rejected.code, str(rejected.code))
            self._line(f"[rejected {reason}: {rejected.message}]")
        elif kind == "event":
            event = response.event
            which = event.WhichOneof("event")
            if which == "user_message":
                if not own:  # ours is on the screen already, typed at the prompt
                    self._line(f"you> {event.user_message.text}")
            elif which == "turn_state_changed":
                self._state_of(event.turn, event.turn_state_changed)
            elif which is not None and which in self._show:
                self._show[which](getattr(event, which))

    def end_line(self) -> None:
        if self._open:
            self._out.write("\n")
            self._out.flush()
            self._open = False

    def _line(self, text: str) -> None:
        self.end_line()
        print(text, file=self._out, flush=True)

    def _state_of(self, turn: str, change: session_event_pb2.TurnStateChanged) -> None:
        before = self._states.get(turn)
        self._states[turn] = change.state
        self._state(change, before)

    def _state(self, change: session_event_pb2.TurnStateChanged, before: int | None = None) -> None:
        state = change.state
        if state == Turn.STATE_RUNNING and before == Turn.STATE_AWAITING_APPROVAL:
            self._line("[decided: running again]")
        elif state == Turn.STATE_AWAITING_APPROVAL:
            self._line("[awaiting an operator's decision]")
        elif state == Turn.STATE_INTERRUPTED:
            hint = (
                ": /resume continues, /nudge [TEXT] retries the step, /rerun answers again" if self._interactive else ""
            )
            self._line(f"[interrupted{hint}]")
        elif state in (Turn.STATE_FAILED, Turn.STATE_REFUSED):
            name = Turn.State.Name(state).removeprefix("STATE_").lower()
            self._line(f"[turn {name} {change.reason}]")

    def _intervention(self, intervention: session_event_pb2.Intervention) -> None:
        kind = session_event_pb2.Intervention.Kind.Name(intervention.kind).removeprefix("KIND_").lower()
        if intervention.kind == session_event_pb2.Intervention.KIND_RERUN:
            self._line(f"[rerun as {intervention.rerun_turn}]")
        elif intervention.text:
            self._line(f"[{kind}: {_compact(intervention.text)}]")
        else:
            self._line(f"[{kind}]")

    def _preprocessing(self, verdict: turn_pb2.PreprocessingVerdict) -> None:
        if verdict.refused:
            return  # the refusal text and the REFUSED state follow
        parts = []
        if verdict.intent:
            parts.append(f"intent {verdict.intent} ({verdict.intent_confidence:.2f})")
        if verdict.safety_flags:
            flags = ", ".join(turn_pb2.SafetyFlag.Name(f).removeprefix("SAFETY_FLAG_") for f in verdict.safety_flags)
            parts.append(f"flags {flags}")
        if parts:
            self._line(f"[preprocessing {'; '.join(parts)}]")

    def _tokens(self, delta: session_event_pb2.TokenDelta) -> None:
        if delta.text:
            self._out.write(delta.text)
            self._out.flush()
            self._open = not delta.text.endswith("\n")

    def _model_call(self, call: session_event_pb2.ModelCall) -> None:
        usage = call.usage
        role = "" if usage.role == model_pb2.MODEL_ROLE_PRIMARY else f" ({_role(usage.role)})"
        head = f"[model {usage.model} tier {usage.tier}{role}"
        if call.failure_reason:
            self._line(f"{head} failed {call.failure_reason}: its output above is discarded]")
            return
        parts = [f"{usage.output_tokens} tokens", f"{usage.tokens_per_second:.1f} tok/s"]
        if usage.HasField("time_to_first_token"):
            parts.append(f"ttft {usage.time_to_first_token.ToMilliseconds()} ms")
        self._line(f"{head}: {', '.join(parts)}]")

    def _tool_call(self, call: session_event_pb2.ToolCallRequested) -> None:
        self._line(f"[tool {call.tool.rsplit('/', 1)[-1]} {_compact(call.arguments_json)}]")

    def _verdict(self, verdict: session_event_pb2.ToolCallVerdict) -> None:
        decision = verdict.decision
        name = policy_decision_pb2.Verdict.Name(decision.verdict).removeprefix("VERDICT_")
        if decision.verdict == policy_decision_pb2.VERDICT_REQUIRES_APPROVAL:
            held = decision.blocked_action or "the tool call"
            self._line(
                f"[policy {name} {decision.reason}: the call waits for an operator to approve {held}"
                " (skm blocked approve|reject NAME)]"
            )
        else:
            self._line(f"[policy {name} {decision.reason}]")

    def _progress(self, progress: session_event_pb2.ToolCallProgress) -> None:
        if progress.HasField("output"):
            # Chunks are cut anywhere, even inside a character: show whole lines only.
            chunk = progress.output
            stream = "stderr" if chunk.stream == execution_pb2.OutputChunk.STREAM_STDERR else "stdout"
            key = (progress.tool_call_id, stream)
            if key not in self._output:
                self._output[key] = _OutputLines()
            for line in self._output[key].feed(chunk.data):
                self._line(f"[{stream}] {line}")
        elif progress.HasField("progress"):
            done = f"{progress.progress.fraction:.0%} " if progress.progress.HasField("fraction") else ""
            self._line(f"[progress {done}{progress.progress.message}]")

    def _result(self, result: session_event_pb2.ToolCallResult) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._output.pop((result.tool_call_id, stream), None)
            if rest is not None and (line := rest.end()):
                self._line(f"[{stream}] {line}")
        if result.result.HasField("success"):
            self._line(f"[result {_compact(result.result.success.output_json)}]")
        else:
            failure = result.result.failure
            reason = execution_pb2.FailureReason.Name(failure.reason).removeprefix("FAILURE_REASON_")
            self._line(f"[tool failed {reason}: {failure.message}]")


class _OutputLines:
    """A tool's output stream cut into whole lines, from chunks cut anywhere."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + self._decoder.decode(data)).split("\n")
        return lines

    def end(self) -> str:
        rest, self._partial = self._partial + self._decoder.decode(b"", final=True), ""
        return rest


def _role(role: model_pb2.ModelRole.ValueType) -> str:
    return model_pb2.ModelRole.Name(role).removeprefix("MODEL_ROLE_").lower()


@dataclass
class _Wait:
    """A command waiting for its turn to end (or for its rejection)."""

    request_id: str
    turn: str = ""  # learnt from the command's event when not known up front
    outcome: int | None = None  # a Turn.State in _END_STATES, or _REJECTED
    interrupt_pending: bool = False  # Ctrl-C came before the turn was known


class _Chat:
    """One `skm chat` run: the stream, what is on the screen, and the command being waited on."""

    def __init__(
        self,
        channel: grpc.Channel,
        session: str,
        metadata: Metadata,
        *,
        after: int,
        as_json: bool,
        interactive: bool,
        tool_choice: str,
    ) -> None:
        self.session = session
        self._models = model_service_pb2_grpc.ModelServiceStub(channel)
        self._metadata = metadata
        self._tool_choice = tool_choice
        self._screen: _Json | _Terminal = _Json() if as_json else _Terminal(sys.stdout, interactive)
        self._cond = threading.Condition()
        self._wait: _Wait | None = None
        self._own: set[str] = set()
        self._states: dict[str, int] = {}
        self._checked_models: set[str] = set()
        self._warned = False
        self.attached: session_pb2.Session | None = None
        self.current_turn = ""
        stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)
        self.stream = _SessionStream(stub, session, metadata, after, self._receive)

    # --- the reader thread

    def _receive(self, response: pb.ConverseResponse) -> None:
        with self._cond:
            kind = response.WhichOneof("response")
            own = False
            if kind == "attached" and self.attached is None:
                self.attached = response.attached.session
                self.current_turn = response.attached.session.current_turn
            elif kind == "rejected":
                self.stream.answered(response.rejected.request_id)
                self._settle(response.rejected.request_id, "", _REJECTED)
            elif kind == "event":
                own = self._follow(response.event)
            self._screen.show(response, own)
            self._cond.notify_all()
        if kind == "event" and response.event.WhichOneof("event") == "model_call":
            self._check_model(response.event.model_call.usage.model)

    def _follow(self, event: session_event_pb2.SessionEvent) -> bool:
        """Moves the state on with one event; tells whether it answers one of our commands."""
        which = event.WhichOneof("event")
        self.current_turn = event.turn or self.current_turn
        request_id = ""
        if which == "user_message":
            request_id = event.user_message.request_id
        elif which == "intervention":
            request_id = event.intervention.request_id
        if request_id:
            self.stream.answered(request_id)
            wait = self._wait
            if wait is not None and wait.request_id == request_id and not wait.turn:
                # A rerun's events follow on the new turn; anything else stays on its turn.
                wait.turn = event.intervention.rerun_turn if which == "intervention" else ""
                wait.turn = wait.turn or event.turn
                if wait.interrupt_pending:
                    self._send_interrupt(wait.turn)
        if which == "turn_state_changed":
            self._states[event.turn] = event.turn_state_changed.state
            if event.turn_state_changed.state in _END_STATES:
                self._settle("", event.turn, event.turn_state_changed.state)
        return bool(request_id) and request_id in self._own

    def _settle(self, request_id: str, turn: str, outcome: int) -> None:
        wait = self._wait
        if wait is None or wait.outcome is not None:
            return
        if (request_id and wait.request_id == request_id) or (turn and wait.turn == turn):
            wait.outcome = outcome

    def _check_model(self, model: str) -> None:
        """Warns once when an answer comes from an untrained test model."""
        if self._warned or not model or model in self._checked_models:
            return
        self._checked_models.add(model)
        names = [model]
        if "untrained" not in model.lower():
            try:
                reply = self._models.GetModel(
                    model_service_pb2.GetModelRequest(name=model), timeout=5, metadata=self._metadata
                )
                names.append(reply.model.display_name)
            except grpc.RpcError:
                pass  # the note is a courtesy; the model's name is all we know then
        if any("untrained" in name.lower() for name in names):
            self._warned = True
            _note(
                f"the answers come from {model}, an UNTRAINED test model (random weights): they are "
                "meaningless; they only show the platform working"
            )

    # --- the main thread

    def open(self) -> session_pb2.Session:
        self.stream.open()
        assert self.attached is not None  # open() returns only after `attached`
        return self.attached

    def close(self) -> None:
        self.stream.close()

    def end_line(self) -> None:
        with self._cond:
            self._screen.end_line()

    def send_message(self, text: str) -> int:
        request_id = str(uuid.uuid4())
        return self._command(
            request_id,
            pb.ConverseRequest(
                send_message=pb.SendMessageRequest(
                    session=self.session, text=text, request_id=request_id, tool_choice=self._tool_choice
                )
            ),
        )

    def resume(self) -> int:
        request_id = str(uuid.uuid4())
        return self._command(
            request_id,
            pb.ConverseRequest(resume_turn=pb.ResumeTurnRequest(name=self.current_turn, request_id=request_id)),
        )

    def nudge(self, text: str) -> int:
        request_id = str(uuid.uuid4())
        return self._command(
            request_id,
            pb.ConverseRequest(
                nudge_turn=pb.NudgeTurnRequest(name=self.current_turn, text=text, request_id=request_id)
            ),
        )

    def rerun(self) -> int:
        request_id = str(uuid.uuid4())
        return self._command(
            request_id,
            pb.ConverseRequest(rerun_turn=pb.RerunTurnRequest(name=self.current_turn, request_id=request_id)),
        )

    def follow_running_turn(self) -> int | None:
        """Waits for the turn that was running when we attached, if one was; None if none."""
        if self.attached is None or self.attached.state not in (
            session_pb2.Session.STATE_RUNNING,
            session_pb2.Session.STATE_AWAITING_APPROVAL,
        ):
            return None
        turn = self.attached.current_turn
        with self._cond:
            if self._states.get(turn) in _END_STATES:
                return self._states[turn]
            wait = _Wait(request_id="", turn=turn)
            self._wait = wait
        return self._until_settled(wait)

    def _command(self, request_id: str, request: pb.ConverseRequest) -> int:
        wait = _Wait(request_id=request_id)
        with self._cond:
            self._own.add(request_id)
            self._wait = wait
        self.stream.send(request, request_id)
        return self._until_settled(wait)

    def _until_settled(self, wait: _Wait) -> int:
        """The wait's outcome; the first Ctrl-C interrupts the turn, a second one propagates."""
        interrupted = False
        while True:
            try:
                with self._cond:
                    while wait.outcome is None and not self.stream.done.is_set():
                        self._cond.wait(0.2)
                break
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                self.end_line()
                _note("interrupting the turn (Ctrl-C again leaves)")
                with self._cond:
                    if wait.turn:
                        self._send_interrupt(wait.turn)
                    else:
                        wait.interrupt_pending = True
        if wait.outcome is None:
            self.stream.raise_error()
        assert wait.outcome is not None
        return wait.outcome

    def _send_interrupt(self, turn: str) -> None:
        request_id = str(uuid.uuid4())
        self._own.add(request_id)
        self.stream.send(
            pb.ConverseRequest(interrupt_turn=pb.InterruptTurnRequest(name=turn, request_id=request_id)), request_id
        )


def _session_name(session: str, tenant: Callable[[], str]) -> str:
    return session if session.startswith("tenants/") else f"tenants/{tenant()}/sessions/{session}"


def run(args: argparse.Namespace, channel: grpc.Channel, token: str, metadata: Metadata) -> int:
    """`skm chat`; returns the exit status."""
    if args.after is not None and not args.session:
        raise CliError("--after replays a session's events: it needs --session")
    if args.after is not None and args.after < 0:
        raise CliError("--after takes a sequence number, 0 or more")
    if args.message is not None and not args.message.strip():
        raise CliError("-m needs a message (it is empty); nothing was sent and no session was made")

    def tenant() -> str:
        return str(args.tenant) if args.tenant else tenant_of(token)

    stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)
    if args.session:
        name = _session_name(args.session, tenant)
        current = stub.GetSession(pb.GetSessionRequest(name=name), timeout=10, metadata=metadata).session
        after = current.last_sequence if args.after is None else args.after
    else:
        parent = f"tenants/{tenant()}"
        persona = args.persona if args.persona.startswith("tenants/") else f"{parent}/personas/{args.persona}"
        created = stub.CreateSession(
            pb.CreateSessionRequest(
                parent=parent,
                session=session_pb2.Session(persona=persona, mode=MODES[args.mode]),
                request_id=str(uuid.uuid4()),
            ),
            timeout=30,
            metadata=metadata,
        ).session
        name, after = created.name, 0
        _note(f"new session {name} (come back to it with --session {name.rsplit('/', 1)[-1]})")

    chat = _Chat(
        channel,
        name,
        metadata,
        after=after,
        as_json=bool(args.json),
        interactive=args.message is None,
        tool_choice=args.tool_choice,
    )
    try:
        chat.open()
        if args.message is not None:
            return 0 if chat.send_message(args.message) == Turn.STATE_COMPLETED else 1
        return _converse(chat, prompt_to=sys.stderr if args.json else sys.stdout)
    except KeyboardInterrupt:
        chat.end_line()
        _note(f"left; a running turn goes on: `skm chat --session {name.rsplit('/', 1)[-1]}` comes back to it")
        return 130
    finally:
        chat.close()


def _converse(chat: _Chat, prompt_to: TextIO) -> int:
    """The interactive loop: a line at the prompt is a message or a slash command."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  # line editing and history for input()
    _note(f"talking in {chat.session}; /help lists the commands")
    waited = chat.follow_running_turn()
    if waited is None and chat.attached is not None and chat.attached.state == session_pb2.Session.STATE_INTERRUPTED:
        _note("the last turn was interrupted: /resume continues it")
    while True:
        chat.end_line()
        try:
            if prompt_to is sys.stdout:
                line = input("you> ")
            else:
                prompt_to.write("you> ")
                prompt_to.flush()
                line = input()
        except (EOFError, KeyboardInterrupt):
            prompt_to.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if not text.startswith("/"):
            chat.send_message(text)
            continue
        command, _, rest = text.partition(" ")
        if command in ("/quit", "/exit"):
            return 0
        if command == "/help":
            print(SLASH_HELP, file=prompt_to)
        elif command in ("/resume", "/nudge", "/rerun") and not chat.current_turn:
            print(f"{command}: no turn yet; send a message first", file=prompt_to)
        elif command == "/resume":
            chat.resume()
        elif command == "/nudge":
            chat.nudge(rest.strip())
        elif command == "/rerun":
            chat.rerun()
        else:
            print(f"unknown command {command}; /help lists them", file=prompt_to)
