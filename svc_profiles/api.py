"""svc_profiles's servicers: request in, one core call, response out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from skm.profiles.v1 import (
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    persona_service_pb2,
    persona_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from skm_runtime.access import Principal
from skm_runtime.interceptors import call_principal
from skm_runtime.principal import caller_from
from skm_runtime.values_wire import mode_of, override_of, role_of
from svc_profiles import convert
from svc_profiles.core import Profiles
from svc_profiles.core.bundles import Bundles
from svc_profiles.core.scoring import Scoring
from svc_profiles.core.tenants import Tenants
from svc_profiles.core.training import Training

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = call_principal(context)
    return None if message is None else convert.principal_of(message)


def _author(context: Context, method: str) -> str:
    """Who a revision is by: the caller's user, else the mesh service that signed the call
    ("services/{name}"), else "" (the core then names the caller as best it can)."""
    principal = call_principal(context)
    if principal is not None and principal.user:
        return principal.user
    caller = caller_from(context.invocation_metadata(), method)
    return f"services/{caller}" if caller else ""


_PERSONAS = "/skm.profiles.v1.PersonaService/"
_PROFILES = "/skm.profiles.v1.ModelProfileService/"


class PersonaApi(persona_service_pb2_grpc.PersonaServiceServicer):
    """skm.profiles.v1.PersonaService: tenants' personas and the built-in ones, their trusted
    keys and bundles (a rollback goes through `bundles`, which brings back an installed
    persona's relationships too), and training mode."""

    def __init__(self, profiles: Profiles, bundles: Bundles, training: Training) -> None:
        self._profiles = profiles
        self._bundles = bundles
        self._training = training

    async def CreatePersona(
        self, request: persona_service_pb2.CreatePersonaRequest, context: Context
    ) -> persona_service_pb2.CreatePersonaResponse:
        persona = await self._profiles.create_persona(
            request.parent,
            request.persona_id,
            convert.persona_of(request.persona),
            request.request_id,
            _principal(context),
            author=_author(context, _PERSONAS + "CreatePersona"),
        )
        return persona_service_pb2.CreatePersonaResponse(persona=convert.persona_to(persona))

    async def GetPersona(
        self, request: persona_service_pb2.GetPersonaRequest, context: Context
    ) -> persona_service_pb2.GetPersonaResponse:
        persona = await self._profiles.get_persona(request.name, _principal(context))
        return persona_service_pb2.GetPersonaResponse(persona=convert.persona_to(persona))

    async def ListPersonas(
        self, request: persona_service_pb2.ListPersonasRequest, context: Context
    ) -> persona_service_pb2.ListPersonasResponse:
        personas, token = await self._profiles.list_personas(
            request.parent, request.page_size, request.page_token, _principal(context)
        )
        return persona_service_pb2.ListPersonasResponse(
            personas=[convert.persona_to(p) for p in personas], next_page_token=token
        )

    async def UpdatePersona(
        self, request: persona_service_pb2.UpdatePersonaRequest, context: Context
    ) -> persona_service_pb2.UpdatePersonaResponse:
        persona = await self._profiles.update_persona(
            convert.persona_of(request.persona),
            list(request.update_mask.paths),
            _principal(context),
            author=_author(context, _PERSONAS + "UpdatePersona"),
        )
        return persona_service_pb2.UpdatePersonaResponse(persona=convert.persona_to(persona))

    async def DeletePersona(
        self, request: persona_service_pb2.DeletePersonaRequest, context: Context
    ) -> persona_service_pb2.DeletePersonaResponse:
        await self._profiles.delete_persona(request.name, request.etag, _principal(context))
        return persona_service_pb2.DeletePersonaResponse()

    async def ListPersonaRevisions(
        self, request: persona_service_pb2.ListPersonaRevisionsRequest, context: Context
    ) -> persona_service_pb2.ListPersonaRevisionsResponse:
        personas, token = await self._profiles.list_persona_revisions(
            request.name, request.page_size, request.page_token, _principal(context)
        )
        return persona_service_pb2.ListPersonaRevisionsResponse(
            personas=[convert.persona_to(p) for p in personas], next_page_token=token
        )

    async def RollbackPersona(
        self, request: persona_service_pb2.RollbackPersonaRequest, context: Context
    ) -> persona_service_pb2.RollbackPersonaResponse:
        persona = await self._bundles.rollback_persona(
            request.name,
            request.revision_id,
            request.etag,
            _principal(context),
            author=_author(context, _PERSONAS + "RollbackPersona"),
        )
        return persona_service_pb2.RollbackPersonaResponse(persona=convert.persona_to(persona))

    async def ExportPersonaBundle(
        self, request: persona_service_pb2.ExportPersonaBundleRequest, context: Context
    ) -> persona_service_pb2.ExportPersonaBundleResponse:
        payload = await self._bundles.export_bundle(request.name, request.version, request.key_id, _principal(context))
        return persona_service_pb2.ExportPersonaBundleResponse(payload=payload)

    async def InstallPersonaBundle(
        self, request: persona_service_pb2.InstallPersonaBundleRequest, context: Context
    ) -> persona_service_pb2.InstallPersonaBundleResponse:
        persona = await self._bundles.install_bundle(
            request.parent,
            request.bundle,
            request.request_id,
            _principal(context),
            author=_author(context, _PERSONAS + "InstallPersonaBundle"),
        )
        return persona_service_pb2.InstallPersonaBundleResponse(persona=convert.persona_to(persona))

    async def UninstallPersona(
        self, request: persona_service_pb2.UninstallPersonaRequest, context: Context
    ) -> persona_service_pb2.UninstallPersonaResponse:
        await self._bundles.uninstall_persona(request.name, request.etag, _principal(context))
        return persona_service_pb2.UninstallPersonaResponse()

    async def TrainPersona(
        self, request: persona_service_pb2.TrainPersonaRequest, context: Context
    ) -> persona_service_pb2.TrainPersonaResponse:
        persona = await self._training.train_persona(
            request.name, list(request.turns), request.etag, _principal(context)
        )
        return persona_service_pb2.TrainPersonaResponse(persona=convert.persona_to(persona))

    async def CreateTrustedKey(
        self, request: persona_service_pb2.CreateTrustedKeyRequest, context: Context
    ) -> persona_service_pb2.CreateTrustedKeyResponse:
        key = await self._bundles.create_trusted_key(
            request.parent, request.trusted_key_id, convert.trusted_key_of(request.trusted_key), _principal(context)
        )
        return persona_service_pb2.CreateTrustedKeyResponse(trusted_key=convert.trusted_key_to(key))

    async def ListTrustedKeys(
        self, request: persona_service_pb2.ListTrustedKeysRequest, context: Context
    ) -> persona_service_pb2.ListTrustedKeysResponse:
        keys, token = await self._bundles.list_trusted_keys(
            request.parent, request.page_size, request.page_token, _principal(context)
        )
        return persona_service_pb2.ListTrustedKeysResponse(
            trusted_keys=[convert.trusted_key_to(k) for k in keys], next_page_token=token
        )

    async def DeleteTrustedKey(
        self, request: persona_service_pb2.DeleteTrustedKeyRequest, context: Context
    ) -> persona_service_pb2.DeleteTrustedKeyResponse:
        await self._bundles.delete_trusted_key(request.name, _principal(context))
        return persona_service_pb2.DeleteTrustedKeyResponse()


class ModelApi(model_service_pb2_grpc.ModelServiceServicer):
    """skm.profiles.v1.ModelService: the deployment's model registry and the scoring job."""

    def __init__(self, profiles: Profiles, scoring: Scoring) -> None:
        self._profiles = profiles
        self._scoring = scoring

    async def CreateModel(
        self, request: model_service_pb2.CreateModelRequest, context: Context
    ) -> model_service_pb2.CreateModelResponse:
        model = await self._profiles.create_model(convert.model_of(request.model))
        return model_service_pb2.CreateModelResponse(model=convert.model_to(model))

    async def GetModel(
        self, request: model_service_pb2.GetModelRequest, context: Context
    ) -> model_service_pb2.GetModelResponse:
        model = await self._profiles.get_model(request.name)
        return model_service_pb2.GetModelResponse(model=convert.model_to(model))

    async def ListModels(
        self, request: model_service_pb2.ListModelsRequest, context: Context
    ) -> model_service_pb2.ListModelsResponse:
        models, token = await self._profiles.list_models(
            convert.capability_of(request.capability), request.page_size, request.page_token
        )
        return model_service_pb2.ListModelsResponse(models=[convert.model_to(m) for m in models], next_page_token=token)

    async def UpdateModel(
        self, request: model_service_pb2.UpdateModelRequest, context: Context
    ) -> model_service_pb2.UpdateModelResponse:
        model = await self._profiles.update_model(convert.model_of(request.model), list(request.update_mask.paths))
        return model_service_pb2.UpdateModelResponse(model=convert.model_to(model))

    async def ListModelScores(
        self, request: model_service_pb2.ListModelScoresRequest, context: Context
    ) -> model_service_pb2.ListModelScoresResponse:
        scores, token = await self._scoring.list_scores(
            request.parent, role_of(request.role), request.page_size, request.page_token, _principal(context)
        )
        return model_service_pb2.ListModelScoresResponse(
            model_scores=[convert.model_score_to(s) for s in scores], next_page_token=token
        )

    async def RecordBenchmark(
        self, request: model_service_pb2.RecordBenchmarkRequest, context: Context
    ) -> model_service_pb2.RecordBenchmarkResponse:
        run = await self._scoring.record_benchmark(request.request_id, convert.benchmark_run_of(request.benchmark_run))
        return model_service_pb2.RecordBenchmarkResponse(benchmark_run=convert.benchmark_run_to(run))

    async def RunScoring(
        self, request: model_service_pb2.RunScoringRequest, context: Context
    ) -> AsyncIterator[model_service_pb2.RunScoringResponse]:
        async for run, step in self._scoring.run_scoring(request.parent):
            yield model_service_pb2.RunScoringResponse(scoring_run=convert.scoring_run_to(run), step=step)

    async def ListModelRecommendations(
        self, request: model_service_pb2.ListModelRecommendationsRequest, context: Context
    ) -> model_service_pb2.ListModelRecommendationsResponse:
        found, token = await self._scoring.list_recommendations(
            request.parent, role_of(request.role), request.page_size, request.page_token, _principal(context)
        )
        return model_service_pb2.ListModelRecommendationsResponse(
            model_recommendations=[convert.recommendation_to(r) for r in found], next_page_token=token
        )


class ModelProfileApi(model_profile_service_pb2_grpc.ModelProfileServiceServicer):
    """skm.profiles.v1.ModelProfileService: tenants' profiles and role resolution."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def CreateModelProfile(
        self, request: model_profile_service_pb2.CreateModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.CreateModelProfileResponse:
        profile = await self._profiles.create_model_profile(
            request.parent,
            convert.model_profile_of(request.model_profile),
            request.request_id,
            _principal(context),
            author=_author(context, _PROFILES + "CreateModelProfile"),
        )
        return model_profile_service_pb2.CreateModelProfileResponse(model_profile=convert.model_profile_to(profile))

    async def GetModelProfile(
        self, request: model_profile_service_pb2.GetModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.GetModelProfileResponse:
        profile = await self._profiles.get_model_profile(request.name, _principal(context))
        return model_profile_service_pb2.GetModelProfileResponse(model_profile=convert.model_profile_to(profile))

    async def ListModelProfiles(
        self, request: model_profile_service_pb2.ListModelProfilesRequest, context: Context
    ) -> model_profile_service_pb2.ListModelProfilesResponse:
        profiles, token = await self._profiles.list_model_profiles(
            request.parent,
            role_of(request.role),
            mode_of(request.mode),
            request.page_size,
            request.page_token,
            _principal(context),
        )
        return model_profile_service_pb2.ListModelProfilesResponse(
            model_profiles=[convert.model_profile_to(p) for p in profiles], next_page_token=token
        )

    async def UpdateModelProfile(
        self, request: model_profile_service_pb2.UpdateModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.UpdateModelProfileResponse:
        profile = await self._profiles.update_model_profile(
            convert.model_profile_of(request.model_profile),
            list(request.update_mask.paths),
            _principal(context),
            author=_author(context, _PROFILES + "UpdateModelProfile"),
        )
        return model_profile_service_pb2.UpdateModelProfileResponse(model_profile=convert.model_profile_to(profile))

    async def DeleteModelProfile(
        self, request: model_profile_service_pb2.DeleteModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.DeleteModelProfileResponse:
        await self._profiles.delete_model_profile(request.name, request.etag, _principal(context))
        return model_profile_service_pb2.DeleteModelProfileResponse()

    async def ResolveModelProfile(
        self, request: model_profile_service_pb2.ResolveModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.ResolveModelProfileResponse:
        resolved = await self._profiles.resolve(
            request.parent,
            role_of(request.role),
            mode_of(request.mode),
            request.persona,
            [override_of(o) for o in request.overrides],
        )
        return model_profile_service_pb2.ResolveModelProfileResponse(
            resolved_model_profile=convert.resolved_to(resolved)
        )

    async def ListModelProfileRevisions(
        self, request: model_profile_service_pb2.ListModelProfileRevisionsRequest, context: Context
    ) -> model_profile_service_pb2.ListModelProfileRevisionsResponse:
        profiles, token = await self._profiles.list_model_profile_revisions(
            request.name, request.page_size, request.page_token, _principal(context)
        )
        return model_profile_service_pb2.ListModelProfileRevisionsResponse(
            model_profiles=[convert.model_profile_to(p) for p in profiles], next_page_token=token
        )

    async def RollbackModelProfile(
        self, request: model_profile_service_pb2.RollbackModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.RollbackModelProfileResponse:
        profile = await self._profiles.rollback_model_profile(
            request.name,
            request.revision_id,
            request.etag,
            _principal(context),
            author=_author(context, _PROFILES + "RollbackModelProfile"),
        )
        return model_profile_service_pb2.RollbackModelProfileResponse(model_profile=convert.model_profile_to(profile))


class TenantApi(tenant_service_pb2_grpc.TenantServiceServicer):
    """skm.profiles.v1.TenantService: tenant onboarding."""

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants

    async def CreateTenant(
        self, request: tenant_service_pb2.CreateTenantRequest, context: Context
    ) -> tenant_service_pb2.CreateTenantResponse:
        tenant = await self._tenants.create_tenant(
            request.tenant_id, convert.tenant_of(request.tenant), request.constitution
        )
        return tenant_service_pb2.CreateTenantResponse(tenant=convert.tenant_to(tenant))

    async def GetTenant(
        self, request: tenant_service_pb2.GetTenantRequest, context: Context
    ) -> tenant_service_pb2.GetTenantResponse:
        tenant = await self._tenants.get_tenant(request.name, _principal(context))
        return tenant_service_pb2.GetTenantResponse(tenant=convert.tenant_to(tenant))

    async def ListTenants(
        self, request: tenant_service_pb2.ListTenantsRequest, context: Context
    ) -> tenant_service_pb2.ListTenantsResponse:
        tenants, token = await self._tenants.list_tenants(request.page_size, request.page_token)
        return tenant_service_pb2.ListTenantsResponse(
            tenants=[convert.tenant_to(t) for t in tenants], next_page_token=token
        )


def register(
    server: grpc.aio.Server,
    profiles: Profiles,
    tenants: Tenants,
    scoring: Scoring,
    bundles: Bundles,
    training: Training,
) -> None:
    persona_service_pb2_grpc.add_PersonaServiceServicer_to_server(PersonaApi(profiles, bundles, training), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelApi(profiles, scoring), server)
    model_profile_service_pb2_grpc.add_ModelProfileServiceServicer_to_server(ModelProfileApi(profiles), server)
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(TenantApi(tenants), server)
