"""What svc_gateway still serves behind Envoy's catch-all: health for the services behind
it (by asking them), reflection for the whole contract, and METHOD_NOT_PUBLIC for the rest."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm_runtime.contract import methods
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import error_info_of
from svc_analytics.__main__ import build as build_analytics
from svc_analytics.settings import AnalyticsSettings
from svc_gateway.__main__ import build
from svc_gateway.settings import GatewaySettings
from tests.support.ports import free_port
from tests.support.runtime import serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_backend_that_is_down_is_not_serving_and_one_that_is_up_is(chdb_warehouse_url: str) -> None:
    runtime = RuntimeSettings()
    # Up without Kafka: its ingestion waits for Kafka in the background; it serves meanwhile.
    up = AnalyticsSettings(warehouse_url=chdb_warehouse_url, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    async with serving(await build_analytics(up, runtime)) as analytics:
        settings = GatewaySettings(
            analytics_addr=analytics.target,
            policy_addr=f"127.0.0.1:{free_port()}",  # nothing listens there
            backend_health_timeout_seconds=0.5,
        )
        async with (
            serving(await build(settings, runtime)) as gateway,
            signed_channel(gateway.target) as chan,
        ):
            health = health_pb2_grpc.HealthStub(chan)

            async def status(name: str) -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                return int(reply.status)

            assert await status("") == SERVING
            assert await status("skm.analytics.v1.AnalyticsService") == SERVING
            assert await status("skm.policy.v1.PolicyService") == NOT_SERVING
            assert await status("skm.policy.v1.BlockedActionService") == NOT_SERVING

            watch = health.Watch(health_pb2.HealthCheckRequest(service="skm.policy.v1.PolicyService"))
            first = await watch.read()
            assert first.status == NOT_SERVING
            watch.cancel()


async def test_the_gateway_describes_every_service_behind_it() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    def request(**kind: str) -> bytes:
        return reflection_pb2.ServerReflectionRequest(**kind).SerializeToString()

    async with (
        serving(await build(GatewaySettings(), RuntimeSettings())) as gateway,
        signed_channel(gateway.target) as chan,
    ):
        # The v1 protocol name, which grpcio-reflection does not serve by itself.
        call = chan.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")(timeout=5)
        await call.write(request(list_services=""))
        listed = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
        await call.write(request(file_containing_symbol="skm.conversation.v1.ConversationService"))
        described = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
        await call.done_writing()
    names = {s.name for s in listed.list_services_response.service}
    assert "skm.conversation.v1.ConversationService" in names
    assert "skm.tools.v1.ToolService" in names
    assert described.HasField("file_descriptor_response")


INTERNAL = "/skm.policy.v1.PolicyService/Check"


async def test_any_path_that_is_no_public_method_is_not_public_while_health_and_reflection_answer() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    assert methods()[INTERNAL].authz is None  # an internal method of the contract
    token = (("authorization", "Bearer anything"),)
    async with (
        serving(await build(GatewaySettings(), RuntimeSettings())) as gateway,
        grpc.aio.insecure_channel(gateway.target) as chan,  # a client's: nothing signed
    ):
        for path in (INTERNAL, "/skm.nothing.v1.Nothing/Do", "/x"):
            unary = chan.unary_unary(path)(b"", metadata=token, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await unary
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value.details()
            info = error_info_of(raised.value)
            assert info is not None
            assert (info.reason, info.domain, info.metadata["method"]) == ("METHOD_NOT_PUBLIC", "gateway.skm", path)
        stream = chan.stream_stream("/foo.Bar/Stream")(timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        info = error_info_of(raised.value)
        assert info is not None
        assert (info.reason, info.metadata["method"]) == ("METHOD_NOT_PUBLIC", "/foo.Bar/Stream")

        reply = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == SERVING
        call = chan.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString())
        listed = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
        await call.done_writing()
    assert "skm.policy.v1.PolicyService" in {s.name for s in listed.list_services_response.service}
