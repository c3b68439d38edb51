"""svc_policy, as svc_conversation's core asks it (the PolicyGate port): decisions, the
owner relationship of a new session, and the exactly-once protocol of an action it holds
for an operator (see skm.policy.v1.BlockedAction): hold, wait for the operator, claim,
complete.

Every call carries the principal of the user the turn works for. svc_policy unreachable
becomes DependencyUnavailable, never a silent allow. Waiting for an operator's decision
is the exception: it outlasts a lost stream or a restart of svc_policy (it polls the
entry, then watches again) until the decision comes or the wait is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
from skm_runtime.access import AccessCheck, Approval, ApprovalState, Decision, Hold, Outcome, Principal
from skm_runtime.blocked_actions import GONE, wait_resolved
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.status import error_info_of
from svc_conversation import convert
from svc_conversation.errors import DependencyUnavailable

log = logging.getLogger("skm.conversation.policy")

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_CALL_SECONDS = 10.0
BlockedAction = blocked_action_pb2.BlockedAction
# While svc_policy cannot be reached, a wait for a decision looks again this often (doubling).
_FIRST_BACKOFF_SECONDS = 0.2
_MAX_BACKOFF_SECONDS = 5.0
_GONE = "the held action is gone from svc_policy's store"
# How long an outcome svc_policy could not take is reported again, in the background.
_COMPLETE_RETRY_SECONDS = 600.0
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
# How a held action that will not run ended, as the waiter sees it.
_NOT_RUN = {
    BlockedAction.STATE_REJECTED: ApprovalState.REJECTED,
    BlockedAction.STATE_EXPIRED: ApprovalState.EXPIRED,
    BlockedAction.STATE_CANCELLED: ApprovalState.CANCELLED,
}


def _metadata(principal: Principal) -> tuple[tuple[str, bytes], ...]:
    return principal_metadata(principal_message(principal.tenant, principal.user, principal.roles))


def _unavailable(error: grpc.aio.AioRpcError) -> DependencyUnavailable:
    return DependencyUnavailable(f"svc_policy is unavailable ({error.code().name})", retry_after_seconds=1.0)


class GrpcPolicy:
    """svc_policy's decisions, and its exactly-once protocol for held actions (see
    skm.policy.v1.BlockedAction): hold, wait for the operator, claim, complete."""

    def __init__(self, channel: grpc.aio.Channel, *, complete_retry_seconds: float = _COMPLETE_RETRY_SECONDS) -> None:
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        self._complete_retry_seconds = complete_retry_seconds
        # Outcomes svc_policy could not take yet, reported again in the background.
        self._reporting: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop reporting outcomes again (their entries stay EXECUTING, as the log says)."""
        for task in list(self._reporting):
            task.cancel()
        for task in list(self._reporting):
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
        try:
            await self._stub.WriteRelationships(request, metadata=_metadata(principal), timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from None

    async def check(self, principal: Principal, check: AccessCheck, hold: Hold | None = None) -> Decision:
        """svc_policy's decision; with ``hold``, a REQUIRES_APPROVAL one is held for an
        operator in the same call (the decision names the blocked action), and a check
        repeated with the same ``hold.request_id`` names the same one."""
        request = policy_service_pb2.CheckRequest(
            check=access_pb2.AccessCheck(subject=check.subject, relation=check.relation, object=check.object)
        )
        if hold is not None:
            payload = any_pb2.Any(type_url=hold.payload.type_url, value=hold.payload.value)
            request.hold.CopyFrom(
                policy_service_pb2.Hold(
                    request_id=hold.request_id, payload=payload, summary=hold.summary, session=hold.session
                )
            )
        try:
            response = await self._stub.Check(request, metadata=_metadata(principal), timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable(error) from None
            raise
        return convert.decision_of(response.decision)

    async def approval(self, principal: Principal, blocked_action: str, claim_id: str) -> Approval:
        """Waits for the operator's decision on a held action, and claims an approved one
        with ``claim_id`` before answering CLAIMED: from then on the caller runs it (once),
        and nobody else can. An entry claimed with ``claim_id`` before (a lost reply, a
        restart of the caller) is CLAIMED again. Cancel the wait to stop waiting: the entry
        stays for the operator, and a later wait finds it."""
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            action = await self._resolved(principal, blocked_action)
            if action.state in (BlockedAction.STATE_EXECUTING, BlockedAction.STATE_EXECUTED):
                claimed = action.claim_id == claim_id
                return Approval(ApprovalState.CLAIMED if claimed else ApprovalState.TAKEN, action.note)
            if action.state != BlockedAction.STATE_APPROVED:
                return Approval(_NOT_RUN.get(action.state, ApprovalState.EXPIRED), action.note)
            try:
                await self._blocked.ClaimApprovedAction(
                    blocked_action_service_pb2.ClaimApprovedActionRequest(name=blocked_action, claim_id=claim_id),
                    metadata=_metadata(principal),
                    timeout=_CALL_SECONDS,
                )
                return Approval(ApprovalState.CLAIMED, action.note)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return Approval(ApprovalState.EXPIRED, _GONE)
                # FAILED_PRECONDITION: it changed under us (expired, withdrawn, claimed by
                # another): look again. Anything else: svc_policy is away for a moment, and
                # the approval waits for its claim (the same claim id) until it expires.
                log.info(
                    "could not claim an approved action yet",
                    extra={"fields": {"blocked_action": blocked_action, "code": error.code().name}},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def _resolved(self, principal: Principal, blocked_action: str) -> blocked_action_pb2.BlockedAction:
        """The entry once it has left PENDING (see skm_runtime.blocked_actions); one that is
        gone from svc_policy's store reads as EXPIRED."""

        def lost(code: grpc.StatusCode) -> None:
            log.warning(
                "lost the watch of a held action; polling",
                extra={"fields": {"blocked_action": blocked_action, "code": code.name}},
            )

        action = await wait_resolved(
            self._blocked,
            blocked_action,
            metadata=_metadata(principal),
            get_timeout=_CALL_SECONDS,
            first_backoff=_FIRST_BACKOFF_SECONDS,
            max_backoff=_MAX_BACKOFF_SECONDS,
            on_watch_lost=lost,
        )
        if action is GONE:
            return BlockedAction(name=blocked_action, state=BlockedAction.STATE_EXPIRED, note=_GONE)
        return action

    async def complete(
        self,
        principal: Principal,
        blocked_action: str,
        claim_id: str,
        outcome: Outcome | None = None,
        *,
        succeeded: bool = False,
        failure_reason: str = "",
    ) -> None:
        """Reports the outcome of a claimed action (idempotent: the same claim id and
        outcome may be reported again). Where svc_policy cannot take it now, it is reported
        again in the background, with backoff, for `complete_retry_seconds`; the turn goes on
        meanwhile, since the action has run either way. An answer no retry changes (the
        entry is gone, or no longer this claim's) ends it, logged. Without ``outcome``,
        ``succeeded`` and ``failure_reason`` spell it out."""
        if outcome is None:
            outcome = Outcome(succeeded, failure_reason)
        request = blocked_action_service_pb2.CompleteBlockedActionRequest(
            name=blocked_action,
            claim_id=claim_id,
            outcome=blocked_action_pb2.ActionOutcome(
                succeeded=outcome.succeeded, failure_reason=outcome.failure_reason
            ),
        )
        code = await self._report(principal, request)
        if code is None or code in _FINAL_FOR_COMPLETE:
            return
        log.warning(
            "could not report the outcome of a claimed action; trying again in the background",
            extra={"fields": {"blocked_action": blocked_action, "code": code.name}},
        )
        task = asyncio.get_running_loop().create_task(self._report_again(principal, request))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def _report(
        self, principal: Principal, request: blocked_action_service_pb2.CompleteBlockedActionRequest
    ) -> grpc.StatusCode | None:
        """None once svc_policy took the outcome; else the status of its answer."""
        try:
            await self._blocked.CompleteBlockedAction(request, metadata=_metadata(principal), timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _FINAL_FOR_COMPLETE:
                info = error_info_of(error)
                log.warning(
                    "svc_policy refused the outcome of a claimed action",
                    extra={"fields": {"blocked_action": request.name, "reason": info.reason if info else code.name}},
                )
            return code
        return None

    async def _report_again(
        self, principal: Principal, request: blocked_action_service_pb2.CompleteBlockedActionRequest
    ) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._complete_retry_seconds
        backoff = _FIRST_BACKOFF_SECONDS
        while loop.time() < until:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            code = await self._report(principal, request)
            if code is None:
                log.info("reported the outcome of a claimed action", extra={"fields": {"blocked_action": request.name}})
                return
            if code in _FINAL_FOR_COMPLETE:
                return
        log.error(
            "gave up reporting the outcome of a claimed action: its entry stays EXECUTING",
            extra={"fields": {"blocked_action": request.name, "seconds": self._complete_retry_seconds}},
        )
