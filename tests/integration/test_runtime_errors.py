"""The runtime's answers to failing cores and to bad input, seen from a real grpc client."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import details_of, error_info_of
from tests.support import echo_service
from tests.support.runtime import Served, serving

MAX_BYTES = 64 * 1024


@pytest.fixture
async def echo() -> AsyncIterator[Served]:
    async with serving(echo_service.SPEC, RuntimeSettings(grpc_max_receive_bytes=MAX_BYTES)) as served:
        yield served


@pytest.fixture
async def channel(echo: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with signed_channel(echo.target) as chan:
        yield chan


def method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{echo_service.SERVICE}/{name}")


async def assert_still_serving(channel: grpc.aio.Channel) -> None:
    assert await method(channel, "Unary")(b"ping", timeout=5) == b"ping"


async def test_domain_error_arrives_with_its_code_and_error_info(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(channel, "Fail")(b"widget-7", timeout=5)
    error = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing"
    info = error_info_of(error)
    assert info is not None
    assert (info.reason, info.domain) == ("THING_NOT_FOUND", "testing.skm")
    assert dict(info.metadata) == {"thing": "widget-7"}
    status = details_of(error.trailing_metadata())
    assert status is not None
    assert len(status.details) == 1
    await assert_still_serving(channel)


async def test_unknown_error_is_internal_without_internals(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(channel, "Crash")(b"", timeout=5)
    error = raised.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    everything_sent = repr(error.trailing_metadata()) + repr(error.initial_metadata()) + str(error.details())
    assert "hunter2" not in everything_sent
    assert "RuntimeError" not in everything_sent
    info = error_info_of(error)
    assert info is not None
    assert info.reason == "INTERNAL"
    await assert_still_serving(channel)


async def test_malformed_protobuf_bytes_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    # Field 1 announced as length-delimited with a length far beyond the data: not a message.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await check(b"\x0a\xff\xff\xff\x0f\x01", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(raised.value)
    assert info is not None
    assert (info.reason, info.domain) == ("MALFORMED_REQUEST", "runtime.skm")
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=echo_service.SERVICE), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_malformed_message_inside_a_stream_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    """Every message of a stream is checked, not only the first."""
    from grpc_reflection.v1alpha import reflection_pb2

    info_stream = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    call = info_stream(timeout=5)
    await call.write(good)
    first = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
    assert echo_service.SERVICE in {s.name for s in first.list_services_response.service}
    await call.write(b"\x0a\xff\xff\xff\x0f\x01")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await assert_still_serving(channel)


async def test_oversize_message_is_resource_exhausted(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(channel, "Unary")(b"x" * (MAX_BYTES + 1), timeout=5)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await method(channel, "Unary")(b"x" * (MAX_BYTES - 64), timeout=5) == b"x" * (MAX_BYTES - 64)


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(channel, "NoSuchMethod")(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/skm.nothing.v1.Nope/Call")(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await assert_still_serving(channel)


async def test_bidi_stream_echoes_pcm_frames(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(f"/{echo_service.SERVICE}/Bidi")(timeout=5)
    frames = [bytes([i]) * 640 for i in range(50)]
    for frame in frames:
        await call.write(frame)
        assert await call.read() == frame
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_client_leaving_a_stream_that_is_answering_leaves_no_error_behind(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is writing when the client goes: grpc stops asking the servicer's async
    generator for more, and nothing of the call (its span, its deadline in a ContextVar) may
    be left for the event loop to close later in another task, where it failed before."""
    gc.collect()  # what earlier tests left behind is not this test's business
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(str(context.get("exception") or context)))
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda hook: problems.append(repr(hook.exc_value))
    try:
        for _ in range(40):
            call = channel.stream_stream(f"/{echo_service.SERVICE}/Flood")(iter([b"x" * 1024]), timeout=10)
            assert await call.read() == b"x" * 1024
            call.cancel()
        await asyncio.sleep(0.2)
        gc.collect()
        await asyncio.sleep(0.2)
    finally:
        loop.set_exception_handler(None)
        sys.unraisablehook = unraisable
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("skm")]
    # The server's side only: grpc's client may leave its own request-feeding task behind.
    problems = [p for p in problems if "Context" in p or "skm_" in p]
    assert not problems, problems[:3]
    assert not errors, errors[:3]
    await assert_still_serving(channel)
