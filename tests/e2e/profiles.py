"""Steps the e2e tests share for choosing a tenant's models: register a model with svc_profiles
(as the mesh's operator), name a tenant admin, and set the tenant's profile of a role."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.profiles.v1 import model_pb2 as profiles_model_pb2
from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)
from skm.type.v1 import deployment_mode_pb2, money_pb2
from skm_runtime.server import signed_channel
from skm_stack import RunningStack
from tests.e2e.test_conversation import Client, _token

CHAT = profiles_model_pb2.MODEL_CAPABILITY_CHAT


async def register_model(
    mesh: RunningStack,
    *,
    name: str,
    endpoint_uri: str,
    served_model: str,
    display_name: str,
    capabilities: Sequence[int],
    context_length: int = 2048,
    usd_per_million_tokens: float = 0.0,
) -> None:
    """Registers the model; ``usd_per_million_tokens`` prices its input and output tokens alike."""
    units = int(usd_per_million_tokens)
    price = money_pb2.Money(
        currency_code="USD", units=units, nanos=round((usd_per_million_tokens - units) * 1_000_000_000)
    )
    async with signed_channel(mesh.services["profiles"].addr) as profiles:
        await model_service_pb2_grpc.ModelServiceStub(profiles).CreateModel(
            model_service_pb2.CreateModelRequest(
                model=profiles_model_pb2.Model(
                    name=name,
                    display_name=display_name,
                    endpoint_uri=endpoint_uri,
                    served_model=served_model,
                    context_length=context_length,
                    capabilities=list(capabilities),
                    input_cost_per_million_tokens=price,
                    output_cost_per_million_tokens=price,
                )
            ),
            timeout=10,
        )


async def tenant_admin(mesh: RunningStack, tenant: str, user: str = "ada") -> Client:
    """A client of the tenant's admin ``user`` (made one in policy first)."""
    async with signed_channel(mesh.services["policy"].addr) as policy:
        await policy_service_pb2_grpc.PolicyServiceStub(policy).WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(
                parent=f"tenants/{tenant}",
                relationships=[
                    access_pb2.Relationship(
                        subject=f"user:tenants/{tenant}/users/{user}",
                        relation="admin",
                        object=f"tenant:tenants/{tenant}",
                    )
                ],
            ),
            timeout=10,
        )
    admin = Client(mesh, tenant, user)
    admin.metadata = (("authorization", f"Bearer {_token(mesh.state_dir, tenant, user, roles=('admin',))}"),)
    return admin


async def set_profile(admin: Client, role: int, tiers: Sequence[str], **fields: float | int) -> None:
    """The tenant's DEVELOPER-mode profile of ``role``: ``tiers`` and any other fields."""
    await model_profile_service_pb2_grpc.ModelProfileServiceStub(admin.channel).CreateModelProfile(
        model_profile_service_pb2.CreateModelProfileRequest(
            parent=admin.tenant,
            model_profile=model_profile_pb2.ModelProfile(
                role=role,
                mode=deployment_mode_pb2.DEPLOYMENT_MODE_DEVELOPER,
                model_tiers=list(tiers),
                **fields,
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=admin.metadata,
        timeout=10,
    )
