"""The interceptors every SKM server and outbound channel runs.

Server side, one interceptor per process does, for all four RPC kinds:
- reject request bytes that are not a valid message with INVALID_ARGUMENT /
  MALFORMED_REQUEST (grpc's own answer would be INTERNAL), for unary calls and for every
  message of a stream;
- admit, in a service of the mesh, calls that carry a signed principal or a signed caller
  (skm_runtime.principal), and, where the server has a gate (skm_runtime.gate), the public
  calls of the methods it owns, once per call: the bearer token, constitution hash and
  rate limits as the call opens, the contract's authz rule on the resource the request (or
  a client stream's first message) names; the principal admission proved is what
  `call_principal` gives the servicer. Anything else is UNAUTHENTICATED /
  MESH_CALLER_UNVERIFIED (a client's own x-skm-* credentials included); health and
  reflection answer anyone;
- hold every message to the gate's size limit (INVALID_ARGUMENT / MESSAGE_TOO_LARGE);
- continue the caller's trace (W3C context from metadata) in a SERVER span;
- remember the call's deadline so outbound calls made while serving it inherit it;
- map domain errors to `google.rpc.Status` + `ErrorInfo`; anything unexpected becomes
  INTERNAL with a generic message, the cause logged and never sent;
- record `rpc.server.duration`.

Client side, `outbound_interceptors` give every call a deadline (its own, the default, or
what remains of the inbound call's, whichever is soonest), pass the trace context on and
sign the call as this process's (a signed caller). `mesh_caller_interceptors` only sign,
for the mesh operator's tools (`skm relationships --mesh`), benches and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from skm.type.v1 import principal_pb2
from skm_runtime.admission import Rule
from skm_runtime.admission_errors import MessageTooLarge
from skm_runtime.errors import Code, MalformedRequest, MeshCallerUnverified, NotImplementedYet, SkmError
from skm_runtime.gate import Gate
from skm_runtime.principal import (
    CALLER_KEY,
    PRINCIPAL_KEY,
    PRINCIPAL_MAC_KEY,
    caller_metadata,
    has_mesh_key,
    mesh_admitted,
    principal_from,
)
from skm_runtime.status import status_of, trailers_of

log = logging.getLogger("skm.runtime")

# grpc's stubs type method handlers for the synchronous server; ours are asyncio ones.
# The stubs' classes are generic only to the type checker.
if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler

# Absolute monotonic deadline of the inbound call being served in this task, if it has one.
_inbound_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("skm_inbound_deadline", default=None)
# The principal the gate admitted the public call being served in this task with, if it did.
_admitted: contextvars.ContextVar[principal_pb2.Principal | None] = contextvars.ContextVar(
    "skm_admitted_principal", default=None
)
# What a public call carries only when it comes from inside the mesh: never a client's.
_MESH_CREDENTIALS = frozenset((PRINCIPAL_KEY, PRINCIPAL_MAC_KEY, CALLER_KEY))

_GENERIC_INTERNAL = "internal error"
# Only W3C trace context is read from calls (metadata keys `traceparent`, `tracestate`).
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset(("traceparent", "tracestate"))


# Wrapped handlers kept per server, by method path (a service's methods, and then some).
_MAX_WRAPPED = 4096
# A handler function with this attribute (a string, e.g. "/gateway/METHOD_NOT_PUBLIC") serves
# paths it does not name: spans and metrics carry that string instead of the client's path.
CATCH_ALL_LABEL = "skm_catch_all_label"
# Methods that answer callers from outside the mesh too.
# The method-path prefixes of health and reflection (v1 and v1alpha), which every server
# answers and svc_gateway answers through Envoy for the whole mesh.
OPEN_TO_ANYONE = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


class _Malformed:
    """Stands in for a request whose bytes did not parse; rejected before the servicer runs."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _TooLarge:
    """Stands in for a request over the size limit; never parsed, rejected before the servicer runs."""

    __slots__ = ("limit", "size")

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit


def _tolerant(deserializer: Callable[[bytes], Any] | None, limit: int | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return _TooLarge(len(data), limit)
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the client's fault
            return _Malformed(type(exc).__name__)

    return parse


def _reject_malformed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise MalformedRequest(
            "the request is not a valid protobuf message of this method's request type",
            metadata={"problem": request.problem},
        )
    if isinstance(request, _TooLarge):
        raise MessageTooLarge(
            f"a message may be at most {request.limit} bytes",
            metadata={"limit": str(request.limit), "size": str(request.size)},
        )


class _Checked:
    """A stream's requests, each rejected if its bytes did not parse.

    An iterator object, not an async generator: a servicer that stops reading early leaves
    nothing for the event loop to finalize later, in another task and another context.
    """

    __slots__ = ("_requests",)

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests

    def __aiter__(self) -> _Checked:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        _reject_malformed(request)
        return request


class _Prepended:
    """A client stream's requests with its first message, already read (by admission), in front."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: Any, rest: AsyncIterator[Any]) -> None:
        self._first: Any = first
        self._rest = rest

    def __aiter__(self) -> _Prepended:
        return self

    async def __anext__(self) -> Any:
        first = self._first
        if first is not None:
            self._first = None
            return first
        return await self._rest.__anext__()


def call_principal(context: Context) -> principal_pb2.Principal | None:
    """The principal of the call being served: the one the gate admitted it with (a public
    call), else the signed one it carries (a call from inside the mesh), else None."""
    admitted = _admitted.get()
    return admitted if admitted is not None else principal_from(context.invocation_metadata())


def admitted_from_outside() -> bool:
    """Whether the call being served is a public call the gate admitted by its token: what
    only callers inside the mesh may ask for (their own metadata, policy facts) is ignored."""
    return _admitted.get() is not None


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Errors, validation of the wire format, admission, tracing, deadlines and metrics for one server."""

    def __init__(
        self,
        tracer: trace.Tracer,
        meter: metrics.Meter,
        *,
        record_spans: bool,
        record_metrics: bool = True,
        mesh_only: bool = False,
        gate: Gate | None = None,
    ) -> None:
        # Without a span receiver, no span is made: the caller's trace context is only
        # carried through to outbound calls, which costs next to nothing. Without a metric
        # reader, nothing is recorded either. `mesh_only`: every method but health and
        # reflection admits only calls from inside the mesh, and, with a `gate`, the public
        # calls the gate admits.
        self._mesh_only = mesh_only
        self._gate = gate
        self._tracer = tracer
        self._record_spans = record_spans
        self._record_metrics = record_metrics
        self._duration = meter.create_histogram("rpc.server.duration", unit="ms", description="Time to serve one RPC")
        self._wrapped: dict[str, Handler] = {}

    def use_gate(self, gate: Gate) -> None:
        """Admit public calls through `gate` from now on (before the server serves a call)."""
        self._gate = gate
        self._wrapped.clear()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED; unknown names are never cached
        behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        label = getattr(behaviour, CATCH_ALL_LABEL, None)
        if isinstance(label, str):
            # A catch-all answers any path a client makes up: one name for all of them in
            # spans and metrics, and nothing cached.
            return self._wrap(label, handler)
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < _MAX_WRAPPED:
            self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        span_name = method.lstrip("/")
        service, _, rpc = span_name.partition("/")
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": rpc,
        }
        gate = self._gate
        deserialize = _tolerant(handler.request_deserializer, gate.max_message_bytes if gate else None)
        serialize = handler.response_serializer
        guarded = self._mesh_only and not method.startswith(OPEN_TO_ANYONE)
        rule = gate.rule(method) if gate is not None and guarded else None
        call = _Call(self, span_name, attributes, method if guarded else None, gate if rule else None, rule)

        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                with call.serving(context) as outcome:
                    try:
                        if not outcome.from_mesh():
                            await outcome.admit(request)
                        _reject_malformed(request)
                        result = inner_uu(request, context)
                        return await result if inspect.isawaitable(result) else result
                    except BaseException as exc:
                        await outcome.fail(exc, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)

        if handler.stream_unary is not None:
            inner_su: Any = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                with call.serving(context) as outcome:
                    try:
                        checked: AsyncIterator[Any] = _Checked(requests)
                        if not outcome.from_mesh():
                            checked = await outcome.admit_stream(checked)
                        result = inner_su(checked, context)
                        return await result if inspect.isawaitable(result) else result
                    except BaseException as exc:
                        await outcome.fail(exc, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)

        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream
            # A servicer's async generator is drained here and its responses written, rather
            # than yielded on: grpc would otherwise run our wrapper as a generator too, whose
            # `finally` (the span, the deadline's ContextVar) may run in another task and
            # context when the stream ends early, where resetting a ContextVar raises.
            # aclosing() ends the servicer's generator in this task, never by the GC.
            if inspect.isasyncgenfunction(inner_us):

                async def unary_stream_gen(request: Any, context: Context) -> None:
                    with call.serving(context) as outcome:
                        try:
                            if not outcome.from_mesh():
                                await outcome.admit(request)
                            _reject_malformed(request)
                            async with contextlib.aclosing(inner_us(request, context)) as responses:
                                async for response in responses:
                                    await context.write(response)
                        except BaseException as exc:
                            await outcome.fail(exc, context)

                return grpc.unary_stream_rpc_method_handler(unary_stream_gen, deserialize, serialize)

            async def unary_stream(request: Any, context: Context) -> None:
                with call.serving(context) as outcome:
                    try:
                        if not outcome.from_mesh():
                            await outcome.admit(request)
                        _reject_malformed(request)
                        result = inner_us(request, context)
                        if inspect.isawaitable(result):
                            await result
                    except BaseException as exc:
                        await outcome.fail(exc, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)

        inner_ss: Any = handler.stream_stream
        assert inner_ss is not None  # a handler has exactly one behaviour
        if inspect.isasyncgenfunction(inner_ss):

            async def stream_stream_gen(requests: AsyncIterator[Any], context: Context) -> None:
                with call.serving(context) as outcome:
                    try:
                        checked: AsyncIterator[Any] = _Checked(requests)
                        if not outcome.from_mesh():
                            checked = await outcome.admit_stream(checked)
                        async with contextlib.aclosing(inner_ss(checked, context)) as responses:
                            async for response in responses:
                                await context.write(response)
                    except BaseException as exc:
                        await outcome.fail(exc, context)

            return grpc.stream_stream_rpc_method_handler(stream_stream_gen, deserialize, serialize)

        async def stream_stream(requests: AsyncIterator[Any], context: Context) -> None:
            with call.serving(context) as outcome:
                try:
                    checked: AsyncIterator[Any] = _Checked(requests)
                    if not outcome.from_mesh():
                        checked = await outcome.admit_stream(checked)
                    result = inner_ss(checked, context)
                    if inspect.isawaitable(result):
                        await result
                except BaseException as exc:
                    await outcome.fail(exc, context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)


class _Call:
    """What the wrapped behaviours of one method share."""

    def __init__(
        self,
        owner: ServerInterceptor,
        span_name: str,
        attributes: dict[str, AttributeValue],
        guarded_method: str | None,
        gate: Gate | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.owner = owner
        self.span_name = span_name
        self.attributes = attributes
        self.ok_attributes: dict[str, AttributeValue] = {**attributes, "rpc.grpc.status_code": Code.OK.value}
        # The method's path where only callers from inside the mesh are admitted, and, for a
        # public method of a server with a gate, the gate and the method's rule.
        self.guarded_method = guarded_method
        self.gate = gate
        self.rule = rule

    def serving(self, context: Context) -> _Serving:
        return _Serving(self, context)


class _Serving:
    """The life of one RPC: span, deadline, metrics and how it failed."""

    __slots__ = (
        "_admitted",
        "_attached",
        "_call",
        "_context",
        "_metadata",
        "_span",
        "_span_cm",
        "_start",
        "_token",
        "code",
    )

    def __init__(self, call: _Call, context: Context) -> None:
        self._call = call
        self._context = context
        self._admitted: contextvars.Token[principal_pb2.Principal | None] | None = None
        self.code = Code.OK

    def __enter__(self) -> _Serving:
        owner = self._call.owner
        self._start = time.perf_counter()
        carrier: dict[str, str] | None = None
        self._metadata = self._context.invocation_metadata()
        for key, value in self._metadata or ():
            if key in _TRACE_KEYS and isinstance(value, str):
                carrier = carrier or {}
                carrier[key] = value
        parent = _TRACE_CONTEXT.extract(carrier) if carrier else None
        self._attached = None
        self._span = None
        if owner._record_spans:
            self._span_cm = owner._tracer.start_as_current_span(
                self._call.span_name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=self._call.attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            self._span = self._span_cm.__enter__()
        elif parent is not None:
            self._attached = otel_context.attach(parent)
        remaining = self._context.time_remaining()
        self._token = _inbound_deadline.set(None if remaining is None else time.monotonic() + remaining)
        return self

    def from_mesh(self) -> bool:
        """Whether the call needs no admission: its method answers anyone, or it carries a
        principal or caller signed inside the mesh."""
        method = self._call.guarded_method
        return method is None or mesh_admitted(self._metadata, method)

    def _public(self) -> tuple[Gate, Rule]:
        """The gate and the method's rule, for a call that may be judged by its token."""
        gate, rule = self._call.gate, self._call.rule
        if gate is None or rule is None or any(key in _MESH_CREDENTIALS for key, _ in self._metadata or ()):
            # An internal method, or mesh credentials that did not verify (forged, replayed
            # for another method, too old): never judged by a token instead.
            raise MeshCallerUnverified(
                "this method answers calls from inside the mesh only (signed with the mesh key, SKM_MESH_KEY_FILE)"
                if rule is None
                else "the call carries mesh credentials that do not verify",
                metadata={"method": self._call.guarded_method or ""},
            )
        return gate, rule

    async def admit(self, request: Any) -> None:
        """Admit a public unary request or server stream (see the module's docstring); raises
        unless it may be served. The caller first, then the request's size and bytes, then
        policy on the resource it names."""
        gate, rule = self._public()
        principal = await gate.admit_caller(self._metadata, rule)
        _reject_malformed(request)
        self._admitted = _admitted.set(await gate.authorize(principal, rule, request))

    async def admit_stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Admit a public client stream: the caller as it opens, then, where the rule names a
        field, its first message; the requests to serve (that message back in front)."""
        gate, rule = self._public()
        principal = await gate.admit_caller(self._metadata, rule)
        first = await anext(requests, None) if rule.resource_field else None
        self._admitted = _admitted.set(await gate.authorize(principal, rule, first))
        return requests if first is None else _Prepended(first, requests)

    async def fail(self, exc: BaseException, context: Context) -> None:
        """Turn `exc` into the status the client sees; always raises."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            # The client went away or the server is stopping: nothing to send.
            self.code = Code.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            # The servicer aborted on purpose with its own status.
            code = context.code()
            self.code = Code(code.value[0]) if isinstance(code, grpc.StatusCode) else Code.UNKNOWN
            raise exc
        if isinstance(exc, NotImplementedError):
            exc = NotImplementedYet("this method is part of the contract but not served yet")
        if not isinstance(exc, SkmError):
            log.error(
                "unhandled error while serving an RPC",
                exc_info=exc,
                extra={"fields": {"rpc": self._call.span_name}},
            )
            exc = SkmError(_GENERIC_INTERNAL)
        self.code = exc.code
        status = status_of(exc)
        await context.abort(grpc.StatusCode[exc.code.name], exc.message, trailers_of(status))

    def __exit__(self, *_exc: object) -> None:
        call = self._call
        ok = self.code is Code.OK
        attributes = call.ok_attributes if ok else {**call.attributes, "rpc.grpc.status_code": self.code.value}
        if self._span is not None:
            if not ok:
                self._span.set_status(Status(StatusCode.ERROR, self.code.name))
            self._span.set_attribute("rpc.grpc.status_code", self.code.value)
            self._span_cm.__exit__(None, None, None)
        elif self._attached is not None:
            otel_context.detach(self._attached)
        _inbound_deadline.reset(self._token)
        if self._admitted is not None:
            _admitted.reset(self._admitted)
        if call.owner._record_metrics:
            call.owner._duration.record((time.perf_counter() - self._start) * 1000.0, attributes)


def outliving_context() -> contextvars.Context:
    """A copy of the current context for a task that outlives the call being served (e.g.
    a turn started by SendMessage): the trace goes on, the call's deadline does not cut the
    task's own outbound calls, and the principal the call was admitted with stays the call's
    (the task carries its own, explicitly)."""
    context = contextvars.copy_context()
    context.run(_inbound_deadline.set, None)
    context.run(_admitted.set, None)
    return context


def outbound_timeout(own: float | None, default: float) -> float:
    """The timeout an outbound call gets: its own or the default, cut to the inbound deadline."""
    timeout = default if own is None else own
    inbound = _inbound_deadline.get()
    if inbound is not None:
        timeout = min(timeout, max(inbound - time.monotonic(), 0.0))
    return timeout


# grpc.aio files an interceptor under the first of the four kinds it implements only (an
# object implementing all four would intercept unary-unary calls alone), so each kind gets
# an object of its own, and they share one function that rewrites a call's details.
_Rewrite: TypeAlias = Callable[[grpc.aio.ClientCallDetails, bool], grpc.aio.ClientCallDetails]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, rewrite: _Rewrite) -> None:
        self._rewrite = rewrite

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]  # signature fixed by grpc.aio
        return await continuation(self._rewrite(client_call_details, False), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, rewrite: _Rewrite) -> None:
        self._rewrite = rewrite

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]  # signature fixed by grpc.aio
        return await continuation(self._rewrite(client_call_details, True), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, rewrite: _Rewrite) -> None:
        self._rewrite = rewrite

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]  # signature fixed by grpc.aio
        return await continuation(self._rewrite(client_call_details, True), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, rewrite: _Rewrite) -> None:
        self._rewrite = rewrite

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]  # signature fixed by grpc.aio
        return await continuation(self._rewrite(client_call_details, True), request_iterator)


ClientInterceptor: TypeAlias = (
    grpc.aio.UnaryUnaryClientInterceptor
    | grpc.aio.UnaryStreamClientInterceptor
    | grpc.aio.StreamUnaryClientInterceptor
    | grpc.aio.StreamStreamClientInterceptor
)


def _each_kind(rewrite: _Rewrite) -> list[ClientInterceptor]:
    return [_UnaryUnary(rewrite), _UnaryStream(rewrite), _StreamUnary(rewrite), _StreamStream(rewrite)]


def _signed(metadata: grpc.aio.Metadata, method: str | bytes) -> None:
    for key, signature in caller_metadata(method):
        metadata[key] = signature


def outbound_interceptors(*, call_timeout: float, stream_timeout: float) -> list[ClientInterceptor]:
    """A service's outbound calls, all four kinds: a deadline on every call (`call_timeout`
    for unary calls, `stream_timeout` for the others, cut to the inbound call's), the trace
    context passed on, and the call signed as this process's when it holds the mesh key."""

    def rewrite(details: grpc.aio.ClientCallDetails, streaming: bool) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        carrier: dict[str, str] = {}
        _TRACE_CONTEXT.inject(carrier)
        for key, value in carrier.items():
            metadata[key] = value
        if has_mesh_key() and metadata.get(PRINCIPAL_KEY) is None:
            # A call that carries a principal is admitted by its MAC: no caller needed.
            _signed(metadata, details.method)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=outbound_timeout(details.timeout, stream_timeout if streaming else call_timeout),
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    return _each_kind(rewrite)


def mesh_caller_interceptors() -> list[ClientInterceptor]:
    """Every call, all four kinds, signed as this process's (`caller_metadata`), and nothing
    else; the process must hold the mesh key (skm_runtime.principal.configure_mesh_key)."""

    def rewrite(details: grpc.aio.ClientCallDetails, _streaming: bool) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        _signed(metadata, details.method)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    return _each_kind(rewrite)
