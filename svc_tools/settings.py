"""svc_tools settings (SKM_TOOLS_*)."""

from __future__ import annotations

from dataclasses import dataclass

from skm_runtime.server import ServiceSettings
from skm_runtime.settings import address


@dataclass(frozen=True, slots=True)
class ToolsSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50054")
