"""svc_policy as svc_profiles needs it (ports.TenantPolicy): relationships and the
constitution of a tenant, written as this service (the channel signs every call as a caller
of the mesh, so svc_policy admits it by signature, not by a user's role)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc

from skm.policy.v1 import (
    access_pb2,
    constitution_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm_runtime.errors import ServiceUnavailable
from svc_profiles.errors import EtagMismatch
from svc_profiles.model import Constitution, Relationship

T = TypeVar("T")

_CALL_SECONDS = 10.0
# svc_policy's limit of relationships per write or delete.
_PER_CALL = 100


class GrpcTenantPolicy:
    """svc_policy's PolicyService and ConstitutionService over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._constitutions = constitution_service_pb2_grpc.ConstitutionServiceStub(channel)

    async def write_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        for start in range(0, len(relationships), _PER_CALL):
            chunk = [_wire(r) for r in relationships[start : start + _PER_CALL]]
            await self._call(
                "write relationships",
                self._policy.WriteRelationships(
                    policy_service_pb2.WriteRelationshipsRequest(parent=tenant, relationships=chunk),
                    timeout=_CALL_SECONDS,
                ),
            )

    async def delete_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        for start in range(0, len(relationships), _PER_CALL):
            chunk = [_wire(r) for r in relationships[start : start + _PER_CALL]]
            await self._call(
                "delete relationships",
                self._policy.DeleteRelationships(
                    policy_service_pb2.DeleteRelationshipsRequest(parent=tenant, relationships=chunk),
                    timeout=_CALL_SECONDS,
                ),
            )

    async def read_relationships(
        self, tenant: str, subject: str = "", relation: str = "", object: str = ""
    ) -> list[Relationship]:
        found: list[Relationship] = []
        token = ""
        while True:
            reply = await self._call(
                "read relationships",
                self._policy.ReadRelationships(
                    policy_service_pb2.ReadRelationshipsRequest(
                        parent=tenant,
                        subject=subject,
                        relation=relation,
                        object=object,
                        page_size=1000,
                        page_token=token,
                    ),
                    timeout=_CALL_SECONDS,
                ),
            )
            found += [Relationship(r.subject, r.relation, r.object) for r in reply.relationships]
            token = reply.next_page_token
            if not token:
                return found

    async def constitution(self, tenant: str) -> Constitution:
        reply = await self._call(
            "read the constitution",
            self._constitutions.GetConstitution(
                constitution_service_pb2.GetConstitutionRequest(name=f"{tenant}/constitution"), timeout=_CALL_SECONDS
            ),
        )
        c = reply.constitution
        return Constitution(c.content, c.sha256, c.etag)

    async def replace_constitution(self, tenant: str, content: str, etag: str) -> Constitution:
        try:
            reply = await self._constitutions.UpdateConstitution(
                constitution_service_pb2.UpdateConstitutionRequest(
                    constitution=constitution_pb2.Constitution(
                        name=f"{tenant}/constitution", content=content, etag=etag
                    )
                ),
                timeout=_CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.ABORTED:
                raise EtagMismatch("the constitution changed meanwhile", metadata={"tenant": tenant}) from None
            raise _unavailable("write the constitution", error) from None
        c = reply.constitution
        return Constitution(c.content, c.sha256, c.etag)

    @staticmethod
    async def _call(what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise _unavailable(what, error) from None


def _wire(relationship: Relationship) -> access_pb2.Relationship:
    return access_pb2.Relationship(
        subject=relationship.subject, relation=relationship.relation, object=relationship.object
    )


def _unavailable(what: str, error: grpc.aio.AioRpcError) -> ServiceUnavailable:
    """svc_policy could not do it: unreachable, or refused (a refusal of what this service
    writes is a bug or a misconfiguration, never the caller's input)."""
    return ServiceUnavailable(
        f"svc_policy could not {what} ({error.code().name})",
        metadata={"dependency": "policy", "code": error.code().name},
    )
