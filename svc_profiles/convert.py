"""Between svc_profiles's domain and its wire types (skm.profiles.v1, skm.type.v1)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from skm.profiles.v1 import model_pb2, model_profile_pb2, persona_pb2
from skm.type.v1 import principal_pb2
from skm_runtime.access import Principal
from skm_runtime.principal import role_names
from skm_runtime.values_wire import (
    mode_of,
    mode_to,
    money_of,
    money_to,
    override_of,
    override_to,
    role_of,
    role_to,
)
from svc_profiles.model import Capability, Lineage, Model, ModelProfile, Persona, ResolvedModelProfile


def principal_of(message: principal_pb2.Principal) -> Principal:
    return Principal(message.tenant, message.user, role_names(message))


# -- enums: the wire's UNSPECIFIED (and any number this build does not know) is None ------------
# (ModelRole, DeploymentMode and the other shared values: skm_runtime.values_wire)


_CAPABILITIES: dict[int, Capability] = {
    model_pb2.MODEL_CAPABILITY_CHAT: Capability.CHAT,
    model_pb2.MODEL_CAPABILITY_TOOL_CALLS: Capability.TOOL_CALLS,
    model_pb2.MODEL_CAPABILITY_STRUCTURED_OUTPUT: Capability.STRUCTURED_OUTPUT,
    model_pb2.MODEL_CAPABILITY_EMBEDDINGS: Capability.EMBEDDINGS,
}
_CAPABILITY_NUMBERS = {capability: number for number, capability in _CAPABILITIES.items()}


def capability_of(number: int) -> Capability | None:
    return _CAPABILITIES.get(number)


def capability_to(capability: Capability) -> model_pb2.ModelCapability.ValueType:
    return model_pb2.ModelCapability.ValueType(_CAPABILITY_NUMBERS[capability])


# -- values ---------------------------------------------------------------------------------


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


# -- resources ------------------------------------------------------------------------------


def persona_of(message: persona_pb2.Persona) -> Persona:
    """The client's persona; output-only fields are kept only where the core reads them
    (name and etag of an update)."""
    return Persona(
        name=message.name,
        display_name=message.display_name,
        system_prompt=message.system_prompt,
        tone=message.tone,
        voice=message.voice,
        allowed_tools=tuple(message.allowed_tools),
        memory_namespaces=tuple(message.memory_namespaces),
        model_preferences=tuple(override_of(o) for o in message.model_preferences),
        knowledge_snapshot=message.knowledge_snapshot,
        signature=message.signature,
        signing_key=message.signing_key,
        lineage=Lineage(
            message.lineage.parent_persona,
            message.lineage.parent_bundle_digest,
            tuple(message.lineage.training_sessions),
        ),
        etag=message.etag,
    )


def persona_to(persona: Persona) -> persona_pb2.Persona:
    message = persona_pb2.Persona(
        name=persona.name,
        display_name=persona.display_name,
        system_prompt=persona.system_prompt,
        tone=persona.tone,
        voice=persona.voice,
        allowed_tools=persona.allowed_tools,
        memory_namespaces=persona.memory_namespaces,
        model_preferences=[override_to(o) for o in persona.model_preferences],
        knowledge_snapshot=persona.knowledge_snapshot,
        bundle_digest=persona.bundle_digest,
        signature=persona.signature,
        signing_key=persona.signing_key,
        create_time=_timestamp(persona.create_time),
        update_time=_timestamp(persona.update_time),
        etag=persona.etag,
    )
    if not persona.lineage.is_empty:
        message.lineage.parent_persona = persona.lineage.parent_persona
        message.lineage.parent_bundle_digest = persona.lineage.parent_bundle_digest
        message.lineage.training_sessions.extend(persona.lineage.training_sessions)
    return message


def model_of(message: model_pb2.Model) -> Model:
    capabilities = [capability_of(c) for c in message.capabilities]
    return Model(
        name=message.name,
        display_name=message.display_name,
        endpoint_uri=message.endpoint_uri,
        served_model=message.served_model,
        context_length=message.context_length,
        # UNSPECIFIED or unknown capabilities claim nothing.
        capabilities=tuple(c for c in capabilities if c is not None),
        credential_secret=message.credential_secret,
        input_cost=money_of(message.input_cost_per_million_tokens),
        output_cost=money_of(message.output_cost_per_million_tokens),
        embedding_dimensions=message.embedding_dimensions,
        etag=message.etag,
    )


def model_to(model: Model) -> model_pb2.Model:
    return model_pb2.Model(
        name=model.name,
        display_name=model.display_name,
        endpoint_uri=model.endpoint_uri,
        served_model=model.served_model,
        credential_secret=model.credential_secret,
        context_length=model.context_length,
        input_cost_per_million_tokens=money_to(model.input_cost),
        output_cost_per_million_tokens=money_to(model.output_cost),
        capabilities=[capability_to(c) for c in model.capabilities],
        embedding_dimensions=model.embedding_dimensions,
        create_time=_timestamp(model.create_time),
        update_time=_timestamp(model.update_time),
        etag=model.etag,
    )


def model_profile_of(message: model_profile_pb2.ModelProfile) -> ModelProfile:
    return ModelProfile(
        name=message.name,
        role=role_of(message.role),
        mode=mode_of(message.mode),
        model_tiers=tuple(message.model_tiers),
        temperature=message.temperature if message.HasField("temperature") else None,
        max_output_tokens=message.max_output_tokens,
        auto_select=message.auto_select,
        etag=message.etag,
    )


def model_profile_to(profile: ModelProfile) -> model_profile_pb2.ModelProfile:
    message = model_profile_pb2.ModelProfile(
        name=profile.name,
        role=role_to(profile.role),
        mode=mode_to(profile.mode),
        model_tiers=profile.model_tiers,
        max_output_tokens=profile.max_output_tokens,
        auto_select=profile.auto_select,
        create_time=_timestamp(profile.create_time),
        update_time=_timestamp(profile.update_time),
        etag=profile.etag,
    )
    if profile.temperature is not None:
        message.temperature = profile.temperature
    return message


def resolved_to(resolved: ResolvedModelProfile) -> model_profile_pb2.ResolvedModelProfile:
    message = model_profile_pb2.ResolvedModelProfile(
        role=role_to(resolved.role),
        model_profile=resolved.model_profile,
        model_tiers=[model_to(m) for m in resolved.model_tiers],
        max_output_tokens=resolved.max_output_tokens,
    )
    if resolved.temperature is not None:
        message.temperature = resolved.temperature
    return message
