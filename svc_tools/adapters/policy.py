"""svc_policy behind the PolicyGate port, over its gRPC API.

Checks carry the caller's principal (`x-skm-principal-bin`), as svc_policy holds an action
for the principal of the Check call. Every failure to get an answer fails closed: it
becomes PolicyUnavailable, and the core runs nothing. Waiting for an operator survives a
lost stream or a restart of svc_policy (skm_runtime.blocked_actions polls the entry, then
watches again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm_runtime.access import AccessCheck, Decision, Principal
from skm_runtime.access import HeldState as BlockedState
from skm_runtime.blocked_actions import GONE, wait_resolved
from skm_runtime.principal import principal_metadata
from skm_runtime.status import error_info_of
from svc_tools.convert import decision_of, principal_to, request_to, struct_of
from svc_tools.errors import ClaimRefused, PolicyUnavailable
from svc_tools.model import Execution, HoldRequest, Resolution

log = logging.getLogger("skm.tools.policy")


def _check_to(check: AccessCheck) -> access_pb2.AccessCheck:
    return access_pb2.AccessCheck(
        subject=check.subject, relation=check.relation, object=check.object, context=struct_of(check.context)
    )


def _state_of(action: blocked_action_pb2.BlockedAction) -> BlockedState:
    return BlockedState(blocked_action_pb2.BlockedAction.State.Name(action.state).removeprefix("STATE_"))


def _resolution(action: blocked_action_pb2.BlockedAction) -> Resolution:
    return Resolution(_state_of(action), note=action.note, claim_id=action.claim_id)


def _unavailable(exc: grpc.aio.AioRpcError) -> PolicyUnavailable:
    info = error_info_of(exc)
    return PolicyUnavailable(
        "svc_policy cannot be reached; nothing was run",
        metadata={"code": exc.code().name, "reason": info.reason if info is not None else ""},
        retry_after_seconds=1.0,
    )


class GrpcPolicyGate:
    """Checks, holds, and the claim protocol of skm.policy.v1 on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)

    async def check(self, checks: Sequence[AccessCheck], principal: Principal) -> list[Decision]:
        metadata = principal_metadata(principal_to(principal))
        try:
            if len(checks) == 1:
                reply = await self._policy.Check(
                    policy_service_pb2.CheckRequest(check=_check_to(checks[0])), metadata=metadata
                )
                return [decision_of(reply.decision)]
            batch = await self._policy.BatchCheck(
                policy_service_pb2.BatchCheckRequest(checks=[_check_to(c) for c in checks]), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from exc
        decisions = [decision_of(d) for d in batch.decisions]
        if len(decisions) != len(checks):
            raise PolicyUnavailable("svc_policy answered a different number of checks; nothing was run")
        return decisions

    async def hold(self, check: AccessCheck, principal: Principal, hold: HoldRequest, execution: Execution) -> Decision:
        payload = any_pb2.Any()
        payload.Pack(request_to(execution))
        request = policy_service_pb2.CheckRequest(
            check=_check_to(check),
            hold=policy_service_pb2.Hold(
                request_id=hold.request_id, payload=payload, summary=hold.summary, session=hold.session
            ),
        )
        try:
            reply = await self._policy.Check(request, metadata=principal_metadata(principal_to(principal)))
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from exc
        return decision_of(reply.decision)

    async def wait_resolution(self, blocked_action: str) -> Resolution:
        def lost(code: grpc.StatusCode) -> None:
            log.warning(
                "lost the watch of a held run; polling",
                extra={"fields": {"blocked_action": blocked_action, "code": code.name}},
            )

        action = await wait_resolved(self._blocked, blocked_action, on_watch_lost=lost)
        if action is GONE:
            return Resolution(BlockedState.EXPIRED, note="the held run is gone from svc_policy's store")
        return _resolution(action)

    async def claim(self, blocked_action: str, claim_id: str) -> None:
        try:
            await self._blocked.ClaimApprovedAction(
                blocked_action_service_pb2.ClaimApprovedActionRequest(name=blocked_action, claim_id=claim_id)
            )
        except grpc.aio.AioRpcError as exc:
            info = error_info_of(exc)
            reason = info.reason if info is not None else exc.code().name
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ClaimRefused(BlockedState.EXPIRED.value, reason) from exc
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise _unavailable(exc) from exc
            try:
                got = await self._blocked.GetBlockedAction(
                    blocked_action_service_pb2.GetBlockedActionRequest(name=blocked_action)
                )
            except grpc.aio.AioRpcError as again:
                raise _unavailable(again) from again
            raise ClaimRefused(_state_of(got.blocked_action).value, reason) from exc

    async def complete(self, blocked_action: str, claim_id: str, succeeded: bool, failure_reason: str) -> None:
        request = blocked_action_service_pb2.CompleteBlockedActionRequest(
            name=blocked_action,
            claim_id=claim_id,
            outcome=blocked_action_pb2.ActionOutcome(succeeded=succeeded, failure_reason=failure_reason),
        )
        try:
            await self._blocked.CompleteBlockedAction(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                # Retrying cannot change svc_policy's answer; say so and move on.
                info = error_info_of(exc)
                log.warning(
                    "svc_policy refused the outcome of a claimed run",
                    extra={"fields": {"blocked_action": blocked_action, "reason": info.reason if info else ""}},
                )
                return
            raise _unavailable(exc) from exc

    async def cancel(self, blocked_action: str) -> None:
        try:
            await self._blocked.CancelBlockedAction(
                blocked_action_service_pb2.CancelBlockedActionRequest(name=blocked_action)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return  # resolved already (or gone): nothing is left to withdraw
            raise _unavailable(exc) from exc
