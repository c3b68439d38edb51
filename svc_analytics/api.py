"""svc_analytics's servicer: request in, one core call, response out."""

from __future__ import annotations

from typing import Any

import grpc

from skm.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from svc_analytics import convert
from svc_analytics.core.queries import Queries

Context = grpc.aio.ServicerContext[Any, Any]


class AnalyticsApi(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """skm.analytics.v1.AnalyticsService: the dashboards' metrics and the audit log."""

    def __init__(self, queries: Queries) -> None:
        self._queries = queries

    async def QueryMetrics(
        self, request: analytics_service_pb2.QueryMetricsRequest, context: Context
    ) -> analytics_service_pb2.QueryMetricsResponse:
        series = await self._queries.query_metrics(convert.metrics_query_of(request))
        return analytics_service_pb2.QueryMetricsResponse(series=[convert.series_to(s) for s in series])

    async def QueryAuditEvents(
        self, request: analytics_service_pb2.QueryAuditEventsRequest, context: Context
    ) -> analytics_service_pb2.QueryAuditEventsResponse:
        page = await self._queries.query_audit_events(convert.audit_query_of(request))
        return convert.audit_page_to(page)

    async def GetModelSpend(
        self, request: analytics_service_pb2.GetModelSpendRequest, context: Context
    ) -> analytics_service_pb2.GetModelSpendResponse:
        tenant, role = convert.spend_query_of(request)
        return convert.spend_to(await self._queries.model_spend(tenant, role))


def register(server: grpc.aio.Server, queries: Queries) -> None:
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsApi(queries), server)
