"""svc_policy behind the PolicyGate port, over its gRPC API.

Checks and holds carry the caller's principal (`x-skm-principal-bin`), as svc_policy holds
an action for the principal of the Check call; the wait, claim, outcome and withdrawal are
svc_tools' own calls (its mesh-caller signature) through the shared held-action protocol
(skm_runtime.held_actions), which keeps outcomes svc_policy could not take in svc_tools'
PostgreSQL and reports them again. Every failure to get an answer to a check fails closed:
it becomes PolicyUnavailable, and the core runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2

from skm_runtime.access import AccessCheck, Approval, Decision, Hold, Outcome, Payload, Principal
from skm_runtime.held_actions import HeldActions, PendingReports, PolicyUnreachable
from skm_runtime.policy_calls import GrpcPolicyCalls
from svc_tools.convert import request_to
from svc_tools.errors import PolicyUnavailable
from svc_tools.model import Execution, HoldRequest


def _unavailable(error: PolicyUnreachable) -> PolicyUnavailable:
    return PolicyUnavailable(
        "svc_policy cannot be reached; nothing was run",
        metadata={"code": error.code, "reason": error.reason},
        retry_after_seconds=1.0,
    )


class GrpcPolicyGate:
    """PolicyGate on one channel to svc_policy; `reports` keeps owed outcomes."""

    def __init__(self, channel: grpc.aio.Channel, *, reports: PendingReports) -> None:
        self.held = HeldActions(GrpcPolicyCalls(channel), reports)

    def start(self) -> None:
        """Report what a previous process of svc_tools left owed."""
        self.held.start()

    async def close(self) -> None:
        await self.held.close()

    async def check(self, checks: Sequence[AccessCheck], principal: Principal) -> list[Decision]:
        try:
            return await self.held.check(principal, checks)
        except PolicyUnreachable as error:
            raise _unavailable(error) from error

    async def hold(self, check: AccessCheck, principal: Principal, hold: HoldRequest, execution: Execution) -> Decision:
        packed = any_pb2.Any()
        packed.Pack(request_to(execution))
        payload = Payload(packed.type_url, packed.value)
        try:
            return await self.held.hold(principal, check, Hold(hold.request_id, payload, hold.summary, hold.session))
        except PolicyUnreachable as error:
            raise _unavailable(error) from error

    async def approval(self, blocked_action: str, claim_id: str) -> Approval:
        return await self.held.approval(None, blocked_action, claim_id)

    async def complete(self, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        await self.held.complete(None, blocked_action, claim_id, outcome)

    async def cancel(self, blocked_action: str) -> None:
        try:
            await self.held.cancel(None, blocked_action)
        except PolicyUnreachable as error:
            raise _unavailable(error) from error
