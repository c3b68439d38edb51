"""svc_gateway on the real servers: tokens, constitutions, rate limits, authorization through
svc_policy, and forwarding of every RPC kind to the owning service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import any_pb2, wrappers_pb2
from google.rpc import error_details_pb2

from skm.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc
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
from skm.type.v1 import principal_pb2
from skm_runtime.principal import principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_runtime.status import details_of, error_info_of
from skm_stack import RunningStack
from svc_conversation.__main__ import build as build_conversation
from svc_conversation.settings import ConversationSettings
from svc_gateway.__main__ import build as build_gateway
from svc_gateway.adapters.ratelimit import RedisRateLimiter
from svc_gateway.settings import GatewaySettings
from svc_policy.__main__ import build as build_policy
from svc_policy.settings import PolicySettings
from tests.support.ports import free_port
from tests.support.runtime import Served, serving

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
State = blocked_action_pb2.BlockedAction


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
    gateway: Served
    policy: Served
    keys: Keys
    tenant: str  # "tenants/..."

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

    def auth(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def mesh(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    keys = _key_pair(tmp_path_factory.mktemp("keys"), "test-key")
    policy_settings = PolicySettings(
        postgres_dsn=stack.postgres_dsn,
        redis_url=stack.redis_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        openfga_api_url=stack.openfga_api_url,
        openfga_api_token_file=str(stack.openfga_token_file),
        openfga_store=f"skm-gw-{uuid.uuid4().hex[:8]}",
    )
    runtime = RuntimeSettings()
    async with (
        serving(await build_policy(policy_settings, runtime)) as policy,
        serving(
            await build_conversation(
                ConversationSettings(
                    postgres_dsn=stack.postgres_dsn, redis_url=stack.redis_url, kafka_bootstrap=stack.kafka_bootstrap
                ),
                runtime,
            )
        ) as conversation,
    ):
        settings = GatewaySettings(
            policy_addr=policy.target,
            conversation_addr=conversation.target,
            redis_url=stack.redis_url,
            jwks_file=str(keys.jwks_file),
            constitution_ttl_seconds=0.0,
        )
        async with serving(await build_gateway(settings, runtime)) as gateway:
            tenant = f"tenants/g{uuid.uuid4().hex[:10]}"
            async with signed_channel(policy.target) as channel:
                stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
                t = f"tenant:{tenant}"
                relationships = [
                    access_pb2.Relationship(subject=f"user:{tenant}/users/olga", relation="operator", object=t),
                    access_pb2.Relationship(subject=f"user:{tenant}/users/mike", relation="member", object=t),
                    access_pb2.Relationship(subject=t, relation="tenant", object=f"session:{tenant}/sessions/s1"),
                    access_pb2.Relationship(
                        subject=f"user:{tenant}/users/mike", relation="owner", object=f"session:{tenant}/sessions/s1"
                    ),
                    access_pb2.Relationship(subject=t, relation="tenant", object=f"tool:{tenant}/tools/code"),
                    access_pb2.Relationship(subject=t, relation="high_risk", object=f"tool:{tenant}/tools/code"),
                ]
                await stub.WriteRelationships(
                    policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=relationships), timeout=10
                )
            yield Mesh(gateway, policy, keys, tenant)


async def _fails(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    error = raised.value
    assert error.code() == code, (error.code(), error.details())
    info = error_info_of(error)
    assert info is not None
    assert info.reason == reason, info
    return error


def _list(mesh: Mesh, channel: grpc.aio.Channel, token: str, parent: str | None = None) -> Any:
    stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
    request = blocked_action_service_pb2.ListBlockedActionsRequest(parent=parent or mesh.tenant)
    return stub.ListBlockedActions(request, timeout=10, metadata=mesh.auth(token))


async def test_a_valid_token_reaches_the_owning_service(mesh: Mesh) -> None:
    async with signed_channel(mesh.gateway.target) as channel:
        reply = await _list(mesh, channel, mesh.token("olga"))
    assert list(reply.blocked_actions) == []


async def test_bad_tokens_are_refused_each_with_its_reason(mesh: Mesh) -> None:
    other_key = _key_pair(mesh.keys.jwks_file.parent, "other-key").private_pem
    now = int(time.time())
    unsigned = jwt.encode(
        {
            "iss": "skm-dev",
            "aud": "skm",
            "sub": "olga",
            "tenant": "x",
            "exp": now + 60,
            "constitution_sha256": "0" * 64,
        },
        key=None,
        algorithm="none",
    )
    public_jwk = json.loads(mesh.keys.jwks_file.read_text())["keys"][0]
    hs256_with_public_key = jwt.encode(
        {"iss": "skm-dev", "aud": "skm", "sub": "olga", "tenant": "x", "exp": now + 60},
        key=public_jwk["x"].encode() * 2,
        algorithm="HS256",
        headers={"kid": "test-key"},
    )
    cases = [
        ("", "TOKEN_MISSING"),
        ("not-a-jwt", "TOKEN_INVALID"),
        (mesh.token(key=other_key), "TOKEN_SIGNATURE_INVALID"),  # forged: another key
        (unsigned, "TOKEN_ALGORITHM_NOT_ALLOWED"),  # alg none
        (hs256_with_public_key, "TOKEN_ALGORITHM_NOT_ALLOWED"),  # algorithm confusion
        (mesh.token(exp=now - 60), "TOKEN_EXPIRED"),
        (mesh.token(nbf=now + 600), "TOKEN_NOT_YET_VALID"),
        (mesh.token(aud="someone-else"), "TOKEN_WRONG_AUDIENCE"),
        (mesh.token(iss="evil"), "TOKEN_WRONG_ISSUER"),
        (mesh.token(tenant=None), "TOKEN_CLAIM_MISSING"),
        (mesh.token(exp=None), "TOKEN_CLAIM_MISSING"),
        (mesh.token(exp=str(now + 600)), "TOKEN_CLAIM_INVALID"),
        (mesh.token(sub=42), "TOKEN_CLAIM_INVALID"),
    ]
    async with signed_channel(mesh.gateway.target) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        request = blocked_action_service_pb2.ListBlockedActionsRequest(parent=mesh.tenant)
        for token, reason in cases:
            metadata = mesh.auth(token) if token else ()
            await _fails(
                stub.ListBlockedActions(request, timeout=10, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED, reason
            )


async def test_a_stale_constitution_hash_is_refused_but_the_constitution_stays_readable(mesh: Mesh) -> None:
    async with signed_channel(mesh.gateway.target) as channel:
        constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        name = f"{mesh.tenant}/constitution"
        admin = mesh.token("olga")  # hash of the empty document: current for a new tenant
        current = (
            await constitutions.GetConstitution(
                constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10, metadata=mesh.auth(admin)
            )
        ).constitution
        # An admin changes the constitution directly on svc_policy (the gateway would ask
        # can_administer, which olga, an operator, lacks).
        async with signed_channel(mesh.policy.target) as direct:
            await constitution_service_pb2_grpc.ConstitutionServiceStub(direct).UpdateConstitution(
                constitution_service_pb2.UpdateConstitutionRequest(
                    constitution=constitution_pb2.Constitution(name=name, content="Be honest.", etag=current.etag)
                ),
                timeout=10,
            )
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
        # Put the empty document back for the other tests.
        async with signed_channel(mesh.policy.target) as direct:
            await constitution_service_pb2_grpc.ConstitutionServiceStub(direct).UpdateConstitution(
                constitution_service_pb2.UpdateConstitutionRequest(
                    constitution=constitution_pb2.Constitution(name=name, content="", etag=fresh.etag)
                ),
                timeout=10,
            )


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
    member = access_pb2.Relationship(
        subject=f"user:{mesh.tenant}/users/{user}", relation="member", object=f"tenant:{mesh.tenant}"
    )
    request = constitution_service_pb2.GetConstitutionRequest(name=f"{mesh.tenant}/constitution")
    async with (
        signed_channel(mesh.policy.target) as direct,
        signed_channel(mesh.gateway.target) as channel,
    ):
        relationships = policy_service_pb2_grpc.PolicyServiceStub(direct)
        constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)
        denied = await _fails(
            constitutions.GetConstitution(request, timeout=10, metadata=mesh.auth(mesh.token(user))),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
        info = error_info_of(denied)
        assert info is not None
        assert (info.metadata["permission"], info.metadata["decision_reason"]) == (
            "can_converse",
            "NOT_A_TENANT_MEMBER",
        )
        await relationships.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(parent=mesh.tenant, relationships=[member]), timeout=10
        )
        stale = mesh.auth(mesh.token(user, digest="0" * 64))  # this method accepts a stale hash
        ttl = GatewaySettings().decision_ttl_seconds
        # The refusal above may be reused until the change is announced, at most for the TTL.
        read = await _within_ttl(lambda: constitutions.GetConstitution(request, timeout=10, metadata=stale), ttl)
        assert isinstance(read, constitution_service_pb2.GetConstitutionResponse), "a member is still refused"
        assert read.constitution.name == f"{mesh.tenant}/constitution"
        await relationships.DeleteRelationships(
            policy_service_pb2.DeleteRelationshipsRequest(parent=mesh.tenant, relationships=[member]), timeout=10
        )
        refused = await _within_ttl(
            lambda: constitutions.GetConstitution(request, timeout=10, metadata=stale), ttl, until_refused=True
        )
        assert refused == grpc.StatusCode.PERMISSION_DENIED, "a removed member still passes after the decision TTL"


async def test_policy_decides_and_other_tenants_are_out_of_reach(mesh: Mesh) -> None:
    async with signed_channel(mesh.gateway.target) as channel:
        error = await _fails(
            _list(mesh, channel, mesh.token("mike")), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
        )
        info = error_info_of(error)
        assert info is not None
        assert info.metadata["decision_reason"] == "ROLE_INSUFFICIENT"
        await _fails(
            _list(mesh, channel, mesh.token("olga"), parent="tenants/someoneelse"),
            grpc.StatusCode.PERMISSION_DENIED,
            "CROSS_TENANT_RESOURCE",
        )
        await _fails(
            _list(mesh, channel, mesh.token("olga"), parent="nonsense"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RESOURCE_NAME_INVALID",
        )


async def test_a_name_with_white_space_is_the_clients_error_not_a_policy_outage(mesh: Mesh) -> None:
    """svc_policy cannot read such a name (OpenFGA refuses it): the gateway refuses it first."""
    async with signed_channel(mesh.gateway.target) as channel:
        stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)
        for name in (f"{mesh.tenant}/sessions/s1 ", f"{mesh.tenant}/sessions/s1\n", f"{mesh.tenant}/sessions/s 1"):
            get = stub.GetSession(
                conversation_service_pb2.GetSessionRequest(name=name), timeout=10, metadata=mesh.auth(mesh.token())
            )
            error = await _fails(get, grpc.StatusCode.INVALID_ARGUMENT, "RESOURCE_NAME_INVALID")
            info = error_info_of(error)
            assert info is not None
            assert info.domain == "gateway.skm"
            assert info.metadata["field"] == "name"


async def test_internal_and_unknown_methods_are_not_reachable(mesh: Mesh) -> None:
    async with signed_channel(mesh.gateway.target) as channel:
        check = policy_service_pb2_grpc.PolicyServiceStub(channel).Check(
            policy_service_pb2.CheckRequest(), timeout=10, metadata=mesh.auth(mesh.token())
        )
        await _fails(check, grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_PUBLIC")
        for path in ("/skm.nothing.v1.Nothing/Do", "/foo.Bar/Baz"):
            unknown = channel.unary_unary(path)(b"", timeout=10)
            await _fails(unknown, grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_PUBLIC")


async def test_a_stream_without_a_valid_token_is_refused_as_it_opens(mesh: Mesh) -> None:
    """No message sent: the refusal comes at once, not at the call's deadline."""
    async with signed_channel(mesh.gateway.target) as channel:
        converse = channel.stream_stream("/skm.conversation.v1.ConversationService/Converse")
        for metadata, reason in (((), "TOKEN_MISSING"), (mesh.auth("garbage"), "TOKEN_INVALID")):
            call = converse(metadata=metadata, timeout=30)
            opened = time.monotonic()
            await _fails(call.read(), grpc.StatusCode.UNAUTHENTICATED, reason)
            assert time.monotonic() - opened < 10
            call.cancel()


async def test_a_message_over_the_public_limit_is_refused_with_its_reason(mesh: Mesh) -> None:
    """gRPC's own limit (4 MiB) would refuse it with no details: the gateway receives up
    to 64 MiB and answers for the public limit itself."""
    limit = GatewaySettings().max_message_bytes
    request = blocked_action_service_pb2.ListBlockedActionsRequest(parent=mesh.tenant, page_token="x" * (limit + 1))
    async with signed_channel(mesh.gateway.target) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        error = await _fails(
            stub.ListBlockedActions(request, timeout=10, metadata=mesh.auth(mesh.token())),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_TOO_LARGE",
        )
    info = error_info_of(error)
    assert info is not None
    assert info.domain == "gateway.skm"
    assert (info.metadata["limit"], info.metadata["size"]) == (str(limit), str(request.ByteSize()))


async def test_the_owning_services_errors_pass_through_with_their_details(mesh: Mesh) -> None:
    async with signed_channel(mesh.gateway.target) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        get = stub.GetBlockedAction(
            blocked_action_service_pb2.GetBlockedActionRequest(name=f"{mesh.tenant}/blockedActions/nope"),
            timeout=10,
            metadata=mesh.auth(mesh.token()),
        )
        error = await _fails(get, grpc.StatusCode.NOT_FOUND, "BLOCKED_ACTION_NOT_FOUND")
        info = error_info_of(error)
        assert info is not None
        assert info.domain == "policy.skm"


async def test_the_trace_context_goes_on_to_the_owning_service(mesh: Mesh) -> None:
    """The caller's trace continues in the gateway's span, and the owning service's span is its child."""
    trace_id, caller_span = int(uuid.uuid4().hex, 16), 0x1111111111111111
    traceparent = f"00-{trace_id:032x}-{caller_span:016x}-01"
    async with signed_channel(mesh.gateway.target) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        await stub.ListBlockedActions(
            blocked_action_service_pb2.ListBlockedActionsRequest(parent=mesh.tenant),
            timeout=10,
            metadata=(*mesh.auth(mesh.token()), ("traceparent", traceparent)),
        )

    def finished(served: Served) -> list[Any]:
        return [
            span
            for span in served.spans.get_finished_spans()
            if span.context.trace_id == trace_id and span.name.endswith("/ListBlockedActions")
        ]

    # A server's span ends just after its reply is sent.
    for _ in range(100):
        if finished(mesh.gateway) and finished(mesh.policy):
            break
        await asyncio.sleep(0.05)
    (gateway_span,) = finished(mesh.gateway)
    (service_span,) = finished(mesh.policy)
    assert gateway_span.parent is not None
    assert gateway_span.parent.span_id == caller_span
    assert service_span.parent is not None
    assert service_span.parent.span_id == gateway_span.context.span_id


async def test_server_streams_and_the_principal_are_forwarded(mesh: Mesh) -> None:
    """Watch through the gateway while an operator approves through it: the resolver is the
    principal the gateway authenticated, not anything the client claimed."""
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="run it"))
    async with signed_channel(mesh.policy.target) as direct:
        held = await policy_service_pb2_grpc.PolicyServiceStub(direct).Check(
            policy_service_pb2.CheckRequest(
                check=access_pb2.AccessCheck(
                    subject=f"user:{mesh.tenant}/users/mike",
                    relation="can_execute",
                    object=f"tool:{mesh.tenant}/tools/code",
                ),
                hold=policy_service_pb2.Hold(request_id=str(uuid.uuid4()), payload=payload),
            ),
            timeout=10,
            metadata=principal_metadata(principal_pb2.Principal(tenant=mesh.tenant, user=f"{mesh.tenant}/users/mike")),
        )
    name = held.decision.blocked_action
    assert name
    async with signed_channel(mesh.gateway.target) as channel:
        stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        operator = mesh.auth(mesh.token("olga"))
        watch = stub.WatchBlockedActionResolutions(
            blocked_action_service_pb2.WatchBlockedActionResolutionsRequest(parent=mesh.tenant, names=[name]),
            metadata=operator,
        )
        forged = principal_metadata(principal_pb2.Principal(tenant=mesh.tenant, user=f"{mesh.tenant}/users/mallory"))
        approved = await stub.ApproveBlockedAction(
            blocked_action_service_pb2.ApproveBlockedActionRequest(name=name),
            timeout=10,
            metadata=operator + forged,  # a client's own principal header never passes
        )
        assert approved.blocked_action.resolver == f"{mesh.tenant}/users/olga"
        seen = await asyncio.wait_for(watch.read(), 10)
        assert seen.blocked_action.state == State.STATE_APPROVED
        watch.cancel()


async def test_bidi_calls_are_authorized_on_their_first_message_and_forwarded(mesh: Mesh) -> None:
    """Converse (bidi) reaches svc_conversation, whose own error about the first message (it
    lacks `config`) comes back with its details. Another user's session is refused at the
    gateway."""
    async with signed_channel(mesh.gateway.target) as channel:
        converse = channel.stream_stream("/skm.conversation.v1.ConversationService/Converse")
        first = conversation_service_pb2.ConverseRequest(session=f"{mesh.tenant}/sessions/s1").SerializeToString()

        async def one(token: str) -> None:
            call = converse(metadata=mesh.auth(token), timeout=10)
            await call.write(first)
            await call.done_writing()
            await call.read()

        error = await _fails(one(mesh.token("mike")), grpc.StatusCode.INVALID_ARGUMENT, "FIRST_MESSAGE_NOT_CONFIG")
        assert details_of(error.trailing_metadata()) is not None
        await _fails(one(mesh.token("olga")), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_rate_limits_answer_resource_exhausted_with_retry_info(mesh: Mesh, stack: RunningStack) -> None:
    settings = GatewaySettings(
        policy_addr=mesh.policy.target,
        redis_url=stack.redis_url,
        jwks_file=str(mesh.keys.jwks_file),
        user_rate_per_second=0.01,
        user_burst=2,
    )
    async with (
        serving(await build_gateway(settings, RuntimeSettings())) as gateway,
        signed_channel(gateway.target) as channel,
    ):
        user = f"rate{uuid.uuid4().hex[:6]}"
        async with signed_channel(mesh.policy.target) as direct:
            await policy_service_pb2_grpc.PolicyServiceStub(direct).WriteRelationships(
                policy_service_pb2.WriteRelationshipsRequest(
                    parent=mesh.tenant,
                    relationships=[
                        access_pb2.Relationship(
                            subject=f"user:{mesh.tenant}/users/{user}",
                            relation="operator",
                            object=f"tenant:{mesh.tenant}",
                        )
                    ],
                ),
                timeout=10,
            )
        token = mesh.token(user)
        for _ in range(2):
            await _list(mesh, channel, token)
        error = await _fails(_list(mesh, channel, token), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        status = details_of(error.trailing_metadata())
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert info.retry_delay.seconds > 0


async def test_policy_unreachable_means_refused(mesh: Mesh, stack: RunningStack) -> None:
    settings = GatewaySettings(
        policy_addr=f"127.0.0.1:{free_port()}", redis_url=stack.redis_url, jwks_file=str(mesh.keys.jwks_file)
    )
    async with (
        serving(await build_gateway(settings, RuntimeSettings())) as gateway,
        signed_channel(gateway.target) as channel,
    ):
        await _fails(_list(mesh, channel, mesh.token("olga")), grpc.StatusCode.UNAVAILABLE, "POLICY_UNAVAILABLE")


async def test_a_revoked_relationship_stops_calls_within_the_decision_ttl(mesh: Mesh) -> None:
    """The gateway reuses an ALLOW for SKM_GATEWAY_DECISION_TTL_SECONDS; a revocation made
    through svc_policy empties svc_policy's own cache, so it stops calls within that TTL."""
    ttl = GatewaySettings().decision_ttl_seconds
    user = f"rev{uuid.uuid4().hex[:6]}"
    grant = access_pb2.Relationship(
        subject=f"user:{mesh.tenant}/users/{user}", relation="operator", object=f"tenant:{mesh.tenant}"
    )
    async with (
        signed_channel(mesh.policy.target) as direct,
        signed_channel(mesh.gateway.target) as channel,
    ):
        relationships = policy_service_pb2_grpc.PolicyServiceStub(direct)
        await relationships.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(parent=mesh.tenant, relationships=[grant]), timeout=10
        )
        token = mesh.token(user)
        await _list(mesh, channel, token)  # allowed, and the ALLOW is remembered
        await relationships.DeleteRelationships(
            policy_service_pb2.DeleteRelationshipsRequest(parent=mesh.tenant, relationships=[grant]), timeout=10
        )
        refused = await _within_ttl(lambda: _list(mesh, channel, token), ttl, until_refused=True)
        assert refused == grpc.StatusCode.PERMISSION_DENIED, "a revoked user still passes after the decision TTL"
        # Refused from now on: a DENY is never remembered, nor turned back into an ALLOW.
        await _fails(_list(mesh, channel, token), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


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
