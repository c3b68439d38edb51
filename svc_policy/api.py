"""svc_policy's servicers: request in, one core call, response out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm.policy.v1 import (
    access_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    constitution_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm_runtime.access import Hold, Principal
from skm_runtime.interceptors import call_principal
from svc_policy import convert
from svc_policy.core import Policy
from svc_policy.model import Constitution

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = call_principal(context)
    return None if message is None else convert.principal_of(message)


def _fresh(consistency: int) -> bool:
    return consistency == access_pb2.CONSISTENCY_HIGHER_CONSISTENCY


class PolicyApi(policy_service_pb2_grpc.PolicyServiceServicer):
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def Check(
        self, request: policy_service_pb2.CheckRequest, context: Context
    ) -> policy_service_pb2.CheckResponse:
        hold = None
        if request.HasField("hold"):
            hold = Hold(
                request.hold.request_id,
                convert.payload_of(request.hold.payload),
                request.hold.summary,
                request.hold.session,
            )
        decision = await self._policy.check(
            convert.check_of(request.check),
            fresh=_fresh(request.consistency),
            hold=hold,
            principal=_principal(context),
        )
        return policy_service_pb2.CheckResponse(decision=convert.decision_to(decision))

    async def BatchCheck(
        self, request: policy_service_pb2.BatchCheckRequest, context: Context
    ) -> policy_service_pb2.BatchCheckResponse:
        decisions = await self._policy.check_many(
            [convert.check_of(check) for check in request.checks],
            fresh=_fresh(request.consistency),
            principal=_principal(context),
        )
        return policy_service_pb2.BatchCheckResponse(decisions=[convert.decision_to(d) for d in decisions])

    async def WriteRelationships(
        self, request: policy_service_pb2.WriteRelationshipsRequest, context: Context
    ) -> policy_service_pb2.WriteRelationshipsResponse:
        relationships = [convert.relationship_of(r) for r in request.relationships]
        await self._policy.write_relationships(request.parent, relationships)
        return policy_service_pb2.WriteRelationshipsResponse()

    async def DeleteRelationships(
        self, request: policy_service_pb2.DeleteRelationshipsRequest, context: Context
    ) -> policy_service_pb2.DeleteRelationshipsResponse:
        relationships = [convert.relationship_of(r) for r in request.relationships]
        await self._policy.delete_relationships(request.parent, relationships)
        return policy_service_pb2.DeleteRelationshipsResponse()

    async def ReadRelationships(
        self, request: policy_service_pb2.ReadRelationshipsRequest, context: Context
    ) -> policy_service_pb2.ReadRelationshipsResponse:
        found, token = await self._policy.read_relationships(
            request.parent,
            request.subject,
            request.relation,
            request.object,
            request.page_size,
            request.page_token,
        )
        return policy_service_pb2.ReadRelationshipsResponse(
            relationships=[convert.relationship_to(r) for r in found], next_page_token=token
        )


class BlockedActionApi(blocked_action_service_pb2_grpc.BlockedActionServiceServicer):
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def ListBlockedActions(
        self, request: blocked_action_service_pb2.ListBlockedActionsRequest, context: Context
    ) -> blocked_action_service_pb2.ListBlockedActionsResponse:
        actions, token = await self._policy.list_blocked(
            request.parent,
            [convert.state_of(state) for state in request.states],
            request.session,
            request.page_size,
            request.page_token,
        )
        return blocked_action_service_pb2.ListBlockedActionsResponse(
            blocked_actions=[convert.blocked_action_to(a) for a in actions], next_page_token=token
        )

    async def GetBlockedAction(
        self, request: blocked_action_service_pb2.GetBlockedActionRequest, context: Context
    ) -> blocked_action_service_pb2.GetBlockedActionResponse:
        action = await self._policy.get_blocked(request.name, _principal(context))
        return blocked_action_service_pb2.GetBlockedActionResponse(blocked_action=convert.blocked_action_to(action))

    async def ApproveBlockedAction(
        self, request: blocked_action_service_pb2.ApproveBlockedActionRequest, context: Context
    ) -> blocked_action_service_pb2.ApproveBlockedActionResponse:
        action = await self._policy.approve(request.name, _principal(context), request.note, request.etag)
        return blocked_action_service_pb2.ApproveBlockedActionResponse(blocked_action=convert.blocked_action_to(action))

    async def RejectBlockedAction(
        self, request: blocked_action_service_pb2.RejectBlockedActionRequest, context: Context
    ) -> blocked_action_service_pb2.RejectBlockedActionResponse:
        action = await self._policy.reject(request.name, _principal(context), request.note, request.etag)
        return blocked_action_service_pb2.RejectBlockedActionResponse(blocked_action=convert.blocked_action_to(action))

    async def WatchBlockedActionResolutions(
        self, request: blocked_action_service_pb2.WatchBlockedActionResolutionsRequest, context: Context
    ) -> AsyncIterator[blocked_action_service_pb2.WatchBlockedActionResolutionsResponse]:
        async for action in self._policy.watch(request.parent, list(request.names)):
            yield blocked_action_service_pb2.WatchBlockedActionResolutionsResponse(
                blocked_action=convert.blocked_action_to(action)
            )

    async def ClaimApprovedAction(
        self, request: blocked_action_service_pb2.ClaimApprovedActionRequest, context: Context
    ) -> blocked_action_service_pb2.ClaimApprovedActionResponse:
        action = await self._policy.claim(request.name, request.claim_id)
        return blocked_action_service_pb2.ClaimApprovedActionResponse(blocked_action=convert.blocked_action_to(action))

    async def CompleteBlockedAction(
        self, request: blocked_action_service_pb2.CompleteBlockedActionRequest, context: Context
    ) -> blocked_action_service_pb2.CompleteBlockedActionResponse:
        outcome = convert.outcome_of(request.outcome.succeeded, request.outcome.failure_reason)
        action = await self._policy.complete(request.name, request.claim_id, outcome)
        return blocked_action_service_pb2.CompleteBlockedActionResponse(
            blocked_action=convert.blocked_action_to(action)
        )

    async def CancelBlockedAction(
        self, request: blocked_action_service_pb2.CancelBlockedActionRequest, context: Context
    ) -> blocked_action_service_pb2.CancelBlockedActionResponse:
        action = await self._policy.cancel(request.name)
        return blocked_action_service_pb2.CancelBlockedActionResponse(blocked_action=convert.blocked_action_to(action))


def _constitution_to(name: str, constitution: Constitution) -> constitution_pb2.Constitution:
    message = constitution_pb2.Constitution(
        name=name,
        content=constitution.content,
        sha256=constitution.sha256,
        etag=constitution.etag if constitution.update_time is not None else "",
    )
    if constitution.update_time is not None:
        message.update_time.FromDatetime(constitution.update_time)
    return message


class ConstitutionApi(constitution_service_pb2_grpc.ConstitutionServiceServicer):
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def GetConstitution(
        self, request: constitution_service_pb2.GetConstitutionRequest, context: Context
    ) -> constitution_service_pb2.GetConstitutionResponse:
        constitution = await self._policy.get_constitution(request.name)
        return constitution_service_pb2.GetConstitutionResponse(
            constitution=_constitution_to(request.name, constitution)
        )

    async def UpdateConstitution(
        self, request: constitution_service_pb2.UpdateConstitutionRequest, context: Context
    ) -> constitution_service_pb2.UpdateConstitutionResponse:
        given = request.constitution
        constitution = await self._policy.update_constitution(
            given.name, given.content, given.etag, _principal(context)
        )
        return constitution_service_pb2.UpdateConstitutionResponse(
            constitution=_constitution_to(given.name, constitution)
        )


def register(server: grpc.aio.Server, policy: Policy) -> None:
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyApi(policy), server)
    blocked_action_service_pb2_grpc.add_BlockedActionServiceServicer_to_server(BlockedActionApi(policy), server)
    constitution_service_pb2_grpc.add_ConstitutionServiceServicer_to_server(ConstitutionApi(policy), server)
