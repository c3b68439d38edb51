"""svc_tools's servicers: request in, one core call, response out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from skm.tools.v1 import (
    knowledge_service_pb2,
    knowledge_service_pb2_grpc,
    tool_service_pb2,
    tool_service_pb2_grpc,
)
from skm_runtime.access import Principal
from skm_runtime.interceptors import admitted_from_outside, call_principal
from skm_runtime.principal import FORWARDED_BY_KEY
from svc_tools import convert
from svc_tools.core.tools import Tools
from svc_tools.knowledge import Knowledge

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = call_principal(context)
    return None if message is None else convert.principal_of(message)


def _from_inside_the_mesh(context: Context) -> bool:
    # Facts for policy conditions (ExecuteToolRequest.policy_context) are honoured only on
    # calls from inside the mesh: never on a public call (admitted by its token), nor on one
    # another service makes on a client's behalf (marked as forwarded).
    if admitted_from_outside():
        return False
    return not any(key == FORWARDED_BY_KEY for key, _ in context.invocation_metadata() or ())


def _trace_id() -> str:
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else ""


class ToolApi(tool_service_pb2_grpc.ToolServiceServicer):
    """skm.tools.v1.ToolService."""

    def __init__(self, tools: Tools) -> None:
        self._tools = tools

    async def ListTools(
        self, request: tool_service_pb2.ListToolsRequest, context: Context
    ) -> tool_service_pb2.ListToolsResponse:
        tools, token = self._tools.list_tools(request.parent, request.page_size, request.page_token)
        return tool_service_pb2.ListToolsResponse(
            tools=[convert.tool_to(tool, request.parent) for tool in tools], next_page_token=token
        )

    async def ExecuteTool(
        self, request: tool_service_pb2.ExecuteToolRequest, context: Context
    ) -> AsyncIterator[tool_service_pb2.ExecuteToolResponse]:
        updates = self._tools.execute(
            convert.request_of(request),
            _principal(context),
            trusted_context=_from_inside_the_mesh(context),
            trace_id=_trace_id(),
        )
        async for update in updates:
            yield convert.update_to(update)

    async def CancelExecution(
        self, request: tool_service_pb2.CancelExecutionRequest, context: Context
    ) -> tool_service_pb2.CancelExecutionResponse:
        execution = await self._tools.cancel_execution(request.name, _principal(context))
        return tool_service_pb2.CancelExecutionResponse(execution=convert.execution_to(execution))

    async def GetExecution(
        self, request: tool_service_pb2.GetExecutionRequest, context: Context
    ) -> tool_service_pb2.GetExecutionResponse:
        execution = await self._tools.get_execution(request.name, _principal(context))
        return tool_service_pb2.GetExecutionResponse(execution=convert.execution_to(execution))


class KnowledgeApi(knowledge_service_pb2_grpc.KnowledgeServiceServicer):
    """skm.tools.v1.KnowledgeService."""

    def __init__(self, knowledge: Knowledge) -> None:
        self._knowledge = knowledge

    async def ImportDocument(
        self, request: knowledge_service_pb2.ImportDocumentRequest, context: Context
    ) -> knowledge_service_pb2.ImportDocumentResponse:
        document = await self._knowledge.import_document(
            request.parent, convert.new_document_of(request.document), _principal(context)
        )
        return knowledge_service_pb2.ImportDocumentResponse(document=convert.document_to(document))

    async def ListDocuments(
        self, request: knowledge_service_pb2.ListDocumentsRequest, context: Context
    ) -> knowledge_service_pb2.ListDocumentsResponse:
        documents, token = await self._knowledge.list_documents(
            request.parent, request.page_size, request.page_token, _principal(context)
        )
        return knowledge_service_pb2.ListDocumentsResponse(
            documents=[convert.document_to(d) for d in documents], next_page_token=token
        )

    async def DeleteDocument(
        self, request: knowledge_service_pb2.DeleteDocumentRequest, context: Context
    ) -> knowledge_service_pb2.DeleteDocumentResponse:
        await self._knowledge.delete_document(request.name, _principal(context))
        return knowledge_service_pb2.DeleteDocumentResponse()


def register(server: grpc.aio.Server, tools: Tools, knowledge: Knowledge) -> None:
    tool_service_pb2_grpc.add_ToolServiceServicer_to_server(ToolApi(tools), server)
    knowledge_service_pb2_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeApi(knowledge), server)
