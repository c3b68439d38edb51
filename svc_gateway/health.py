"""Health as the public sees it: the gateway answers for every service behind it.

A Check or Watch naming a routed service (e.g. `skm.conversation.v1.ConversationService`)
is asked of the owning service itself, so SERVING through Envoy means that service really
serves. An unreachable backend is NOT_SERVING; an unknown name is NOT_FOUND, as the
standard health service answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_RETRY_SECONDS = 1.0


class GatewayHealth(HealthServicer):  # type: ignore[misc]  # grpc_health ships no type hints
    """The standard health service for the gateway's own names, forwarding for the rest."""

    def __init__(self, routes: Mapping[str, grpc.aio.Channel], timeout: float) -> None:
        super().__init__()
        self._stubs = {name: health_pb2_grpc.HealthStub(channel) for name, channel in routes.items()}
        self._timeout = timeout

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        stub = self._stubs.get(request.service)
        if stub is None:
            return await super().Check(request, context)
        try:
            return await stub.Check(request, timeout=self._timeout)
        except grpc.aio.AioRpcError:
            return health_pb2.HealthCheckResponse(status=_NOT_SERVING)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        stub = self._stubs.get(request.service)
        if stub is None:
            await super().Watch(request, context)
            return None
        last = None
        while True:
            try:
                async for reply in stub.Watch(request):
                    if reply.status != last:
                        last = reply.status
                        await context.write(reply)
            except grpc.aio.AioRpcError:
                pass
            if last != _NOT_SERVING:
                last = _NOT_SERVING
                await context.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
            await asyncio.sleep(_RETRY_SECONDS)
