"""svc_profiles's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the model-profiles issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.profiles.v1 import model_profile_service_pb2_grpc, model_service_pb2_grpc, persona_service_pb2_grpc


class ModelProfileApi(model_profile_service_pb2_grpc.ModelProfileServiceServicer):
    """skm.profiles.v1.ModelProfileService."""


class ModelApi(model_service_pb2_grpc.ModelServiceServicer):
    """skm.profiles.v1.ModelService."""


class PersonaApi(persona_service_pb2_grpc.PersonaServiceServicer):
    """skm.profiles.v1.PersonaService."""


def register(server: grpc.aio.Server) -> None:
    model_profile_service_pb2_grpc.add_ModelProfileServiceServicer_to_server(ModelProfileApi(), server)  # type: ignore[abstract]  # not served yet
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelApi(), server)  # type: ignore[abstract]  # not served yet
    persona_service_pb2_grpc.add_PersonaServiceServicer_to_server(PersonaApi(), server)  # type: ignore[abstract]  # not served yet
