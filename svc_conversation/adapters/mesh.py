"""svc_conversation's calls into the mesh: svc_profiles, svc_tools and svc_policy.

Every call carries the principal of the user the turn works for, so svc_tools and
svc_policy decide on the user and the persona together. A dependency that cannot be
reached becomes DependencyUnavailable (the loop records it and the turn fails, or the RPC
answers UNAVAILABLE), never a silent allow. Waiting for an operator's decision on a held
action is the exception: it outlasts a lost stream or a restart of svc_policy (it polls the
entry, then watches again) until the decision comes or the wait is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.profiles.v1 import (
    model_pb2,
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    persona_service_pb2,
    persona_service_pb2_grpc,
)
from skm.tools.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm.type.v1 import deployment_mode_pb2, policy_decision_pb2
from skm.type.v1 import model_pb2 as type_model_pb2
from skm_runtime.blocked_actions import GONE, wait_resolved
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.status import error_info_of
from svc_conversation.errors import DependencyUnavailable, PersonaNotFound
from svc_conversation.model import (
    Approval,
    ApprovalState,
    ModelTier,
    Persona,
    Principal,
    ResolvedProfile,
    ToolSpec,
)

log = logging.getLogger("skm.conversation.mesh")

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


def _unavailable(what: str, error: grpc.aio.AioRpcError) -> DependencyUnavailable:
    return DependencyUnavailable(f"{what} is unavailable ({error.code().name})", retry_after_seconds=1.0)


def _money(money: Any) -> float:
    return float(money.units) + float(money.nanos) / 1e9


def tier_of(model: model_pb2.Model, tier: int) -> ModelTier:
    capabilities = set(model.capabilities)
    return ModelTier(
        name=model.name,
        tier=tier,
        endpoint_uri=model.endpoint_uri,
        served_model=model.served_model or model.name.removeprefix("models/"),
        credential_secret=model.credential_secret,
        context_length=model.context_length or 4096,
        input_cost_per_million=_money(model.input_cost_per_million_tokens),
        output_cost_per_million=_money(model.output_cost_per_million_tokens),
        currency=model.input_cost_per_million_tokens.currency_code or "USD",
        structured_output=model_pb2.MODEL_CAPABILITY_STRUCTURED_OUTPUT in capabilities,
    )


class GrpcProfiles:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._personas = persona_service_pb2_grpc.PersonaServiceStub(channel)
        self._profiles = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)

    async def persona(self, name: str, principal: Principal) -> Persona:
        try:
            response = await self._personas.GetPersona(
                persona_service_pb2.GetPersonaRequest(name=name), metadata=_metadata(principal), timeout=_CALL_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise PersonaNotFound(f"persona {name!r} does not exist", metadata={"persona": name}) from None
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_profiles", error) from None
            raise
        persona = response.persona
        return Persona(
            name=persona.name,
            system_prompt=persona.system_prompt,
            allowed_tools=tuple(tool.rsplit("/", 1)[-1] for tool in persona.allowed_tools),
            bundle_digest=persona.bundle_digest,
            signed=bool(persona.signature),
            memory_namespaces=tuple(persona.memory_namespaces),
        )

    async def resolve(
        self,
        principal: Principal,
        role: int,
        mode: int,
        persona: str,
        overrides: Sequence[model_profile_pb2.ModelOverride],
    ) -> ResolvedProfile:
        request = model_profile_service_pb2.ResolveModelProfileRequest(
            parent=principal.tenant,
            role=type_model_pb2.ModelRole.ValueType(role),
            mode=deployment_mode_pb2.DeploymentMode.ValueType(mode),
            persona=persona,
            overrides=list(overrides),
        )
        try:
            response = await self._profiles.ResolveModelProfile(
                request, metadata=_metadata(principal), timeout=_CALL_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_profiles", error) from None
            raise
        resolved = response.resolved_model_profile
        return ResolvedProfile(
            role=role,
            tiers=tuple(tier_of(model, index) for index, model in enumerate(resolved.model_tiers)),
            temperature=resolved.temperature if resolved.HasField("temperature") else None,
            max_output_tokens=resolved.max_output_tokens,
        )


class ToolStream:
    """An ExecuteTool call in progress; iterate for its updates, cancel to stop it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[tool_service_pb2.ExecuteToolResponse]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tool_service_pb2.ExecuteToolResponse]:
        try:
            async for update in self._call:
                yield update
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_tools", error) from None
            raise ToolCallRejected(error) from None

    def cancel(self) -> None:
        self._call.cancel()


class ToolCallRejected(Exception):
    """svc_tools refused the call outright (bad arguments, unknown tool...)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        info = error_info_of(error)
        self.reason = info.reason if info is not None else error.code().name
        self.message = error.details() or self.reason
        super().__init__(f"{self.reason}: {self.message}")


class GrpcTools:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = tool_service_pb2_grpc.ToolServiceStub(channel)

    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        try:
            response = await self._stub.ListTools(
                tool_service_pb2.ListToolsRequest(parent=principal.tenant, page_size=1000),
                metadata=_metadata(principal),
                timeout=_CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_tools", error) from None
            raise
        return [_spec_of(tool) for tool in response.tools]

    def execute(
        self,
        principal: Principal,
        *,
        tool: str,
        arguments_json: str,
        request_id: str,
        persona: str,
        turn: str,
        tool_call_id: str,
        timeout_seconds: float,
    ) -> ToolStream:
        request = tool_service_pb2.ExecuteToolRequest(
            tool=tool,
            arguments_json=arguments_json,
            request_id=request_id,
            persona=persona,
            turn=turn,
            tool_call_id=tool_call_id,
            timeout=duration_pb2.Duration(seconds=int(timeout_seconds)),
        )
        return ToolStream(self._stub.ExecuteTool(request, metadata=_metadata(principal)))

    async def cancel(self, principal: Principal, execution: str) -> None:
        # Already finished, or svc_tools is gone: either way nothing runs on for us.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.CancelExecution(
                tool_service_pb2.CancelExecutionRequest(name=execution), metadata=_metadata(principal), timeout=2.0
            )


def _spec_of(tool: tool_pb2.Tool) -> ToolSpec:
    try:
        schema = json.loads(tool.arguments_schema_json or "{}")
    except ValueError:
        schema = {"type": "object"}
    return ToolSpec(id=tool.name.rsplit("/", 1)[-1], description=tool.description, arguments_schema=schema)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What svc_policy keeps of an action it holds for an operator (skm.policy.v1.Hold)."""

    request_id: str  # a UUID derived from the action, so a repeated check finds the same entry
    payload: Message  # the full request to run once approved
    summary: str  # one line for operators, at most 300 characters, no personal data
    session: str = ""  # "tenants/{tenant}/sessions/{session}"


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
            raise _unavailable("svc_policy", error) from None

    async def check(
        self, principal: Principal, subject: str, relation: str, obj: str, *, hold: HoldRequest | None = None
    ) -> policy_decision_pb2.PolicyDecision:
        """svc_policy's decision; with ``hold``, a REQUIRES_APPROVAL one is held for an
        operator in the same call (the decision names the blocked action), and a check
        repeated with the same ``hold.request_id`` names the same one."""
        request = policy_service_pb2.CheckRequest(
            check=access_pb2.AccessCheck(subject=subject, relation=relation, object=obj)
        )
        if hold is not None:
            payload = any_pb2.Any()
            payload.Pack(hold.payload)
            request.hold.CopyFrom(
                policy_service_pb2.Hold(
                    request_id=hold.request_id, payload=payload, summary=hold.summary, session=hold.session
                )
            )
        try:
            response = await self._stub.Check(request, metadata=_metadata(principal), timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_policy", error) from None
            raise
        return response.decision

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
        self, principal: Principal, blocked_action: str, claim_id: str, *, succeeded: bool, failure_reason: str = ""
    ) -> None:
        """Reports the outcome of a claimed action (idempotent: the same claim id and
        outcome may be reported again). Where svc_policy cannot take it now, it is reported
        again in the background, with backoff, for `complete_retry_seconds`; the turn goes on
        meanwhile, since the action has run either way. An answer no retry changes (the
        entry is gone, or no longer this claim's) ends it, logged."""
        request = blocked_action_service_pb2.CompleteBlockedActionRequest(
            name=blocked_action,
            claim_id=claim_id,
            outcome=blocked_action_pb2.ActionOutcome(succeeded=succeeded, failure_reason=failure_reason),
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
