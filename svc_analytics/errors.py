"""svc_analytics's domain errors; reasons are skm.analytics.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError

DOMAIN = "analytics.skm"


class AnalyticsError(SkmError):
    domain = DOMAIN


class InvalidResourceName(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class InvalidTimeRange(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_TIME_RANGE"


class InvalidBucket(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_BUCKET"


class TooManyBuckets(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "TOO_MANY_BUCKETS"


class AggregationNotSupported(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "AGGREGATION_NOT_SUPPORTED"


class TooManyQueries(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "TOO_MANY_QUERIES"


class UnknownEventType(AnalyticsError):
    code = Code.INVALID_ARGUMENT
    reason = "UNKNOWN_EVENT_TYPE"


class WarehouseUnavailable(AnalyticsError):
    """ClickHouse cannot be reached (or failed a statement for reasons of its own); retry."""

    code = Code.UNAVAILABLE
    reason = "WAREHOUSE_UNAVAILABLE"


class EventLogUnavailable(AnalyticsError):
    """Kafka cannot be reached. Never sent to a client: ingestion waits and retries."""

    code = Code.UNAVAILABLE
    reason = "WAREHOUSE_UNAVAILABLE"


class PolicyUnavailable(AnalyticsError):
    """svc_policy cannot say a tenant's budgets. Never sent to a client: the budget watch
    looks again with the tenant's next model call."""

    code = Code.UNAVAILABLE
    reason = "WAREHOUSE_UNAVAILABLE"
