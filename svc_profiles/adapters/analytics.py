"""Production telemetry of model calls as the scoring job reads it (the Telemetry port): one
QueryMetrics call to svc_analytics per tenant and role, filtered to the role's calls (a model
serving two roles is rated in each on its calls there), grouped by model, with one bucket
spanning the whole window. The call is signed as this service (a caller of the mesh, no
principal), as every service-to-service call of the scoring job.

What svc_analytics gives per model: the median time to first token (of PRIMARY calls only:
svc_analytics measures TTFT there), the median tokens per second, the share of failed calls
(its sample count is the number of calls), the share of calls the agent loop fell back past
(failed, then a later tier of the same turn succeeded), and the cost and tokens summed, whose
ratio is the blended cost per million tokens whatever the input/output mix was.
"""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from skm.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, metrics_pb2
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.values import ModelRole, Money
from skm_runtime.values_wire import role_to
from svc_profiles.model import ModelTelemetry

M = metrics_pb2
_CALL_SECONDS = 30.0
_MIN_BUCKET_SECONDS = 60
_QUERIES = (
    (M.METRIC_TIME_TO_FIRST_TOKEN, M.AGGREGATION_P50),
    (M.METRIC_TOKENS_PER_SECOND, M.AGGREGATION_P50),
    (M.METRIC_MODEL_FAILURE_RATE, M.AGGREGATION_MEAN),
    (M.METRIC_MODEL_FALLBACK_RATE, M.AGGREGATION_MEAN),
    (M.METRIC_MODEL_COST, M.AGGREGATION_SUM),
    (M.METRIC_TOKENS, M.AGGREGATION_SUM),
)


def _stamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _one_value(series: M.TimeSeries) -> tuple[float, int]:
    """The value of the bucket with the most samples (the window is one bucket; a window whose
    span is not whole seconds has a sliver of a second one), and the samples of all."""
    if not series.points:
        return 0.0, 0
    main = max(series.points, key=lambda p: p.sample_count)
    return main.value, sum(p.sample_count for p in series.points)


def _sum(series: M.TimeSeries) -> float:
    return sum(p.value for p in series.points)


def _money_of(value: float, currency: str) -> Money:
    nanos = round(value * 1_000_000_000)
    units = int(nanos / 1_000_000_000)
    return Money(currency, units, nanos - units * 1_000_000_000)


class GrpcTelemetry:
    """svc_analytics' QueryMetrics, per tenant and role, grouped by model."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)

    async def model_telemetry(
        self, tenant: str, role: ModelRole, start: datetime, end: datetime
    ) -> dict[str, ModelTelemetry]:
        width = max(int((end - start).total_seconds()), _MIN_BUCKET_SECONDS)
        request = analytics_service_pb2.QueryMetricsRequest(
            parent=tenant,
            queries=[analytics_service_pb2.MetricQuery(metric=m, aggregation=a) for m, a in _QUERIES],
            start_time=_stamp(start),
            end_time=_stamp(end),
            bucket_width=duration_pb2.Duration(seconds=width),
            group_by=[M.DIMENSION_MODEL],
            roles=[role_to(role)],
        )
        try:
            reply = await self._stub.QueryMetrics(request, timeout=_CALL_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise ServiceUnavailable(
                f"svc_analytics cannot give the {role.value} telemetry of {tenant} ({error.code().name})",
                retry_after_seconds=5.0,
            ) from None
        ttft: dict[str, float] = {}
        tps: dict[str, float] = {}
        failure: dict[str, tuple[float, int]] = {}
        fallback: dict[str, float] = {}
        cost: dict[str, tuple[float, str]] = {}
        tokens: dict[str, float] = {}
        for series in reply.series:
            if not series.model or not series.points:
                continue
            if series.metric == M.METRIC_TIME_TO_FIRST_TOKEN:
                ttft[series.model] = _one_value(series)[0]
            elif series.metric == M.METRIC_TOKENS_PER_SECOND:
                tps[series.model] = _one_value(series)[0]
            elif series.metric == M.METRIC_MODEL_FAILURE_RATE:
                failure[series.model] = _one_value(series)
            elif series.metric == M.METRIC_MODEL_FALLBACK_RATE:
                fallback[series.model] = _one_value(series)[0]
            elif series.metric == M.METRIC_MODEL_COST:
                # One series per currency; the registry uses one, so keep the largest.
                if series.model not in cost or _sum(series) > cost[series.model][0]:
                    cost[series.model] = (_sum(series), series.unit)
            elif series.metric == M.METRIC_TOKENS:
                tokens[series.model] = _sum(series)
        out: dict[str, ModelTelemetry] = {}
        for model in set(ttft) | set(tps) | set(failure) | set(cost) | set(tokens):
            rate, calls = failure.get(model, (0.0, 0))
            spent = cost.get(model)
            used = tokens.get(model, 0.0)
            out[model] = ModelTelemetry(
                calls=calls,
                time_to_first_token_seconds=ttft.get(model),
                tokens_per_second=tps.get(model),
                failure_rate=rate if calls else None,
                cost_per_million=_money_of(spent[0] / used * 1e6, spent[1]) if spent and used else None,
                # Over the same calls as the failure rate: absent exactly when it is.
                fallback_rate=fallback.get(model) if calls else None,
            )
        return out
