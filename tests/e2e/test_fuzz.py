"""Garbage through Envoy, to every public method of every service, of all four kinds.

Random bytes, random but well-typed messages, those messages with bytes flipped or cut
short, several of them on one stream, gRPC frames whose length prefix promises more bytes
than the stream carries (sent over raw HTTP/2, which no gRPC client would do), and streams
the client resets while the platform may be answering. The
platform must answer each with a status that says what was wrong (never INTERNAL or
UNKNOWN: those mean a fault of ours), keep every service SERVING, and log no error.

The seed is printed; rerun one with SKM_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import jwt
from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skm.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc, session_pb2
from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.type.v1 import deployment_mode_pb2
from skm_runtime.contract import Method, methods
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from skm_stack.devkeys import KEY_ID, dev_keys_dir

# At least this many payloads in all, spread evenly over the public methods.
PAYLOADS = 500
# Calls per streaming method that the client leaves mid-way (marked by CUT first).
CUTS_PER_STREAM = 6
CUT = b"cut"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Statuses that mean a fault of the platform, not of the request.
# "RESET" and "NONE": the stream was cut or never answered, with no status at all.
OUR_FAULT = {"INTERNAL", "UNKNOWN", "RESET", "NONE"}
_FD = pb_descriptor.FieldDescriptor
# grpc-status numbers ("13") to names ("INTERNAL").
_CODE_NAMES = {str(code.value[0]): code.name for code in grpc.StatusCode}


def _public() -> list[Method]:
    return sorted((m for m in methods().values() if m.authz is not None), key=lambda m: m.path)


def _token(state_dir: Path, tenant: str) -> str:
    now = int(time.time())
    body = {
        "iss": "skm-dev",
        "aud": "skm",
        "sub": "olga",
        "tenant": tenant,
        "roles": ["admin", "operator", "member"],
        "constitution_sha256": EMPTY_SHA256,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    key = (dev_keys_dir(state_dir) / "dev-signing-key.pem").read_bytes()
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": KEY_ID})


class Garbage:
    """Payloads for one method's request type: random bytes, random well-typed messages
    (names within the tenant, so some get past authorization), and mangled ones."""

    def __init__(self, rng: random.Random, tenant: str, names: Sequence[str] = ()) -> None:
        self.rng = rng
        self.tenant = tenant
        # Names of things that exist (a session), so some calls reach deep into a service.
        self.names = tuple(names)

    def _string(self) -> str:
        r = self.rng
        return r.choice(
            [
                "",
                self.tenant,
                *self.names,
                *self.names,
                f"{self.tenant}/sessions/{uuid.UUID(int=r.getrandbits(128))}",
                f"{self.tenant}/sessions/s/turns/{r.randint(-1, 9)}",
                f"{self.tenant}/blockedActions/{r.getrandbits(32)}",
                f"{self.tenant}/personas/default",
                f"{self.tenant}/tools/code_execution",
                f"{self.tenant}/knowledgeBases/kb/documents/{r.getrandbits(16)}",
                "tenants/other/sessions/s",
                "tenants/../x",
                '{"code": "print(1)", "runtime": "python"}',
                "\u0000\ud7ff\u202e" * r.randint(1, 3),
                "x" * r.choice([1, 64, 4096]),
                r.randbytes(r.randint(1, 24)).hex(),
            ]
        )

    def _value(self, field: _FD, depth: int) -> Any:
        r = self.rng
        kind = field.type
        if kind == _FD.TYPE_MESSAGE:
            return self.message(field.message_type._concrete_class, depth + 1)
        if kind == _FD.TYPE_STRING:
            return self._string()
        if kind == _FD.TYPE_BYTES:
            return r.randbytes(r.randint(0, 64))
        if kind == _FD.TYPE_BOOL:
            return r.random() < 0.5
        if kind == _FD.TYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values]
            return r.choice([*numbers, 97])  # 97: a number the enum does not define
        if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
            return r.choice([0.0, -1.0, 1e300 if kind == _FD.TYPE_DOUBLE else 1e30, r.uniform(-5, 5)])
        if kind in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
            return r.choice([0, 1, 2**32 - 1, r.getrandbits(32)])
        if kind in (_FD.TYPE_UINT64, _FD.TYPE_FIXED64):
            return r.choice([0, 1, 2**64 - 1, r.getrandbits(64)])
        if kind in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32):
            return r.choice([0, -1, 2**31 - 1, -(2**31), r.randint(-100, 100)])
        return r.choice([0, -1, 2**63 - 1, -(2**63), r.randint(-100, 100)])

    def message(self, cls: type[Message], depth: int = 0) -> Message:
        r = self.rng
        message = cls()
        if depth > 3 or message.DESCRIPTOR.full_name.startswith("google.protobuf."):
            return message
        for field in message.DESCRIPTOR.fields:
            if r.random() < 0.35:
                continue
            try:
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    continue  # maps: left empty
                if field.is_repeated:
                    values = [self._value(field, depth) for _ in range(r.randint(0, 3))]
                    if field.type == _FD.TYPE_MESSAGE:
                        for value in values:
                            getattr(message, field.name).add().CopyFrom(value)
                    else:
                        getattr(message, field.name).extend(values)
                elif field.type == _FD.TYPE_MESSAGE:
                    getattr(message, field.name).CopyFrom(self._value(field, depth))
                else:
                    setattr(message, field.name, self._value(field, depth))
            except (TypeError, ValueError):
                continue  # a value this field cannot hold (e.g. a float out of range)
        return message

    def payload(self, cls: type[Message]) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.3:
            return r.randbytes(r.randint(0, 300))
        data = bytearray(self.message(cls).SerializeToString())
        if kind < 0.6 or not data:
            return bytes(data)
        if kind < 0.8:
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] = r.getrandbits(8)
            return bytes(data)
        return bytes(data[: r.randrange(len(data))])


@dataclass
class Answer:
    method: str
    kind: str
    code: str  # the status code's name; "RESET" or "NONE" when no status came
    details: str


def _kind(method: Method) -> str:
    return f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"


async def _grpc_call(channel: grpc.aio.Channel, method: Method, request: bytes, metadata: Any) -> Answer:
    """A call with a unary request, as a gRPC client makes it."""
    try:
        if method.server_streaming:
            async for _ in channel.unary_stream(method.path)(request, metadata=metadata, timeout=5.0):
                pass
        else:
            await channel.unary_unary(method.path)(request, metadata=metadata, timeout=5.0)
    except grpc.aio.AioRpcError as error:
        return Answer(method.path, _kind(method), error.code().name, error.details() or "")
    return Answer(method.path, _kind(method), "OK", "")


def _frame(message: bytes, *, claimed: int | None = None) -> bytes:
    """One gRPC length-prefixed frame; `claimed` overrides the length it announces."""
    return struct.pack(">?I", False, len(message) if claimed is None else claimed) + message


def _h2_open(host: str, port: int, path: str, token: str, *, deadline: str) -> tuple[h2.connection.H2Connection, int]:
    """An HTTP/2 client connection with one gRPC call's headers queued (nothing sent yet)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"{host}:{port}"),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", deadline),
            ("authorization", f"Bearer {token}"),
        ],
    )
    return conn, stream


def _h2_call(host: str, port: int, path: str, token: str, body: bytes) -> tuple[str, str]:
    """One call over raw HTTP/2 whose request body is `body` (frames, whole or not), sent at
    once and followed by the end of the stream, with a 2 s deadline; returns the answer's
    (grpc-status, grpc-message), "RESET" for a stream reset without a status, "NONE" for no
    answer at all. Unlike a gRPC client, this reads the status the server sent even when it
    answered before reading everything (a client library may report its own failure to
    write then), and it can send frames no client library would."""
    conn, stream = _h2_open(host, port, path, token, deadline="2S")
    headers: dict[str, str] = {}
    with socket.create_connection((host, port), timeout=20) as sock:
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update({str(k): str(v) for k, v in event.headers})
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, h2.events.StreamReset):
                    return headers.get("grpc-status", "RESET"), headers.get("grpc-message", "")
                if isinstance(event, h2.events.StreamEnded):
                    return headers.get("grpc-status", "NONE"), headers.get("grpc-message", "")
            sock.sendall(conn.data_to_send())
    return headers.get("grpc-status", "NONE"), headers.get("grpc-message", "")


def _h2_cut(host: str, port: int, path: str, token: str, body: bytes, after: float) -> str:
    """Opens a call over raw HTTP/2, sends `body`, reads for `after` seconds, then resets the
    stream (CANCEL) and goes: a client that leaves while the platform may be answering.
    Returns "CUT" (there is no status to read)."""
    conn, stream = _h2_open(host, port, path, token, deadline="5S")
    with socket.create_connection((host, port), timeout=20) as sock:
        conn.send_data(stream, body)
        sock.sendall(conn.data_to_send())
        sock.settimeout(max(after, 0.001))
        until = time.monotonic() + after
        while time.monotonic() < until:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                return "CUT"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return "CUT"
        conn.reset_stream(stream, error_code=8)  # CANCEL
        sock.sendall(conn.data_to_send())
    return "CUT"


def _log_marks(mesh: RunningStack) -> dict[str, int]:
    return {name: service.process.log_path.stat().st_size for name, service in mesh.services.items()}


def _errors_logged_since(mesh: RunningStack, marks: dict[str, int]) -> Iterator[str]:
    for name, service in mesh.services.items():
        with open(service.process.log_path, "rb") as log:
            log.seek(marks[name])
            for line in log.read().decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "Error" in line:
                        yield f"{name}: {line}"
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
                    yield f"{name}: {line[:2000]}"


async def _grant(mesh: RunningStack, tenant: str) -> None:
    t = f"tenant:{tenant}"
    async with signed_channel(mesh.services["policy"].addr) as channel:
        await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=tenant,
                relationships=[
                    access_pb2.Relationship(subject=f"user:{tenant}/users/olga", relation=role, object=t)
                    for role in ("admin", "operator", "member")
                ],
            ),
            timeout=10,
        )


async def test_garbage_to_every_public_method_never_ends_internal_and_nothing_breaks(mesh: RunningStack) -> None:
    seed = int(os.environ.get("SKM_FUZZ_SEED", str(random.SystemRandom().getrandbits(32))))
    print(f"SKM_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    tenant = f"tenants/fz{uuid.uuid4().hex[:8]}"
    await _grant(mesh, tenant)
    token = _token(mesh.state_dir, tenant.removeprefix("tenants/"))
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(mesh.envoy_url.removeprefix("http://")) as channel:
        created = await conversation_service_pb2_grpc.ConversationServiceStub(channel).CreateSession(
            conversation_service_pb2.CreateSessionRequest(
                parent=tenant,
                session=session_pb2.Session(
                    persona=f"{tenant}/personas/default", mode=deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=metadata,
            timeout=30,
        )
    session = created.session.name
    garbage = Garbage(rng, tenant, (session, f"{session}/turns/1"))
    public = _public()
    kinds = {(m.client_streaming, m.server_streaming) for m in public}
    # Every kind the contract has is fuzzed (it has no client-streaming method with a unary
    # reply today; one added later is fuzzed here without a change).
    assert kinds == {(m.client_streaming, m.server_streaming) for m in methods().values()}
    assert len(kinds) >= 3, kinds
    per_method = -(-PAYLOADS // len(public))
    marks = _log_marks(mesh)

    calls: list[tuple[Method, list[bytes]]] = []
    for method in public:
        for _ in range(per_method):
            count = rng.randint(1, 4) if method.client_streaming else 1
            calls.append((method, [garbage.payload(method.request_type) for _ in range(count)]))
        # And one message whose frame promises more bytes than the stream carries.
        calls.append((method, []))
        if method.server_streaming:
            # And calls the client leaves while the platform may be answering.
            for _ in range(CUTS_PER_STREAM):
                count = rng.randint(1, 3) if method.client_streaming else 1
                calls.append((method, [CUT, *(garbage.payload(method.request_type) for _ in range(count))]))
    rng.shuffle(calls)
    limit = asyncio.Semaphore(8)
    host = mesh.envoy_url.removeprefix("http://")
    ip, port = host.rsplit(":", 1)
    async with grpc.aio.insecure_channel(host) as channel:

        async def one(method: Method, requests: list[bytes]) -> Answer:
            async with limit:
                if requests and requests[0] is CUT:
                    body = b"".join(_frame(r) for r in requests[1:])
                    after = rng.uniform(0.0, 0.3)
                    code = await asyncio.to_thread(_h2_cut, ip, int(port), method.path, token, body, after)
                    return Answer(method.path, "cut", code, "")
                if requests and not method.client_streaming:
                    return await _grpc_call(channel, method, requests[0], metadata)
                if requests:
                    body = b"".join(_frame(r) for r in requests)
                else:
                    message = garbage.payload(method.request_type)
                    body = _frame(message, claimed=len(message) + 1 + len(message) // 2)
                code, details = await asyncio.to_thread(_h2_call, ip, int(port), method.path, token, body)
                return Answer(
                    method.path, _kind(method) if requests else "truncated", _CODE_NAMES.get(code, code), details
                )

        answers = await asyncio.gather(*(one(m, r) for m, r in calls))

    errors = list(_errors_logged_since(mesh, marks))
    ours = [a for a in answers if a.code in OUR_FAULT]
    assert not ours, f"seed {seed}: {len(ours)} of {len(answers)} calls ended {ours[:5]}; logged: {errors[:5]}"
    # Each method was reached with every payload (an answer per call), and the garbage was
    # told apart: not everything was refused at the door for the same reason.
    assert len(answers) >= PAYLOADS
    assert {a.kind for a in answers} >= {"unary_unary", "unary_stream", "stream_stream", "truncated", "cut"}
    assert len({a.code for a in answers}) >= 3, {a.code for a in answers}
    print({code: sum(1 for a in answers if a.code == code) for code in sorted({a.code for a in answers})})

    for name, service in mesh.services.items():
        async with signed_channel(service.addr) as own:
            reply = await health_pb2_grpc.HealthStub(own).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    assert not errors, f"seed {seed}: errors logged:\n" + "\n".join(errors[:10])
