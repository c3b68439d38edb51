"""The gateway's proxy on a real gRPC server, in front of a stand-in service: client streams
are authenticated as they open, every message a client sends is held to the public limit,
and any path that is no public method is METHOD_NOT_PUBLIC while health and reflection
still answer. Token checks, policy, constitutions and rate limits are in-process fakes;
tests/integration/test_gateway.py runs the same through the real services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm.conversation.v1 import conversation_service_pb2
from skm.options.v1 import authz_pb2
from skm_runtime.contract import Method, methods
from skm_runtime.server import RuntimeSettings, ServiceSpec, signed_channel
from skm_runtime.status import error_info_of
from svc_gateway.core import Gateway
from svc_gateway.model import Admission
from svc_gateway.proxy import Proxy
from tests.support.runtime import serving
from tests.unit.test_gateway_caches import DIGEST, _Constitutions, _keys, _Limiter, _Policy, _token, _verifier

CONVERSE = "/skm.conversation.v1.ConversationService/Converse"
# A client-streaming method with a unary reply, as the contract may declare one: no public
# method is of that kind today, the proxy serves it all the same.
UPLOAD = "/skm.conversation.v1.ConversationService/Upload"
GET_SESSION = "/skm.conversation.v1.ConversationService/GetSession"
LIMIT = 64 * 1024
SESSION = "tenants/t1/sessions/s1"


@dataclass
class Backend(grpc.GenericRpcHandler):
    """What the stand-in service received, message by message."""

    sizes: list[int] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # GetSession: the time left before the call's deadline, as the service sees it; with
    # `hang`, it waits until the call is cancelled and notes that.
    remaining: list[float | None] = field(default_factory=list)
    hang: bool = False
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def get_session(self, request: bytes, context: Any) -> bytes:
        self.remaining.append(context.time_remaining())
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return b""

    async def converse(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        try:
            async for request in requests:
                self.sizes.append(len(request))
                yield request
        finally:
            self.ended.set()

    async def upload(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        try:
            async for request in requests:
                self.sizes.append(len(request))
            return str(len(self.sizes)).encode()
        finally:
            self.ended.set()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        if details.method == CONVERSE:
            return grpc.stream_stream_rpc_method_handler(self.converse)
        if details.method == UPLOAD:
            return grpc.stream_unary_rpc_method_handler(self.upload)
        if details.method == GET_SESSION:
            return grpc.unary_unary_rpc_method_handler(self.get_session)
        return None


@dataclass
class Front:
    target: str
    backend: Backend
    policy: _Policy
    token: str
    stale: str

    def auth(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token or self.token}"),)


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    pem, jwks = _keys()
    backend = Backend()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((backend,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    policy = _Policy(Admission(True, "SESSION_OWNER", "d1"))
    gateway = Gateway(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), policy)
    contract = dict(methods())
    converse = contract[CONVERSE]
    contract[UPLOAD] = Method(
        UPLOAD,
        converse.owner,
        client_streaming=True,
        server_streaming=False,
        request_type=converse.request_type,
        authz=authz_pb2.AuthzRule(permission="can_write", resource_type="session", resource_field="session"),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:  # forwarding: principals signed per call
        proxy = Proxy(gateway, contract, {"conversation": channel}, stream_timeout=60, max_message_bytes=LIMIT)
        spec = ServiceSpec(
            name="gateway",
            service_names=(),
            register=lambda server: server.add_generic_rpc_handlers((proxy,)),
            max_receive_bytes=4 * LIMIT,
            mesh_only=False,  # the public entry, as svc_gateway's
        )
        try:
            async with serving(spec, RuntimeSettings()) as served:
                yield Front(
                    served.target,
                    backend,
                    policy,
                    _token(pem, exp=time.time() + 600),
                    _token(pem, exp=time.time() + 600, digest="b" * 64),
                )
        finally:
            await server.stop(0)


def _message(session: str = SESSION, padding: int = 0) -> bytes:
    request = conversation_service_pb2.ConverseRequest(session=session)
    if padding:
        request.send_message.text = "x" * padding
    return request.SerializeToString()


async def _refused(call: Any, code: grpc.StatusCode, reason: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, (raised.value.code(), raised.value.details())
    info = error_info_of(raised.value)
    assert info is not None
    assert (info.reason, info.domain) == (reason, "gateway.skm")
    return info


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"),
        ("garbage", grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
        ("stale", grpc.StatusCode.FAILED_PRECONDITION, "CONSTITUTION_HASH_STALE"),
    ],
)
@pytest.mark.parametrize("path", [CONVERSE, UPLOAD])
async def test_a_stream_is_refused_as_it_opens_before_any_message(
    front: Front, path: str, token: str | None, code: grpc.StatusCode, reason: str
) -> None:
    async with signed_channel(front.target) as channel:
        metadata = () if token is None else front.auth(front.stale if token == "stale" else token)
        opened = time.monotonic()
        if path == CONVERSE:
            call: Any = channel.stream_stream(path)(metadata=metadata, timeout=20)
            await _refused(call.read(), code, reason)  # nothing written, the stream left open
        else:
            call = channel.stream_unary(path)(metadata=metadata, timeout=20)
            await _refused(call, code, reason)
        assert time.monotonic() - opened < 5, "refused at once, not at the deadline"
        call.cancel()
    assert front.backend.sizes == []
    assert front.policy.asked == 0


async def test_an_admitted_stream_waits_for_its_first_message_to_authorize_and_forwards_it(front: Front) -> None:
    async with signed_channel(front.target) as channel:
        call = channel.stream_stream(CONVERSE)(metadata=front.auth(), timeout=20)
        await asyncio.sleep(0.3)
        assert front.policy.asked == 0  # the resource comes with the first message
        await call.write(_message())
        assert await call.read() == _message()
        assert front.policy.asked == 1
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF


async def test_a_message_over_the_public_limit_ends_the_stream_and_is_never_forwarded(front: Front) -> None:
    async with signed_channel(front.target) as channel:
        call = channel.stream_stream(CONVERSE)(metadata=front.auth(), timeout=20)
        small, big = _message(padding=100), _message(padding=LIMIT)
        await call.write(small)
        assert await call.read() == small
        await call.write(big)
        info = await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")
        assert info.metadata["limit"] == str(LIMIT)
        assert info.metadata["size"] == str(len(big))
        await asyncio.wait_for(front.backend.ended.wait(), 5)  # the forwarded call ended too
    assert front.backend.sizes == [len(small)]


@pytest.mark.parametrize("path", [CONVERSE, UPLOAD])
async def test_a_first_message_over_the_limit_is_refused_before_policy(front: Front, path: str) -> None:
    big = _message(padding=2 * LIMIT)
    async with signed_channel(front.target) as channel:
        if path == CONVERSE:
            call: Any = channel.stream_stream(path)(metadata=front.auth(), timeout=20)
            await call.write(big)
            info = await _refused(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")
        else:
            info = await _refused(
                channel.stream_unary(path)(iter([big]), metadata=front.auth(), timeout=20),
                grpc.StatusCode.INVALID_ARGUMENT,
                "MESSAGE_TOO_LARGE",
            )
    assert info.metadata["size"] == str(len(big))
    assert front.policy.asked == 0
    assert front.backend.sizes == []


async def test_a_client_stream_with_a_unary_reply_is_held_to_the_limit_on_every_message(front: Front) -> None:
    async with signed_channel(front.target) as channel:
        upload = channel.stream_unary(UPLOAD)
        assert await upload(iter([_message(), _message(padding=10)]), metadata=front.auth(), timeout=20) == b"2"
        await _refused(
            upload(iter([_message(), _message(padding=LIMIT)]), metadata=front.auth(), timeout=20),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_TOO_LARGE",
        )
    # The first call's two messages; of the second, at most its small one (the forwarded
    # call is cancelled as soon as the big one arrives), never the big one.
    assert front.backend.sizes[:2] == [len(_message()), len(_message(padding=10))]
    assert len(front.backend.sizes) <= 3
    assert max(front.backend.sizes) <= LIMIT


async def test_any_path_that_is_no_public_method_is_not_public_and_health_still_answers(front: Front) -> None:
    async with signed_channel(front.target) as channel:
        for path in ("/foo.Bar/Baz", "/skm.nothing.v1.Nothing/Do", "/x"):
            unary = channel.unary_unary(path)(b"", timeout=10, metadata=front.auth())
            info = await _refused(unary, grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_PUBLIC")
            assert info.metadata["method"] == path
        stream = channel.stream_stream("/foo.Bar/Stream")(timeout=10)
        await _refused(stream.read(), grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_PUBLIC")
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_callers_deadline_and_cancellation_reach_the_service(front: Front) -> None:
    """Deadlines pass through the gateway (the service sees what is left of the caller's), and
    a call the caller cancels is cancelled at the service."""
    request = conversation_service_pb2.GetSessionRequest(name=SESSION).SerializeToString()
    async with signed_channel(front.target) as channel:
        get = channel.unary_unary(GET_SESSION)
        await get(request, metadata=front.auth(), timeout=3)
        (remaining,) = front.backend.remaining
        assert remaining is not None
        # Each hop sends what is left as a grpc-timeout header, and gRPC core rounds that up
        # (to 10 ms steps between 1 and 10 s): two hops may add up to 20 ms, never a second.
        assert 2 < remaining <= 3 + 0.02
        await get(request, metadata=front.auth(), timeout=None)
        # Without one, the gateway's own bound applies (stream_timeout, 60 s here).
        unbounded = front.backend.remaining[-1]
        assert unbounded is not None
        assert 3 < unbounded <= 61  # (a timeout travels rounded up)

        front.backend.hang = True
        call = get(request, metadata=front.auth(), timeout=60)
        for _ in range(1000):  # until the service has the call
            if len(front.backend.remaining) == 3:
                break
            await asyncio.sleep(0.01)
        call.cancel()
        async with asyncio.timeout(10):
            await front.backend.cancelled.wait()
