"""Rate limits as token buckets in Redis, one per tenant and one per user, spent from local leases.

A bucket holds up to `burst` calls and refills at `rate` per second. Every process that admits
public calls (each copy of each service) shares each bucket in Redis, but a call does not go to
Redis: the process leases a few tokens of a bucket at once (one Lua call for all the buckets it
lacks tokens in) and spends them locally. A call is let through when every bucket of it has a
leased token here, and then takes one from each (all or none: a user over their limit does not
spend their tenant's budget); when one has none after asking Redis, the call is refused, naming
the first such bucket and the seconds until it holds a token again.

The accounting never lets more through than one bucket would, across all copies: a lease is
taken out of the bucket in Redis at once, and Redis caps its own tokens at `burst` less every
live lease of every copy (spent or not, since Redis does not see what a copy spent), with each
lease's expiry taken into account as the bucket refills. So:
- under one process it is exact: the process simulates the bucket with every call it
  let through, and while no other copy touched the bucket since its last lease, that
  simulation, not Redis's conservative figure, is what the bucket holds when it leases again
  (the N+1th call of a burst of N is refused, and a client pacing itself at the rate is not);
- with several copies, another copy's lease keeps at most its size from the others, until
  that copy leases again or the lease expires (`lease_seconds`). A lease is at most
  `lease_tokens` and at most a tenth of the bucket's burst (one token when that is less than
  one). Tokens of an expired lease are forfeit, as if spent, until their copy hands back the
  ones it did not spend when it next leases from that bucket.
The copies' clocks must agree (time since the epoch is what Redis compares), as refills
already require.

When Redis cannot answer, calls are let through (and logged): a broken rate limiter must not
take the platform down; authorization, which does fail closed, is not affected.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("skm.admission.ratelimit")

# KEYS: one hash per bucket; fields t (tokens in Redis), s (when t was right), v (version,
# changed by every lease), and per copy c: h:c (its lease's size) and x:c (the lease's expiry).
# ARGV: now, the copy's id, the lease's seconds, then per bucket: rate, burst, tokens wanted,
# tokens the copy hands back, its own figure for the bucket (tokens including those it holds)
# and the version that figure was taken from ("" when it has none).
# Returns per bucket: tokens leased, the bucket's tokens before that (all of them but the
# other copies' leases), the new version, and the cap (burst less the other copies' leases).
_LEASE = """
local now, me, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  local a = 3 + (i - 1) * 6
  local rate, burst, want = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local back, mine, seen = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), ARGV[a + 6]
  local fields = redis.call('HGETALL', key)
  local t, s, v = nil, nil, ''
  local size, expiry = {}, {}
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    if name == 't' then t = tonumber(value)
    elseif name == 's' then s = tonumber(value)
    elseif name == 'v' then v = value
    elseif string.sub(name, 1, 2) == 'h:' then size[string.sub(name, 3)] = tonumber(value)
    elseif string.sub(name, 1, 2) == 'x:' then expiry[string.sub(name, 3)] = tonumber(value)
    end
  end
  if t == nil or s == nil then t = burst; s = now end
  -- Refill from s to now; the cap rises as leases expire on the way.
  local points = {}
  for id, x in pairs(expiry) do
    if x > s and x < now then points[#points + 1] = x end
  end
  table.sort(points)
  points[#points + 1] = now
  local from = s
  for _, p in ipairs(points) do
    local held = 0
    for id, x in pairs(expiry) do
      if x >= p then held = held + (size[id] or 0) end
    end
    if p > from then t = math.min(burst - held, t + (p - from) * rate) end
    from = math.max(from, p)
  end
  local others = 0
  for id, x in pairs(expiry) do
    if id ~= me then
      if x > now then others = others + (size[id] or 0)
      else redis.call('HDEL', key, 'h:' .. id, 'x:' .. id) end
    end
  end
  local cap = burst - others
  local level
  if seen ~= '' and seen == v then
    level = math.min(cap, mine)
  else
    level = math.min(cap, math.max(t, 0) + back)
  end
  local granted = 0
  if level >= 1 then granted = math.min(want, math.floor(level)) end
  local version = tostring((tonumber(v) or 0) + 1)
  redis.call('HSET', key, 't', tostring(level - granted), 's', tostring(now), 'v', version)
  if granted > 0 then
    redis.call('HSET', key, 'h:' .. me, granted, 'x:' .. me, tostring(now + ttl))
  else
    redis.call('HDEL', key, 'h:' .. me, 'x:' .. me)
  end
  redis.call('PEXPIRE', key, math.ceil(math.max(burst / rate, ttl) * 1000) + 1000)
  out[#out + 1] = granted
  out[#out + 1] = tostring(level)
  out[#out + 1] = version
  out[#out + 1] = tostring(cap)
end
return out
"""

# A lease is at most this share of a bucket's burst, so that one copy cannot hold it all.
_LEASE_SHARE = 0.1
# Buckets this process keeps figures for (least recently used out first: a dropped lease's
# tokens are forfeit after its expiry, which only ever refuses more, never less).
_MAX_BUCKETS = 100_000
# Renewals one call may make when other calls of the process spend what it leased meanwhile.
_ATTEMPTS = 3


class _Lease:
    """This process's share of one bucket and its own figure for the whole bucket."""

    __slots__ = ("cap", "expires", "held", "level", "lock", "rate", "stamp", "version")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.held = 0  # leased tokens not spent yet
        self.level = 0.0  # the bucket's tokens at `stamp` (the held ones included)
        self.cap = 0.0  # burst less the other copies' leases, when last leased
        self.stamp = 0.0
        self.expires = 0.0
        self.version = ""
        self.lock = asyncio.Lock()

    def usable(self, now: float) -> bool:
        return self.held >= 1 and now < self.expires

    def refilled(self, now: float) -> float:
        return min(self.cap, self.level + max(0.0, now - self.stamp) * self.rate)

    def spend(self, now: float) -> None:
        self.level = self.refilled(now) - 1
        self.stamp = now
        self.held -= 1


class RedisRateLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        limits: Mapping[str, tuple[float, float]],
        *,
        lease_tokens: int = 20,
        lease_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`limits`: per scope ("tenant", "user"), (calls per second, burst). A lease takes at
        most `lease_tokens` (1: every call asks Redis) for at most `lease_seconds`."""
        if lease_tokens < 1 or lease_seconds <= 0:
            raise ValueError("a lease is at least one token for some time")
        self._redis = client
        self._limits = dict(limits)
        self._want = {
            scope: max(1, min(lease_tokens, math.floor(burst * _LEASE_SHARE))) for scope, (_, burst) in limits.items()
        }
        self._ttl = lease_seconds
        self._clock = clock
        self._id = uuid.uuid4().hex[:16]
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._lease = client.register_script(_LEASE)

    @classmethod
    def connect(
        cls, url: str, limits: Mapping[str, tuple[float, float]], *, lease_tokens: int = 20, lease_seconds: float = 1.0
    ) -> RedisRateLimiter:
        client = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, limits, lease_tokens=lease_tokens, lease_seconds=lease_seconds)

    async def close(self) -> None:
        await self._redis.aclose()

    async def take(self, buckets: Sequence[tuple[str, str]]) -> tuple[str, float] | None:
        """See the RateLimiter port. `buckets` come in one fixed order of scopes (tenant, then
        user), which is also the order their leases are renewed in, so renewals never deadlock."""
        # One hash tag for all keys of a take (the first bucket's key: the tenant), so that
        # the script's keys share a slot and it also runs on a Redis Cluster.
        tag = buckets[0][1] if buckets else ""
        keys = [f"skm:admission:rate:{{{tag}}}:{scope}:{key}" for scope, key in buckets]
        leases = [self._lease_of(key, scope) for key, (scope, _) in zip(keys, buckets, strict=True)]
        now = self._clock()
        if all(lease.usable(now) for lease in leases):
            for lease in leases:
                lease.spend(now)
            return None
        return await self._renew_and_take(buckets, keys, leases)

    def _lease_of(self, key: str, scope: str) -> _Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease(self._limits[scope][0])
            if len(self._leases) > _MAX_BUCKETS:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(key)
        return lease

    async def _renew_and_take(
        self, buckets: Sequence[tuple[str, str]], keys: Sequence[str], leases: Sequence[_Lease]
    ) -> tuple[str, float] | None:
        # Other calls of this process run while this one waits on Redis and may spend what
        # it leased; it asks again then, a few times at most.
        for _ in range(_ATTEMPTS):
            locked: list[_Lease] = []
            try:
                for lease in leases:
                    if not lease.usable(self._clock()):
                        await lease.lock.acquire()
                        locked.append(lease)
                # Another call may have renewed a lease while this one waited for its lock.
                now = self._clock()
                stale = [i for i, lease in enumerate(leases) if lease in locked and not lease.usable(now)]
                if stale and not await self._renew(buckets, keys, leases, stale):
                    return None  # Redis cannot answer: let the call through
                now = self._clock()
                for index in stale:
                    lease = leases[index]
                    if not lease.usable(now):
                        return buckets[index][0], max(1.0 - lease.refilled(now), 0.0) / lease.rate
                if all(lease.usable(now) for lease in leases):
                    for lease in leases:
                        lease.spend(now)
                    return None
            finally:
                for lease in locked:
                    lease.lock.release()
        now = self._clock()
        for (scope, _), lease in zip(buckets, leases, strict=True):
            if not lease.usable(now):
                return scope, 1.0 / lease.rate
        for lease in leases:
            lease.spend(now)
        return None

    async def _renew(
        self, buckets: Sequence[tuple[str, str]], keys: Sequence[str], leases: Sequence[_Lease], which: Sequence[int]
    ) -> bool:
        """Hand back what the leases `which` hold and lease again, all in one round trip."""
        now = self._clock()
        args: list[float | str] = [now, self._id, self._ttl]
        for index in which:
            lease, scope = leases[index], buckets[index][0]
            rate, burst = self._limits[scope]
            args += (rate, burst, self._want[scope], lease.held, lease.refilled(now), lease.version)
        try:
            answer = await self._lease(keys=[keys[i] for i in which], args=args)
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable; call let through", extra={"fields": {"error": type(exc).__name__}})
            return False
        for n, index in enumerate(which):
            granted, level, version, cap = answer[4 * n : 4 * n + 4]
            lease = leases[index]
            lease.held = int(granted)
            lease.level = float(level)
            lease.version = version.decode() if isinstance(version, bytes) else str(version)
            lease.cap = float(cap)
            lease.stamp = now
            lease.expires = now + self._ttl
        return True
