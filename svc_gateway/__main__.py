"""svc_gateway: the only public entry, behind Envoy.

Composition root. This version routes health checks to the services behind it and
describes all of them through reflection; authenticated, authorized forwarding of every
public RPC comes with the text-conversation capability.
"""

from __future__ import annotations

import grpc

from skm_runtime.contract import service_owners
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_gateway.health import GatewayHealth
from svc_gateway.settings import GatewaySettings


async def build(settings: GatewaySettings, runtime: RuntimeSettings) -> ServiceSpec:
    owners = service_owners()
    channels: dict[str, grpc.aio.Channel] = {}
    routes: dict[str, grpc.aio.Channel] = {}
    for service, owner in owners.items():
        addr = settings.backend_addr(owner)
        if addr not in channels:
            channels[addr] = open_channel(addr, runtime)
        routes[service] = channels[addr]

    async def stop() -> None:
        for channel in channels.values():
            await channel.close()

    return ServiceSpec(
        name="gateway",
        service_names=(),
        register=lambda server: None,
        stop=stop,
        reflect_extra=tuple(sorted(owners)),
        health=GatewayHealth(routes, settings.backend_health_timeout_seconds),
    )


if __name__ == "__main__":
    raise SystemExit(run("gateway", GatewaySettings, build))
