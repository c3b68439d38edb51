"""Public calls admitted by the service that owns them, on a real gRPC server.

A stand-in service registered at real contract paths (ConversationService's Converse, a
bidi stream; StreamEvents, a server stream; GetSession, unary; PolicyService's Check, an
internal method; and Upload, a client stream with a unary reply that no public method is
today, with a rule of its own) is served by the runtime with a gate over in-memory fakes:
tokens signed here, a fixed constitution hash, a rate limiter and a policy that count what
they are asked. The runtime's interceptor admits each call once, as it opens (token,
constitution, rate limits) and on the resource its request or first message names
(policy); calls signed inside the mesh pass without the gate. Clients use plain channels,
as a client behind Envoy would: nothing is signed unless a test signs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import session_event_pb2, session_pb2
from skm.policy.v1 import policy_service_pb2
from skm.type.v1 import principal_pb2
from skm_runtime.admission import Admission, PolicyAnswer, Rule
from skm_runtime.contract import methods
from skm_runtime.gate import Gate, public_rules
from skm_runtime.interceptors import admitted_from_outside, call_principal
from skm_runtime.principal import (
    PRINCIPAL_KEY,
    PRINCIPAL_MAC_KEY,
    caller_metadata,
    principal_message,
    principal_metadata,
)
from skm_runtime.server import ServiceSpec
from skm_runtime.status import error_info_of
from tests.support.runtime import serving
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Policy, _token, _verifier

CONVERSATION = "skm.conversation.v1.ConversationService"
CONVERSE = f"/{CONVERSATION}/Converse"
STREAM_EVENTS = f"/{CONVERSATION}/StreamEvents"
GET_SESSION = f"/{CONVERSATION}/GetSession"
# A client stream with a unary reply, as the contract may declare one: no public method is
# of that kind today; the runtime admits it all the same (a rule of its own, below).
UPLOAD = f"/{CONVERSATION}/Upload"
INTERNAL = "/skm.policy.v1.PolicyService/Check"
LIMIT = 64 * 1024
# The domain of the runtime's own refusals (admission's are "gateway.skm").
RUNTIME = "runtime.skm"
SESSION = "tenants/t1/sessions/s1"
# The principal the test's tokens prove (skm_runtime.tokens: tenant "t1", subject "olga").
TENANT, USER = "tenants/t1", "tenants/t1/users/olga"
# What the stand-in answers a client stream with: how many messages its servicer read.
Count = session_event_pb2.SessionEvent


class _Limits:
    """A rate limiter that counts what it is asked, and refuses while `refusing`."""

    def __init__(self) -> None:
        self.taken = 0
        self.refusing = False

    async def take(self, buckets: Sequence[tuple[str, str]]) -> tuple[str, float] | None:
        self.taken += 1
        return ("user", 1.5) if self.refusing else None


@dataclass
class Seen:
    """What one call of the stand-in's servicer saw."""

    method: str
    principal: principal_pb2.Principal | None
    from_outside: bool
    remaining: float | None
    requests: list[Any] = field(default_factory=list)


@dataclass
class StandIn(grpc.GenericRpcHandler):
    """The service that owns the methods: records every call its servicers were given."""

    calls: list[Seen] = field(default_factory=list)
    # GetSession waits until the call is cancelled, and notes that.
    hang: bool = False
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def _seen(self, method: str, context: Any) -> Seen:
        seen = Seen(method, call_principal(context), admitted_from_outside(), context.time_remaining())
        self.calls.append(seen)
        return seen

    @property
    def requests(self) -> list[Any]:
        return [request for seen in self.calls for request in seen.requests]

    async def converse(self, requests: AsyncIterator[pb.ConverseRequest], context: Any) -> AsyncIterator[Any]:
        seen = self._seen(CONVERSE, context)
        async for request in requests:
            seen.requests.append(request)
            yield pb.ConverseResponse(event=Count(sequence=len(seen.requests)))

    async def upload(self, requests: AsyncIterator[pb.ConverseRequest], context: Any) -> Any:
        seen = self._seen(UPLOAD, context)
        async for request in requests:
            seen.requests.append(request)
        return Count(sequence=len(seen.requests))

    async def stream_events(self, request: pb.StreamEventsRequest, context: Any) -> AsyncIterator[Any]:
        self._seen(STREAM_EVENTS, context).requests.append(request)
        for sequence in (1, 2, 3):
            yield pb.StreamEventsResponse(event=Count(sequence=sequence))

    async def get_session(self, request: pb.GetSessionRequest, context: Any) -> Any:
        self._seen(GET_SESSION, context).requests.append(request)
        if self.hang:
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return pb.GetSessionResponse(session=session_pb2.Session(name=request.name))

    async def check(self, request: Any, context: Any) -> Any:
        self._seen(INTERNAL, context).requests.append(request)
        return policy_service_pb2.CheckResponse()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        contract = methods()
        serialize = _serialize
        match details.method:
            case "/skm.conversation.v1.ConversationService/Converse":
                parse = contract[CONVERSE].request_type.FromString
                return grpc.stream_stream_rpc_method_handler(self.converse, parse, serialize)
            case "/skm.conversation.v1.ConversationService/Upload":
                parse = contract[CONVERSE].request_type.FromString
                return grpc.stream_unary_rpc_method_handler(self.upload, parse, serialize)
            case "/skm.conversation.v1.ConversationService/StreamEvents":
                parse = contract[STREAM_EVENTS].request_type.FromString
                return grpc.unary_stream_rpc_method_handler(self.stream_events, parse, serialize)
            case "/skm.conversation.v1.ConversationService/GetSession":
                parse = contract[GET_SESSION].request_type.FromString
                return grpc.unary_unary_rpc_method_handler(self.get_session, parse, serialize)
            case "/skm.policy.v1.PolicyService/Check":
                parse = contract[INTERNAL].request_type.FromString
                return grpc.unary_unary_rpc_method_handler(self.check, parse, serialize)
        return None


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


@dataclass
class Owner:
    """The stand-in served through its gate, and the fakes behind the gate."""

    target: str
    stand_in: StandIn
    policy: _Policy
    limits: _Limits
    token: str
    stale: str

    def auth(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token or self.token}"),)

    def gate_asked(self) -> int:
        return self.limits.taken + self.policy.asked


@pytest.fixture
async def owner() -> AsyncIterator[Owner]:
    pem, jwks = _keys()
    stand_in = StandIn()
    policy = _Policy(PolicyAnswer(True, "SESSION_OWNER", "d1"))
    limits = _Limits()
    rules = {**public_rules(), UPLOAD: Rule("can_write", "session", "session")}
    assert INTERNAL not in rules  # an internal method: no rule
    gate = Gate(
        Admission(_verifier(jwks), _Constitutions(DIGEST), limits, policy),
        rules,
        max_message_bytes=LIMIT,
        max_receive_bytes=4 * LIMIT,
    )
    spec = ServiceSpec(
        name="stand-in",
        service_names=(CONVERSATION, "skm.policy.v1.PolicyService"),
        register=lambda server: server.add_generic_rpc_handlers((stand_in,)),
        mesh_only=True,
    )
    async with serving(spec, gate=gate) as served:
        yield Owner(
            served.target,
            stand_in,
            policy,
            limits,
            _token(pem, exp=time.time() + 600),
            _token(pem, exp=time.time() + 600, digest="b" * 64),
        )


@pytest.fixture
async def channel(owner: Owner) -> AsyncIterator[grpc.aio.Channel]:
    """A client's channel: nothing signed with the mesh key."""
    async with grpc.aio.insecure_channel(owner.target) as chan:
        yield chan


def _first(session: str = SESSION) -> pb.ConverseRequest:
    return pb.ConverseRequest(session=session, config=pb.ConverseConfig())


def _ack(sequence: int, padding: int = 0) -> pb.ConverseRequest:
    request = pb.ConverseRequest(ack=pb.AcknowledgeEvents(sequence=sequence))
    if padding:
        request.session = "x" * padding  # size only: the stream never gets to read it
    return request


def _converse(chan: grpc.aio.Channel, metadata: Sequence[tuple[str, str | bytes]] = ()) -> Any:
    return chan.stream_stream(
        CONVERSE, request_serializer=_serialize, response_deserializer=pb.ConverseResponse.FromString
    )(metadata=tuple(metadata), timeout=20)


def _upload(chan: grpc.aio.Channel) -> Any:
    return chan.stream_unary(UPLOAD, request_serializer=_serialize, response_deserializer=Count.FromString)


def _get_session(chan: grpc.aio.Channel) -> Any:
    return chan.unary_unary(
        GET_SESSION, request_serializer=_serialize, response_deserializer=pb.GetSessionResponse.FromString
    )


def _stream_events(chan: grpc.aio.Channel) -> Any:
    return chan.unary_stream(
        STREAM_EVENTS, request_serializer=_serialize, response_deserializer=pb.StreamEventsResponse.FromString
    )


async def _refused(call: Any, code: grpc.StatusCode, reason: str, domain: str = "gateway.skm") -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, (raised.value.code(), raised.value.details())
    info = error_info_of(raised.value)
    assert info is not None, raised.value.details()
    assert (info.reason, info.domain) == (reason, domain)
    return info


def _forged(owner: Owner) -> Iterator[tuple[tuple[str, str | bytes], ...]]:
    """Mesh credentials a client makes up, each with a valid token."""
    serialized = principal_message(TENANT, USER, ["admin"]).SerializeToString()
    yield (*owner.auth(), (PRINCIPAL_KEY, serialized))
    yield (*owner.auth(), (PRINCIPAL_KEY, serialized), (PRINCIPAL_MAC_KEY, b"\x00" * 32))
    # Signed inside the mesh, for another method: a copy replayed on this one.
    yield (*owner.auth(), *caller_metadata(INTERNAL))


# -- opening ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"),
        ("garbage", grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
        ("stale", grpc.StatusCode.FAILED_PRECONDITION, "CONSTITUTION_HASH_STALE"),
        ("limited", grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    ],
)
@pytest.mark.parametrize("path", [CONVERSE, UPLOAD])
async def test_a_client_stream_is_refused_as_it_opens_before_any_message(
    owner: Owner, channel: grpc.aio.Channel, path: str, token: str | None, code: grpc.StatusCode, reason: str
) -> None:
    owner.limits.refusing = token == "limited"
    metadata = () if token is None else owner.auth({"stale": owner.stale, "limited": owner.token}.get(token, token))
    opened = time.monotonic()
    if path == CONVERSE:
        call: Any = channel.stream_stream(CONVERSE)(metadata=metadata, timeout=20)
        await _refused(call.read(), code, reason)  # nothing written, the stream left open
    else:
        call = channel.stream_unary(UPLOAD)(metadata=metadata, timeout=20)
        await _refused(call, code, reason)
    assert time.monotonic() - opened < 5, "refused at once, not at the deadline"
    call.cancel()
    assert owner.stand_in.calls == []
    assert owner.policy.asked == 0


async def test_an_admitted_stream_is_authorized_once_on_its_first_message_and_served_every_message_in_order(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    call = _converse(channel, owner.auth())
    await asyncio.sleep(0.3)
    assert owner.limits.taken == 1  # the caller, as the stream opened
    assert owner.policy.asked == 0  # the resource comes with the first message
    assert owner.stand_in.calls == []
    sent = [_first(), *(_ack(sequence) for sequence in range(1, 31))]
    for count, request in enumerate(sent, start=1):
        await call.write(request)
        assert (await call.read()).event.sequence == count
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert owner.policy.asked == 1
    assert owner.limits.taken == 1
    (seen,) = owner.stand_in.calls
    assert seen.requests == sent
    assert seen.principal == principal_message(TENANT, USER, ["member"])
    assert seen.from_outside


async def test_a_client_stream_with_a_unary_reply_is_authorized_once_and_served_every_message(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    sent = [_first(), _ack(1), _ack(2)]
    reply = await _upload(channel)(iter(sent), metadata=owner.auth(), timeout=20)
    assert reply.sequence == 3
    assert owner.policy.asked == 1
    (seen,) = owner.stand_in.calls
    assert (seen.requests, seen.principal.user if seen.principal else None, seen.from_outside) == (sent, USER, True)


async def test_a_server_stream_is_admitted_once_on_its_request(owner: Owner, channel: grpc.aio.Channel) -> None:
    request = pb.StreamEventsRequest(session=SESSION)
    events = [
        reply.event.sequence async for reply in _stream_events(channel)(request, metadata=owner.auth(), timeout=20)
    ]
    assert events == [1, 2, 3]
    assert (owner.policy.asked, owner.limits.taken) == (1, 1)
    (seen,) = owner.stand_in.calls
    assert (seen.requests, seen.principal.user if seen.principal else None, seen.from_outside) == (
        [request],
        USER,
        True,
    )

    await _refused(
        _stream_events(channel)(request, timeout=20).read(), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"
    )
    assert len(owner.stand_in.calls) == 1


async def test_a_stream_policy_denies_never_reaches_the_servicer(owner: Owner, channel: grpc.aio.Channel) -> None:
    owner.policy.verdict = PolicyAnswer(False, "NOT_PERMITTED", "d9")
    call = _converse(channel, owner.auth())
    await call.write(_first())
    info = await _refused(call.read(), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert info.metadata["decision_id"] == "d9"
    assert owner.policy.asked == 1
    assert owner.stand_in.calls == []


# -- sizes and bytes ----------------------------------------------------------------------


async def test_a_message_over_the_limit_ends_the_stream_and_never_reaches_the_servicer(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    call = _converse(channel, owner.auth())
    await call.write(_first())
    assert (await call.read()).event.sequence == 1
    await call.write(_ack(1))
    assert (await call.read()).event.sequence == 2
    big = _ack(2, padding=LIMIT)
    await call.write(big)
    info = await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")
    assert (info.metadata["limit"], info.metadata["size"]) == (str(LIMIT), str(big.ByteSize()))
    assert owner.stand_in.requests == [_first(), _ack(1)]
    assert owner.policy.asked == 1


@pytest.mark.parametrize("path", [CONVERSE, UPLOAD])
async def test_a_first_message_over_the_limit_is_refused_before_policy(
    owner: Owner, channel: grpc.aio.Channel, path: str
) -> None:
    big = _first(session=SESSION + "x" * (2 * LIMIT))
    if path == CONVERSE:
        call = _converse(channel, owner.auth())
        await call.write(big)
        info = await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")
    else:
        info = await _refused(
            _upload(channel)(iter([big]), metadata=owner.auth(), timeout=20),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_TOO_LARGE",
        )
    assert info.metadata["size"] == str(big.ByteSize())
    assert owner.policy.asked == 0
    assert owner.stand_in.calls == []


# Field 1 (session, a string) as length-delimited, 16 bytes long, with 2 bytes that follow.
_MALFORMED = b"\x0a\x10ab"


async def test_malformed_bytes_are_refused_first_or_later_in_a_stream(owner: Owner, channel: grpc.aio.Channel) -> None:
    raw = channel.stream_stream(CONVERSE)
    call = raw(metadata=owner.auth(), timeout=20)
    await call.write(_MALFORMED)
    await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", domain=RUNTIME)
    assert owner.policy.asked == 0
    assert owner.stand_in.calls == []

    call = raw(metadata=owner.auth(), timeout=20)
    await call.write(_first().SerializeToString())
    assert pb.ConverseResponse.FromString(await call.read()).event.sequence == 1
    await call.write(_MALFORMED)
    await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", domain=RUNTIME)
    assert owner.stand_in.requests == [_first()]


async def test_a_stream_whose_rule_names_a_field_and_that_ends_before_its_first_message_names_no_resource(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    call = _converse(channel, owner.auth())
    await call.done_writing()
    info = await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "RESOURCE_NAME_INVALID")
    assert info.metadata["field"] == "session"
    await _refused(
        _upload(channel)(iter([]), metadata=owner.auth(), timeout=20),
        grpc.StatusCode.INVALID_ARGUMENT,
        "RESOURCE_NAME_INVALID",
    )
    # A first message that leaves the resource out is no better.
    call = _converse(channel, owner.auth())
    await call.write(_first(session=""))
    await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "RESOURCE_NAME_INVALID")
    assert owner.policy.asked == 0
    assert owner.stand_in.calls == []


async def test_a_unary_call_is_checked_token_then_size_then_policy(owner: Owner, channel: grpc.aio.Channel) -> None:
    get = _get_session(channel)
    big = pb.GetSessionRequest(name=SESSION + "x" * LIMIT)
    await _refused(get(big, timeout=10), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    info = await _refused(
        get(big, metadata=owner.auth(), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE"
    )
    assert info.metadata["size"] == str(big.ByteSize())
    await _refused(
        channel.unary_unary(GET_SESSION)(_MALFORMED, metadata=owner.auth(), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        domain=RUNTIME,
    )
    assert owner.policy.asked == 0
    assert owner.stand_in.calls == []

    reply = await get(pb.GetSessionRequest(name=SESSION), metadata=owner.auth(), timeout=10)
    assert reply.session.name == SESSION
    assert owner.policy.asked == 1
    (seen,) = owner.stand_in.calls
    assert (seen.principal.user if seen.principal else None, seen.from_outside) == (USER, True)


# -- mesh credentials ---------------------------------------------------------------------


async def test_a_token_with_mesh_credentials_a_client_made_is_refused_without_asking_policy(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    for metadata in _forged(owner):
        call = _converse(channel, metadata)
        info = await _refused(call.read(), grpc.StatusCode.UNAUTHENTICATED, "MESH_CALLER_UNVERIFIED", domain=RUNTIME)
        assert info.metadata["method"] == CONVERSE
        await _refused(
            _get_session(channel)(pb.GetSessionRequest(name=SESSION), metadata=metadata, timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            "MESH_CALLER_UNVERIFIED",
            domain=RUNTIME,
        )
    assert owner.gate_asked() == 0
    assert owner.stand_in.calls == []


async def test_a_call_signed_inside_the_mesh_is_served_without_the_gate(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    principal = principal_message(TENANT, "tenants/t1/users/mesh", ["operator"])
    signed = principal_metadata(principal)
    call = _converse(channel, signed)
    sent = [_first(), _ack(1)]
    for request in sent:
        await call.write(request)
        await call.read()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    reply = await _get_session(channel)(pb.GetSessionRequest(name=SESSION), metadata=signed, timeout=10)
    assert reply.session.name == SESSION
    # An internal method, with a caller signed for it.
    await channel.unary_unary(INTERNAL)(b"", metadata=caller_metadata(INTERNAL), timeout=10)
    assert owner.gate_asked() == 0
    converse, get, check = owner.stand_in.calls
    assert (converse.requests, converse.principal, converse.from_outside) == (sent, principal, False)
    assert (get.principal, get.from_outside) == (principal, False)
    assert (check.principal, check.from_outside) == (None, False)


async def test_an_internal_method_without_mesh_credentials_is_refused_even_with_a_valid_token(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    for metadata in ((), owner.auth()):
        info = await _refused(
            channel.unary_unary(INTERNAL)(b"", metadata=metadata, timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            "MESH_CALLER_UNVERIFIED",
            domain=RUNTIME,
        )
        assert info.metadata["method"] == INTERNAL
    assert owner.gate_asked() == 0
    assert owner.stand_in.calls == []


# -- deadlines ----------------------------------------------------------------------------


async def test_the_callers_deadline_and_cancellation_reach_the_servicer(
    owner: Owner, channel: grpc.aio.Channel
) -> None:
    get = _get_session(channel)
    request = pb.GetSessionRequest(name=SESSION)
    await get(request, metadata=owner.auth(), timeout=3)
    remaining = owner.stand_in.calls[0].remaining
    assert remaining is not None
    # gRPC core sends what is left as a grpc-timeout header, rounded up (to 10 ms steps
    # between 1 and 10 s); admission took a little of it.
    assert 2 < remaining <= 3 + 0.01

    owner.stand_in.hang = True
    call = get(request, metadata=owner.auth(), timeout=60)
    async with asyncio.timeout(10):
        await owner.stand_in.hanging.wait()  # the servicer has the call
    call.cancel()
    async with asyncio.timeout(10):
        await owner.stand_in.cancelled.wait()
