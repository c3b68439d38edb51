"""Forwarding every public RPC, all four kinds, with no per-RPC code.

The contract drives it: `skm_runtime.contract.methods()` says, for each method path, which
service owns it, whether each side streams, the request type, and the authorization rule.
Messages pass through as bytes; only a unary request, or the first message of a client
stream, is parsed, to read the resource its rule names. A client stream is authenticated
(token, constitution hash, rate limits) as soon as it opens, before any message is awaited,
so a caller without a valid token is refused at once, not at its first message or deadline;
only the policy question on the resource waits for the first message, and only when the
rule names a field. Every message a client sends (a unary request, each message of a
stream) is held to the public limit (`max_message_bytes`): a larger one ends the call with
INVALID_ARGUMENT / MESSAGE_TOO_LARGE and never reaches the service (gRPC's own receive limit
on the gateway is set higher, so that the gateway answers it, with an ErrorInfo). A path
that is no public method of the contract, whatever its package, is UNIMPLEMENTED /
METHOD_NOT_PUBLIC; the gateway's own health and reflection are the only others served.

The call goes on with the caller's deadline, cancellation and trace context, and with the
authenticated principal in `x-skm-principal-bin`; a client's own `authorization` and
principal headers never pass.
Errors of the owning service reach the client as they are, details included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any

import grpc

from skm_runtime.contract import Method
from skm_runtime.errors import MalformedRequest
from skm_runtime.interceptors import CATCH_ALL_LABEL, trace_metadata
from skm_runtime.principal import FORWARDED_BY_KEY, PRINCIPAL_KEY, principal_metadata
from svc_gateway.adapters.policy import principal_message
from svc_gateway.core import Gateway
from svc_gateway.errors import MessageTooLarge, MethodNotPublic, ResourceNameInvalid, ServiceUnavailable
from svc_gateway.model import Principal, Rule

Context = grpc.aio.ServicerContext[Any, Any]

# Metadata that is the gateway's or the transport's to set, never passed on from a client.
_NOT_FORWARDED = {
    "authorization",
    PRINCIPAL_KEY,
    FORWARDED_BY_KEY,
    "user-agent",
    "traceparent",
    "tracestate",
    "content-type",
    "te",
}
# The mesh's own metadata (principal, forwarding and routing markers): never a client's to set.
_INTERNAL_PREFIX = "x-skm-"
# Marks a call as coming from outside the mesh: services then ignore what only internal
# callers may set (e.g. svc_tools' policy context).
FORWARDED = ((FORWARDED_BY_KEY, "gateway"),)
_STATUS_DETAILS = "grpc-status-details-bin"
# The services the gateway serves itself (health, reflection v1 and v1alpha); every other
# path that is no public method is answered METHOD_NOT_PUBLIC by the proxy.
_OWN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.")
_SHOWN_PATH_CHARS = 200
# What grpc.aio calls a forwarded message it could not write (see Proxy._settled), and how
# long the service's own status is waited for then (it is on its way: the service ended the call).
_WRITE_FAILED = "Internal error from Core"
_SETTLE_POLLS = 100
_SETTLE_POLL_SECONDS = 0.01


def _rule(method: Method) -> Rule:
    rule = method.authz
    assert rule is not None  # only public methods get here
    return Rule(
        rule.permission,
        rule.resource_type,
        rule.resource_field,
        rule.any_tenant_member,
        rule.allow_stale_constitution,
        rule.forward_requires_approval,
    )


@lru_cache(maxsize=4096)
def _principal_header(principal: Principal) -> tuple[tuple[str, str | bytes], ...]:
    """The metadata that carries a principal on, serialized once per principal."""
    return principal_metadata(principal_message(principal)) + FORWARDED


def _resource(method: Method, rule: Rule, request: bytes | None) -> str:
    if not rule.resource_field:
        return ""
    if request is None:
        raise ResourceNameInvalid("the first message must name the resource", metadata={"field": rule.resource_field})
    try:
        value: Any = method.request_type.FromString(request)
    except Exception:  # noqa: BLE001  # any parse failure is the client's
        raise MalformedRequest("the request is not a valid message of this method's type") from None
    for part in rule.resource_field.split("."):
        value = getattr(value, part, None)
    if not isinstance(value, str) or not value:
        raise ResourceNameInvalid(
            f"{rule.resource_field} is required: the resource this call acts on",
            metadata={"field": rule.resource_field},
        )
    return value


# Raw-bytes callables (no serializers): grpc's stubs cannot infer their message types.
def _unary_unary(channel: grpc.aio.Channel, path: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(path)


def _unary_stream(channel: grpc.aio.Channel, path: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(path)


def _stream_unary(channel: grpc.aio.Channel, path: str) -> grpc.aio.StreamUnaryMultiCallable[bytes, bytes]:
    return channel.stream_unary(path)


def _stream_stream(channel: grpc.aio.Channel, path: str) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
    return channel.stream_stream(path)


class Proxy(grpc.GenericRpcHandler):
    """One generic handler for every public method of the contract."""

    def __init__(
        self,
        gateway: Gateway,
        methods: Mapping[str, Method],
        channels: Mapping[str, grpc.aio.Channel],
        *,
        stream_timeout: float,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._gateway = gateway
        self._methods = methods
        self._channels = channels
        self._stream_timeout = stream_timeout
        self._max_message_bytes = max_message_bytes
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is not None:
            return handler
        method = self._methods.get(path)
        if method is None or method.authz is None:
            if path.startswith(_OWN_SERVICES):
                return None  # health, reflection: served by the gateway itself
            # Not remembered here: paths are the client's to make up.
            return grpc.stream_stream_rpc_method_handler(self._not_public(path))
        handler = self._handler(method)
        self._handlers[path] = handler
        return handler

    @staticmethod
    def _not_public(path: str) -> Callable[[AsyncIterator[bytes], Context], Awaitable[None]]:
        async def refuse(requests: AsyncIterator[bytes], context: Context) -> None:
            raise MethodNotPublic("no such public method", metadata={"method": path[:_SHOWN_PATH_CHARS]})

        # One name for every made-up path in spans and metrics (skm_runtime.interceptors).
        setattr(refuse, CATCH_ALL_LABEL, "/skm.gateway/MethodNotPublic")
        return refuse

    def _sized(self, message: bytes) -> bytes:
        """`message`, unless it is over the public limit."""
        if len(message) > self._max_message_bytes:
            raise MessageTooLarge(
                f"a message may be at most {self._max_message_bytes} bytes",
                metadata={"limit": str(self._max_message_bytes), "size": str(len(message))},
            )
        return message

    async def _admit_caller(
        self, rule: Rule, context: Context
    ) -> tuple[Principal, tuple[tuple[str, str | bytes], ...]]:
        """The principal, and the metadata the call goes on with: the client's own (less what
        is not theirs to set), the principal, the trace context; raises unless the caller's
        token, constitution hash and rate limits admit the call (no message needed)."""
        authorization: str | None = None
        passed: list[tuple[str, str | bytes]] = []
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                if authorization is None and isinstance(value, str):
                    authorization = value
            elif key not in _NOT_FORWARDED and not key.startswith((":", "grpc-", _INTERNAL_PREFIX)):
                passed.append((key, value))
        principal = self._gateway.authenticate(authorization)
        await self._gateway.admit_caller(principal, rule)
        # The channels to the services have no outbound interceptor (see __main__): the
        # trace context and the deadline are set here, per call.
        return principal, (*passed, *_principal_header(principal), *trace_metadata())

    async def _admit(
        self, method: Method, rule: Rule, context: Context, request: bytes
    ) -> tuple[tuple[str, str | bytes], ...]:
        """A unary request's admission: the caller, the request's size, then the resource."""
        principal, metadata = await self._admit_caller(rule, context)
        self._sized(request)
        await self._gateway.authorize(principal, rule, _resource(method, rule, request))
        return metadata

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self._stream_timeout if remaining is None else remaining

    @staticmethod
    async def _settled(call: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """The service's own status, where grpc.aio reported a forwarded message it could not
        write instead: a service that ends a client stream early (a refusal, a method not
        served) makes the write of a message still in flight fail, and grpc.aio ends the call
        with that failure, INTERNAL "Internal error from Core", before it has read the
        service's status (grpc/grpc#36066); the status it then reads replaces it on the call."""
        if error.code() != grpc.StatusCode.INTERNAL or error.details() != _WRITE_FAILED:
            return error
        for _ in range(_SETTLE_POLLS):
            await asyncio.sleep(_SETTLE_POLL_SECONDS)
            if await call.details() != _WRITE_FAILED:
                break
        else:
            # grpc.aio recorded its write failure last: the service's status is lost for good.
            # It ended the call on purpose, so this is a passing state of the stream, not a
            # fault: the client is told to try again, when it gets the service's own answer.
            raise ServiceUnavailable(
                "the owning service ended the stream while a message was being forwarded; retry",
                metadata={"cause": "STREAM_ENDED_WHILE_FORWARDING"},
            )
        return grpc.aio.AioRpcError(
            await call.code(),
            await call.initial_metadata() or grpc.aio.Metadata(),
            await call.trailing_metadata() or grpc.aio.Metadata(),
            await call.details(),
        )

    async def _relay(self, error: grpc.aio.AioRpcError, method: Method, context: Context) -> None:
        trailing = tuple(error.trailing_metadata() or ())
        has_details = any(k == _STATUS_DETAILS for k, _ in trailing)
        if error.code() == grpc.StatusCode.UNAVAILABLE and not has_details:
            raise ServiceUnavailable("the owning service cannot be reached; retry", metadata={"method": method.path})
        passed = tuple(
            (k, v) for k, v in trailing if not k.startswith(":") and (k == _STATUS_DETAILS or not k.startswith("grpc-"))
        )
        await context.abort(error.code(), error.details() or "", passed)

    def _handler(self, method: Method) -> grpc.RpcMethodHandler[Any, Any]:
        channel = self._channels[method.owner]
        path = method.path
        rule = _rule(method)

        if not method.client_streaming and not method.server_streaming:
            forward = _unary_unary(channel, path)

            async def unary_unary(request: bytes, context: Context) -> bytes:
                metadata = await self._admit(method, rule, context, request)
                try:
                    response: bytes = await forward(request, metadata=metadata, timeout=self._timeout(context))
                except grpc.aio.AioRpcError as error:
                    await self._relay(error, method, context)
                    raise
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        if not method.client_streaming:

            async def unary_stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
                metadata = await self._admit(method, rule, context, request)
                call = _unary_stream(channel, path)(request, metadata=metadata, timeout=self._timeout(context))
                try:
                    async for response in call:
                        yield response
                except grpc.aio.AioRpcError as error:
                    await self._relay(error, method, context)
                finally:
                    call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        async def _opened(requests: AsyncIterator[bytes], context: Context) -> _Upstream:
            # Who calls is known from the metadata alone: decided before any message is awaited.
            principal, metadata = await self._admit_caller(rule, context)
            first = None
            if rule.resource_field:
                first = await anext(aiter(requests), None)
                if first is not None:
                    self._sized(first)
            await self._gateway.authorize(principal, rule, _resource(method, rule, first))
            return _Upstream(metadata, first, requests, self._sized)

        if not method.server_streaming:

            async def stream_unary(requests: AsyncIterator[bytes], context: Context) -> bytes:
                upstream = await _opened(requests, context)
                call = _stream_unary(channel, path)(
                    upstream.messages(), metadata=upstream.metadata, timeout=self._timeout(context)
                )
                try:
                    response: bytes = await call
                except asyncio.CancelledError:
                    upstream.raise_refusal()
                    raise
                except grpc.aio.AioRpcError as error:
                    upstream.raise_refusal()
                    await self._relay(await self._settled(call, error), method, context)
                    raise
                return response

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        async def stream_stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            upstream = await _opened(requests, context)
            call = _stream_stream(channel, path)(
                upstream.messages(), metadata=upstream.metadata, timeout=self._timeout(context)
            )
            try:
                async for response in call:
                    yield response
            except asyncio.CancelledError:
                upstream.raise_refusal()
                raise
            except grpc.aio.AioRpcError as error:
                upstream.raise_refusal()
                await self._relay(await self._settled(call, error), method, context)
            finally:
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(stream_stream)


class _Upstream:
    """What a client stream sends on: its admitted metadata and its messages, each held to
    the public limit. grpc consumes `messages()` in a task of its own and cancels the
    forwarded call when it raises; the refusal is kept here for the handler to answer."""

    def __init__(
        self,
        metadata: tuple[tuple[str, str | bytes], ...],
        first: bytes | None,
        requests: AsyncIterator[bytes],
        sized: Callable[[bytes], bytes],
    ) -> None:
        self.metadata = metadata
        self._first = first
        self._requests = requests
        self._sized = sized
        self._refusal: MessageTooLarge | None = None

    async def messages(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            yield self._first
        async for request in self._requests:
            try:
                self._sized(request)
            except MessageTooLarge as refusal:
                self._refusal = refusal
                raise
            yield request

    def raise_refusal(self) -> None:
        """Raise the reason the forwarded call was cut short, if the gateway cut it."""
        if self._refusal is not None:
            raise self._refusal from None
