"""svc_tools' catalogue as onboarding needs it (ports.ToolCatalogue): every tool and its risk
level, read with ToolService.ListTools as this service (a caller of the mesh, signed by the
channel's interceptors)."""

from __future__ import annotations

import grpc

from skm.tools.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm_runtime.errors import ServiceUnavailable
from svc_profiles.model import CatalogueTool, ToolRisk

_CALL_SECONDS = 10.0
_RISKS = {
    tool_pb2.RISK_LEVEL_LOW: ToolRisk.LOW,
    tool_pb2.RISK_LEVEL_MEDIUM: ToolRisk.MEDIUM,
    tool_pb2.RISK_LEVEL_HIGH: ToolRisk.HIGH,
}


class GrpcToolCatalogue:
    """svc_tools' ToolService over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._tools = tool_service_pb2_grpc.ToolServiceStub(channel)

    async def tools(self, tenant: str) -> list[CatalogueTool]:
        found: list[CatalogueTool] = []
        token = ""
        while True:
            try:
                reply = await self._tools.ListTools(
                    tool_service_pb2.ListToolsRequest(parent=tenant, page_size=1000, page_token=token),
                    timeout=_CALL_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                raise ServiceUnavailable(
                    f"svc_tools could not list its tools ({error.code().name})",
                    metadata={"dependency": "tools", "code": error.code().name},
                ) from None
            # A risk level this build does not know is treated as the highest: never less
            # guarded than svc_tools meant.
            found += [
                CatalogueTool(tool.name.rsplit("/", 1)[-1], _RISKS.get(tool.risk_level, ToolRisk.HIGH))
                for tool in reply.tools
            ]
            token = reply.next_page_token
            if not token:
                return found
