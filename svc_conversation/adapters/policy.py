"""svc_policy, as svc_conversation's core asks it (the PolicyGate port): decisions, the
owner relationship of a new session, and the exactly-once protocol of an action it holds
for an operator, which is the shared one (skm_runtime.held_actions): hold, wait for the
operator, claim, complete, with outcomes svc_policy could not take kept durably and
reported again.

Every call carries the principal of the user the turn works for. svc_policy unreachable
becomes DependencyUnavailable, never a silent allow. Waiting for an operator's decision
is the exception: it outlasts a lost stream or a restart of svc_policy until the decision
comes or the wait is cancelled.
"""

from __future__ import annotations

import grpc

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm_runtime.access import AccessCheck, Approval, Decision, Hold, Outcome, Principal
from skm_runtime.held_actions import HeldActions, PendingReports, PolicyUnreachable
from skm_runtime.policy_calls import GrpcPolicyCalls
from skm_runtime.principal import principal_message, principal_metadata
from svc_conversation.errors import DependencyUnavailable

_CALL_SECONDS = 10.0


def _unavailable(code: str) -> DependencyUnavailable:
    return DependencyUnavailable(f"svc_policy is unavailable ({code})", retry_after_seconds=1.0)


class GrpcPolicy:
    """svc_policy on one channel; `reports` keeps the outcomes it could not take yet (the
    service's PostgreSQL in production)."""

    def __init__(self, channel: grpc.aio.Channel, *, reports: PendingReports) -> None:
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self.held = HeldActions(GrpcPolicyCalls(channel, call_timeout=_CALL_SECONDS), reports)

    def start(self) -> None:
        """Report what a previous process of this service left owed."""
        self.held.start()

    async def close(self) -> None:
        """Stop reporting outcomes again (what is owed stays in the store)."""
        await self.held.close()

    async def own_session(self, principal: Principal, session: str) -> None:
        """Records the session's tenant and owner, so the gateway lets its owner use it."""
        obj = f"session:{session}"
        request = policy_service_pb2.WriteRelationshipsRequest(
            parent=principal.tenant,
            relationships=[
                access_pb2.Relationship(subject=f"tenant:{principal.tenant}", relation="tenant", object=obj),
                access_pb2.Relationship(subject=f"user:{principal.user}", relation="owner", object=obj),
            ],
        )
        metadata = principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))
        try:
            await self._stub.WriteRelationships(request, metadata=metadata, timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error.code().name) from None

    async def check(self, principal: Principal, check: AccessCheck, hold: Hold | None = None) -> Decision:
        """svc_policy's decision; with ``hold``, a REQUIRES_APPROVAL one is held for an
        operator in the same call (the decision names the blocked action), and a check
        repeated with the same ``hold.request_id`` names the same one."""
        try:
            if hold is None:
                return (await self.held.check(principal, [check]))[0]
            return await self.held.hold(principal, check, hold)
        except PolicyUnreachable as error:
            raise _unavailable(error.code) from None

    async def approval(self, principal: Principal, blocked_action: str, claim_id: str) -> Approval:
        """Waits for the operator's decision on a held action, and claims an approved one
        with ``claim_id`` before answering CLAIMED (again CLAIMED for a claim made before).
        Cancel the wait to stop waiting: the entry stays for the operator."""
        return await self.held.approval(principal, blocked_action, claim_id)

    async def complete(self, principal: Principal, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        """Reports the outcome of a claimed action (idempotent); where svc_policy cannot
        take it now, it is kept and reported again in the background, and the turn goes on."""
        await self.held.complete(principal, blocked_action, claim_id, outcome)
