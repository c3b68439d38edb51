"""The local stack runs the real servers: each one is asked who it is.

PostgreSQL reports its version, Redis its INFO, Kafka its API versions and a record that
goes in with acks=all and comes back out, OpenFGA stores a model and answers checks,
Envoy reports its build, carries gRPC and grpc-web to a service the stack started, routes
each public method to the server of its owner and drops the mesh's headers a client sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import ApiVersionRequest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openfga_sdk import ClientConfiguration, OpenFgaClient
from openfga_sdk.client.models import ClientCheckRequest, ClientTuple, ClientWriteRequest
from openfga_sdk.credentials import CredentialConfiguration, Credentials
from openfga_sdk.exceptions import UnauthorizedException
from openfga_sdk.models import CreateStoreRequest, WriteAuthorizationModelRequest

from skm_runtime.contract import methods
from skm_runtime.principal import FORWARDED_BY_KEY, PRINCIPAL_KEY
from skm_runtime.server import signed_channel
from skm_stack import RunningStack, ServiceSpec, Toolchain, stop_recorded
from skm_stack.envoy import render_config, validate_config
from skm_stack.envoy_routes import clusters, public_routes
from skm_stack.process import process_start_ticks
from tests.conftest import EnvoyFactory, StackFactory
from tests.support import echo_service

# -- PostgreSQL ---------------------------------------------------------------------------


async def test_postgres_reports_version_15(stack: RunningStack) -> None:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        version = await conn.fetchval("SELECT version()")
        user, database = await conn.fetchrow("SELECT current_user, current_database()")
        listen = await conn.fetchval("SHOW listen_addresses")
    finally:
        await conn.close()
    assert "PostgreSQL 15" in version
    assert (user, database) == ("skm", "skm")
    assert listen == "127.0.0.1"


# -- Redis --------------------------------------------------------------------------------


async def test_redis_reports_its_server_info(stack: RunningStack) -> None:
    assert stack.redis is not None
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        info = await client.info("server")
        bind = await client.config_get("bind")
        protected = await client.config_get("protected-mode")
    finally:
        await client.aclose()
    assert str(info["redis_version"]).split(".")[0].isdigit()
    assert int(info["tcp_port"]) == stack.redis.port
    assert bind == {"bind": "127.0.0.1"}
    assert protected == {"protected-mode": "yes"}


# -- Kafka --------------------------------------------------------------------------------


async def test_kafka_round_trips_a_record_with_acks_all(stack: RunningStack) -> None:
    topic = f"skm.identity.{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"audit event", key=b"tenants/t1/sessions/s1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"tenants/t1/sessions/s1", b"audit event")
    assert (record.partition, record.offset) == (sent.partition, sent.offset)


async def test_kafka_answers_api_versions_as_a_kraft_broker(stack: RunningStack) -> None:
    assert stack.kafka is not None
    conn = await create_conn("127.0.0.1", stack.kafka.port)
    try:
        response = await conn.send(ApiVersionRequest())
    finally:
        conn.close()
    versions = {key: (low, high) for key, low, high in response.api_versions}
    assert response.error_code == 0
    assert 0 in versions  # Produce
    assert 1 in versions  # Fetch
    assert 55 in versions  # DescribeQuorum: only a KRaft (Raft-quorum) broker serves it

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert cluster["cluster_id"] == stack.kafka.cluster_id
    assert [broker["node_id"] for broker in cluster["brokers"]] == [1]
    # The broker logs through reload4j into the stack's log file.
    log = stack.kafka.process.log_path.read_text()
    assert "Kafka version: 3.9.1" in log


# -- OpenFGA ------------------------------------------------------------------------------

_MODEL = json.loads(
    """
    {
      "schema_version": "1.1",
      "type_definitions": [
        {"type": "user"},
        {
          "type": "document",
          "relations": {"viewer": {"this": {}}},
          "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}
        }
      ]
    }
    """
)


def _fga_config(stack: RunningStack, token: str, store_id: str | None = None) -> ClientConfiguration:
    return ClientConfiguration(
        api_url=stack.openfga_api_url,
        store_id=store_id,
        credentials=Credentials(method="api_token", configuration=CredentialConfiguration(api_token=token)),
    )


async def test_openfga_stores_a_model_and_answers_checks(stack: RunningStack) -> None:
    assert stack.openfga is not None
    token = stack.openfga.api_token()
    async with OpenFgaClient(_fga_config(stack, token)) as fga:
        store = await fga.create_store(CreateStoreRequest(name=f"skm-identity-{uuid.uuid4().hex[:8]}"))
    async with OpenFgaClient(_fga_config(stack, token, store.id)) as fga:
        model = await fga.write_authorization_model(WriteAuthorizationModelRequest(**_MODEL))
        fga.set_authorization_model_id(model.authorization_model_id)
        await fga.write(
            ClientWriteRequest(writes=[ClientTuple(user="user:ana", relation="viewer", object="document:plan")])
        )
        allowed = await fga.check(ClientCheckRequest(user="user:ana", relation="viewer", object="document:plan"))
        denied = await fga.check(ClientCheckRequest(user="user:bo", relation="viewer", object="document:plan"))
    assert allowed.allowed is True
    assert denied.allowed is False


async def test_openfga_requires_the_stacks_preshared_key(stack: RunningStack) -> None:
    assert stack.openfga is not None
    with pytest.raises(UnauthorizedException):
        async with OpenFgaClient(_fga_config(stack, "not-the-key")) as fga:
            await fga.list_stores()
    token_file = stack.openfga.token_file
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = stack.openfga.api_token()
    # The key is in no log, no command line and not in stack.json.
    assert token not in stack.openfga.process.log_path.read_text()
    assert token not in (stack.state_dir / "stack.json").read_text()


# -- Envoy --------------------------------------------------------------------------------


def test_envoy_accepts_the_rendered_config_and_rejects_a_broken_one(toolchain: Toolchain, tmp_path: Path) -> None:
    good = tmp_path / "envoy.yaml"
    upstreams = {name: 50051 + number for number, name in enumerate(clusters(methods()))}
    good.write_text(render_config(port=18080, admin_port=19901, upstreams=upstreams))
    validate_config(toolchain.envoy, good)

    broken = tmp_path / "broken.yaml"
    broken.write_text(good.read_text().replace("codec_type: AUTO", "codec_type: SOMETIMES"))
    with pytest.raises(ValueError, match="rejects"):
        validate_config(toolchain.envoy, broken)


async def test_envoy_reports_its_version_and_state(envoy_factory: EnvoyFactory) -> None:
    envoy = envoy_factory(50051)
    async with httpx.AsyncClient(base_url=envoy.admin_url) as admin:
        info = (await admin.get("/server_info")).json()
        ready = await admin.get("/ready")
    assert "/1.40." in info["version"]
    assert info["state"] == "LIVE"
    assert ready.text.strip() == "LIVE"


def _grpc_web_frame(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def _grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset < len(body):
        flags, size = struct.unpack_from(">BI", body, offset)
        frames.append((flags, body[offset + 5 : offset + 5 + size]))
        offset += 5 + size
    return frames


async def test_envoy_carries_grpc_and_grpc_web_to_a_service_the_stack_started(
    stack_factory: StackFactory,
) -> None:
    running = stack_factory()
    running.start_services(
        [ServiceSpec("echo", "tests.support.echo_service", port=0, health_services=("", echo_service.SERVICE))]
    )
    envoy = running.start_envoy(running.service_specs[0].port)
    method = f"/{echo_service.SERVICE}/Unary"

    # Native gRPC over HTTP/2 through Envoy: unary, a bidi stream, health.
    async with signed_channel(f"127.0.0.1:{envoy.port}") as channel:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        assert await unary(b"ping", timeout=10) == b"ping"
        bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(f"/{echo_service.SERVICE}/Bidi")
        frames = [bytes([n]) * 640 for n in range(5)]  # 20 ms of 16 kHz PCM each
        call = bidi(iter(frames), timeout=10)
        assert [reply async for reply in call] == frames
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=echo_service.SERVICE), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # grpc-web over HTTP/1.1, as a browser on a localhost dev server sends it.
    origin = "http://localhost:5173"
    async with httpx.AsyncClient(base_url=envoy.url, http2=False) as web:
        preflight = await web.options(
            method,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-grpc-web,grpc-timeout",
            },
        )
        response = await web.post(
            method,
            content=_grpc_web_frame(b"hello"),
            headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1", "Origin": origin},
        )
        foreign = await web.options(
            method, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert preflight.headers.get("access-control-allow-origin") == origin
    assert response.status_code == 200
    assert response.headers.get("access-control-allow-origin") == origin
    assert "grpc-status" in response.headers.get("access-control-expose-headers", "")
    frames_back = _grpc_web_frames(response.content)
    assert frames_back[0] == (0, b"hello")
    trailer_flags, trailers = frames_back[-1]
    assert trailer_flags & 0x80
    assert b"grpc-status:0" in trailers.replace(b" ", b"")
    assert "access-control-allow-origin" not in foreign.headers


class _AnyMethod(grpc.GenericRpcHandler):
    """One unary handler for every path."""

    def __init__(self, answer: Callable[..., object]) -> None:
        self._handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(answer)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return self._handler


class _NamedServer:
    """A bare grpc.aio server answering every unary call with its own name; it records the
    metadata each call arrived with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[dict[str, str | bytes]] = []
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((_AnyMethod(self._answer),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _answer(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.received.append(dict(context.invocation_metadata() or ()))
        return self.name.encode()


async def test_envoy_routes_each_public_method_to_its_owner_without_mesh_headers(
    envoy_factory: EnvoyFactory,
) -> None:
    public = public_routes(methods())
    first = next(iter(public.items()))
    second = next((path, owner) for path, owner in public.items() if owner != first[1])
    servers = {owner: _NamedServer(owner) for _path, owner in (first, second)}
    for named in servers.values():
        await named.server.start()
    try:
        envoy = envoy_factory({owner: named.port for owner, named in servers.items()})
        forged = ((PRINCIPAL_KEY, b"forged principal"), (FORWARDED_BY_KEY, "gateway"), ("x-request-id", "r-1"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
            for path, owner in (first, second):
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
                assert await call(b"", metadata=forged, timeout=10) == owner.encode()
        # grpc-web too: the header removal comes after the grpc_web filter.
        async with httpx.AsyncClient(base_url=envoy.url, http2=False) as web:
            response = await web.post(
                second[0],
                content=_grpc_web_frame(b""),
                headers={
                    "Content-Type": "application/grpc-web+proto",
                    "X-Grpc-Web": "1",
                    PRINCIPAL_KEY: "Zm9yZ2Vk",
                    # HTTP/1.1 names are case-insensitive: the removal must be too.
                    FORWARDED_BY_KEY.upper(): "gateway",
                    "x-request-id": "r-2",
                },
            )
        assert _grpc_web_frames(response.content)[0] == (0, second[1].encode())
    finally:
        for named in servers.values():
            await named.server.stop(None)

    calls = [*servers[first[1]].received, *servers[second[1]].received]
    assert [len(named.received) for named in servers.values()] == [1, 2]
    assert [metadata.get("x-request-id") for metadata in calls] == ["r-1", "r-1", "r-2"]
    assert [key for metadata in calls for key in metadata if key.startswith("x-skm-")] == []


# -- lifecycle ----------------------------------------------------------------------------


def test_stop_ends_exactly_what_it_started(stack_factory: StackFactory) -> None:
    running = stack_factory(("redis",))
    assert running.redis is not None
    process = running.redis.process
    assert process.pid_path.read_text().strip() == str(process.pid)
    running.stop()
    assert process.exit_code() is not None
    assert not process.pid_path.exists()
    assert not (running.state_dir / "stack.json").exists()


def test_down_stops_a_stack_recorded_by_another_process(stack_factory: StackFactory) -> None:
    running = stack_factory(("redis",))
    assert running.redis is not None
    pid = running.redis.process.pid
    manifest = json.loads((running.state_dir / "stack.json").read_text())
    assert [p["pid"] for p in manifest["processes"]] == [pid]

    stopped = stop_recorded(running.state_dir)  # what `python -m skm_stack down` does

    assert stopped == 1
    running.redis.process.exit_code()  # reap it: this test process is its parent
    assert process_start_ticks(pid) is None
    assert not (running.state_dir / "stack.json").exists()
