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
    tenant_service_pb2_grpc,
)
from skm_runtime.access import Principal
from skm_runtime.errors import NotImplementedYet
from skm_runtime.interceptors import call_principal
from skm_runtime.values_wire import mode_of, override_of, role_of
from svc_profiles import convert
from svc_profiles.core import Profiles

Context = grpc.aio.ServicerContext[Any, Any]


def _principal(context: Context) -> Principal | None:
    message = call_principal(context)
    return None if message is None else convert.principal_of(message)


class PersonaApi(persona_service_pb2_grpc.PersonaServiceServicer):
    """skm.profiles.v1.PersonaService: tenants' personas and the built-in ones."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def CreatePersona(
        self, request: persona_service_pb2.CreatePersonaRequest, context: Context
    ) -> persona_service_pb2.CreatePersonaResponse:
        persona = await self._profiles.create_persona(
            request.parent,
            request.persona_id,
            convert.persona_of(request.persona),
            request.request_id,
            _principal(context),
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
            convert.persona_of(request.persona), list(request.update_mask.paths), _principal(context)
        )
        return persona_service_pb2.UpdatePersonaResponse(persona=convert.persona_to(persona))

    async def DeletePersona(
        self, request: persona_service_pb2.DeletePersonaRequest, context: Context
    ) -> persona_service_pb2.DeletePersonaResponse:
        await self._profiles.delete_persona(request.name, request.etag, _principal(context))
        return persona_service_pb2.DeletePersonaResponse()

    async def ListPersonaRevisions(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def RollbackPersona(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def ExportPersonaBundle(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def InstallPersonaBundle(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def UninstallPersona(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def TrainPersona(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def CreateTrustedKey(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def ListTrustedKeys(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")

    async def DeleteTrustedKey(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the persona life cycle (revisions, bundles, training) is not served yet")


class ModelApi(model_service_pb2_grpc.ModelServiceServicer):
    """skm.profiles.v1.ModelService: the deployment's model registry.

    ListModelScores and RecordBenchmark are not served yet (UNIMPLEMENTED, reason
    NOT_IMPLEMENTED): they belong to the scoring job, which is not built.
    """

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

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
        raise NotImplementedYet("model scores come from the scoring job, which is not served yet")

    async def RecordBenchmark(
        self, request: model_service_pb2.RecordBenchmarkRequest, context: Context
    ) -> model_service_pb2.RecordBenchmarkResponse:
        raise NotImplementedYet("benchmark runs feed the scoring job, which is not served yet")

    async def RunScoring(self, request: Any, context: Context) -> AsyncIterator[Any]:
        raise NotImplementedYet("the scoring job is not served yet")
        yield  # a server stream

    async def ListModelRecommendations(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("the scoring job is not served yet")


class ModelProfileApi(model_profile_service_pb2_grpc.ModelProfileServiceServicer):
    """skm.profiles.v1.ModelProfileService: tenants' profiles and role resolution."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def CreateModelProfile(
        self, request: model_profile_service_pb2.CreateModelProfileRequest, context: Context
    ) -> model_profile_service_pb2.CreateModelProfileResponse:
        profile = await self._profiles.create_model_profile(
            request.parent, convert.model_profile_of(request.model_profile), request.request_id, _principal(context)
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
            convert.model_profile_of(request.model_profile), list(request.update_mask.paths), _principal(context)
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

    async def ListModelProfileRevisions(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("model profile revisions are not served yet")

    async def RollbackModelProfile(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("model profile revisions are not served yet")


class TenantApi(tenant_service_pb2_grpc.TenantServiceServicer):
    """skm.profiles.v1.TenantService: tenant onboarding."""

    async def CreateTenant(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("tenant onboarding is not served yet")

    async def GetTenant(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("tenant onboarding is not served yet")

    async def ListTenants(self, request: Any, context: Context) -> Any:
        raise NotImplementedYet("tenant onboarding is not served yet")


def register(server: grpc.aio.Server, profiles: Profiles) -> None:
    persona_service_pb2_grpc.add_PersonaServiceServicer_to_server(PersonaApi(profiles), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelApi(profiles), server)
    model_profile_service_pb2_grpc.add_ModelProfileServiceServicer_to_server(ModelProfileApi(profiles), server)
    # Its methods answer UNIMPLEMENTED until onboarding lands (the generated base class).
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(TenantApi(), server)
