"""The policy client: svc_policy's Check over gRPC, with a short-lived decision cache in the caller.

Every service that must have a verdict before it acts (a memory write, a tool call, a
provisioning step, the admission of a public RPC) asks through this one wrapper. It imports
only grpc, the generated contract and redis-py, never svc_policy's server code.

What is remembered, and what never is:
- ALLOW and DENY are reused for `ttl` seconds (1 s by default; 0 turns the cache off) per
  (subject, relation, object, context); the context is compared by its deterministic
  protobuf encoding, so key order does not matter.
- REQUIRES_APPROVAL (it may have held an action) and every failure are never remembered:
  each is asked again on the next call. Failures are raised as `grpc.aio.AioRpcError`, so the
  caller refuses the action (fail closed); no cached verdict stands in for an outage.
- A Check with CONSISTENCY_HIGHER_CONSISTENCY never reads the cache (its answer is
  remembered for the others).
- A reused verdict is returned with the decision id svc_policy gave it when it decided.
  svc_policy audited that decision then (a PolicyDecided event with that id); a reuse is
  not audited again, so the audit trail holds, per decision id, the decision that was
  reused, whoever asked again within the TTL.

Invalidation across processes: svc_policy publishes on the Redis channel `CHANGES_CHANNEL`
after every relationship write or delete it makes, once OpenFGA has stored it and before
the write call returns; the message names the tenant. Each client follows that channel in
the background and, when a message arrives, stops reusing every verdict it remembered about
that tenant's objects (a message naming no tenant it can read: every tenant's). The scope is
safe because no relationship may reach across tenants (svc_policy refuses such writes and
denies such checks as CROSS_TENANT), so a change in one tenant cannot alter another's
decisions; and it keeps one tenant's churn (every new session writes its owner) from
emptying the cache for all. The cache is used only while the client
is subscribed: until Redis has confirmed its subscription, while it is lost, and when Redis
has not answered the client's heartbeat (a PING every `heartbeat` seconds) for
`3 * heartbeat` seconds, every call goes to svc_policy, and nothing answered meanwhile is
kept. The client resubscribes in the background and starts from an empty cache each time.

The staleness bound of a reused verdict, precisely:
1. Never older than `ttl`: an entry's lifetime starts when its Check was sent, not when the
   answer came back.
2. A relationship change made through svc_policy ends the reuse of every verdict about its
   tenant remembered before it as soon as its message reaches the client (one Redis
   publish, typically well under a millisecond after the write call returned). A Check that
   was in flight when the message arrived is answered but not remembered.
3. The answer svc_policy gave may itself be from svc_policy's decision cache. The process
   that made the change has dropped that tenant's decisions before publishing; other
   svc_policy processes drop theirs on the same message while they are subscribed, and otherwise within
   SKM_POLICY_CACHE_TTL_SECONDS. So with every process subscribed the bound is 2; in the
   worst case (a svc_policy process cut off from Redis) it is `ttl` plus
   SKM_POLICY_CACHE_TTL_SECONDS.
4. Changes that do not go through svc_policy (written to OpenFGA directly), and changes
   whose message could not be published (svc_policy cut off from Redis: the write still
   succeeds and a warning is logged), are announced to nobody: the bound is then `ttl` plus
   SKM_POLICY_CACHE_TTL_SECONDS.

Usage: `client = PolicyClient(channel, redis_url=...)`, then `await client.check(request,
metadata=...)` from a running event loop (the subscription starts with the first call, or
with `start()`), and `await client.close()` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from skm.policy.v1 import access_pb2, policy_service_pb2, policy_service_pb2_grpc
from skm.type.v1 import policy_decision_pb2
from skm_runtime.policy_changes import CHANGES_CHANNEL, TenantChanges, changed_tenant, object_tenant

DEFAULT_TTL = 1.0
DEFAULT_HEARTBEAT = 1.0

log = logging.getLogger("skm.policy.client")

_REMEMBERED = frozenset({policy_decision_pb2.VERDICT_ALLOW, policy_decision_pb2.VERDICT_DENY})
_HIGHER = access_pb2.CONSISTENCY_HIGHER_CONSISTENCY
# (subject, relation, object, deterministic encoding of the context)
_Key = tuple[str, str, str, bytes]
# expires at (monotonic), verdict, reason, decision id, the tenant's generation then
_Entry = tuple[float, policy_decision_pb2.Verdict.ValueType, str, str, int]
Metadata = Sequence[tuple[str, str | bytes]]


class _Silent(Exception):
    """Redis stopped answering the heartbeat on the subscription's connection."""


class ChangeSubscription:
    """Follows CHANGES_CHANNEL in the background and calls `on_change(tenant)` for every
    message (`tenant` None: every tenant).

    `active` says whether every change published since the last `on_change` call would have
    reached it: Redis confirmed the subscription and has answered within `3 * heartbeat`
    seconds. Each (re)subscription calls `on_change` too, because what was published while
    not subscribed is unknown; so does losing the subscription.
    """

    def __init__(
        self, redis_url: str, on_change: Callable[[str | None], None], *, heartbeat: float = DEFAULT_HEARTBEAT
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be > 0")
        self._redis_url = redis_url
        self._on_change = on_change
        self._heartbeat = heartbeat
        self._subscribed = False
        self._heard = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._subscribed and time.monotonic() - self._heard < 3 * self._heartbeat

    def start(self) -> None:
        """Start following (from a running event loop); resubscribes on its own until `close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="policy-changes")

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _lost(self, why: str) -> None:
        if self._subscribed:
            log.warning(
                "policy changes not followed; remembered decisions are not used until resubscribed",
                extra={"fields": {"cause": why}},
            )
        self._subscribed = False
        self._on_change(None)

    async def _follow(self) -> None:
        # No retries inside redis-py: a broken connection must surface here at once, not be
        # mended silently while messages are lost.
        client = aioredis.from_url(
            self._redis_url,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        pause = 0.05
        try:
            while True:
                try:
                    await self._listen(client)
                except (RedisError, OSError, _Silent) as error:
                    if self._subscribed:
                        pause = 0.05
                    self._lost(type(error).__name__)
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(pause * 2, 2.0)
        finally:
            self._subscribed = False
            self._on_change(None)
            await client.aclose()

    async def _listen(self, client: aioredis.Redis) -> None:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(CHANGES_CHANNEL)
            pinged = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=self._heartbeat)
                now = time.monotonic()
                if message is not None:
                    self._heard = now
                    kind = message["type"]
                    if kind == "subscribe":
                        # Confirmed (also after redis-py reconnected by itself): whatever was
                        # published before is unknown, so nothing remembered before counts.
                        self._on_change(None)
                        self._subscribed = True
                    elif kind == "message":
                        self._on_change(changed_tenant(message["data"]))
                elif self._subscribed and now - self._heard >= 3 * self._heartbeat:
                    raise _Silent("no answer from Redis to the heartbeat")
                if now - pinged >= self._heartbeat:
                    pinged = now
                    await pubsub.ping()


class PolicyClient:
    """PolicyService.Check with an in-process decision cache that svc_policy's changes empty."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        redis_url: str,
        ttl: float = DEFAULT_TTL,
        max_entries: int = 10_000,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self._stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._ttl = ttl if redis_url else 0.0
        self._max_entries = max_entries
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()
        # Moved on by every change, so neither a remembered verdict nor the answer to a Check
        # sent before the change is used after it.
        self._changes_seen = TenantChanges()
        self._changes = ChangeSubscription(redis_url, self._forget, heartbeat=heartbeat)
        self._started = False

    @property
    def caching(self) -> bool:
        """Whether remembered verdicts may be used now (subscribed, and Redis heard from lately)."""
        return self._ttl > 0 and self._changes.active

    def start(self) -> None:
        """Start following svc_policy's changes (the first `check` does it otherwise)."""
        if not self._started and self._ttl > 0:
            self._started = True
            self._changes.start()

    def remembered(self, subject: str, relation: str, object_: str) -> policy_decision_pb2.PolicyDecision | None:
        """The verdict `check` would reuse for this question (no context, default
        consistency) without asking, or None: for callers that ask the same questions many
        times a second (admission), so that a reused verdict costs no request to build."""
        if not self._started or not self.caching:
            return None
        key = (subject, relation, object_, b"")
        entry = self._cache.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        if entry[4] != self._changes_seen.generation(object_tenant(object_)):
            return None
        self._cache.move_to_end(key)
        return policy_decision_pb2.PolicyDecision(verdict=entry[1], reason=entry[2], decision_id=entry[3])

    async def close(self) -> None:
        self._started = True  # never again
        await self._changes.close()
        self._forget()

    async def check(
        self,
        request: policy_service_pb2.CheckRequest,
        *,
        metadata: Metadata | None = None,
        rpc_timeout: float | None = None,
        also: Sequence[str] = (),
    ) -> policy_decision_pb2.PolicyDecision:
        """svc_policy's decision on `request`, or a verdict remembered for the same question.

        `also`: other relations of the same subject on the same object likely to be asked
        next (e.g. the other permissions a contract declares on a session); when svc_policy
        is asked, they go in the same round trip (BatchCheck) and their verdicts are
        remembered too. Each is a decision svc_policy makes and audits. Not with a `hold`.

        `rpc_timeout` is the gRPC deadline in seconds. Raises `grpc.aio.AioRpcError` when
        svc_policy does not answer (refuse the action)."""
        if not self._started:
            self.start()
        if not self.caching:
            return (await self._stub.Check(request, metadata=metadata, timeout=rpc_timeout)).decision
        question = request.check
        key = (
            question.subject,
            question.relation,
            question.object,
            question.context.SerializeToString(deterministic=True) if question.HasField("context") else b"",
        )
        sent = time.monotonic()
        tenant = object_tenant(question.object)
        generation = self._changes_seen.generation(tenant)
        if request.consistency != _HIGHER:
            entry = self._cache.get(key)
            if entry is not None:
                if entry[0] > sent and entry[4] == generation:
                    self._cache.move_to_end(key)
                    return policy_decision_pb2.PolicyDecision(verdict=entry[1], reason=entry[2], decision_id=entry[3])
                del self._cache[key]
        asked = [(question, key)]
        if not request.HasField("hold"):
            for relation in also:
                sibling = self._unknown(question, relation, key, sent, generation)
                if sibling is not None:
                    asked.append(sibling)
        if len(asked) == 1:
            decisions = [(await self._stub.Check(request, metadata=metadata, timeout=rpc_timeout)).decision]
        else:
            batch = policy_service_pb2.BatchCheckRequest(
                checks=[check for check, _ in asked], consistency=request.consistency
            )
            decisions = list((await self._stub.BatchCheck(batch, metadata=metadata, timeout=rpc_timeout)).decisions)
        if generation == self._changes_seen.generation(tenant) and tenant and self.caching:
            expires = sent + self._ttl
            for (_, asked_key), decision in zip(asked, decisions, strict=True):
                if decision.verdict in _REMEMBERED:
                    self._remember(
                        asked_key, (expires, decision.verdict, decision.reason, decision.decision_id, generation)
                    )
        return decisions[0]

    def _unknown(
        self, question: access_pb2.AccessCheck, relation: str, key: _Key, now: float, generation: int
    ) -> tuple[access_pb2.AccessCheck, _Key] | None:
        """The question for another relation on the same object, with its key; None when it
        is the question itself or a live verdict for it is remembered already."""
        sibling = (key[0], relation, key[2], key[3])
        entry = self._cache.get(sibling)
        if relation == question.relation or (entry is not None and entry[0] > now and entry[4] == generation):
            return None
        check = access_pb2.AccessCheck()
        check.CopyFrom(question)
        check.relation = relation
        return check, sibling

    def _remember(self, key: _Key, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _forget(self, tenant: str | None = None) -> None:
        self._changes_seen.changed(tenant)
        if tenant is None:
            self._cache.clear()
