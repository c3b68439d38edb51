"""svc_conversation's turns and sessions as training mode reads them (ports.Conversations):
GetTurn, then GetSession of its session, each as the operator (a principal signed with the
mesh key), so svc_conversation applies the operator's own access to the session."""

from __future__ import annotations

import grpc

from skm.conversation.v1 import conversation_service_pb2, conversation_service_pb2_grpc, turn_pb2
from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.values_wire import mode_of
from svc_profiles.errors import TurnNotFound
from svc_profiles.model import Exchange

_CALL_SECONDS = 10.0
# What svc_conversation answers for a turn or session the caller may not read, or that does
# not exist: for training, both are "no such turn".
_NOT_THERE = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


class GrpcConversations:
    """svc_conversation's ConversationService over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = conversation_service_pb2_grpc.ConversationServiceStub(channel)

    async def exchange(self, turn: str, principal: Principal) -> Exchange:
        metadata = principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))
        session_name = turn.split("/turns/", 1)[0]
        try:
            found = await self._stub.GetTurn(
                conversation_service_pb2.GetTurnRequest(name=turn), metadata=metadata, timeout=_CALL_SECONDS
            )
            session = await self._stub.GetSession(
                conversation_service_pb2.GetSessionRequest(name=session_name), metadata=metadata, timeout=_CALL_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _NOT_THERE:
                raise TurnNotFound(
                    "no such turn, or not the operator's to read", metadata={"turn": turn[:300]}
                ) from None
            raise ServiceUnavailable(
                f"svc_conversation could not read the turn ({error.code().name})",
                metadata={"dependency": "conversation", "code": error.code().name},
            ) from None
        return Exchange(
            turn=found.turn.name,
            session=session.session.name,
            persona=session.session.persona,
            mode=mode_of(session.session.mode),
            completed=found.turn.state == turn_pb2.Turn.STATE_COMPLETED,
            user_text=found.turn.input_text,
            agent_text=found.turn.response_text,
        )
