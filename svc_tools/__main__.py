"""svc_tools: sandboxed, policy-gated tools and the tenant knowledge base.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_tools import api
from svc_tools.settings import ToolsSettings


async def build(settings: ToolsSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="tools", service_names=services_of("tools"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("tools", ToolsSettings, build))
