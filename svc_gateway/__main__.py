"""svc_gateway: the only public entry, behind Envoy.

Composition root: settings -> token verifier, rate limiter (Redis), policy client
(svc_policy) -> core -> the generic proxy of every public RPC, plus health and reflection
answered for the whole mesh.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from skm_runtime.contract import methods, service_owners
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_gateway.adapters.policy import GrpcPolicy
from svc_gateway.adapters.ratelimit import RedisRateLimiter
from svc_gateway.adapters.tokens import JwtVerifier
from svc_gateway.core import MEMBERSHIP, Gateway
from svc_gateway.health import GatewayHealth
from svc_gateway.proxy import Proxy
from svc_gateway.settings import GatewaySettings

log = logging.getLogger("skm.gateway")


async def build(settings: GatewaySettings, runtime: RuntimeSettings) -> ServiceSpec:
    jwks = await asyncio.to_thread(Path(settings.jwks_file).read_text) if settings.jwks_file else '{"keys": []}'
    verifier = JwtVerifier.from_json(
        jwks, algorithms=settings.jwt_algorithms, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    if not settings.jwks_file:
        log.warning("no SKM_GATEWAY_JWKS_FILE: no token can verify, every public call is refused")
    owners = service_owners()
    channels: dict[str, grpc.aio.Channel] = {}
    # Forwarding sets each call's deadline and trace context itself: its channels skip the
    # outbound interceptor's per-call cost (they share the connections of `channels`).
    forwarding: dict[str, grpc.aio.Channel] = {}
    for owner in sorted(set(owners.values())):
        channels[owner] = open_channel(settings.backend_addr(owner), runtime)
        forwarding[owner] = open_channel(settings.backend_addr(owner), runtime, intercepted=False)
    limiter = RedisRateLimiter.connect(
        settings.redis_url,
        {
            "tenant": (settings.tenant_rate_per_second, settings.tenant_burst),
            "user": (settings.user_rate_per_second, settings.user_burst),
        },
        lease_tokens=settings.rate_lease_tokens,
        lease_seconds=settings.rate_lease_seconds,
    )
    policy = GrpcPolicy(
        channels["policy"],
        constitution_ttl=settings.constitution_ttl_seconds,
        max_tenants=settings.constitution_cache_tenants,
        decision_ttl=settings.decision_ttl_seconds,
        redis_url=settings.redis_url,
    )
    along: dict[str, set[str]] = {}
    for method in methods().values():
        if method.authz is not None and method.authz.any_tenant_member:
            along.setdefault("tenant", set()).add(MEMBERSHIP)
        elif method.authz is not None and method.authz.permission:
            along.setdefault(method.authz.resource_type, set()).add(method.authz.permission)
    gateway = Gateway(verifier, policy, limiter, policy, along={kind: sorted(p) for kind, p in along.items()})
    proxy = Proxy(
        gateway,
        methods(),
        forwarding,
        stream_timeout=runtime.grpc_stream_timeout_seconds,
        max_message_bytes=settings.max_message_bytes,
    )
    routes = {service: channels[owner] for service, owner in owners.items()}

    async def stop() -> None:
        await policy.close()
        await limiter.close()
        for channel in (*forwarding.values(), *channels.values()):
            await channel.close()

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((proxy,))

    return ServiceSpec(
        name="gateway",
        service_names=(),
        register=register,
        stop=stop,
        reflect_extra=tuple(sorted(owners)),
        health=GatewayHealth(routes, settings.backend_health_timeout_seconds),
        max_receive_bytes=max(settings.max_receive_bytes, settings.max_message_bytes),
        mesh_only=False,  # the public entry: every call is authenticated by its token instead
    )


if __name__ == "__main__":
    raise SystemExit(run("gateway", GatewaySettings, build))
