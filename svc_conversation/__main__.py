"""svc_conversation: sessions, turns and the agent loop.

Composition root: settings -> adapters -> core -> servicers -> server.
"""

from __future__ import annotations

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_conversation import api
from svc_conversation.settings import ConversationSettings


async def build(settings: ConversationSettings, runtime: RuntimeSettings) -> ServiceSpec:
    return ServiceSpec(name="conversation", service_names=services_of("conversation"), register=api.register)


if __name__ == "__main__":
    raise SystemExit(run("conversation", ConversationSettings, build))
