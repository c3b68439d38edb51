"""The server interceptor and handlers that answer any path (the gateway's catch-all): one
name in spans and metrics, and no cache entry per made-up path."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import metrics, trace

from skm_runtime.interceptors import CATCH_ALL_LABEL, ServerInterceptor


async def _refuse(request: bytes, context: Any) -> bytes:
    return b""


async def _echo(request: bytes, context: Any) -> bytes:
    return request


setattr(_refuse, CATCH_ALL_LABEL, "/skm.test/CatchAll")


def _details(path: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        method = path
        invocation_metadata = ()

    return Details()


async def test_made_up_paths_are_not_cached_and_real_methods_are() -> None:
    interceptor = ServerInterceptor(
        trace.get_tracer("test"), metrics.get_meter("test"), record_spans=False, record_metrics=False
    )

    async def catch_all(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(_refuse)

    for n in range(100):
        assert await interceptor.intercept_service(catch_all, _details(f"/made.up/Path{n}")) is not None
    assert interceptor._wrapped == {}

    async def real(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(_echo)

    first = await interceptor.intercept_service(real, _details("/skm.test.v1.Echo/Unary"))
    assert await interceptor.intercept_service(real, _details("/skm.test.v1.Echo/Unary")) is first
