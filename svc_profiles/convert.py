"""Between svc_profiles's domain and its wire types (skm.profiles.v1, skm.type.v1)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from skm.profiles.v1 import model_pb2, model_profile_pb2, persona_bundle_pb2, persona_pb2, revision_pb2, tenant_pb2
from skm.profiles.v1 import model_score_pb2 as score_pb2
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
from svc_profiles import model as _m
from svc_profiles.model import (
    Capability,
    Lineage,
    Model,
    ModelProfile,
    Persona,
    PersonaExample,
    ResolvedModelProfile,
    Tenant,
    TenantState,
)


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
            message.lineage.operator,
            message.lineage.parent_revision_id,
        ),
        examples=tuple(PersonaExample(e.user_text, e.agent_text, e.source_turn) for e in message.examples),
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
        bundle_version=persona.bundle_version,
    )
    if not persona.lineage.is_empty:
        message.lineage.parent_persona = persona.lineage.parent_persona
        message.lineage.parent_bundle_digest = persona.lineage.parent_bundle_digest
        message.lineage.training_sessions.extend(persona.lineage.training_sessions)
        message.lineage.operator = persona.lineage.operator
        message.lineage.parent_revision_id = persona.lineage.parent_revision_id
    message.examples.extend(
        persona_pb2.PersonaExample(user_text=e.user_text, agent_text=e.agent_text, source_turn=e.source_turn)
        for e in persona.examples
    )
    if persona.revision is not None:
        message.revision.CopyFrom(revision_to(persona.revision))
    return message


_ORIGINS = {origin: revision_pb2.Revision.Origin.Value(f"ORIGIN_{origin.value}") for origin in _m.RevisionOrigin}


def revision_to(revision: _m.Revision) -> revision_pb2.Revision:
    return revision_pb2.Revision(
        revision_id=revision.revision_id,
        create_time=_timestamp(revision.create_time),
        origin=_ORIGINS[revision.origin],
        author=revision.author,
        note=revision.note,
    )


def bounds_of(message: model_profile_pb2.AutoSelectBounds) -> _m.AutoSelectBounds:
    return _m.AutoSelectBounds(money_of(message.max_cost_per_million_tokens), message.min_quality)


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
        auto_select_bounds=bounds_of(message.auto_select_bounds) if message.HasField("auto_select_bounds") else None,
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
    if profile.revision is not None:
        message.revision.CopyFrom(revision_to(profile.revision))
    if profile.auto_select_bounds is not None:
        message.auto_select_bounds.max_cost_per_million_tokens.CopyFrom(money_to(profile.auto_select_bounds.max_cost))
        message.auto_select_bounds.min_quality = profile.auto_select_bounds.min_quality
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


_TENANT_STATES = {
    TenantState.PROVISIONING: tenant_pb2.Tenant.STATE_PROVISIONING,
    TenantState.ACTIVE: tenant_pb2.Tenant.STATE_ACTIVE,
}


def tenant_of(message: tenant_pb2.Tenant) -> Tenant:
    """The client's tenant as CreateTenant reads it: display name and admins (the rest is
    output only; the name comes from the request's tenant_id)."""
    return Tenant(name=message.name, display_name=message.display_name, admins=tuple(message.admins))


def tenant_to(tenant: Tenant) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        name=tenant.name,
        display_name=tenant.display_name,
        admins=tenant.admins,
        state=_TENANT_STATES[tenant.state],
        constitution_sha256=tenant.constitution_sha256,
        personas=tenant.personas,
        relationship_count=tenant.relationship_count,
        create_time=_timestamp(tenant.create_time),
        update_time=_timestamp(tenant.update_time),
    )


# -- the scoring job ----------------------------------------------------------------------------
# (the model names their own module: svc_profiles.model's scoring section)

_SCORING_STATES = {
    _m.ScoringState.RUNNING: score_pb2.ScoringRun.STATE_RUNNING,
    _m.ScoringState.SUCCEEDED: score_pb2.ScoringRun.STATE_SUCCEEDED,
    _m.ScoringState.FAILED: score_pb2.ScoringRun.STATE_FAILED,
}
_SCORING_TRIGGERS = {
    _m.ScoringTrigger.SCHEDULE: score_pb2.ScoringRun.TRIGGER_SCHEDULE,
    _m.ScoringTrigger.ON_DEMAND: score_pb2.ScoringRun.TRIGGER_ON_DEMAND,
}


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def benchmark_run_of(message: score_pb2.BenchmarkRun) -> _m.BenchmarkRun:
    return _m.BenchmarkRun(
        model=message.model,
        role=role_of(message.role),
        suite=message.suite,
        attempts=message.attempts,
        successes=message.successes,
        failures=message.failures,
        latency_seconds=message.latency.ToNanoseconds() / 1e9,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        end_time=message.end_time.ToDatetime(tzinfo=UTC) if message.HasField("end_time") else None,
    )


def benchmark_run_to(run: _m.BenchmarkRun) -> score_pb2.BenchmarkRun:
    return score_pb2.BenchmarkRun(
        model=run.model,
        role=role_to(run.role),
        suite=run.suite,
        attempts=run.attempts,
        successes=run.successes,
        failures=run.failures,
        latency=_duration(run.latency_seconds),
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        end_time=_timestamp(run.end_time),
    )


def weights_to(weights: _m.ScoreWeights) -> score_pb2.ScoreWeights:
    return score_pb2.ScoreWeights(
        quality=weights.quality, cost=weights.cost, latency=weights.latency, reliability=weights.reliability
    )


def model_score_to(score: _m.ModelScore) -> score_pb2.ModelScore:
    return score_pb2.ModelScore(
        model=score.model,
        role=role_to(score.role),
        quality=score.quality,
        cost_per_million_tokens=money_to(score.cost_per_million_tokens),
        latency=_duration(score.latency_seconds),
        reliability=score.reliability,
        score=score.score,
        weights=weights_to(score.weights),
        sample_count=score.sample_count,
        window_start_time=_timestamp(score.window_start),
        window_end_time=_timestamp(score.window_end),
        time_to_first_token=_duration(score.time_to_first_token_seconds),
        tokens_per_second=score.tokens_per_second,
        error_rate=score.error_rate,
        fallback_rate=score.fallback_rate,
        scoring_run=score.scoring_run,
    )


def scoring_run_to(run: _m.ScoringRun) -> score_pb2.ScoringRun:
    return score_pb2.ScoringRun(
        name=run.name,
        state=_SCORING_STATES[run.state],
        trigger=_SCORING_TRIGGERS[run.trigger],
        window_start_time=_timestamp(run.window_start),
        window_end_time=_timestamp(run.window_end),
        tenants_done=run.tenants_done,
        tenants_total=run.tenants_total,
        profiles_changed=run.profiles_changed,
        create_time=_timestamp(run.create_time),
        end_time=_timestamp(run.end_time),
        failure_reason=run.failure_reason,
    )


def recommendation_to(rec: _m.ModelRecommendation) -> score_pb2.ModelRecommendation:
    return score_pb2.ModelRecommendation(
        model_profile=rec.model_profile,
        role=role_to(rec.role),
        current_model=rec.current_model,
        recommended_model=rec.recommended_model,
        score_change=rec.score_change,
        cost_change=rec.cost_change,
        summary=rec.summary,
        applied=rec.applied,
        not_applied_reason=rec.not_applied_reason,
        scoring_run=rec.scoring_run,
        create_time=_timestamp(rec.create_time),
    )


def trusted_key_of(message: persona_bundle_pb2.TrustedKey) -> _m.TrustedKey:
    """The client's trusted key; its name and create time are the service's to set."""
    return _m.TrustedKey(
        name="",
        public_key=message.public_key,
        expire_time=message.expire_time.ToDatetime(UTC) if message.HasField("expire_time") else None,
        display_name=message.display_name,
    )


def trusted_key_to(key: _m.TrustedKey) -> persona_bundle_pb2.TrustedKey:
    return persona_bundle_pb2.TrustedKey(
        name=key.name,
        public_key=key.public_key,
        expire_time=_timestamp(key.expire_time),
        display_name=key.display_name,
        create_time=_timestamp(key.create_time),
    )
