"""Public calls through Envoy to the services that admit them themselves, on the real servers.

svc_policy, svc_conversation, svc_tools and svc_profiles each serve with an admission of
their own (skm_runtime.gate: tokens, constitution hashes, rate limits in Redis,
authorization through svc_policy); svc_gateway answers health, reflection and every path
that is no public method; Envoy (the committed config) routes each public method to its
owner and removes every `x-skm-*` header a client sends. Every test calls through Envoy as
a client would, except those that call a service's own port on purpose (what a caller
inside the network reaches without Envoy).

The security cases run against every service that owns public methods, each through one
representative public unary method (DOORS), or a guarded one (GUARDED): every service that
owns public methods is started here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from skm.analytics.v1 import analytics_service_pb2
from skm.audio.v1 import audio_service_pb2
from skm.conversation.v1 import conversation_service_pb2
from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    constitution_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.profiles.v1 import persona_service_pb2
from skm.tools.v1 import tool_service_pb2
from skm.type.v1 import principal_pb2
from skm_runtime.contract import methods, service_owners
from skm_runtime.gate import AdmissionSettings
from skm_runtime.principal import (
    CALLER_KEY,
    PRINCIPAL_KEY,
    PRINCIPAL_MAC_KEY,
    caller_metadata,
    principal_message,
    principal_metadata,
)
from skm_runtime.ratelimit import RedisRateLimiter
from skm_runtime.server import RuntimeSettings, ServiceSpec, signed_channel
from skm_runtime.status import details_of, error_info_of
from skm_stack import RunningStack
from skm_stack.catalogue import models_root
from skm_stack.envoy import EnvoyServer, start_envoy
from svc_analytics.__main__ import build as build_analytics
from svc_analytics.settings import AnalyticsSettings
from svc_audio.__main__ import build as build_audio
from svc_audio.settings import AudioSettings
from svc_conversation.__main__ import build as build_conversation
from svc_conversation.settings import ConversationSettings
from svc_gateway.__main__ import build as build_gateway
from svc_gateway.settings import GatewaySettings
from svc_policy.__main__ import build as build_policy
from svc_policy.settings import PolicySettings
from svc_profiles.__main__ import build as build_profiles
from svc_profiles.settings import ProfilesSettings
from svc_tools.__main__ import build as build_tools
from tests.support.ports import free_port
from tests.support.runtime import Served, serving
from tests.support.tools import shared_embedder, tools_settings

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
State = blocked_action_pb2.BlockedAction
Metadata = tuple[tuple[str, str | bytes], ...]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
ADMISSION = "gateway.skm"  # the domain of every refusal at admission, whichever service admits
# The public message limit of this suite's services: small, so that the oversize case is quick.
MESSAGE_LIMIT = 64 * 1024
# Not a protobuf message: a field tag whose varint never ends.
GARBAGE = b"\xff\xff\xff\xff\xff"
# The owners started here: every service that owns public methods. Each but svc_analytics and
# svc_audio has a door (below); svc_analytics' public methods need a series (QueryMetrics), a
# tenant field (GetModelSpend) or an admin (QueryAuditEvents), and svc_audio's name a session
# or take the tenant from the token, so both are held to admission by GUARDED.
DOOR_OWNERS = ("conversation", "policy", "profiles", "tools")
OWNERS = (*DOOR_OWNERS, "analytics", "audio")
# A service with outbox relays must live this long before it is stopped (see tests.support.tools).
_MIN_LIFETIME_SECONDS = 1.0


@dataclass(frozen=True)
class Door:
    """One public unary method of a service, to hold admission to (its request names a `parent`)."""

    owner: str
    path: str
    request_type: type[Message]
    response_type: type[Message]

    def request(self, parent: str, **fields: Any) -> Message:
        return self.request_type(parent=parent, **fields)

    def call(self, channel: grpc.aio.Channel, request: Message, metadata: Metadata = ()) -> Awaitable[Any]:
        callable_ = channel.unary_unary(
            self.path, request_serializer=self.request_type.SerializeToString, response_deserializer=self._parse
        )
        return callable_(request, timeout=10, metadata=metadata)

    def _parse(self, data: bytes) -> Message:
        return self.response_type.FromString(data)


DOORS = (
    Door(
        "conversation",
        "/skm.conversation.v1.ConversationService/ListSessions",
        conversation_service_pb2.ListSessionsRequest,
        conversation_service_pb2.ListSessionsResponse,
    ),
    Door(
        "policy",
        "/skm.policy.v1.BlockedActionService/ListBlockedActions",
        blocked_action_service_pb2.ListBlockedActionsRequest,
        blocked_action_service_pb2.ListBlockedActionsResponse,
    ),
    Door(
        "profiles",
        "/skm.profiles.v1.PersonaService/ListPersonas",
        persona_service_pb2.ListPersonasRequest,
        persona_service_pb2.ListPersonasResponse,
    ),
    Door(
        "tools",
        "/skm.tools.v1.ToolService/ListTools",
        tool_service_pb2.ListToolsRequest,
        tool_service_pb2.ListToolsResponse,
    ),
)
by_owner = pytest.mark.parametrize("door", DOORS, ids=lambda door: door.owner)


@dataclass(frozen=True)
class Guarded:
    """A public method on a resource of the test tenant that one user may reach and another
    may not: the one reaches the service, which answers with its own error (the resource
    does not exist), the other is refused by policy with `decision_reason`."""

    owner: str
    path: str
    request: Callable[[str], Message]  # the tenant -> the request
    reaches: str
    answer: tuple[grpc.StatusCode, str, str]  # the service's own: code, reason, domain
    refused: str
    decision_reason: str


GUARDED = (
    Guarded(
        "conversation",
        "/skm.conversation.v1.ConversationService/GetSession",
        lambda t: conversation_service_pb2.GetSessionRequest(name=f"{t}/sessions/s1"),
        "mike",  # the session's owner in policy; svc_conversation has no such session
        (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", "conversation.skm"),
        "nina",  # a member, not the owner
        "NOT_SESSION_OWNER",
    ),
    Guarded(
        "policy",
        "/skm.policy.v1.BlockedActionService/GetBlockedAction",
        lambda t: blocked_action_service_pb2.GetBlockedActionRequest(name=f"{t}/blockedActions/nope"),
        "olga",  # an operator
        (grpc.StatusCode.NOT_FOUND, "BLOCKED_ACTION_NOT_FOUND", "policy.skm"),
        "mike",  # a member
        "ROLE_INSUFFICIENT",
    ),
    Guarded(
        "profiles",
        "/skm.profiles.v1.PersonaService/DeletePersona",
        lambda t: persona_service_pb2.DeletePersonaRequest(name=f"{t}/personas/nope"),
        "ada",  # an admin
        (grpc.StatusCode.NOT_FOUND, "PERSONA_NOT_FOUND", "profiles.skm"),
        "olga",  # an operator
        "ROLE_INSUFFICIENT",
    ),
    Guarded(
        "audio",
        "/skm.audio.v1.AudioService/PushAudio",
        lambda t: audio_service_pb2.PushAudioRequest(
            voice_stream=f"{t}/sessions/s1/voiceStreams/00000000-0000-4000-8000-000000000000", sequence=1, audio=b"\0\0"
        ),
        "mike",  # the session's owner in policy; svc_audio holds no such voice stream
        (grpc.StatusCode.NOT_FOUND, "VOICE_STREAM_NOT_FOUND", "audio.skm"),
        "nina",  # a member, not the owner
        "NOT_SESSION_OWNER",
    ),
    Guarded(
        "analytics",
        "/skm.analytics.v1.AnalyticsService/QueryAuditEvents",
        lambda t: analytics_service_pb2.QueryAuditEventsRequest(parent=t, page_token="not-one-it-issued"),
        "ada",  # an admin
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "analytics.skm"),
        "olga",  # an operator
        "ROLE_INSUFFICIENT",
    ),
    Guarded(
        "tools",
        "/skm.tools.v1.ToolService/GetExecution",
        lambda t: tool_service_pb2.GetExecutionRequest(name=f"{t}/executions/nope"),
        "olga",  # an operator
        (grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND", "tools.skm"),
        "mike",  # a member
        "ROLE_INSUFFICIENT",
    ),
)
INTERNAL = sorted(path for path, method in methods().items() if method.authz is None)


@dataclass
class Keys:
    private_pem: bytes
    jwks_file: Path


def _key_pair(folder: Path, kid: str) -> Keys:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), "kid": kid}
    path = folder / f"{kid}.jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "alg": "EdDSA"}]}))
    return Keys(pem, path)


@dataclass
class Mesh:
    stack: RunningStack
    keys: Keys
    other_key: bytes  # a private key the services do not trust
    tenant: str  # "tenants/..."
    admission: AdmissionSettings
    policy_settings: PolicySettings
    services: dict[str, Served]  # owner -> its server
    gateway: Served
    envoy: EnvoyServer
    folder: Path

    @property
    def entry(self) -> str:
        """Envoy's public listener: where clients call."""
        return f"127.0.0.1:{self.envoy.port}"

    @property
    def upstreams(self) -> dict[str, int]:
        return dict(self.envoy.upstreams)

    def user(self, name: str) -> str:
        return f"{self.tenant}/users/{name}"

    def token(self, user: str = "olga", *, digest: str = EMPTY_SHA256, key: bytes | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": "skm-dev",
            "aud": "skm",
            "sub": user,
            "tenant": self.tenant.removeprefix("tenants/"),
            "roles": ["operator"],
            "constitution_sha256": digest,
            "nbf": now,
            "exp": now + 600,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys.private_pem, algorithm="EdDSA", headers={"kid": "test-key"})

    def auth(self, token: str | None = None) -> Metadata:
        return (("authorization", f"Bearer {self.token() if token is None else token}"),)

    def signed_principal(self, user: str) -> Metadata:
        """A principal of this tenant signed with the real mesh key, as only the mesh may send it."""
        return principal_metadata(principal_message(self.tenant, self.user(user), ["operator"]))


@contextlib.asynccontextmanager
async def _service(
    owner: str,
    stack: RunningStack,
    admission: AdmissionSettings,
    policy_settings: PolicySettings,
    addrs: Mapping[str, str],
    *,
    slot_group: int = 0,
) -> AsyncIterator[Served]:
    """One of the five services on the stack, admitting its public calls with `admission`
    (svc_policy's own settings, so every copy of svc_policy shares its OpenFGA store;
    `addrs`: owner -> target of the services it calls)."""
    runtime = RuntimeSettings()
    spec: ServiceSpec
    qdrant: Path | None = None
    try:
        if owner == "policy":
            spec = await build_policy(policy_settings, runtime)
        elif owner == "profiles":
            spec = await build_profiles(ProfilesSettings(addr="127.0.0.1:0", postgres_dsn=stack.postgres_dsn), runtime)
        elif owner == "tools":
            settings = tools_settings(stack, addrs["policy"], slot_group=slot_group)
            qdrant = settings.qdrant_path  # a folder of its own, removed below
            spec = await build_tools(settings, runtime, embedder=shared_embedder())
        elif owner == "analytics":
            # The session's chdb folder (one per process); a topic and group of its own, so it
            # ingests nothing of the other tests' events.
            spec = await build_analytics(
                AnalyticsSettings(
                    warehouse_url=addrs["warehouse"],
                    kafka_bootstrap=stack.kafka_bootstrap,
                    topics=(f"admission-{uuid.uuid4().hex[:8]}",),
                    consumer_group=f"admission-{uuid.uuid4().hex[:8]}",
                ),
                runtime,
            )
        elif owner == "audio":
            qdrant = Path(tempfile.mkdtemp(prefix="skm-admission-audio-"))
            spec = await build_audio(
                AudioSettings(
                    postgres_dsn=stack.postgres_dsn,
                    redis_url=stack.redis_url,
                    kafka_bootstrap=stack.kafka_bootstrap,
                    models_dir=models_root(),
                    qdrant_location=str(qdrant / "qdrant"),
                    conversation_addr=addrs["conversation"],
                    profiles_addr=addrs["profiles"],
                ),
                runtime,
            )
        else:
            assert owner == "conversation", owner
            spec = await build_conversation(
                ConversationSettings(
                    postgres_dsn=stack.postgres_dsn,
                    redis_url=stack.redis_url,
                    kafka_bootstrap=stack.kafka_bootstrap,
                    policy_addr=addrs["policy"],
                    tools_addr=addrs["tools"],
                    profiles_addr=addrs["profiles"],
                ),
                runtime,
            )
        loop = asyncio.get_running_loop()
        async with serving(spec, runtime, admission=admission) as served:
            started = loop.time()
            yield served
            await asyncio.sleep(max(0.0, started + _MIN_LIFETIME_SECONDS - loop.time()))
    finally:
        if qdrant is not None:
            shutil.rmtree(qdrant, ignore_errors=True)


@contextlib.asynccontextmanager
async def _envoy(stack: RunningStack, folder: Path, upstreams: Mapping[str, int]) -> AsyncIterator[EnvoyServer]:
    envoy = await asyncio.to_thread(start_envoy, stack.toolchain.envoy, folder, free_port(), free_port(), upstreams)
    try:
        yield envoy
    finally:
        await asyncio.to_thread(envoy.stop)


@pytest.fixture(scope="module")
async def mesh(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory, chdb_warehouse_url: str
) -> AsyncIterator[Mesh]:
    keys = _key_pair(tmp_path_factory.mktemp("keys"), "test-key")
    other_key = _key_pair(tmp_path_factory.mktemp("other-keys"), "other-key").private_pem
    policy_settings = PolicySettings(
        postgres_dsn=stack.postgres_dsn,
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        openfga_api_url=stack.openfga_api_url,
        openfga_api_token_file=str(stack.openfga_token_file),
        openfga_store=f"skm-adm-{uuid.uuid4().hex[:8]}",
    )
    admission = AdmissionSettings(
        jwks_file=str(keys.jwks_file),
        redis_url=stack.redis_url,
        constitution_ttl_seconds=0.0,
        max_message_bytes=MESSAGE_LIMIT,
    )
    folder = tmp_path_factory.mktemp("envoy")
    async with contextlib.AsyncExitStack() as opened:
        # svc_policy's gate asks svc_policy's own server: policy_addr is not read there.
        policy = await opened.enter_async_context(_service("policy", stack, admission, policy_settings, {}))
        admission = dataclasses.replace(admission, policy_addr=policy.target)
        addrs = {"policy": policy.target, "warehouse": chdb_warehouse_url}
        services = {"policy": policy}
        for owner in ("profiles", "tools", "conversation", "analytics", "audio"):
            served = await opened.enter_async_context(_service(owner, stack, admission, policy_settings, addrs))
            services[owner] = served
            addrs[owner] = served.target
        gateway = await opened.enter_async_context(
            serving(
                await build_gateway(
                    GatewaySettings(
                        conversation_addr=addrs["conversation"],
                        tools_addr=addrs["tools"],
                        policy_addr=addrs["policy"],
                        profiles_addr=addrs["profiles"],
                        audio_addr=addrs["audio"],
                        analytics_addr=addrs["analytics"],
                        backend_health_timeout_seconds=1.0,
                    ),
                    RuntimeSettings(),
                )
            )
        )
        tenant = f"tenants/a{uuid.uuid4().hex[:10]}"
        t = f"tenant:{tenant}"
        session = f"session:{tenant}/sessions/s1"
        relationships = [
            access_pb2.Relationship(subject=f"user:{tenant}/users/ada", relation="admin", object=t),
            access_pb2.Relationship(subject=f"user:{tenant}/users/olga", relation="operator", object=t),
            access_pb2.Relationship(subject=f"user:{tenant}/users/mike", relation="member", object=t),
            access_pb2.Relationship(subject=f"user:{tenant}/users/nina", relation="member", object=t),
            access_pb2.Relationship(subject=t, relation="tenant", object=session),
            access_pb2.Relationship(subject=f"user:{tenant}/users/mike", relation="owner", object=session),
            access_pb2.Relationship(subject=t, relation="tenant", object=f"tool:{tenant}/tools/code"),
            access_pb2.Relationship(subject=t, relation="high_risk", object=f"tool:{tenant}/tools/code"),
        ]
        async with signed_channel(policy.target) as channel:
            await policy_service_pb2_grpc.PolicyServiceStub(channel).WriteRelationships(
                policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=relationships), timeout=10
            )
        upstreams = {
            **{owner: served.running.port for owner, served in services.items()},
            "gateway": gateway.running.port,
        }
        envoy = await opened.enter_async_context(_envoy(stack, folder, upstreams))
        yield Mesh(stack, keys, other_key, tenant, admission, policy_settings, services, gateway, envoy, folder)


async def _fails(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str, domain: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    error = raised.value
    assert error.code() == code, (error.code(), error.details(), error_info_of(error))
    info = error_info_of(error)
    assert info is not None, error.details()
    assert info.reason == reason, info
    if domain is not None:
        assert info.domain == domain, info
    return error


def _info(error: grpc.aio.AioRpcError) -> Any:
    info = error_info_of(error)
    assert info is not None
    return info


def _list(mesh: Mesh, channel: grpc.aio.Channel, token: str, parent: str | None = None) -> Any:
    stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
    request = blocked_action_service_pb2.ListBlockedActionsRequest(parent=parent or mesh.tenant)
    return stub.ListBlockedActions(request, timeout=10, metadata=mesh.auth(token))


async def _grant(mesh: Mesh, user: str, relation: str = "operator", *, revoke: bool = False) -> None:
    change = access_pb2.Relationship(
        subject=f"user:{mesh.user(user)}", relation=relation, object=f"tenant:{mesh.tenant}"
    )
    async with signed_channel(mesh.services["policy"].target) as direct:
        stub = policy_service_pb2_grpc.PolicyServiceStub(direct)
        if revoke:
            await stub.DeleteRelationships(
                policy_service_pb2.DeleteRelationshipsRequest(parent=mesh.tenant, relationships=[change]), timeout=10
            )
        else:
            await stub.WriteRelationships(
                policy_service_pb2.WriteRelationshipsRequest(parent=mesh.tenant, relationships=[change]), timeout=10
            )


# -- the doors themselves ------------------------------------------------------------------


def test_each_door_is_a_public_unary_method_of_its_service() -> None:
    contract = methods()
    assert sorted(door.owner for door in DOORS) == sorted(DOOR_OWNERS)
    assert sorted(guarded.owner for guarded in GUARDED) == sorted(OWNERS)
    for door in DOORS:
        method = contract[door.path]
        assert (method.owner, method.client_streaming, method.server_streaming) == (door.owner, False, False)
        assert method.authz is not None
        assert method.authz.resource_field == "parent"
        assert method.request_type is door.request_type
    for guarded in GUARDED:
        assert contract[guarded.path].owner == guarded.owner
        assert contract[guarded.path].authz is not None
    # Every owner of a public method is started here.
    public_owners = {m.owner for m in contract.values() if m.authz is not None}
    assert public_owners == set(OWNERS)


@by_owner
async def test_a_valid_token_reaches_the_owning_service_through_envoy(mesh: Mesh, door: Door) -> None:
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        reply = await door.call(channel, door.request(mesh.tenant), mesh.auth())
    assert isinstance(reply, door.response_type)
    if door.owner == "tools":
        assert reply.tools, "the catalogue of every tenant lists the built-in tools"


# -- tokens ----------------------------------------------------------------------------------

TOKEN_CASES = (
    "missing",
    "not-a-jwt",
    "forged-with-another-key",
    "alg-none",
    "hs256-with-the-public-key",
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "no-tenant",
    "no-exp",
    "string-exp",
    "numeric-sub",
)


def _bad_token(mesh: Mesh, case: str) -> tuple[str | None, str]:
    """The token of `case` (None: no authorization header at all) and its refusal's reason."""
    now = int(time.time())
    if case == "missing":
        return None, "TOKEN_MISSING"
    if case == "not-a-jwt":
        return "not-a-jwt", "TOKEN_INVALID"
    if case == "forged-with-another-key":
        return mesh.token(key=mesh.other_key), "TOKEN_SIGNATURE_INVALID"
    if case == "alg-none":
        claims = {"iss": "skm-dev", "aud": "skm", "sub": "olga", "tenant": "x", "exp": now + 60}
        return jwt.encode({**claims, "constitution_sha256": "0" * 64}, key=None, algorithm="none"), (
            "TOKEN_ALGORITHM_NOT_ALLOWED"
        )
    if case == "hs256-with-the-public-key":  # algorithm confusion
        public_jwk = json.loads(mesh.keys.jwks_file.read_text())["keys"][0]
        token = jwt.encode(
            {"iss": "skm-dev", "aud": "skm", "sub": "olga", "tenant": "x", "exp": now + 60},
            key=public_jwk["x"].encode() * 2,
            algorithm="HS256",
            headers={"kid": "test-key"},
        )
        return token, "TOKEN_ALGORITHM_NOT_ALLOWED"
    cases = {
        "expired": (mesh.token(exp=now - 60), "TOKEN_EXPIRED"),
        "not-yet-valid": (mesh.token(nbf=now + 600), "TOKEN_NOT_YET_VALID"),
        "wrong-audience": (mesh.token(aud="someone-else"), "TOKEN_WRONG_AUDIENCE"),
        "wrong-issuer": (mesh.token(iss="evil"), "TOKEN_WRONG_ISSUER"),
        "no-tenant": (mesh.token(tenant=None), "TOKEN_CLAIM_MISSING"),
        "no-exp": (mesh.token(exp=None), "TOKEN_CLAIM_MISSING"),
        "string-exp": (mesh.token(exp=str(now + 600)), "TOKEN_CLAIM_INVALID"),
        "numeric-sub": (mesh.token(sub=42), "TOKEN_CLAIM_INVALID"),
    }
    token, reason = cases[case]
    return token, reason


@by_owner
@pytest.mark.parametrize("case", TOKEN_CASES)
async def test_bad_tokens_are_refused_each_with_its_reason(mesh: Mesh, door: Door, case: str) -> None:
    token, reason = _bad_token(mesh, case)
    metadata = () if token is None else mesh.auth(token)
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        await _fails(door.call(channel, door.request(mesh.tenant), metadata), UNAUTHENTICATED, reason, ADMISSION)


# -- constitution ----------------------------------------------------------------------------


@by_owner
async def test_a_token_with_a_stale_constitution_hash_is_refused(mesh: Mesh, door: Door) -> None:
    stale = mesh.token(digest=hashlib.sha256(b"not this tenant's constitution").hexdigest())
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        error = await _fails(
            door.call(channel, door.request(mesh.tenant), mesh.auth(stale)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CONSTITUTION_HASH_STALE",
            ADMISSION,
        )
    assert _info(error).metadata["tenant"] == mesh.tenant


async def test_a_stale_constitution_hash_is_refused_but_the_constitution_stays_readable(mesh: Mesh) -> None:
    policy = mesh.services["policy"]
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        name = f"{mesh.tenant}/constitution"
        admin = mesh.token("olga")  # hash of the empty document: current for a new tenant
        current = (
            await constitutions.GetConstitution(
                constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10, metadata=mesh.auth(admin)
            )
        ).constitution
        # An admin changes the constitution directly on svc_policy, from inside the mesh.
        async with signed_channel(policy.target) as direct:
            await constitution_service_pb2_grpc.ConstitutionServiceStub(direct).UpdateConstitution(
                constitution_service_pb2.UpdateConstitutionRequest(
                    constitution=constitution_pb2.Constitution(name=name, content="Be honest.", etag=current.etag)
                ),
                timeout=10,
                metadata=mesh.signed_principal("ada"),
            )
        try:
            await _fails(_list(mesh, channel, admin), grpc.StatusCode.FAILED_PRECONDITION, "CONSTITUTION_HASH_STALE")
            # The one method that accepts a stale hash tells the client the new one.
            fresh = (
                await constitutions.GetConstitution(
                    constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10, metadata=mesh.auth(admin)
                )
            ).constitution
            assert fresh.sha256 == hashlib.sha256(b"Be honest.").hexdigest()
            reply = await _list(mesh, channel, mesh.token("olga", digest=fresh.sha256))
            assert list(reply.blocked_actions) == []
        finally:
            # Put the empty document back for the other tests.
            async with signed_channel(policy.target) as direct:
                stub = constitution_service_pb2_grpc.ConstitutionServiceStub(direct)
                now = (
                    await stub.GetConstitution(
                        constitution_service_pb2.GetConstitutionRequest(name=name),
                        timeout=10,
                        metadata=mesh.signed_principal("ada"),
                    )
                ).constitution
                await stub.UpdateConstitution(
                    constitution_service_pb2.UpdateConstitutionRequest(
                        constitution=constitution_pb2.Constitution(name=name, content="", etag=now.etag)
                    ),
                    timeout=10,
                    metadata=mesh.signed_principal("ada"),
                )


# -- authorization -------------------------------------------------------------------------


async def _within_ttl(call: Callable[[], Awaitable[object]], ttl: float, *, until_refused: bool = False) -> object:
    """Calls `call` again until its outcome turns (to a refusal with `until_refused`, else to
    an answer), for as long as a decision reused for `ttl` may hold it (+0.5 s). Returns the
    status of the refusal or the answer; on time out, the last outcome (the caller's assert
    fails). A call sent after the TTL must turn, however long it takes to answer."""
    since = time.monotonic()
    while True:
        sent = time.monotonic()
        try:
            outcome: object = await call()
            turned = not until_refused
        except grpc.aio.AioRpcError as error:
            outcome = error.code()
            turned = until_refused
        if turned or sent - since > ttl + 0.5:
            return outcome
        await asyncio.sleep(0.05)


async def test_methods_open_to_any_member_ask_policy_whether_the_caller_still_is_one(mesh: Mesh) -> None:
    """GetConstitution (any member, stale hash accepted): a member reads it, a user with no
    membership tuple is refused though the token names the tenant, and a member removed
    in policy is refused from then on, without waiting for the token to expire."""
    user = f"mem{uuid.uuid4().hex[:6]}"
    request = constitution_service_pb2.GetConstitutionRequest(name=f"{mesh.tenant}/constitution")
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        denied = await _fails(
            constitutions.GetConstitution(request, timeout=10, metadata=mesh.auth(mesh.token(user))),
            PERMISSION_DENIED,
            "PERMISSION_DENIED",
            ADMISSION,
        )
        info = _info(denied)
        assert (info.metadata["permission"], info.metadata["decision_reason"]) == (
            "can_converse",
            "NOT_A_TENANT_MEMBER",
        )
        await _grant(mesh, user, "member")
        stale = mesh.auth(mesh.token(user, digest="0" * 64))  # this method accepts a stale hash
        ttl = mesh.admission.decision_ttl_seconds
        # The refusal above may be reused until the change is announced, at most for the TTL.
        read = await _within_ttl(lambda: constitutions.GetConstitution(request, timeout=10, metadata=stale), ttl)
        assert isinstance(read, constitution_service_pb2.GetConstitutionResponse), "a member is still refused"
        assert read.constitution.name == f"{mesh.tenant}/constitution"
        await _grant(mesh, user, "member", revoke=True)
        refused = await _within_ttl(
            lambda: constitutions.GetConstitution(request, timeout=10, metadata=stale), ttl, until_refused=True
        )
        assert refused == PERMISSION_DENIED, "a removed member still passes after the decision TTL"


@pytest.mark.parametrize("guarded", GUARDED, ids=lambda guarded: guarded.owner)
async def test_policy_decides_who_reaches_each_services_resources_and_their_errors_pass_through(
    mesh: Mesh, guarded: Guarded
) -> None:
    """The user policy allows reaches the service, whose own error (no such resource) comes
    back with its details; a user policy refuses, and one outside the tenant, never reach it."""
    rule = methods()[guarded.path].authz
    assert rule is not None
    permission = "can_converse" if rule.any_tenant_member else rule.permission
    request = guarded.request(mesh.tenant)
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        call = channel.unary_unary(guarded.path, request_serializer=type(request).SerializeToString)
        code, reason, domain = guarded.answer
        error = await _fails(call(request, timeout=10, metadata=mesh.auth(mesh.token(guarded.reaches))), code, reason)
        assert _info(error).domain == domain
        assert details_of(error.trailing_metadata()) is not None
        for user, decision in ((guarded.refused, guarded.decision_reason), ("stranger", "NOT_A_TENANT_MEMBER")):
            error = await _fails(
                call(request, timeout=10, metadata=mesh.auth(mesh.token(user))),
                PERMISSION_DENIED,
                "PERMISSION_DENIED",
                ADMISSION,
            )
            info = _info(error)
            assert (info.metadata["permission"], info.metadata["decision_reason"]) == (permission, decision), user


@by_owner
async def test_other_tenants_resources_are_out_of_reach(mesh: Mesh, door: Door) -> None:
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        error = await _fails(
            door.call(channel, door.request("tenants/someoneelse"), mesh.auth()),
            PERMISSION_DENIED,
            "CROSS_TENANT_RESOURCE",
            ADMISSION,
        )
        assert _info(error).metadata["field"] == "parent"
        await _fails(
            door.call(channel, door.request("nonsense"), mesh.auth()),
            INVALID_ARGUMENT,
            "RESOURCE_NAME_INVALID",
            ADMISSION,
        )


async def test_a_name_with_white_space_is_the_clients_error_not_a_policy_outage(mesh: Mesh) -> None:
    """svc_policy cannot read such a name (OpenFGA refuses it): admission refuses it first."""
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        get = channel.unary_unary(
            "/skm.conversation.v1.ConversationService/GetSession",
            request_serializer=conversation_service_pb2.GetSessionRequest.SerializeToString,
        )
        for name in (f"{mesh.tenant}/sessions/s1 ", f"{mesh.tenant}/sessions/s1\n", f"{mesh.tenant}/sessions/s 1"):
            request = conversation_service_pb2.GetSessionRequest(name=name)
            error = await _fails(
                get(request, timeout=10, metadata=mesh.auth(mesh.token("mike"))),
                INVALID_ARGUMENT,
                "RESOURCE_NAME_INVALID",
                ADMISSION,
            )
            assert _info(error).metadata["field"] == "name"


# -- what is not public ----------------------------------------------------------------------


@pytest.mark.parametrize("path", INTERNAL)
async def test_internal_methods_are_not_reachable(mesh: Mesh, path: str) -> None:
    """Through Envoy an internal method falls to the gateway, which refuses it; straight to
    its owner's port, a valid token does not make it public."""
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        error = await _fails(
            channel.unary_unary(path)(b"", timeout=10, metadata=mesh.auth()),
            grpc.StatusCode.UNIMPLEMENTED,
            "METHOD_NOT_PUBLIC",
            ADMISSION,
        )
        assert _info(error).metadata["method"] == path
    owner = methods()[path].owner
    async with grpc.aio.insecure_channel(mesh.services[owner].target) as direct:
        await _fails(
            direct.unary_unary(path)(b"", timeout=10, metadata=mesh.auth()), UNAUTHENTICATED, "MESH_CALLER_UNVERIFIED"
        )


async def test_unknown_methods_are_not_reachable(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        for path in ("/skm.nothing.v1.Nothing/Do", "/foo.Bar/Baz"):
            error = await _fails(
                channel.unary_unary(path)(b"", timeout=10, metadata=mesh.auth()),
                grpc.StatusCode.UNIMPLEMENTED,
                "METHOD_NOT_PUBLIC",
                ADMISSION,
            )
            assert _info(error).metadata["method"] == path


# -- the edge and the mesh's own credentials -------------------------------------------------


@by_owner
async def test_envoy_removes_a_clients_own_mesh_credentials(mesh: Mesh, door: Door) -> None:
    """A principal and a caller signed with the real mesh key (what a client must never be
    able to present): straight to the service they are admitted from inside the mesh, but
    through Envoy they are gone, so the call is judged by its token alone."""
    forged = (*mesh.signed_principal("olga"), *caller_metadata(door.path))
    request = door.request(mesh.tenant)
    async with grpc.aio.insecure_channel(mesh.services[door.owner].target) as direct:
        assert isinstance(await door.call(direct, request, forged), door.response_type)  # they are valid
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        await _fails(door.call(channel, request, forged), UNAUTHENTICATED, "TOKEN_MISSING", ADMISSION)
        # With a token, the token's user is the caller: one outside the tenant, refused.
        error = await _fails(
            door.call(channel, request, (*mesh.auth(mesh.token("stranger")), *forged)),
            PERMISSION_DENIED,
            "PERMISSION_DENIED",
            ADMISSION,
        )
        assert _info(error).metadata["decision_reason"] == "NOT_A_TENANT_MEMBER"


@by_owner
async def test_a_call_straight_to_a_services_port_is_admitted_by_the_service_itself(mesh: Mesh, door: Door) -> None:
    """What a caller inside the network reaches without Envoy: the service judges it."""
    request = door.request(mesh.tenant)
    made_up = principal_pb2.Principal(tenant=mesh.tenant, user=mesh.user("olga")).SerializeToString()
    async with grpc.aio.insecure_channel(mesh.services[door.owner].target) as direct:
        # Mesh credentials that do not verify are never judged by a token instead.
        for credentials in (
            ((PRINCIPAL_KEY, made_up),),
            ((PRINCIPAL_KEY, made_up), (PRINCIPAL_MAC_KEY, b"\0" * 32)),
            ((CALLER_KEY, b"garbage"),),
        ):
            await _fails(
                door.call(direct, request, (*mesh.auth(), *credentials)), UNAUTHENTICATED, "MESH_CALLER_UNVERIFIED"
            )
        # No token and no credentials: the service judges public calls by their token now,
        # so the reason is TOKEN_MISSING (it was MESH_CALLER_UNVERIFIED while svc_gateway
        # admitted public calls and the services answered the mesh only).
        await _fails(door.call(direct, request), UNAUTHENTICATED, "TOKEN_MISSING", ADMISSION)
        await _fails(door.call(direct, request, mesh.auth("not-a-jwt")), UNAUTHENTICATED, "TOKEN_INVALID", ADMISSION)
        assert isinstance(await door.call(direct, request, mesh.auth()), door.response_type)


# -- messages ----------------------------------------------------------------------------------


@by_owner
async def test_bytes_that_are_no_request_are_refused_as_malformed(mesh: Mesh, door: Door) -> None:
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        raw = channel.unary_unary(door.path)
        # Without a token they are not even read.
        await _fails(raw(GARBAGE, timeout=10), UNAUTHENTICATED, "TOKEN_MISSING", ADMISSION)
        await _fails(
            raw(GARBAGE, timeout=10, metadata=mesh.auth()), INVALID_ARGUMENT, "MALFORMED_REQUEST", "runtime.skm"
        )


@by_owner
async def test_a_message_over_the_public_limit_is_refused_with_its_reason(mesh: Mesh, door: Door) -> None:
    """gRPC's own limit would refuse it with no details: the service receives more and
    answers for the public limit itself."""
    assert mesh.admission.max_message_bytes == MESSAGE_LIMIT
    request = door.request(mesh.tenant, page_token="x" * (MESSAGE_LIMIT + 1))
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        error = await _fails(door.call(channel, request, mesh.auth()), INVALID_ARGUMENT, "MESSAGE_TOO_LARGE", ADMISSION)
        info = _info(error)
        assert (info.metadata["limit"], info.metadata["size"]) == (str(MESSAGE_LIMIT), str(request.ByteSize()))
        # Just under the limit, the request passes admission: the service answers it (here
        # with its own error about a page token it never issued, if it checks them).
        fits = door.request(mesh.tenant, page_token="x" * (MESSAGE_LIMIT - 64))
        assert fits.ByteSize() <= MESSAGE_LIMIT
        answered: grpc.aio.AioRpcError | None = None
        try:
            await door.call(channel, fits, mesh.auth())
        except grpc.aio.AioRpcError as error:
            answered = error
        if answered is not None:
            assert _info(answered).domain != ADMISSION, _info(answered)


# -- traces and streams ------------------------------------------------------------------------


@by_owner
async def test_the_trace_context_goes_on_to_the_owning_service(mesh: Mesh, door: Door) -> None:
    """The caller's trace continues in the owning service's span, Envoy in between."""
    trace_id, caller_span = int(uuid.uuid4().hex, 16), 0x1111111111111111
    traceparent = f"00-{trace_id:032x}-{caller_span:016x}-01"
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        await door.call(channel, door.request(mesh.tenant), (*mesh.auth(), ("traceparent", traceparent)))
    served = mesh.services[door.owner]

    def finished() -> list[Any]:
        return [
            span
            for span in served.spans.get_finished_spans()
            if span.context.trace_id == trace_id and span.name == door.path.lstrip("/")
        ]

    # A server's span ends just after its reply is sent.
    for _ in range(100):
        if finished():
            break
        await asyncio.sleep(0.05)
    (service_span,) = finished()
    assert service_span.parent is not None
    assert service_span.parent.span_id == caller_span


async def test_a_stream_without_a_valid_token_is_refused_as_it_opens(mesh: Mesh) -> None:
    """No message sent: the refusal comes at once, not at the call's deadline."""
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        converse = channel.stream_stream("/skm.conversation.v1.ConversationService/Converse")
        for metadata, reason in (((), "TOKEN_MISSING"), (mesh.auth("garbage"), "TOKEN_INVALID")):
            call = converse(metadata=metadata, timeout=30)
            opened = time.monotonic()
            await _fails(call.read(), UNAUTHENTICATED, reason, ADMISSION)
            assert time.monotonic() - opened < 10
            call.cancel()


async def test_server_streams_and_the_principal_come_from_the_token(mesh: Mesh) -> None:
    """Watch through Envoy while an operator approves through it: the resolver is the
    principal the token proves, not the one the client's signed headers claim."""
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="run it"))
    async with signed_channel(mesh.services["policy"].target) as direct:
        held = await policy_service_pb2_grpc.PolicyServiceStub(direct).Check(
            policy_service_pb2.CheckRequest(
                check=access_pb2.AccessCheck(
                    subject=f"user:{mesh.user('mike')}", relation="can_execute", object=f"tool:{mesh.tenant}/tools/code"
                ),
                hold=policy_service_pb2.Hold(request_id=str(uuid.uuid4()), payload=payload),
            ),
            timeout=10,
            metadata=principal_metadata(principal_pb2.Principal(tenant=mesh.tenant, user=mesh.user("mike"))),
        )
    name = held.decision.blocked_action
    assert name
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        operator = mesh.auth(mesh.token("olga"))
        watch = stub.WatchBlockedActionResolutions(
            blocked_action_service_pb2.WatchBlockedActionResolutionsRequest(parent=mesh.tenant, names=[name]),
            metadata=operator,
        )
        # ada, an admin, signed with the real mesh key: Envoy removes it, the token speaks.
        approved = await stub.ApproveBlockedAction(
            blocked_action_service_pb2.ApproveBlockedActionRequest(name=name),
            timeout=10,
            metadata=(*operator, *mesh.signed_principal("ada")),
        )
        assert approved.blocked_action.resolver == mesh.user("olga")
        seen = await asyncio.wait_for(watch.read(), 10)
        assert seen.blocked_action.state == State.STATE_APPROVED
        assert seen.blocked_action.resolver == mesh.user("olga")
        watch.cancel()


async def test_bidi_calls_are_authorized_on_their_first_message(mesh: Mesh) -> None:
    """Converse (bidi) reaches svc_conversation, whose own error about the first message (it
    lacks `config`) comes back with its details. A user who may read but not write the
    session is refused on that first message."""
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        converse = channel.stream_stream("/skm.conversation.v1.ConversationService/Converse")
        first = conversation_service_pb2.ConverseRequest(session=f"{mesh.tenant}/sessions/s1").SerializeToString()

        async def one(token: str) -> None:
            call = converse(metadata=mesh.auth(token), timeout=10)
            await call.write(first)
            await call.done_writing()
            await call.read()

        error = await _fails(one(mesh.token("mike")), INVALID_ARGUMENT, "FIRST_MESSAGE_NOT_CONFIG")
        assert details_of(error.trailing_metadata()) is not None
        error = await _fails(one(mesh.token("olga")), PERMISSION_DENIED, "PERMISSION_DENIED", ADMISSION)
        assert _info(error).metadata["decision_reason"] == "NOT_SESSION_OWNER"


# -- rate limits and policy outages, on copies of a service with settings of their own ---------


@contextlib.asynccontextmanager
async def _copy_behind_envoy(mesh: Mesh, owner: str, admission: AdmissionSettings) -> AsyncIterator[str]:
    """A second copy of `owner` with `admission`, and an Envoy that routes `owner`'s methods
    to it (the rest to this module's servers): that Envoy's address."""
    addrs = {name: served.target for name, served in mesh.services.items()}
    async with (
        _service(owner, mesh.stack, admission, mesh.policy_settings, addrs, slot_group=1) as copy,
        _envoy(
            mesh.stack, mesh.folder / f"{owner}-{uuid.uuid4().hex[:6]}", {**mesh.upstreams, owner: copy.running.port}
        ) as envoy,
    ):
        yield f"127.0.0.1:{envoy.port}"


@by_owner
async def test_rate_limits_answer_resource_exhausted_with_retry_info(mesh: Mesh, door: Door) -> None:
    admission = dataclasses.replace(mesh.admission, user_rate_per_second=0.01, user_burst=2)
    user, other = f"rate{uuid.uuid4().hex[:6]}", f"rate{uuid.uuid4().hex[:6]}"
    for fresh in (user, other):  # buckets no other copy with other limits has spent from
        await _grant(mesh, fresh)
    async with _copy_behind_envoy(mesh, door.owner, admission) as entry, grpc.aio.insecure_channel(entry) as channel:
        token = mesh.auth(mesh.token(user))
        request = door.request(mesh.tenant)
        for _ in range(2):
            assert isinstance(await door.call(channel, request, token), door.response_type)
        error = await _fails(
            door.call(channel, request, token), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", ADMISSION
        )
        assert _info(error).metadata["scope"] == "user"
        status = details_of(error.trailing_metadata())
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert info.retry_delay.seconds > 0
        # Another user of the tenant is not held back by this one's limit.
        assert isinstance(await door.call(channel, request, mesh.auth(mesh.token(other))), door.response_type)


@pytest.mark.parametrize("door", [door for door in DOORS if door.owner != "policy"], ids=lambda door: door.owner)
async def test_policy_unreachable_means_refused(mesh: Mesh, door: Door) -> None:
    """Fail closed. (svc_policy admits its own calls by asking itself: not parametrized.)"""
    admission = dataclasses.replace(mesh.admission, policy_addr=f"127.0.0.1:{free_port()}")
    async with _copy_behind_envoy(mesh, door.owner, admission) as entry, grpc.aio.insecure_channel(entry) as channel:
        await _fails(
            door.call(channel, door.request(mesh.tenant), mesh.auth()),
            grpc.StatusCode.UNAVAILABLE,
            "POLICY_UNAVAILABLE",
            ADMISSION,
        )


async def test_a_revoked_relationship_stops_calls_within_the_decision_ttl(mesh: Mesh) -> None:
    """A service reuses an ALLOW for SKM_ADMISSION_DECISION_TTL_SECONDS; a revocation made
    through svc_policy empties svc_policy's own cache, so it stops calls within that TTL."""
    ttl = mesh.admission.decision_ttl_seconds
    user = f"rev{uuid.uuid4().hex[:6]}"
    await _grant(mesh, user)
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        token = mesh.token(user)
        await _list(mesh, channel, token)  # allowed, and the ALLOW is remembered
        await _grant(mesh, user, revoke=True)
        refused = await _within_ttl(lambda: _list(mesh, channel, token), ttl, until_refused=True)
        assert refused == PERMISSION_DENIED, "a revoked user still passes after the decision TTL"
        # Refused from now on: a DENY is never remembered, nor turned back into an ALLOW.
        await _fails(_list(mesh, channel, token), PERMISSION_DENIED, "PERMISSION_DENIED", ADMISSION)


async def test_rate_limits_take_from_every_bucket_or_from_none(stack: RunningStack) -> None:
    """One round trip for both buckets; a call the user's bucket refuses costs the tenant nothing."""
    limiter = RedisRateLimiter.connect(stack.redis_url, {"tenant": (0.001, 3.0), "user": (0.001, 1.0)})
    tenant = f"tenants/r{uuid.uuid4().hex[:8]}"
    try:

        def buckets(user: str) -> tuple[tuple[str, str], ...]:
            return (("tenant", tenant), ("user", f"{tenant}/users/{user}"))

        assert await limiter.take(buckets("a")) is None
        refused = await limiter.take(buckets("a"))
        assert refused is not None
        assert refused[0] == "user"
        assert refused[1] > 0
        # The tenant gave one call of its three: two more users get theirs, then the tenant is spent.
        assert await limiter.take(buckets("b")) is None
        assert await limiter.take(buckets("c")) is None
        refused = await limiter.take(buckets("d"))
        assert refused is not None
        assert refused[0] == "tenant"
    finally:
        await limiter.close()


# -- health and reflection ---------------------------------------------------------------------


async def test_health_and_reflection_answer_through_envoy_for_every_service(mesh: Mesh) -> None:
    owners = service_owners()
    async with grpc.aio.insecure_channel(mesh.entry) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == SERVING
        for service, owner in sorted(owners.items()):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            # Each service is asked: those not started here are down.
            assert reply.status == (SERVING if owner in mesh.services else NOT_SERVING), service
        for protocol in ("v1", "v1alpha"):
            call = channel.stream_stream(f"/grpc.reflection.{protocol}.ServerReflection/ServerReflectionInfo")(
                timeout=10
            )
            await call.write(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString())
            listed = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
            assert set(owners) <= {s.name for s in listed.list_services_response.service}, protocol
            for service in sorted(owners):
                request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
                await call.write(request.SerializeToString())
                described = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
                assert described.HasField("file_descriptor_response"), (protocol, service)
            await call.done_writing()
