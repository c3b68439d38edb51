"""Conversations on the public path measured against their baselines, one stack, one run.

Starts its own stack (PostgreSQL, Redis, Kafka, OpenFGA, the LLM engine serving the tiny
UNTRAINED test models, or with ``--llm real`` the catalogue's REAL models), every service
and Envoy. With real models only part 1 runs, once per model (``--models``, default every
real model the engine serves): a tenant of its own whose PRIMARY and PRE_SLM profiles name
that model, the same turns on both paths. The agent loop is cut to one iteration
(SKM_CONVERSATION_MAX_ITERATIONS=1), so a turn is exactly two engine calls: the pre-SLM's
intent call (iteration 0, not streamed to the client), then one PRIMARY call offered only
the `response` tool, as a turn's last iteration is (iteration 1, streamed token by token).
The admission's rate limits (SKM_ADMISSION_*, on every service) are raised out of the way;
every admitted call still takes its tokens from the buckets in Redis.

1. Streaming, in alternating rounds of:
     platform  a client through Envoy + svc_conversation (Envoy routes each public method
               to its owner, which admits the call; svc_gateway is on no path): a new session,
               StreamEvents attached, then SendMessage; all times are the client's own
     engine    the same two engine calls, back to back, straight to the engine from this
               process with svc_conversation's own OpenAI-compatible client; the requests are
               rebuilt from the same persona, tool catalogue and model profiles (the PRIMARY
               prompt's tokens, and those the engine reused from its prefix cache, are read
               from the engine's log for both paths and printed, to show they match)
   Both paths make the same calls in the same order, so the engine's prompt-prefix cache is
   in the same state for both. Time to first token (TTFT) is from the request (SendMessage;
   the pre-SLM call) to the first token of the PRIMARY call; it includes the pre-SLM call on
   both paths, so it is shown as it is and net of the pre-SLM call (the call's duration as
   svc_conversation, or this process, timed it). Tokens/s: the PRIMARY call's token deltas
   less one over the time from its first to its last delta, as the client received them.
   The untrained models write random (schema-valid) text; sampling makes reply lengths
   differ between turns, which the per-token rate does not depend on. Also printed: where
   the platform's own time before the first token goes (from the events' create_time), and
   the CPU each process spends per streamed token (svc_gateway listed too: it is on no path,
   so it should read ~0).
2. Interrupts: turns through Envoy + svc_conversation, each interrupted (InterruptTurn) as soon as
   the client has the PRIMARY call's first token: the time from the request to its reply, to
   the turn's INTERRUPTED event and to the last token delta the client received; and whether
   any token delta came after the INTERRUPTED event.
3. Idle sessions: a fresh svc_conversation process (restarted for this part) holds N
   attached StreamEvents streams (client: one process, grpc.aio, 100 streams a channel,
   direct to the service); its private memory (RssAnon: heap and stacks, not the mapped
   files that VmRSS also counts and the kernel may drop under pressure) before the sessions
   are created, after, and with every stream attached and idle gives the memory per idle
   session.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt

from bench.measure import bench_services, cpu_seconds
from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc, session_event_pb2, session_pb2, turn_pb2
from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.profiles.v1 import model_profile_pb2, model_profile_service_pb2, model_profile_service_pb2_grpc
from skm.type.v1 import deployment_mode_pb2
from skm.type.v1 import model_pb2 as type_model_pb2
from skm_runtime.access import Principal
from skm_runtime.principal import configure_mesh_key, principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_runtime.values import DeploymentMode, ModelRole
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from skm_stack.devkeys import KEY_ID, dev_keys_dir
from svc_conversation import preprocess
from svc_conversation.adapters.mesh import GrpcProfiles, GrpcTools
from svc_conversation.adapters.openai import ChatRequest, OpenAICompatibleClient
from svc_conversation.model import ModelTier
from svc_conversation.toolcall import RESPONSE_TOOL, decoding_schema, format_instructions

if TYPE_CHECKING:
    # The generated stubs type a stub made on a grpc.aio channel as the AsyncStub.
    from skm.conversation.v1.conversation_service_pb2_grpc import ConversationServiceAsyncStub as AsyncStub

Turn = turn_pb2.Turn
SessionEvent = session_event_pb2.SessionEvent
ConversationStub = conversation_service_pb2_grpc.ConversationServiceStub
Metadata = tuple[tuple[str, str | bytes], ...]

DEVELOPER = deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER
PRIMARY = type_model_pb2.MODEL_ROLE_PRIMARY
PRE_SLM = type_model_pb2.MODEL_ROLE_PRE_SLM
ENDED = {Turn.STATE_COMPLETED, Turn.STATE_FAILED, Turn.STATE_REFUSED, Turn.STATE_INTERRUPTED}
# The hash admission expects of a tenant that has no constitution document yet.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Plain words: no prompt-injection marker, no personal data, so the turn is never refused.
MESSAGE = "Explain in a few sentences how a token bucket limits the rate of requests."
# Every service also gets the rate limits out of the way (bench_services' default).
_EXTRA_ENV = {"conversation": {"SKM_CONVERSATION_MAX_ITERATIONS": "1"}}
_STREAMS_PER_CHANNEL = 100
# Separate connections per channel (grpc shares one subchannel between equal channels).
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


@dataclass(frozen=True)
class _Memory:
    """Resident memory of a process in MiB: all of it, and its private (anonymous) part."""

    rss: float
    anon: float

    def __sub__(self, other: _Memory) -> _Memory:
        return _Memory(self.rss - other.rss, self.anon - other.anon)


def _memory(pid: int) -> _Memory:
    """VmRSS and RssAnon of /proc/<pid>/status."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0]) / 1024
    return _Memory(values["VmRSS"], values["RssAnon"])


@dataclass(frozen=True)
class _User:
    """The bench's user: a tenant member, with a token for the public path and the
    principal signed with the mesh key, for calls straight to a service as the mesh makes them."""

    principal: Principal
    bearer: Metadata
    forwarded: Metadata
    # The model its tenant's PRIMARY and PRE_SLM roles name ("": the deployment's defaults).
    model: str = ""


def _token(state_dir: Path, tenant: str, user: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "skm-dev",
        "aud": "skm",
        "sub": user,
        "tenant": tenant,
        "roles": ["member"],
        "constitution_sha256": EMPTY_SHA256,
        "iat": now,
        "nbf": now,
        "exp": now + 3 * 3600,
    }
    key = (dev_keys_dir(state_dir) / "dev-signing-key.pem").read_bytes()
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": KEY_ID})


async def _new_user(stack: RunningStack, model: str = "") -> _User:
    """A member of a new tenant; with ``model``, its PRIMARY and PRE_SLM roles run it."""
    tenant, user = f"bench{uuid.uuid4().hex[:8]}", "alice"
    principal = Principal(tenant=f"tenants/{tenant}", user=f"tenants/{tenant}/users/{user}", roles=("member",))
    configure_mesh_key(stack.mesh_key_file)  # services admit callers of the mesh only
    async with signed_channel(stack.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=principal.tenant,
                relationships=[
                    access_pb2.Relationship(
                        subject=f"user:{principal.user}", relation="member", object=f"tenant:{principal.tenant}"
                    )
                ],
            ),
            timeout=10,
        )
    bearer = (("authorization", f"Bearer {_token(stack.state_dir, tenant, user)}"),)
    # Signed with the stack's mesh key, as services sign it for each other, or the service refuses it.
    forwarded = principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))
    if model:
        # The tenant's admin names the model, as ModelProfileService callers do.
        admin = principal_metadata(principal_message(principal.tenant, f"{principal.tenant}/users/admin", ("admin",)))
        async with signed_channel(stack.services["profiles"].addr) as channel:
            stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
            for role in (PRIMARY, PRE_SLM):
                await stub.CreateModelProfile(
                    model_profile_service_pb2.CreateModelProfileRequest(
                        parent=principal.tenant,
                        model_profile=model_profile_pb2.ModelProfile(role=role, mode=DEVELOPER, model_tiers=[model]),
                        request_id=str(uuid.uuid4()),
                    ),
                    metadata=admin,
                    timeout=10,
                )
    return _User(principal, bearer, forwarded, model)


async def _create_session(stub: AsyncStub, user: _User, metadata: Metadata) -> str:
    reply = await stub.CreateSession(
        pb.CreateSessionRequest(
            parent=user.principal.tenant,
            session=session_pb2.Session(persona=f"{user.principal.tenant}/personas/default", mode=DEVELOPER),
            request_id=str(uuid.uuid4()),
        ),
        metadata=metadata,
        timeout=30,
    )
    return reply.session.name


# -- 1. streaming --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    """One turn's PRIMARY call as the client saw it (seconds; tokens as the engine counted)."""

    ttft: float
    pre_slm: float
    tokens_per_second: float
    deltas: int  # the PRIMARY call's tokens (the engine's count on the platform path)
    # Token delta events the client received for them (fewer on the platform path: coalesced).
    events: int = 0
    # The PRIMARY call's prompt as the engine logged it: tokens, and those reused from the
    # previous call's prefix cache (set after the turn, from the engine's log).
    prompt_tokens: int = 0
    prompt_reused: int = 0
    # What svc_conversation itself recorded for the PRIMARY call (platform path only).
    recorded_ttft: float = 0.0
    recorded_tokens_per_second: float = 0.0
    # CPU seconds per streamed token of each process, from the PRIMARY call's first token to its end.
    cpu_per_token: Mapping[str, float] = field(default_factory=dict)
    # Where the platform's own time before the first token goes (seconds, platform path only).
    segments: Mapping[str, float] = field(default_factory=dict)

    @property
    def net_ttft(self) -> float:
        return self.ttft - self.pre_slm


CpuReader = Callable[[], dict[str, float]]


# The key of a CPU reading that holds when it was taken (time.perf_counter), not a process.
_WALL = "_wall"
# Each process's idle CPU (seconds of CPU a second), measured before the rounds and
# subtracted from the CPU per token: outbox relays, lease and cache refreshes and the like
# run whether or not a token streams.
_IDLE: dict[str, float] = {}


def _cpu_per_token(
    first: Mapping[str, float] | None, last: Mapping[str, float] | None, tokens: int
) -> dict[str, float]:
    if first is None or last is None or not tokens:
        return {}
    elapsed = last[_WALL] - first[_WALL]
    return {
        name: (last[name] - first[name] - _IDLE.get(name, 0.0) * elapsed) / tokens for name in first if name != _WALL
    }


async def _measure_idle(cpu: CpuReader, seconds: float = 3.0) -> None:
    """Each process's CPU a second while nothing is asked of it, into _IDLE."""
    before = cpu()
    await asyncio.sleep(seconds)
    after = cpu()
    elapsed = after[_WALL] - before[_WALL]
    _IDLE.update({name: (after[name] - before[name]) / elapsed for name in after if name != _WALL})


_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit")
_PROMPT_EVAL = re.compile(r"prompt eval time = .*/\s*(\d+) tokens")


class _EngineLog:
    """The engine's own account of the prompts it was sent: llama-cpp-python logs, per call,
    the prompt prefix it reused from the previous call and the tokens it evaluated.

    (Its streams carry no token usage, so this is the one place to see that both paths sent
    the PRIMARY call the same prompt, in the same cache state.)"""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = path.stat().st_size

    def prompts(self) -> list[tuple[int, int]]:
        """(prompt tokens, of which reused from the previous call) of each call since the last read."""
        with open(self._path, "rb") as log:
            log.seek(self._offset)
            raw = log.read()
        self._offset += len(raw)
        text = raw.decode("utf-8", "replace")
        calls, reused = [], 0
        for line in text.splitlines():
            if hit := _PREFIX_HIT.search(line):
                reused = int(hit.group(1))
            elif evaluated := _PROMPT_EVAL.search(line):
                calls.append((reused + int(evaluated.group(1)), reused))
                reused = 0
        return calls


def _rate(arrivals: Sequence[float], tokens: int | None = None) -> float:
    """Tokens a second between the first and the last arrival: one token an arrival, or
    `tokens` in all (svc_conversation coalesces the tokens after the first into fewer deltas)."""
    count = len(arrivals) if tokens is None else tokens
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0] or count < 2:
        return 0.0
    return (count - 1) / (arrivals[-1] - arrivals[0])


async def _platform_turn(stub: AsyncStub, user: _User, cpu: CpuReader) -> _Reply:
    """One turn through Envoy to svc_conversation, in a new session (so no history)."""
    session = await _create_session(stub, user, user.bearer)
    call = stub.StreamEvents(pb.StreamEventsRequest(session=session), metadata=user.bearer, timeout=300)
    stream = call.__aiter__()
    if not (await anext(stream)).HasField("attached"):
        raise RuntimeError("StreamEvents did not start with `attached`")
    received: list[tuple[float, SessionEvent]] = []
    cpu_at: dict[str, dict[str, float]] = {}

    async def read() -> None:
        async for message in stream:
            if message.HasField("event"):
                received.append((time.perf_counter(), message.event))
                event = message.event
                kind = event.WhichOneof("event")
                if kind == "token_delta" and event.token_delta.iteration == 1 and "first" not in cpu_at:
                    cpu_at["first"] = cpu()
                elif kind == "model_call" and event.model_call.iteration == 1:
                    cpu_at["last"] = cpu()
                elif kind == "turn_state_changed" and event.turn_state_changed.state in ENDED:
                    return
        raise RuntimeError("the event stream ended before the turn did")

    reader = asyncio.create_task(read())
    sent, sent_wall = time.perf_counter(), time.time()
    await stub.SendMessage(
        pb.SendMessageRequest(session=session, text=MESSAGE, request_id=str(uuid.uuid4())),
        metadata=user.bearer,
        timeout=30,
    )
    replied = time.perf_counter() - sent
    try:
        await asyncio.wait_for(reader, 300)
    finally:
        call.cancel()
    calls = [event.model_call for _, event in received if event.WhichOneof("event") == "model_call"]
    failed = [c.failure_reason for c in calls if c.failure_reason]
    primary = [c.usage for c in calls if c.iteration == 1 and c.usage.role == PRIMARY]
    deltas = [t for t, e in received if e.WhichOneof("event") == "token_delta" and e.token_delta.iteration == 1]
    if failed or not primary or not deltas:
        raise RuntimeError(f"the turn did not stream a PRIMARY reply (failed model calls: {failed})")
    pre_slm = sum(_seconds(c.usage.duration) for c in calls if c.iteration == 0 and c.usage.role == PRE_SLM)
    return _Reply(
        segments=_segments(received, sent_wall, deltas[0] - sent + sent_wall, _seconds(primary[-1].time_to_first_token))
        | {"replied": replied},
        ttft=deltas[0] - sent,
        pre_slm=pre_slm,
        # The engine's count of the call's tokens: the deltas after the first are coalesced.
        tokens_per_second=_rate(deltas, primary[-1].output_tokens or len(deltas)),
        deltas=primary[-1].output_tokens or len(deltas),
        events=len(deltas),
        recorded_ttft=_seconds(primary[-1].time_to_first_token),
        recorded_tokens_per_second=primary[-1].tokens_per_second,
        cpu_per_token=_cpu_per_token(cpu_at.get("first"), cpu_at.get("last"), primary[-1].output_tokens or len(deltas)),
    )


SEGMENTS = {
    "send": "SendMessage to the pre-SLM call's start: Envoy, admission",
    "stored": "  (alongside: SendMessage to the turn's first event, stored)",
    "replied": "  (alongside: SendMessage's reply, as the client saw it)",
    "between": "pre-SLM verdict stored, PRIMARY profile, prompt built",
    "deliver": "first token out: conversation, Envoy, client",
}


def _segments(
    received: Sequence[tuple[float, SessionEvent]], sent: float, first_token: float, primary_ttft: float
) -> dict[str, float]:
    """The platform's own time outside the engine calls, from the events' create_time
    (svc_conversation's clock; this machine's, as the client's): SendMessage to the pre-SLM
    call's start, the pre-SLM call's end to the PRIMARY call's start, and the first token's
    creation to its arrival here."""

    def created(event: SessionEvent) -> float:
        return float(event.create_time.ToNanoseconds()) / 1e9

    pre_slm = [e for _, e in received if e.WhichOneof("event") == "model_call" and e.model_call.iteration == 0]
    delta = next(e for _, e in received if e.WhichOneof("event") == "token_delta" and e.token_delta.iteration == 1)
    if not pre_slm:
        return {}
    pre_slm_end = created(pre_slm[0])
    pre_slm_start = pre_slm_end - sum(_seconds(e.model_call.usage.duration) for e in pre_slm)
    return {
        "send": pre_slm_start - sent,
        "stored": created(received[0][1]) - sent,
        "between": created(delta) - primary_ttft - pre_slm_end,
        "deliver": first_token - created(delta),
    }


@dataclass(frozen=True)
class _EngineTurn:
    """The two engine calls of a turn, rebuilt as svc_conversation's loop builds them."""

    client: OpenAICompatibleClient
    pre_slm: tuple[ModelTier, ChatRequest]
    primary: tuple[ModelTier, ChatRequest]


async def _engine_turn_of(stack: RunningStack, user: _User) -> _EngineTurn:
    """The requests of the loop's first turn in a new session, from the same persona, tool
    catalogue and profiles (read from svc_profiles and svc_tools as the loop reads them).
    The bench prints both paths' prompt token counts, so a drift from the loop shows."""
    principal = user.principal
    persona_name = f"{principal.tenant}/personas/default"
    async with (
        signed_channel(stack.services["profiles"].addr) as profiles_channel,
        signed_channel(stack.services["tools"].addr) as tools_channel,
    ):
        profiles = GrpcProfiles(profiles_channel)
        persona = await profiles.persona(persona_name, principal)
        catalogue = await GrpcTools(tools_channel).catalogue(principal)
        primary = await profiles.resolve(principal, ModelRole.PRIMARY, DeploymentMode.DEVELOPER, persona_name, [])
        pre_slm = await profiles.resolve(principal, ModelRole.PRE_SLM, DeploymentMode.DEVELOPER, persona_name, [])
    offered = [tool for tool in catalogue if tool.id in persona.allowed_tools or tool.id == RESPONSE_TOOL]
    system = persona.system_prompt.strip() + "\n\n" + format_instructions(offered)
    max_tokens = primary.max_output_tokens
    primary_request = ChatRequest(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": MESSAGE}],
        temperature=primary.temperature,
        max_tokens=max_tokens,
        # The last (here: only) iteration may call `response` and nothing else.
        json_schema=decoding_schema(
            [tool for tool in offered if tool.id == RESPONSE_TOOL], string_cap=max(32, min(max_tokens or 4000, 4000))
        ),
        schema_name="tool_call",
    )
    pre_slm_request = ChatRequest(
        messages=[
            {"role": "system", "content": preprocess.INTENT_PROMPT},
            {"role": "user", "content": MESSAGE},
        ],
        temperature=0.0,
        max_tokens=min(pre_slm.max_output_tokens or 128, 128),
        json_schema=preprocess.INTENT_SCHEMA,
        schema_name="intent",
    )
    return _EngineTurn(
        OpenAICompatibleClient(), (pre_slm.tiers[0], pre_slm_request), (primary.tiers[0], primary_request)
    )


async def _engine_turn(engine: _EngineTurn, cpu: CpuReader) -> _Reply:
    """The turn's two engine calls straight to the engine, timed as the platform's are."""
    arrivals: list[float] = []
    first: dict[str, float] | None = None

    async def on_delta(_: str) -> None:
        nonlocal first
        arrivals.append(time.perf_counter())
        if first is None:
            first = cpu()

    started = time.perf_counter()
    pre_slm = await engine.client.complete(*engine.pre_slm)
    await engine.client.chat(*engine.primary, on_delta)
    last = cpu()
    if not arrivals:
        raise RuntimeError("the engine streamed no token")
    return _Reply(
        ttft=arrivals[0] - started,
        pre_slm=pre_slm.stats.duration,
        tokens_per_second=_rate(arrivals),
        deltas=len(arrivals),
        events=len(arrivals),
        cpu_per_token=_cpu_per_token(first, last, len(arrivals)),
    )


async def _streaming(stack: RunningStack, user: _User, rounds: int, turns: int) -> None:
    engine = await _engine_turn_of(stack, user)
    if stack.llm is None:
        raise RuntimeError("the stack runs no LLM engine")
    log = _EngineLog(stack.llm.process.log_path)
    if stack.envoy is None:
        raise RuntimeError("the stack runs no Envoy")
    pids = {
        "engine": stack.llm.process.pid,
        "conversation": stack.services["conversation"].process.pid,
        "gateway": stack.services["gateway"].process.pid,
        "envoy": stack.envoy.process.pid,
    }

    def cpu() -> dict[str, float]:
        return {name: cpu_seconds((pid,)) for name, pid in pids.items()} | {_WALL: time.perf_counter()}

    async def logged(one: Callable[[], Awaitable[_Reply]]) -> _Reply:
        reply = await one()
        await asyncio.sleep(0.2)  # the engine writes its account after the stream ends
        prompts = log.prompts()
        if not prompts:
            return reply
        tokens, reused = prompts[-1]
        return replace(reply, prompt_tokens=tokens, prompt_reused=reused)

    async with grpc.aio.insecure_channel(stack.envoy_url.removeprefix("http://")) as channel:
        stub = ConversationStub(channel)
        paths: dict[str, Callable[[], Awaitable[_Reply]]] = {
            "platform": lambda: _platform_turn(stub, user, cpu),
            "engine": lambda: _engine_turn(engine, cpu),
        }
        for one in paths.values():  # warm connections, caches and the engine
            for _ in range(2):
                await logged(one)
        await _measure_idle(cpu)
        replies: dict[str, list[_Reply]] = {name: [] for name in paths}
        for index in range(rounds):
            print(f"streaming round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            # Alternate which path goes first, so drift falls on both alike.
            order = list(paths) if index % 2 == 0 else list(reversed(paths))
            for _ in range(turns):
                for name in order:
                    replies[name].append(await logged(paths[name]))
    await engine.client.close()
    _print_streaming(replies, rounds, turns, engine.primary[0].name)


def _median(replies: Sequence[_Reply], value: Callable[[_Reply], float]) -> float:
    return statistics.median(value(reply) for reply in replies)


def _print_streaming(replies: dict[str, list[_Reply]], rounds: int, turns: int, model: str) -> None:
    platform, engine = replies["platform"], replies["engine"]
    label = "UNTRAINED: random weights, meaningless text" if "untrained" in model else "REAL"
    print(
        f"\nstreaming a reply (model {model}, {label}): "
        f"median of {len(platform)} turns per path, {rounds} alternating rounds of {turns}\n"
    )
    header = (
        f"  {'':<34}{'TTFT':>10}{'pre-SLM':>10}{'TTFT net':>10}{'tokens/s':>10}{'tokens':>8}{'events':>8}"
        f"{'prompt':>8}{'cached':>8}"
    )
    print(header)
    for name, label in (("platform", "Envoy + svc_conversation"), ("engine", "engine direct")):
        rows = replies[name]
        print(
            f"  {label:<34}"
            f"{_median(rows, lambda r: r.ttft) * 1e3:7.1f} ms"
            f"{_median(rows, lambda r: r.pre_slm) * 1e3:7.1f} ms"
            f"{_median(rows, lambda r: r.net_ttft) * 1e3:7.1f} ms"
            f"{_median(rows, lambda r: r.tokens_per_second):10.0f}"
            f"{_median(rows, lambda r: r.deltas):8.0f}"
            f"{_median(rows, lambda r: r.events):8.0f}"
            f"{_median(rows, lambda r: r.prompt_tokens):8.0f}"
            f"{_median(rows, lambda r: r.prompt_reused):8.0f}"
        )
    print(
        f"  {'(svc_conversation recorded: PRIMARY':<34}"
        f"{_median(platform, lambda r: r.recorded_ttft) * 1e3:7.1f} ms{'':<20}"
        f"{_median(platform, lambda r: r.recorded_tokens_per_second):10.0f}   its own engine call)"
    )
    ttft = _median(platform, lambda r: r.ttft) - _median(engine, lambda r: r.ttft)
    net = _median(platform, lambda r: r.net_ttft) - _median(engine, lambda r: r.net_ttft)
    engine_call = _median(platform, lambda r: r.recorded_ttft) - _median(engine, lambda r: r.net_ttft)
    outside = _median(platform, lambda r: r.net_ttft - r.recorded_ttft)
    rate = _median(platform, lambda r: r.tokens_per_second) / _median(engine, lambda r: r.tokens_per_second)
    recorded = [r for r in platform if r.recorded_tokens_per_second] or platform[:1]
    delivered = _median(recorded, lambda r: r.tokens_per_second / (r.recorded_tokens_per_second or math.inf))
    prompts = {(r.prompt_tokens, r.prompt_reused) for r in platform + engine}
    lines = [
        ("TTFT overhead, as the client sees it (both include the pre-SLM call)", f"{ttft * 1e3:+7.1f} ms", ""),
        ("TTFT overhead, net of the pre-SLM call", f"{net * 1e3:+7.1f} ms", "(goal <= +10 ms)"),
        ("  of which outside the engine calls (client - pre-SLM - recorded)", f"{outside * 1e3:+7.1f} ms", ""),
        ("  of which svc_conversation's PRIMARY call (recorded - direct)", f"{engine_call * 1e3:+7.1f} ms", ""),
        ("tokens/s platform/engine direct", f"{rate:7.2f}x  ", "(goal >= 0.95x)"),
        ("tokens/s client/svc_conversation's record (the same replies)", f"{delivered:7.2f}x  ", ""),
    ]
    print()
    for label, value, goal in lines:
        print(f"  {label:<70}{value}   {goal}".rstrip())
    print("\n  the platform's own time before the first token (event create_time, median):")
    for key, label in SEGMENTS.items():
        spent = statistics.median(r.segments.get(key, 0.0) for r in platform)
        print(f"    {label:<66}{spent * 1e3:7.1f} ms")
    processes = list(platform[0].cpu_per_token)
    print("\n  CPU per streamed token, us:  " + "".join(f"{name:>14}" for name in processes))
    for name, label in (("platform", "platform"), ("engine", "engine direct")):
        per_token = [statistics.median(r.cpu_per_token.get(p, 0.0) for r in replies[name]) for p in processes]
        print(f"    {label:<26}" + "".join(f"{value * 1e6:14.0f}" for value in per_token))
    print(
        "\n  TTFT: from SendMessage (platform) or the pre-SLM request (engine) to the PRIMARY call's first token;"
        "\n    net: less the pre-SLM call's duration (as svc_conversation, or this process, timed it)."
        "\n    outside the engine calls: per turn, the client's TTFT less svc_conversation's own timings of its"
        "\n    two engine calls: the platform's share, free of the engine's turn-to-turn variation (the steadier"
        "\n    figure); the PRIMARY call line is the rest of the net difference (engine and machine noise)."
        "\n  tokens/s: the PRIMARY call's tokens less one over the time between its first and last delta (the"
        "\n    platform's tokens as the engine counted them, coalesced into fewer delta events after the first);"
        "\n    the engine samples (temperature of the profile), so the two paths' replies differ in text and"
        "\n    length; client/record compares the same replies, as delivered and as the engine sent them."
        "\n  prompt, cached: the PRIMARY prompt's tokens and those reused from the previous call, per the engine's log."
        "\n  CPU: user + system time of each process from the PRIMARY call's first token to its end, less its"
        "\n    idle CPU over that time (measured for 3 s before the rounds), per token (the client, this"
        "\n    process, not counted); the processes share this machine's cores with the engine."
    )
    if len(prompts) != 1:
        print(f"  NOTE: the PRIMARY prompts (tokens, cached) differ between turns: {sorted(prompts)}")


# -- 2. interrupts -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Interrupted:
    """One interrupt as the client saw it (seconds from sending InterruptTurn)."""

    replied: float  # InterruptTurn's reply
    ended: float  # the turn's INTERRUPTED state event
    last_token: float  # the last token delta that arrived (negative: before the request)
    late_tokens: int  # token deltas that arrived after the INTERRUPTED event


async def _interrupt_turn(stub: AsyncStub, user: _User) -> _Interrupted:
    """A turn interrupted at its PRIMARY call's first token, through Envoy to svc_conversation."""
    session = await _create_session(stub, user, user.bearer)
    call = stub.StreamEvents(pb.StreamEventsRequest(session=session), metadata=user.bearer, timeout=300)
    stream = call.__aiter__()
    if not (await anext(stream)).HasField("attached"):
        raise RuntimeError("StreamEvents did not start with `attached`")
    first_token, ended = asyncio.Event(), asyncio.Event()
    tokens: list[float] = []
    ended_at: list[float] = []

    async def read() -> None:
        async for message in stream:
            event = message.event
            kind = event.WhichOneof("event")
            if kind == "token_delta" and event.token_delta.iteration == 1:
                tokens.append(time.perf_counter())
                first_token.set()
            elif kind == "turn_state_changed" and event.turn_state_changed.state in ENDED:
                ended_at.append(time.perf_counter())
                ended.set()

    reader = asyncio.create_task(read())
    try:
        reply = await stub.SendMessage(
            pb.SendMessageRequest(session=session, text=MESSAGE, request_id=str(uuid.uuid4())),
            metadata=user.bearer,
            timeout=30,
        )
        await asyncio.wait_for(first_token.wait(), 60)
        sent = time.perf_counter()
        await stub.InterruptTurn(
            pb.InterruptTurnRequest(name=reply.turn.name, request_id=str(uuid.uuid4())),
            metadata=user.bearer,
            timeout=30,
        )
        replied = time.perf_counter() - sent
        await asyncio.wait_for(ended.wait(), 60)
        await asyncio.sleep(0.5)  # anything still streamed after the end shows up as late
    finally:
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    turn = await stub.GetTurn(pb.GetTurnRequest(name=reply.turn.name), metadata=user.bearer, timeout=30)
    if turn.turn.state != Turn.STATE_INTERRUPTED:
        raise RuntimeError(f"the turn ended {Turn.State.Name(turn.turn.state)}, not INTERRUPTED")
    return _Interrupted(replied, ended_at[0] - sent, tokens[-1] - sent, sum(t > ended_at[0] for t in tokens))


async def _interrupts(stack: RunningStack, user: _User, count: int) -> None:
    async with grpc.aio.insecure_channel(stack.envoy_url.removeprefix("http://")) as channel:
        stub = ConversationStub(channel)
        print(f"interrupting {count} turns ...", file=sys.stderr, flush=True)
        results = [await _interrupt_turn(stub, user) for _ in range(count)]

    def row(label: str, values: Sequence[float]) -> str:
        ordered = sorted(values)
        return f"  {label:<58}{statistics.median(ordered) * 1e3:8.1f} ms  max {ordered[-1] * 1e3:8.1f} ms"

    print(
        f"\ninterrupts: {count} turns through Envoy + svc_conversation, each interrupted at its PRIMARY call's first"
        " token;\ntimes from sending InterruptTurn, as the client saw them (goal: generation and pending tools"
        " stop within 200 ms)\n"
    )
    print(row("InterruptTurn's reply", [r.replied for r in results]))
    print(row("the turn's INTERRUPTED event", [r.ended for r in results]))
    print(row("the last token delta", [r.last_token for r in results]))
    print(f"  token deltas after the INTERRUPTED event: {sum(r.late_tokens for r in results)} in all")


# -- 3. idle sessions ----------------------------------------------------------------------


async def _gather(count: int, limit: int, one: Callable[[int], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def gated(index: int) -> Any:
        async with gate:
            return await one(index)

    return list(await asyncio.gather(*(gated(index) for index in range(count))))


async def _attach(stub: AsyncStub, session: str, metadata: Metadata) -> Any:
    call = stub.StreamEvents(pb.StreamEventsRequest(session=session), metadata=metadata)
    stream: AsyncIterator[pb.StreamEventsResponse] = call.__aiter__()
    if not (await anext(stream)).HasField("attached"):
        raise RuntimeError("StreamEvents did not start with `attached`")
    return call


async def _idle_sessions(stack: RunningStack, user: _User, count: int) -> None:
    pid = stack.services["conversation"].process.pid
    addr = stack.services["conversation"].addr
    channels = [
        grpc.aio.insecure_channel(addr, options=_OWN_CONNECTION)
        for _ in range(max(1, math.ceil(count / _STREAMS_PER_CHANNEL)))
    ]
    stubs: list[AsyncStub] = [ConversationStub(channel) for channel in channels]
    held: list[Any] = []
    try:

        async def create(index: int) -> str:
            return await _create_session(stubs[index % len(stubs)], user, user.forwarded)

        # Warm the process: connections, pools and code paths, so the baseline has them.
        warm = await _gather(20, 16, create)
        streams = await _gather(len(warm), 16, lambda i: _attach(stubs[i % len(stubs)], warm[i], user.forwarded))
        for call in streams:
            call.cancel()
        await asyncio.sleep(2)
        before = _memory(pid)
        print(f"creating {count} sessions ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        names = await _gather(count, 16, create)
        created_in = time.perf_counter() - started
        await asyncio.sleep(2)
        created = _memory(pid)
        print(f"attaching {count} streams ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        held = await _gather(count, 64, lambda i: _attach(stubs[i % len(stubs)], names[i], user.forwarded))
        attached_in = time.perf_counter() - started
        await asyncio.sleep(5)
        attached = _memory(pid)
        await asyncio.sleep(25)
        idle = _memory(pid)
        still_open = sum(1 for call in held if not call.done())
    finally:
        for call in held:
            call.cancel()
        for channel in channels:
            await channel.close()
    # From the lowest reading before the streams: the allocator may hand memory it kept from
    # earlier work back to the system while the sessions are created.
    floor = min(before.anon, created.anon)
    per_session = (idle.anon - floor) / count * 1024

    def row(label: str, memory: _Memory) -> str:
        change = memory - before
        return (
            f"\n  {label:<32} {memory.anon:8.1f} MiB ({change.anon:+6.1f})   {memory.rss:8.1f} MiB ({change.rss:+6.1f})"
        )

    print(
        f"\nidle sessions held by one svc_conversation process (fresh process; streams direct to it,"
        f" {_STREAMS_PER_CHANNEL} a channel)\n"
        f"\n  sessions created                 {count:6d}   in {created_in:5.1f} s"
        f"\n  streams attached (StreamEvents)  {count:6d}   in {attached_in:5.1f} s;"
        f" {still_open} still open 30 s later\n"
        f"\n  {'':<32} {'RssAnon (private)':>22}   {'VmRSS (all resident)':>22}"
        + row("before creating the sessions", before)
        + row("after creating them", created)
        + row("all attached, 5 s idle", attached)
        + row("all attached, 30 s idle", idle)
        + f"\n\n  memory per idle attached session {per_session:8.1f} KiB   (goal: 1,000 sessions, <= 1 MB each)"
        "\n  (RssAnon, 30 s idle, less the lower of the two readings before the streams were attached)"
    )


# -- the run -------------------------------------------------------------------------------


def main(
    rounds: int = 5, turns: int = 3, sessions: int = 1000, llm: str = "untrained", models: Sequence[str] = ()
) -> None:
    """Runs the three parts on one stack started for the run, and prints their figures
    (with ``llm="real"``: part 1 once per real model, see the module docstring)."""
    print("\n== conversations: the public path against the engine and the service direct ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="skm-bench-conversation-") as state:
        Path(state).chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        stack = Stack(state_dir=Path(state), ports=EPHEMERAL_PORTS, durable=False, llm_serve=llm).start()
        try:
            stack.start_services(bench_services(_EXTRA_ENV))
            stack.start_envoy()
            if llm == "real":
                assert stack.llm is not None
                served = [m.alias for m in stack.llm.models if not m.untrained]
                for alias in models or served:
                    if alias not in served:
                        raise SystemExit(f"the engine serves no model {alias!r} (it serves {', '.join(served)})")
                    user = asyncio.run(_new_user(stack, f"models/{alias}"))
                    asyncio.run(_streaming(stack, user, rounds, turns))
                return
            user = asyncio.run(_new_user(stack))
            asyncio.run(_streaming(stack, user, rounds, turns))
            asyncio.run(_interrupts(stack, user, max(5, rounds * 2)))
            # A fresh process for the memory figures: nothing of the turns above in its heap.
            stack.restart_service("conversation")
            asyncio.run(_idle_sessions(stack, user, sessions))
        finally:
            stack.stop()
