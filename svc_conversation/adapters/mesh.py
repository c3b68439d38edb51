"""svc_conversation's calls into svc_profiles and svc_tools (svc_policy: policy.py).

Every call carries the principal of the user the turn works for, so svc_tools decides on
the user and the persona together. A dependency that cannot be reached becomes
DependencyUnavailable (the loop records it and the turn fails, or the RPC answers
UNAVAILABLE), never a silent allow.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from skm.profiles.v1 import (
    model_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    persona_service_pb2,
    persona_service_pb2_grpc,
)
from skm.tools.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm_runtime.access import Payload, Principal
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.status import error_info_of
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from skm_runtime.values_wire import mode_to, override_to, role_to
from svc_conversation import convert
from svc_conversation.errors import DependencyUnavailable, PersonaNotFound, ToolCallRejected
from svc_conversation.model import (
    ExecutionAccepted,
    ExecutionDecided,
    ExecutionFinished,
    ExecutionProgressed,
    ExecutionUpdate,
    ModelTier,
    PersonaBrief,
    ResolvedProfile,
    ToolRequest,
    ToolSpec,
)

log = logging.getLogger("skm.conversation.mesh")

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_CALL_SECONDS = 10.0


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

    async def persona(self, name: str, principal: Principal) -> PersonaBrief:
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
        return PersonaBrief(
            name=persona.name,
            system_prompt=persona.system_prompt,
            allowed_tools=tuple(tool.rsplit("/", 1)[-1] for tool in persona.allowed_tools),
            bundle_digest=persona.bundle_digest,
            signed=bool(persona.signature),
            memory_namespaces=tuple(persona.memory_namespaces),
            revision_id=persona.revision.revision_id,
            examples=tuple((e.user_text, e.agent_text) for e in persona.examples),
        )

    async def resolve(
        self,
        principal: Principal,
        role: ModelRole,
        mode: DeploymentMode | None,
        persona: str,
        overrides: Sequence[ModelOverride],
    ) -> ResolvedProfile:
        request = model_profile_service_pb2.ResolveModelProfileRequest(
            parent=principal.tenant,
            role=role_to(role),
            mode=mode_to(mode),
            persona=persona,
            overrides=[override_to(o) for o in overrides],
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

    def __aiter__(self) -> AsyncIterator[ExecutionUpdate]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ExecutionUpdate]:
        try:
            async for response in self._call:
                update = _update_of(response)
                if update is not None:
                    yield update
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise _unavailable("svc_tools", error) from None
            info = error_info_of(error)
            reason = info.reason if info is not None else error.code().name
            raise ToolCallRejected(reason, error.details() or reason) from None

    def cancel(self) -> None:
        self._call.cancel()


def _update_of(response: tool_service_pb2.ExecuteToolResponse) -> ExecutionUpdate | None:
    kind = response.WhichOneof("update")
    if kind == "accepted":
        return ExecutionAccepted(response.accepted.execution)
    if kind == "decision":
        return ExecutionDecided(convert.decision_of(response.decision))
    if kind == "progress":
        return ExecutionProgressed(progress=convert.progress_of(response.progress))
    if kind == "output":
        return ExecutionProgressed(output=convert.output_of(response.output))
    if kind == "result":
        return ExecutionFinished(convert.result_of(response.result))
    return None


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

    def execute(self, principal: Principal, request: ToolRequest) -> ToolStream:
        return ToolStream(self._stub.ExecuteTool(_request_to(request), metadata=_metadata(principal)))

    def payload(self, request: ToolRequest) -> Payload:
        message = _request_to(request)
        return Payload(f"type.googleapis.com/{message.DESCRIPTOR.full_name}", message.SerializeToString())

    async def cancel(self, principal: Principal, execution: str) -> None:
        # Already finished, or svc_tools is gone: either way nothing runs on for us.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.CancelExecution(
                tool_service_pb2.CancelExecutionRequest(name=execution), metadata=_metadata(principal), timeout=2.0
            )


def _request_to(request: ToolRequest) -> tool_service_pb2.ExecuteToolRequest:
    message = tool_service_pb2.ExecuteToolRequest(
        tool=request.tool,
        arguments_json=request.arguments_json,
        request_id=request.request_id,
        persona=request.persona,
        turn=request.turn,
        tool_call_id=request.tool_call_id,
    )
    if request.timeout_seconds:
        message.timeout.CopyFrom(duration_pb2.Duration(seconds=int(request.timeout_seconds)))
    if request.policy_context:
        # svc_tools honours it: this call comes from inside the mesh, not forwarded.
        message.policy_context.CopyFrom(convert.policy_context_to(request.policy_context))
    return message


def _spec_of(tool: tool_pb2.Tool) -> ToolSpec:
    try:
        schema = json.loads(tool.arguments_schema_json or "{}")
    except ValueError:
        schema = {"type": "object"}
    return ToolSpec(id=tool.name.rsplit("/", 1)[-1], description=tool.description, arguments_schema=schema)
