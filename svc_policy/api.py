"""svc_policy's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the policy issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.policy.v1 import (
    blocked_action_service_pb2_grpc,
    constitution_service_pb2_grpc,
    policy_service_pb2_grpc,
)


class PolicyApi(policy_service_pb2_grpc.PolicyServiceServicer):
    """skm.policy.v1.PolicyService."""


class BlockedActionApi(blocked_action_service_pb2_grpc.BlockedActionServiceServicer):
    """skm.policy.v1.BlockedActionService."""


class ConstitutionApi(constitution_service_pb2_grpc.ConstitutionServiceServicer):
    """skm.policy.v1.ConstitutionService."""


def register(server: grpc.aio.Server) -> None:
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyApi(), server)  # type: ignore[abstract]  # not served yet
    blocked_action_service_pb2_grpc.add_BlockedActionServiceServicer_to_server(BlockedActionApi(), server)  # type: ignore[abstract]  # not served yet
    constitution_service_pb2_grpc.add_ConstitutionServiceServicer_to_server(ConstitutionApi(), server)  # type: ignore[abstract]  # not served yet
