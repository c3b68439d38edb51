"""svc_tools's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the tool-executor issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.tools.v1 import knowledge_service_pb2_grpc, tool_service_pb2_grpc


class ToolApi(tool_service_pb2_grpc.ToolServiceServicer):
    """skm.tools.v1.ToolService."""


class KnowledgeApi(knowledge_service_pb2_grpc.KnowledgeServiceServicer):
    """skm.tools.v1.KnowledgeService."""


def register(server: grpc.aio.Server) -> None:
    tool_service_pb2_grpc.add_ToolServiceServicer_to_server(ToolApi(), server)  # type: ignore[abstract]  # not served yet
    knowledge_service_pb2_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeApi(), server)  # type: ignore[abstract]  # not served yet
