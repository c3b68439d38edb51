"""A service process's life: health, reflection, graceful drain on SIGTERM, trace and deadline
propagation across a service hop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind

from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, signed_channel
from tests.support import echo_service
from tests.support.ports import free_port
from tests.support.runtime import serving

ROOT = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 3.0


async def _wait_serving(target: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    async with signed_channel(target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=echo_service.SERVICE), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > end:
                    raise
            await asyncio.sleep(0.05)


METRICS_PORT = free_port()


@pytest.fixture
async def echo_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "SKM_ECHO_ADDR": target,
        "SKM_ECHO_METRICS_ADDR": f"127.0.0.1:{METRICS_PORT}",
        "SKM_GRPC_DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.echo_service",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_serving(target)
        yield proc, target
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def test_sigterm_lets_an_open_bidi_stream_finish_and_refuses_new_calls(
    echo_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    proc, target = echo_process
    async with signed_channel(target) as chan:
        call = chan.stream_stream(f"/{echo_service.SERVICE}/Bidi")(timeout=30)
        await call.write(b"a" * 640)
        assert await call.read() == b"a" * 640

        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # let the process begin draining

        # A new call on a fresh connection is refused while the stream keeps flowing.
        async with signed_channel(target) as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await fresh.unary_unary(f"/{echo_service.SERVICE}/Unary")(b"late", timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        for i in range(10):
            frame = bytes([i]) * 640
            await call.write(frame)
            assert await call.read() == frame
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

    started = time.monotonic()
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert time.monotonic() - started < DRAIN_SECONDS


async def test_a_stream_that_outlives_the_drain_bound_is_cut_and_the_process_exits_0(
    echo_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    proc, target = echo_process
    async with signed_channel(target) as chan:
        call = chan.stream_stream(f"/{echo_service.SERVICE}/Bidi")(timeout=60)
        await call.write(b"b" * 640)
        assert await call.read() == b"b" * 640
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), DRAIN_SECONDS + 5)
        took = time.monotonic() - signalled
        assert code == 0
        assert DRAIN_SECONDS - 0.5 <= took <= DRAIN_SECONDS + 5
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()


async def test_rpc_metrics_are_served_for_prometheus(
    echo_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    _proc, target = echo_process
    async with signed_channel(target) as chan:
        for _ in range(3):
            await chan.unary_unary(f"/{echo_service.SERVICE}/Unary")(b"x", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await chan.unary_unary(f"/{echo_service.SERVICE}/Fail")(b"x", timeout=5)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5)).text
    counts = [
        line
        for line in text.splitlines()
        if line.startswith("rpc_server_duration")
        and "_count{" in line
        and f'rpc_service="{echo_service.SERVICE}"' in line
    ]
    ok = [line for line in counts if 'rpc_method="Unary"' in line and 'rpc_grpc_status_code="0"' in line]
    failed = [line for line in counts if 'rpc_method="Fail"' in line and 'rpc_grpc_status_code="5"' in line]
    assert len(ok) == 1
    assert float(ok[0].rsplit(" ", 1)[1]) == 3.0
    assert len(failed) == 1


async def test_health_and_reflection_list_the_service() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with serving(echo_service.SPEC) as served, signed_channel(served.target) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        for name in ("", echo_service.SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="skm.nope.v1.Nope"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        call = stub.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        names = {s.name for s in reply.list_services_response.service}
        assert {echo_service.SERVICE, "grpc.health.v1.Health"} <= names
        await call.done_writing()


def _relay_spec(downstream: str, runtime: RuntimeSettings) -> ServiceSpec:
    """A service whose one RPC calls the echo service: a real service hop."""

    async def relay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with open_channel(downstream, runtime) as chan:
            return await chan.unary_unary(f"/{echo_service.SERVICE}/{request.decode()}")(b"0.3")

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "skm.testing.v1.RelayService", {"Relay": grpc.unary_unary_rpc_method_handler(relay)}
                ),
            )
        )

    return ServiceSpec(name="relay", service_names=("skm.testing.v1.RelayService",), register=register)


async def test_trace_context_crosses_a_service_hop() -> None:
    runtime = RuntimeSettings()
    async with serving(echo_service.SPEC) as echo, serving(_relay_spec(echo.target, runtime)) as relay:
        async with signed_channel(relay.target) as chan:
            await chan.unary_unary("/skm.testing.v1.RelayService/Relay")(b"Unary", timeout=5)
        (relay_span,) = [s for s in relay.spans.get_finished_spans() if s.kind is SpanKind.SERVER]
        (echo_span,) = [s for s in echo.spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert relay_span.name == "skm.testing.v1.RelayService/Relay"
    assert echo_span.name == f"{echo_service.SERVICE}/Unary"
    assert echo_span.context.trace_id == relay_span.context.trace_id
    assert echo_span.parent is not None
    assert echo_span.parent.span_id == relay_span.context.span_id


async def test_without_span_export_the_callers_trace_still_crosses_the_hop() -> None:
    runtime = RuntimeSettings()
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        serving(echo_service.SPEC, record_spans=False) as echo,
        serving(_relay_spec(echo.target, runtime), record_spans=False) as relay,
        signed_channel(relay.target) as chan,
    ):
        relay_call = chan.unary_unary("/skm.testing.v1.RelayService/Relay")
        seen = (await relay_call(b"Traceparent", timeout=5, metadata=(("traceparent", caller),))).decode()
        assert seen.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert relay.spans.get_finished_spans() == ()


async def test_outbound_calls_inherit_the_inbound_deadline() -> None:
    """The relay's outbound default is 10 s; its caller gave 2 s: the hop gets what remains."""
    runtime = RuntimeSettings()
    async with (
        serving(echo_service.SPEC) as echo,
        serving(_relay_spec(echo.target, runtime)) as relay,
        signed_channel(relay.target) as chan,
    ):
        relay_call = chan.unary_unary("/skm.testing.v1.RelayService/Relay")
        # grpc-timeout travels rounded up to its unit, hence the small allowances.
        inherited = float(await relay_call(b"Remaining", timeout=2.0))
        assert 0 < inherited <= 2.1
        defaulted = float(await relay_call(b"Remaining"))  # no inbound deadline at all
        assert 5.0 < defaulted <= runtime.grpc_call_timeout_seconds + 0.5
