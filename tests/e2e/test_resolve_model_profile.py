"""ModelProfileService.ResolveModelProfile through Envoy, now public to a tenant's members
(the browser UI's model panel): what a member gets, and what bad or foreign input gets."""

from __future__ import annotations

import grpc
import pytest

from skm.profiles.v1 import model_profile_service_pb2 as pb
from skm.profiles.v1 import model_profile_service_pb2_grpc
from skm.type.v1 import deployment_mode_pb2, model_pb2
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from tests.e2e.test_conversation import _tenant

PRIMARY = model_pb2.MODEL_ROLE_PRIMARY
DEVELOPER = deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER


async def test_a_member_resolves_a_role_and_bad_or_foreign_requests_are_refused(mesh: RunningStack) -> None:
    tenant, client = await _tenant(mesh)
    _, stranger = await _tenant(mesh)
    stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(client.channel)
    parent = f"tenants/{tenant}"

    reply = await stub.ResolveModelProfile(
        pb.ResolveModelProfileRequest(parent=parent, role=PRIMARY, mode=DEVELOPER), metadata=client.metadata, timeout=10
    )
    resolved = reply.resolved_model_profile
    assert resolved.role == PRIMARY
    assert resolved.model_profile == ""  # the deployment default: the tenant has no profile
    assert resolved.model_tiers
    assert resolved.model_tiers[0].name.startswith("models/")

    async def refused(
        request: pb.ResolveModelProfileRequest, metadata: tuple[tuple[str, str], ...]
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ResolveModelProfile(request, metadata=metadata, timeout=10)
        return caught.value

    missing_role = await refused(pb.ResolveModelProfileRequest(parent=parent, mode=DEVELOPER), client.metadata)
    assert missing_role.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(missing_role)
    assert info is not None
    assert info.reason == "INVALID_MODEL_PROFILE"

    foreign_persona = await refused(
        pb.ResolveModelProfileRequest(
            parent=parent, role=PRIMARY, mode=DEVELOPER, persona=f"{stranger.tenant}/personas/default"
        ),
        client.metadata,
    )
    assert foreign_persona.code() == grpc.StatusCode.NOT_FOUND
    info = error_info_of(foreign_persona)
    assert info is not None
    assert info.reason == "PERSONA_NOT_FOUND"

    # Another tenant's member may not read this tenant's resolution.
    other_tenant = await refused(
        pb.ResolveModelProfileRequest(parent=parent, role=PRIMARY, mode=DEVELOPER), stranger.metadata
    )
    assert other_tenant.code() == grpc.StatusCode.PERMISSION_DENIED

    # No token: refused before the service does any work.
    anonymous = await refused(pb.ResolveModelProfileRequest(parent=parent, role=PRIMARY, mode=DEVELOPER), ())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
