"""The dashboards' metrics and the audit log: the rules of skm.analytics.v1 over the warehouse.

Every rule of the contract is checked here, before the warehouse is asked anything:

- names: the parent is "tenants/{tenant}"; persona filters "tenants/{tenant}/personas/{id}"
  and the session filter "tenants/{tenant}/sessions/{id}" of that same tenant (a name of
  another tenant could never match, and asking for one is a mistake worth telling);
  model filters "models/{id}". Anything else is INVALID_RESOURCE_NAME. A role filter of
  MODEL_ROLE_UNSPECIFIED (or of a role this build does not know) is INVALID_ARGUMENT, as
  an unspecified dimension is.
- QueryMetrics: 1 to 20 queries, each with an aggregation its metric accepts; a range of
  at most 90 days that is not empty (start required, end unset = now); a bucket width of
  whole seconds, at least 60 s and no wider than the range; at most 1000 buckets (the
  last one may be cut short by the end of the range).
- QueryAuditEvents: known payload types; a range that is not empty (no 90-day limit: the
  audit log is paged, and an unset start means the oldest event kept); page size 100 by
  default, 1000 at most; page tokens issued by this service for the same filter.

Filters and grouping, where a table has no such column:

- A model filter narrows only the metrics tied to a model (model calls, model scores);
  the others ignore it, as the contract says. Grouping by model splits those metrics alone:
  any other metric comes back as one series whose model is "".
- A role filter narrows only the metrics of model calls (MODEL_CALL_METRICS); the others,
  model scores included, ignore it.
- Every metric but MODEL_SCORE has a persona (the one acting; "" when none, e.g. a policy
  decision about a user). Model scores are the tenant's, of no persona: they read as
  persona "", so a persona filter leaves no score (the filter asks for those personas'
  data, and there is none), and grouping by persona gives them one series with persona "".

Page tokens: base64 of JSON holding a digest of the filter they were issued for, the
(event time, event id) of the last event returned and, when the request left the end
unset, the "now" of the first page, so that paging ends even while events keep coming.
A token's position only ever narrows the tenant's own events, so it needs no signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from skm_runtime.errors import FieldViolation, InvalidArgument
from skm_runtime.values import ModelRole
from svc_analytics.errors import (
    AggregationNotSupported,
    InvalidBucket,
    InvalidPageToken,
    InvalidResourceName,
    InvalidTimeRange,
    TooManyBuckets,
    TooManyQueries,
    UnknownEventType,
)
from svc_analytics.model import (
    AGGREGATIONS,
    DEFAULT_PAGE_SIZE,
    EVENT_TYPES,
    MAX_BUCKETS,
    MAX_PAGE_SIZE,
    MAX_QUERIES,
    MAX_RANGE,
    MIN_BUCKET,
    MODEL_CALL_METRICS,
    MODEL_METRICS,
    AuditPage,
    AuditQuery,
    AuditRead,
    Dimension,
    MetricQuery,
    MetricsQuery,
    Series,
    SeriesRead,
    Spend,
)
from svc_analytics.ports import WarehouseReader

# A name segment: what admission accepts in a resource name (no white space, no "/",
# none of OpenFGA's "#:*@"), within a sane length.
_SEGMENT = re.compile(r"[^\s/#:*@]{1,128}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Queries:
    """QueryMetrics and QueryAuditEvents over a warehouse reader; `now` is the clock that
    an unset end of range reads."""

    def __init__(self, reader: WarehouseReader, *, now: Callable[[], datetime]) -> None:
        self._reader = reader
        self._now = now

    async def query_metrics(self, query: MetricsQuery) -> list[Series]:
        """The series of every query, in the order of the queries; within one query, by
        persona, model and unit."""
        tenant = _tenant_of(query.parent)
        _check_queries(query.queries)
        start, end = self._range(query.start_time, query.end_time, limit=MAX_RANGE)
        width = _bucket_width(query.bucket_width, end - start)
        personas = _personas(query.personas, tenant)
        models = _models(query.models)
        by = _dimensions(query.group_by)
        roles = _roles(query.roles)
        reads = [
            SeriesRead(
                tenant=tenant,
                metric=q.metric,
                aggregation=q.aggregation,
                start=start,
                end=end,
                bucket_width=width,
                personas=personas,
                models=models if q.metric in MODEL_METRICS else (),
                roles=roles if q.metric in MODEL_CALL_METRICS else (),
                by_persona=Dimension.PERSONA in by,
                by_model=Dimension.MODEL in by,
            )
            for q in query.queries
            if q.metric is not None and q.aggregation is not None  # _check_queries made sure
        ]
        answers = await asyncio.gather(*(self._reader.series(r) for r in reads))
        return [s for answer in answers for s in sorted(answer, key=lambda s: (s.persona, s.model, s.unit))]

    async def query_audit_events(self, query: AuditQuery) -> AuditPage:
        """A page of the tenant's events, oldest first, and the token of the next one."""
        tenant = _tenant_of(query.parent)
        session = _session(query.session, tenant)
        types = _event_types(query.event_types)
        start, end = query.start_time, query.end_time
        if start is not None and end is not None and end <= start:
            raise InvalidTimeRange("end_time must be after start_time")
        size = DEFAULT_PAGE_SIZE if query.page_size <= 0 else min(query.page_size, MAX_PAGE_SIZE)
        scope = _digest(tenant, session, sorted(types), _micros_or_none(start), _micros_or_none(end))
        after, frozen_end = _position_of(query.page_token, scope)
        if end is None:
            end = frozen_end or self._now()
            if start is not None and end <= start:
                raise InvalidTimeRange("start_time is in the future: the range is empty")
        read = AuditRead(
            tenant=tenant, end=end, limit=size + 1, start=start, session=session, event_types=types, after=after
        )
        events = await self._reader.audit_events(read)
        page, more = events[:size], len(events) > size
        token = ""
        if more:
            last = page[-1]
            token = _token_of(scope, last.event_time, last.event_id, None if query.end_time is not None else end)
        return AuditPage(tuple(e.event for e in page), token)

    async def model_spend(self, tenant: str, role: str) -> Spend:
        """The tenant's USD spend on the role's model calls ("" for all) this calendar month
        (UTC), as ingested so far."""
        _tenant_of(tenant)
        now = self._now().astimezone(UTC)
        since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return await self._reader.model_spend(tenant, role, since)

    def _range(self, start: datetime | None, end: datetime | None, *, limit: timedelta) -> tuple[datetime, datetime]:
        if start is None:
            raise InvalidTimeRange("start_time is required")
        end = self._now() if end is None else end
        if end <= start:
            raise InvalidTimeRange("end_time must be after start_time (unset end_time: now)")
        if end - start > limit:
            raise InvalidTimeRange(f"the range may span at most {limit.days} days")
        return start, end


# -- names ------------------------------------------------------------------------------------


def _bad_name(field: str, expected: str, name: str) -> InvalidResourceName:
    return InvalidResourceName(f"{field}: expected {expected}", metadata={"field": field, "name": name[:200]})


def _tenant_of(parent: str) -> str:
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "tenants" or not _well_formed(parts[1]):
        raise _bad_name("parent", "tenants/{tenant}", parent)
    return parent


def _child_of(tenant: str, name: str, collection: str, field: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != tenant or parts[2] != collection or not _well_formed(parts[3]):
        raise _bad_name(field, f"{tenant}/{collection}/{{id}}", name)
    return name


def _personas(names: Sequence[str], tenant: str) -> tuple[str, ...]:
    return tuple(sorted({_child_of(tenant, n, "personas", "personas") for n in names}))


def _session(name: str, tenant: str) -> str:
    return _child_of(tenant, name, "sessions", "session") if name else ""


def _models(names: Sequence[str]) -> tuple[str, ...]:
    for name in names:
        prefix, _, model = name.partition("/")
        if prefix != "models" or not _well_formed(model):
            raise _bad_name("models", "models/{model}", name)
    return tuple(sorted(set(names)))


def _well_formed(segment: str) -> bool:
    return segment.isprintable() and _SEGMENT.fullmatch(segment) is not None


# -- QueryMetrics -----------------------------------------------------------------------------


def _check_queries(queries: Sequence[MetricQuery]) -> None:
    if not 1 <= len(queries) <= MAX_QUERIES:
        raise TooManyQueries(
            f"ask for 1 to {MAX_QUERIES} series, not {len(queries)}", metadata={"limit": str(MAX_QUERIES)}
        )
    for q in queries:
        if q.metric is None or q.aggregation is None or q.aggregation not in AGGREGATIONS[q.metric]:
            metric = f"METRIC_{q.metric.value if q.metric else 'UNSPECIFIED'}"
            aggregation = f"AGGREGATION_{q.aggregation.value if q.aggregation else 'UNSPECIFIED'}"
            raise AggregationNotSupported(
                f"{metric} does not accept {aggregation}", metadata={"metric": metric, "aggregation": aggregation}
            )


def _bucket_width(width: timedelta | None, span: timedelta) -> timedelta:
    if width is None:
        raise InvalidBucket("bucket_width is required")
    if width < MIN_BUCKET or width % timedelta(seconds=1):
        raise InvalidBucket(f"bucket_width must be whole seconds, at least {MIN_BUCKET.seconds} s")
    if width > span:
        raise InvalidBucket("bucket_width is wider than the time range")
    if math.ceil(span / width) > MAX_BUCKETS:
        raise TooManyBuckets(
            f"a series may have at most {MAX_BUCKETS} buckets: widen the buckets or narrow the range",
            metadata={"limit": str(MAX_BUCKETS)},
        )
    return width


def _dimensions(group_by: Sequence[Dimension | None]) -> frozenset[Dimension]:
    if None in group_by:
        raise InvalidArgument(
            "group_by holds DIMENSION_UNSPECIFIED",
            violations=[FieldViolation("group_by", "must be DIMENSION_PERSONA or DIMENSION_MODEL")],
        )
    return frozenset(d for d in group_by if d is not None)


def _roles(roles: Sequence[ModelRole | None]) -> tuple[str, ...]:
    if None in roles:
        raise InvalidArgument(
            "roles holds MODEL_ROLE_UNSPECIFIED or a role this service does not know",
            violations=[FieldViolation("roles", "must be a ModelRole other than MODEL_ROLE_UNSPECIFIED")],
        )
    return tuple(sorted({r.name for r in roles if r is not None}))


# -- QueryAuditEvents -------------------------------------------------------------------------


def _event_types(names: Sequence[str]) -> frozenset[str]:
    for name in names:
        if name not in EVENT_TYPES:
            raise UnknownEventType(
                "an event type is not a field of skm.events.v1.Event.payload", metadata={"event_type": name[:200]}
            )
    return frozenset(names)


def _micros(time: datetime) -> int:
    return (time - _EPOCH) // _MICROSECOND


def _micros_or_none(time: datetime | None) -> int | None:
    return None if time is None else _micros(time)


def _time_of(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _digest(*filter_: Any) -> str:
    canonical = json.dumps(filter_, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _token_of(scope: str, time: datetime, event_id: str, end: datetime | None) -> str:
    body = [scope, _micros(time), event_id, _micros_or_none(end)]
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def _position_of(token: str, scope: str) -> tuple[tuple[datetime, str] | None, datetime | None]:
    """The (event time, event id) a token continues after, and the end it froze (None when
    the request sets its own); (None, None) without a token."""
    if not token:
        return None, None
    try:
        issued_for, micros, event_id, end = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if (
        not isinstance(issued_for, str)
        or type(micros) is not int
        or not isinstance(event_id, str)
        or (end is not None and type(end) is not int)
    ):
        raise InvalidPageToken("page_token is not one this service issued")
    if issued_for != scope:
        raise InvalidPageToken("page_token was issued for another filter")
    try:
        return (_time_of(micros), event_id), None if end is None else _time_of(end)
    except OverflowError:
        raise InvalidPageToken("page_token is not one this service issued") from None
