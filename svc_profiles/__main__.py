"""svc_profiles: model profiles per role, tenant and mode; the model registry; personas; scores.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_profiles import api
from svc_profiles.settings import ProfilesSettings


async def build(settings: ProfilesSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="profiles", service_names=services_of("profiles"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("profiles", ProfilesSettings, build))
