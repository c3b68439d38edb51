"""svc_analytics: Kafka to ClickHouse, dashboards and audit queries.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_analytics import api
from svc_analytics.settings import AnalyticsSettings


async def build(settings: AnalyticsSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="analytics", service_names=services_of("analytics"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("analytics", AnalyticsSettings, build))
