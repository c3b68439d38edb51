"""Domain errors that a service core raises, and the canonical code each maps to.

Cores import this module and never grpc: the server's error interceptor
(`skm_runtime.interceptors`) turns an `SkmError` into a gRPC status carrying one
`google.rpc.ErrorInfo` (and a `google.rpc.BadRequest` when there are field violations).

A service declares its errors as subclasses that fix `code`, `reason` and `domain`::

    class SessionNotFound(SkmError):
        code = Code.NOT_FOUND
        reason = "SESSION_NOT_FOUND"
        domain = "conversation.skm"

    raise SessionNotFound("session not found", metadata={"session": name})

`reason` is the value of the package's `ErrorReason` enum without its `ERROR_REASON_` prefix.
Dynamic values travel in `metadata`, never in `reason`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Code(enum.Enum):
    """The canonical status codes (names and numbers as in google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field: its path (`turn.text`) and what is wrong with it."""

    field: str
    description: str


class SkmError(Exception):
    """Base of every error a core may raise on purpose.

    Subclasses set the class attributes; the constructor takes what varies per raise.
    """

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"
    domain: str = "runtime.skm"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        # Only meaningful with RESOURCE_EXHAUSTED or UNAVAILABLE; sent as google.rpc.RetryInfo.
        self.retry_after_seconds = retry_after_seconds


class MalformedRequest(SkmError):
    """The request bytes are not a valid protobuf message of the method's request type."""

    code = Code.INVALID_ARGUMENT
    reason = "MALFORMED_REQUEST"


class NotImplementedYet(SkmError):
    """The RPC is part of the contract but its service does not serve it yet."""

    code = Code.UNIMPLEMENTED
    reason = "NOT_IMPLEMENTED"


class InvalidArgument(SkmError):
    """Generic field validation failure, raised with one or more `FieldViolation`s."""

    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class ServiceUnavailable(SkmError):
    """A dependency (a store, another service) cannot be reached; the caller may retry."""

    code = Code.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class MeshCallerUnverified(SkmError):
    """A call reached a service of the mesh with neither a signed principal nor a signed
    caller (skm_runtime.principal), or with ones that do not verify, and is no public call
    its owner admits by token."""

    code = Code.UNAUTHENTICATED
    reason = "MESH_CALLER_UNVERIFIED"
