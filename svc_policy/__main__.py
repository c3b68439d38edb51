"""svc_policy: authorization on OpenFGA, the requeue of blocked actions, tenant constitutions.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_policy import api
from svc_policy.settings import PolicySettings


async def build(settings: PolicySettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="policy", service_names=services_of("policy"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("policy", PolicySettings, build))
