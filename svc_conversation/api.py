"""svc_conversation's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the text-conversation issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.conversation.v1 import conversation_service_pb2_grpc


class ConversationApi(conversation_service_pb2_grpc.ConversationServiceServicer):
    """skm.conversation.v1.ConversationService."""


def register(server: grpc.aio.Server) -> None:
    conversation_service_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationApi(), server)  # type: ignore[abstract]  # not served yet
