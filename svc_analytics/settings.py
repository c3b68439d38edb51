"""svc_analytics settings (SKM_ANALYTICS_*)."""

from __future__ import annotations

from dataclasses import dataclass

from skm_runtime.settings import ServiceSettings, address


@dataclass(frozen=True, slots=True)
class AnalyticsSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50057")
