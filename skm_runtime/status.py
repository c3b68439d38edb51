"""Between domain errors and the wire: `google.rpc.Status` with exactly one `ErrorInfo`.

Servers turn an `SkmError` into a status (`status_of`); clients and tests read it back
(`details_of`, `error_info_of`). The details travel in the `grpc-status-details-bin`
trailer, as every gRPC implementation expects.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # googleapis-common-protos ships no stubs

from skm_runtime.errors import SkmError

DETAILS_KEY = "grpc-status-details-bin"


def status_of(error: SkmError) -> status_pb2.Status:
    """The `google.rpc.Status` a client receives for this error."""
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=error.domain, metadata=error.metadata)]
    extra: list[Message] = []
    if error.violations:
        extra.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(datetime.timedelta(seconds=error.retry_after_seconds))
        extra.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for message in [*details, *extra]:
        holder = any_pb2.Any()
        holder.Pack(message)
        packed.append(holder)
    return status_pb2.Status(code=error.code.value, message=error.message, details=packed)


def trailers_of(status: status_pb2.Status) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata that carries the status details."""
    return ((DETAILS_KEY, status.SerializeToString()),)


def details_of(metadata: Iterable[Any] | None) -> status_pb2.Status | None:
    """Decode the status details from a call's trailing metadata, if any."""
    for key, value in metadata or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def error_info_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call (sync or asyncio client), or None when it has none."""
    trailing = error.trailing_metadata()
    status = details_of(trailing)
    if status is None:
        return None
    for holder in status.details:
        if holder.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            holder.Unpack(info)
            return info
    return None
