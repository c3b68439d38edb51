"""svc_gateway: what only the front door does, behind Envoy's catch-all and health routes.

Envoy carries every public call straight to the service that owns it, which admits the call
itself (skm_runtime.gate); no byte of a call passes through here. What is left is the mesh
as one address: gRPC health for every service (a Check naming a service is asked of that
service), server reflection listing every service of the contract (so `grpcurl list`,
`buf curl` and friends work on Envoy's port), and UNIMPLEMENTED / METHOD_NOT_PUBLIC for any
path that is no public method.

Composition root: settings -> a channel per owning service (health only) -> the handlers.
"""

from __future__ import annotations

import grpc

from skm_runtime.contract import service_owners
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_gateway.health import GatewayHealth
from svc_gateway.not_public import NotPublic
from svc_gateway.settings import GatewaySettings


async def build(settings: GatewaySettings, runtime: RuntimeSettings) -> ServiceSpec:
    owners = service_owners()
    channels = {owner: open_channel(settings.backend_addr(owner), runtime) for owner in sorted(set(owners.values()))}
    routes = {service: channels[owner] for service, owner in owners.items()}

    async def stop() -> None:
        for channel in channels.values():
            await channel.close()

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((NotPublic(),))

    return ServiceSpec(
        name="gateway",
        service_names=(),
        register=register,
        stop=stop,
        reflect_extra=tuple(sorted(owners)),
        health=GatewayHealth(routes, settings.backend_health_timeout_seconds),
        mesh_only=False,  # health, reflection and refusals answer anyone
    )


if __name__ == "__main__":
    raise SystemExit(run("gateway", GatewaySettings, build))
