"""svc_policy over gRPC, as the held-action protocol's PolicyCalls port (skm_runtime.held_actions).

The one client of skm.policy.v1's checks and blocked actions that services use. A call with
a principal carries it signed (`x-skm-principal-bin`), so svc_policy holds and shows the
action as that caller's; without one, the channel's own mesh-caller signature speaks for
the service. Every failure to get an answer to a check fails closed (PolicyUnreachable).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format, struct_pb2

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.type.v1 import policy_decision_pb2
from skm_runtime.access import AccessCheck, Decision, HeldState, Hold, Outcome, Principal, Verdict
from skm_runtime.blocked_actions import GONE, wait_resolved
from skm_runtime.held_actions import (
    FIRST_BACKOFF_SECONDS,
    GONE_NOTE,
    MAX_BACKOFF_SECONDS,
    ClaimAnswer,
    HeldEntry,
    PolicyUnreachable,
    ReportAnswer,
)
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.status import error_info_of

log = logging.getLogger("skm.runtime.policy_calls")

Metadata = tuple[tuple[str, bytes], ...]
# svc_policy's answers to an outcome that no retry changes.
_FINAL_FOR_COMPLETE = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def decision_of(message: policy_decision_pb2.PolicyDecision) -> Decision:
    """The domain decision; an unset or unknown verdict is no permission (fail closed)."""
    name = policy_decision_pb2.Verdict.Name(message.verdict).removeprefix("VERDICT_")
    verdict = Verdict(name) if name in Verdict.__members__ else Verdict.DENY
    return Decision(verdict, message.reason, message.decision_id, message.blocked_action)


def held_state_of(action: blocked_action_pb2.BlockedAction) -> HeldState:
    return HeldState(blocked_action_pb2.BlockedAction.State.Name(action.state).removeprefix("STATE_"))


def struct_of(context: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if context:
        message.update(dict(context))
    return message


def context_of(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message) if message.fields else {}


def check_to(check: AccessCheck) -> access_pb2.AccessCheck:
    return access_pb2.AccessCheck(
        subject=check.subject, relation=check.relation, object=check.object, context=struct_of(check.context)
    )


def _unreachable(error: grpc.aio.AioRpcError) -> PolicyUnreachable:
    info = error_info_of(error)
    return PolicyUnreachable(error.code().name, info.reason if info is not None else "")


class GrpcPolicyCalls:
    """PolicyCalls on one channel to svc_policy; `call_timeout` bounds each unary call."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        call_timeout: float | None = None,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        self._timeout = call_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff

    @staticmethod
    def _metadata(principal: Principal | None) -> Metadata | None:
        if principal is None:
            return None
        return principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))

    async def check(self, principal: Principal | None, checks: Sequence[AccessCheck]) -> list[Decision]:
        metadata = self._metadata(principal)
        try:
            if len(checks) == 1:
                reply = await self._policy.Check(
                    policy_service_pb2.CheckRequest(check=check_to(checks[0])), metadata=metadata, timeout=self._timeout
                )
                return [decision_of(reply.decision)]
            batch = await self._policy.BatchCheck(
                policy_service_pb2.BatchCheckRequest(checks=[check_to(c) for c in checks]),
                metadata=metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _unreachable(error) from error
        decisions = [decision_of(d) for d in batch.decisions]
        if len(decisions) != len(checks):
            raise PolicyUnreachable("INTERNAL", "svc_policy answered a different number of checks")
        return decisions

    async def hold(self, principal: Principal | None, check: AccessCheck, hold: Hold) -> Decision:
        payload = any_pb2.Any(type_url=hold.payload.type_url, value=hold.payload.value)
        request = policy_service_pb2.CheckRequest(
            check=check_to(check),
            hold=policy_service_pb2.Hold(
                request_id=hold.request_id, payload=payload, summary=hold.summary, session=hold.session
            ),
        )
        try:
            reply = await self._policy.Check(request, metadata=self._metadata(principal), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _unreachable(error) from error
        return decision_of(reply.decision)

    async def resolved(self, principal: Principal | None, name: str) -> HeldEntry:
        def lost(code: grpc.StatusCode) -> None:
            log.warning(
                "lost the watch of a held action; polling",
                extra={"fields": {"blocked_action": name, "code": code.name}},
            )

        action = await wait_resolved(
            self._blocked,
            name,
            metadata=self._metadata(principal),
            get_timeout=self._timeout,
            first_backoff=self._first_backoff,
            max_backoff=self._max_backoff,
            on_watch_lost=lost,
        )
        if action is GONE:
            return HeldEntry(name, HeldState.EXPIRED, GONE_NOTE)
        return HeldEntry(name, held_state_of(action), action.note, action.claim_id)

    async def claim(self, principal: Principal | None, name: str, claim_id: str) -> ClaimAnswer:
        try:
            await self._blocked.ClaimApprovedAction(
                blocked_action_service_pb2.ClaimApprovedActionRequest(name=name, claim_id=claim_id),
                metadata=self._metadata(principal),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ClaimAnswer.GONE
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return ClaimAnswer.CHANGED
            return ClaimAnswer.AWAY
        return ClaimAnswer.CLAIMED

    async def complete(self, principal: Principal | None, name: str, claim_id: str, outcome: Outcome) -> ReportAnswer:
        request = blocked_action_service_pb2.CompleteBlockedActionRequest(
            name=name,
            claim_id=claim_id,
            outcome=blocked_action_pb2.ActionOutcome(
                succeeded=outcome.succeeded, failure_reason=outcome.failure_reason
            ),
        )
        try:
            await self._blocked.CompleteBlockedAction(
                request, metadata=self._metadata(principal), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _FINAL_FOR_COMPLETE:
                info = error_info_of(error)
                log.warning(
                    "svc_policy refused the outcome of a claimed action",
                    extra={"fields": {"blocked_action": name, "reason": info.reason if info else code.name}},
                )
                return ReportAnswer.REFUSED
            return ReportAnswer.AWAY
        return ReportAnswer.TAKEN

    async def cancel(self, principal: Principal | None, name: str) -> None:
        try:
            await self._blocked.CancelBlockedAction(
                blocked_action_service_pb2.CancelBlockedActionRequest(name=name),
                metadata=self._metadata(principal),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return  # resolved already (or gone): nothing is left to withdraw
            raise _unreachable(error) from error
