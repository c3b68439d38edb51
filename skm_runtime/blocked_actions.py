"""Waiting for an operator's decision on an action svc_policy holds (skm.policy.v1.BlockedAction).

A service whose request svc_policy held (a Check with a hold answered REQUIRES_APPROVAL)
waits here until the entry leaves PENDING. The wait outlasts a lost stream and a restart of
svc_policy: it watches the entry (WatchBlockedActionResolutions), and whenever the watch
ends or breaks it looks at the entry (GetBlockedAction), since a resolution may have slipped
by meanwhile, then watches again after a backoff. It ends only with the resolved entry, with
GONE when the entry can never be resolved for this caller (svc_policy no longer has it,
NOT_FOUND, or refuses it to this caller in a way no retry changes: PERMISSION_DENIED,
UNAUTHENTICATED, INVALID_ARGUMENT, ...; reported to `on_watch_lost` first), or when the caller
cancels it. Only UNAVAILABLE, DEADLINE_EXCEEDED and other passing failures are waited out.

What the caller does next (claim, give up, tell its client) is its own business; so is how it
words a lost watch in its log.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from typing import Final

import grpc

from skm.policy.v1 import blocked_action_pb2, blocked_action_service_pb2, blocked_action_service_pb2_grpc

BlockedAction = blocked_action_pb2.BlockedAction
Metadata = Sequence[tuple[str, str | bytes]]
# While svc_policy cannot be reached, the wait looks again this often, doubling up to the
# maximum; a watch that lasted longer than the maximum starts the doubling over.
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0


class Gone(enum.Enum):
    """The entry never will be resolved for this caller: gone from svc_policy's store
    (NOT_FOUND), or refused to it for good."""

    GONE = "gone"


GONE: Final = Gone.GONE
# Answers no retry can change: the wait ends with GONE.
_FINAL = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Each look at the entry (GetBlockedAction) waits at most this long by default.
GET_TIMEOUT_SECONDS = 10.0


async def wait_resolved(
    blocked: blocked_action_service_pb2_grpc.BlockedActionServiceAsyncStub,
    name: str,
    *,
    metadata: Metadata | None = None,
    get_timeout: float | None = GET_TIMEOUT_SECONDS,
    first_backoff: float = FIRST_BACKOFF_SECONDS,
    max_backoff: float = MAX_BACKOFF_SECONDS,
    on_watch_lost: Callable[[grpc.StatusCode], None] | None = None,
) -> BlockedAction | Gone:
    """The entry `name` ("tenants/{tenant}/blockedActions/{id}") once it has left PENDING,
    or GONE.

    `metadata` goes with every call (the principal, where the caller has one); `get_timeout`
    bounds each GetBlockedAction (the watch itself has none). `on_watch_lost` hears of a watch
    that broke with a status other than NOT_FOUND or DEADLINE_EXCEEDED (a deadline is how a
    watch ends, not a loss), for the caller's log. Cancel the task to stop waiting: the
    watch in flight is cancelled with it, and the entry stays for the operator.
    """
    tenant = "/".join(name.split("/")[:2])
    request = blocked_action_service_pb2.WatchBlockedActionResolutionsRequest(parent=tenant, names=[name])
    loop = asyncio.get_running_loop()
    backoff = first_backoff
    while True:
        watched_since = loop.time()
        call = blocked.WatchBlockedActionResolutions(request, metadata=metadata)
        try:
            async for reply in call:
                action = reply.blocked_action
                if action.name == name and action.state != BlockedAction.STATE_PENDING:
                    return action
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED) and on_watch_lost is not None:
                on_watch_lost(code)
            if code in _FINAL:
                return GONE
        finally:
            call.cancel()
        # The stream ended or broke: a resolution may have slipped by; look, then watch again.
        try:
            got = await blocked.GetBlockedAction(
                blocked_action_service_pb2.GetBlockedActionRequest(name=name), metadata=metadata, timeout=get_timeout
            )
            if got.blocked_action.state != BlockedAction.STATE_PENDING:
                return got.blocked_action
        except grpc.aio.AioRpcError as error:
            if error.code() in _FINAL:
                if error.code() != grpc.StatusCode.NOT_FOUND and on_watch_lost is not None:
                    on_watch_lost(error.code())
                return GONE
        if loop.time() - watched_since > max_backoff:
            backoff = first_backoff  # the last watch lasted: no need to hold back
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
