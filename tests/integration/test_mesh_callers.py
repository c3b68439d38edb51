"""Services of the mesh admit callers of the mesh only, for all four kinds of RPC.

A server of the runtime (a real grpc.aio server in this process, as every service runs
it) with one method of each kind:
- a service's own outbound channel (`open_channel`) signs every call, each kind included,
  and gives each a deadline and the trace context (grpc.aio used to file an interceptor
  under its first kind only, so streams went out without any of them);
- a channel that signs nothing is refused UNAUTHENTICATED / MESH_CALLER_UNVERIFIED, each
  kind, before the method runs; health and reflection answer it;
- a server that would admit the mesh only does not start without the mesh key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from skm_runtime.principal import MeshKeyMissing, configure_mesh_key, use_mesh_keys
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, signed_channel
from skm_runtime.status import error_info_of
from tests.support.runtime import serving

SERVICE = "skm.testing.v1.KindsService"
STREAM_TIMEOUT = 50.0  # what the outbound channel gives a stream that sets no deadline


class _Seen:
    """What each method saw of the call that reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None, bool]] = []

    def note(self, kind: str, context: grpc.aio.ServicerContext) -> None:
        keys = {key for key, _ in context.invocation_metadata() or ()}
        self.calls.append((kind, context.time_remaining(), "traceparent" in keys))


def _spec(seen: _Seen) -> ServiceSpec:
    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.note("unary_unary", context)
        return request

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        seen.note("unary_stream", context)
        yield request

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        seen.note("stream_unary", context)
        return b"".join([request async for request in requests])

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        seen.note("stream_stream", context)
        async for request in requests:
            yield request

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
                        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
                        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
                        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
                    },
                ),
            )
        )

    return ServiceSpec(name="kinds", service_names=(SERVICE,), register=register)


async def _one_of_each(channel: grpc.aio.Channel) -> list[bytes]:
    """Each kind once, without a deadline of the caller's own."""

    async def once() -> AsyncIterator[bytes]:
        yield b"x"

    return [
        await channel.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x"),
        *[reply async for reply in channel.unary_stream(f"/{SERVICE}/UnaryStream")(b"x")],
        await channel.stream_unary(f"/{SERVICE}/StreamUnary")(once()),
        *[reply async for reply in channel.stream_stream(f"/{SERVICE}/StreamStream")(once())],
    ]


async def test_a_services_own_channel_signs_every_kind_with_a_deadline_and_the_trace() -> None:
    seen = _Seen()
    runtime = RuntimeSettings(grpc_call_timeout_seconds=5.0, grpc_stream_timeout_seconds=STREAM_TIMEOUT)
    async with serving(_spec(seen)) as served:
        channel = open_channel(served.target, runtime)
        try:
            with TracerProvider().get_tracer("test").start_as_current_span("caller"):
                assert await _one_of_each(channel) == [b"x"] * 4
        finally:
            await channel.close()
    assert [kind for kind, _, _ in seen.calls] == ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]
    for kind, remaining, traced in seen.calls:
        limit = 5.0 if kind == "unary_unary" else STREAM_TIMEOUT
        assert remaining is not None, f"{kind} went out without a deadline"
        assert limit - 2 < remaining <= limit + 0.1, (kind, remaining)  # (+ grpc-timeout's rounding up)
        assert traced, f"{kind} went out without the trace context"


async def test_a_channel_that_signs_nothing_is_refused_every_kind_and_health_still_answers() -> None:
    seen = _Seen()
    async with serving(_spec(seen)) as served, grpc.aio.insecure_channel(served.target) as outside:

        async def once() -> AsyncIterator[bytes]:
            yield b"x"

        calls = {
            "unary_unary": outside.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x", timeout=10),
            "unary_stream": outside.unary_stream(f"/{SERVICE}/UnaryStream")(b"x", timeout=10).read(),
            "stream_unary": outside.stream_unary(f"/{SERVICE}/StreamUnary")(once(), timeout=10),
            "stream_stream": outside.stream_stream(f"/{SERVICE}/StreamStream")(once(), timeout=10).read(),
        }
        for kind, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, kind
            info = error_info_of(raised.value)
            assert info is not None, kind
            assert (info.reason, info.domain) == ("MESH_CALLER_UNVERIFIED", "runtime.skm"), kind
            assert info.metadata["method"].startswith(f"/{SERVICE}/"), kind
        reply = await health_pb2_grpc.HealthStub(outside).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The same calls, signed, are served.
        async with signed_channel(served.target) as inside:
            assert await _one_of_each(inside) == [b"x"] * 4
    assert len(seen.calls) == 4, "no refused call reached its method"


@pytest.fixture
def no_mesh_key(mesh_key_file: Path) -> Iterator[None]:
    use_mesh_keys([])
    try:
        yield
    finally:
        configure_mesh_key(mesh_key_file)


@pytest.mark.usefixtures("no_mesh_key")
async def test_a_server_of_the_mesh_does_not_start_without_the_mesh_key() -> None:
    with pytest.raises(MeshKeyMissing, match="SKM_MESH_KEY_FILE"):
        async with serving(_spec(_Seen())):
            pass
