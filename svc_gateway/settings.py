"""Gateway settings: its own address, and where each service it answers health for listens."""

from __future__ import annotations

from dataclasses import dataclass

from skm_runtime.settings import ServiceSettings, address, bounded


@dataclass(frozen=True, slots=True)
class GatewaySettings(ServiceSettings):
    """SKM_GATEWAY_* plus the SKM_<SERVICE>_ADDR each service binds."""

    addr: str = address("127.0.0.1:50051")
    conversation_addr: str = address("127.0.0.1:50052", env="SKM_CONVERSATION_ADDR")
    audio_addr: str = address("127.0.0.1:50053", env="SKM_AUDIO_ADDR")
    tools_addr: str = address("127.0.0.1:50054", env="SKM_TOOLS_ADDR")
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    profiles_addr: str = address("127.0.0.1:50056", env="SKM_PROFILES_ADDR")
    analytics_addr: str = address("127.0.0.1:50057", env="SKM_ANALYTICS_ADDR")
    # How long a health check of a service may take before it counts as NOT_SERVING.
    backend_health_timeout_seconds: float = bounded(2.0, low=0.05, high=60.0)

    def backend_addr(self, owner: str) -> str:
        """The address of the service named `owner` in the contract's `owner` option."""
        value = getattr(self, f"{owner}_addr", None)
        if not isinstance(value, str):
            raise KeyError(f"no address setting for service {owner!r}")
        return value
