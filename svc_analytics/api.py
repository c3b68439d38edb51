"""svc_analytics's servicers: request in, one core call, response out.

Not served yet: every RPC answers UNIMPLEMENTED (ErrorInfo reason NOT_IMPLEMENTED, domain
runtime.skm) until the analytics issue fills these classes in. The contract, health and reflection
are live already.
"""

from __future__ import annotations

import grpc

from skm.analytics.v1 import analytics_service_pb2_grpc


class AnalyticsApi(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """skm.analytics.v1.AnalyticsService."""


def register(server: grpc.aio.Server) -> None:
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsApi(), server)  # type: ignore[abstract]  # not served yet
