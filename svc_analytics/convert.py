"""Between svc_analytics's query domain and its wire types (skm.analytics.v1, skm.events.v1).

Enums map by their wire names (METRIC_TURNS is Metric.TURNS); UNSPECIFIED, and any number
this build does not know, read as None, which the core refuses. Times are UTC datetimes
(microseconds, the warehouse's precision); a bucket width's nanoseconds are rounded up to
the microsecond, so that a width that is not whole seconds never becomes one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from skm.analytics.v1 import analytics_service_pb2, metrics_pb2
from skm.events.v1 import event_pb2
from skm.type.v1 import money_pb2
from skm_runtime.errors import FieldViolation, InvalidArgument
from skm_runtime.values_wire import enum_numbers, role_of
from svc_analytics.errors import InvalidTimeRange
from svc_analytics.model import (
    Aggregation,
    AuditPage,
    AuditQuery,
    Dimension,
    Metric,
    MetricQuery,
    MetricsQuery,
    Point,
    Series,
    Spend,
)

_METRICS = enum_numbers(metrics_pb2.Metric, "METRIC_", Metric)
_AGGREGATIONS = enum_numbers(metrics_pb2.Aggregation, "AGGREGATION_", Aggregation)
_DIMENSIONS = enum_numbers(metrics_pb2.Dimension, "DIMENSION_", Dimension)
_METRIC_NUMBERS = {metric: number for number, metric in _METRICS.items()}
_AGGREGATION_NUMBERS = {aggregation: number for number, aggregation in _AGGREGATIONS.items()}


# -- values -----------------------------------------------------------------------------------


def _time_of(parent: Any, field: str) -> datetime | None:
    if not parent.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(parent, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidTimeRange(f"{field} is not a valid timestamp", metadata={"field": field}) from None


def _width_of(request: analytics_service_pb2.QueryMetricsRequest) -> timedelta | None:
    if not request.HasField("bucket_width"):
        return None
    width: duration_pb2.Duration = request.bucket_width
    return timedelta(seconds=width.seconds, microseconds=-(-width.nanos // 1000))


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# -- QueryMetrics -----------------------------------------------------------------------------


def metrics_query_of(request: analytics_service_pb2.QueryMetricsRequest) -> MetricsQuery:
    return MetricsQuery(
        parent=request.parent,
        queries=tuple(MetricQuery(_METRICS.get(q.metric), _AGGREGATIONS.get(q.aggregation)) for q in request.queries),
        start_time=_time_of(request, "start_time"),
        end_time=_time_of(request, "end_time"),
        bucket_width=_width_of(request),
        personas=tuple(request.personas),
        models=tuple(request.models),
        group_by=tuple(_DIMENSIONS.get(d) for d in request.group_by),
        roles=tuple(role_of(r) for r in request.roles),
    )


def _point_to(point: Point) -> metrics_pb2.Point:
    return metrics_pb2.Point(
        start_time=_timestamp(point.start_time), value=point.value, sample_count=point.sample_count
    )


def series_to(series: Series) -> metrics_pb2.TimeSeries:
    return metrics_pb2.TimeSeries(
        metric=metrics_pb2.Metric.ValueType(_METRIC_NUMBERS[series.metric]),
        aggregation=metrics_pb2.Aggregation.ValueType(_AGGREGATION_NUMBERS[series.aggregation]),
        unit=series.unit,
        persona=series.persona,
        model=series.model,
        points=[_point_to(p) for p in series.points],
    )


# -- QueryAuditEvents -------------------------------------------------------------------------


def audit_query_of(request: analytics_service_pb2.QueryAuditEventsRequest) -> AuditQuery:
    return AuditQuery(
        parent=request.parent,
        session=request.session,
        event_types=tuple(request.event_types),
        start_time=_time_of(request, "start_time"),
        end_time=_time_of(request, "end_time"),
        page_size=request.page_size,
        page_token=request.page_token,
    )


def audit_page_to(page: AuditPage) -> analytics_service_pb2.QueryAuditEventsResponse:
    # Each event was parsed as an Event when it was ingested, so it parses again here.
    return analytics_service_pb2.QueryAuditEventsResponse(
        events=[event_pb2.Event.FromString(event) for event in page.events], next_page_token=page.next_page_token
    )


def spend_query_of(request: analytics_service_pb2.GetModelSpendRequest) -> tuple[str, str]:
    """(tenant, role name: "PRIMARY", ...; "" for every role)."""
    role = role_of(request.role)
    if role is None and request.role:
        raise InvalidArgument(
            "role is not a ModelRole this service knows", violations=[FieldViolation("role", "unknown value")]
        )
    return request.tenant, "" if role is None else role.name


def spend_to(spend: Spend) -> analytics_service_pb2.GetModelSpendResponse:
    units = math.floor(spend.usd)
    nanos = round((spend.usd - units) * 1_000_000_000)
    if nanos == 1_000_000_000:
        units, nanos = units + 1, 0
    return analytics_service_pb2.GetModelSpendResponse(
        spent=money_pb2.Money(currency_code="USD", units=units, nanos=nanos),
        period_start_time=_timestamp(spend.since),
        model_calls=spend.model_calls,
    )
