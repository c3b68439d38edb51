"""A byte-echo service on the SKM runtime, for runtime tests and `make bench`.

Methods take and return raw bytes (no protobuf), so the runtime's own cost is what a
benchmark sees. `Fail` raises a domain error, `Crash` an unexpected one.

Run as a process: `python -m tests.support.echo_service` (reads SKM_ECHO_ADDR).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from skm_runtime.errors import Code, SkmError
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from skm_runtime.settings import ServiceSettings

SERVICE = "skm.testing.v1.EchoService"


class ThingNotFound(SkmError):
    code = Code.NOT_FOUND
    reason = "THING_NOT_FOUND"
    domain = "testing.skm"


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for frame in requests:
        yield frame


async def _flood(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Answers each frame with a stream of copies, until the client goes away."""
    async for frame in requests:
        while True:
            yield frame


async def _slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode() or "1"))
    return request


async def _remaining(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """The seconds left before this call's deadline, as text ("none" without one)."""
    remaining = context.time_remaining()
    return b"none" if remaining is None else f"{remaining:.3f}".encode()


async def _traceparent(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """The W3C `traceparent` this call arrived with (empty without one)."""
    return dict(context.invocation_metadata() or ()).get("traceparent", "").encode()


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise ThingNotFound("no such thing", metadata={"thing": request.decode(errors="replace")})


async def _crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("database password is hunter2")  # must never reach a client


def register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
                    "Flood": grpc.stream_stream_rpc_method_handler(_flood),
                    "Slow": grpc.unary_unary_rpc_method_handler(_slow),
                    "Remaining": grpc.unary_unary_rpc_method_handler(_remaining),
                    "Traceparent": grpc.unary_unary_rpc_method_handler(_traceparent),
                    "Fail": grpc.unary_unary_rpc_method_handler(_fail),
                    "Crash": grpc.unary_unary_rpc_method_handler(_crash),
                },
            ),
        )
    )


# It answers anyone: it runs without a mesh key (bench, runtime tests).
SPEC = ServiceSpec(name="echo", service_names=(SERVICE,), register=register, mesh_only=False)


async def build(settings: ServiceSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return SPEC


if __name__ == "__main__":
    # It never reads or signs a principal, so it runs without a mesh key (bench, runtime tests).
    raise SystemExit(run("echo", ServiceSettings, build, uses_principals=False))
