"""The answer to every path that is no public method: UNIMPLEMENTED / METHOD_NOT_PUBLIC.

Envoy routes each public method straight to the service that owns it (deploy/envoy/envoy.yaml,
generated from the contract); whatever else a client asks for (an internal method, a made-up
path) falls to Envoy's catch-all route, here. Answering it with an ErrorInfo, rather than
letting Envoy answer 404, keeps one shape for every refusal a client sees. No message is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm_runtime.admission_errors import MethodNotPublic
from skm_runtime.interceptors import CATCH_ALL_LABEL, OPEN_TO_ANYONE

Context = grpc.aio.ServicerContext[Any, Any]

_SHOWN_PATH_CHARS = 200


class NotPublic(grpc.GenericRpcHandler):
    """Every path but svc_gateway's own health and reflection: refused, naming the path."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        if path.startswith(OPEN_TO_ANYONE):
            return None  # served by the handlers registered for them
        return grpc.stream_stream_rpc_method_handler(_refusal(path))


def _refusal(path: str) -> Any:
    async def refuse(requests: AsyncIterator[bytes], context: Context) -> None:
        raise MethodNotPublic("no such public method", metadata={"method": path[:_SHOWN_PATH_CHARS]})

    # One name for every made-up path in spans and metrics (skm_runtime.interceptors).
    setattr(refuse, CATCH_ALL_LABEL, "/skm.gateway/MethodNotPublic")
    return refuse
