"""Admission's rate limiter on a real Redis: tokens leased by a process and spent locally are
exact under one process, and never add up to more than the bucket across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from skm_runtime.ratelimit import RedisRateLimiter
from skm_stack import RunningStack

# A tenant's bucket large enough never to be the one that refuses.
_ROOMY = (1000.0, 1_000_000.0)


@pytest.fixture
async def limiters(stack_factory: Callable[..., RunningStack]) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    """Limiters ("processes that admit calls") on one fresh Redis, closed after the test."""
    redis = stack_factory(("redis",))
    made: list[RedisRateLimiter] = []

    def make(rate: float, burst: float, *, lease_tokens: int = 20, lease_seconds: float = 1.0) -> RedisRateLimiter:
        limits = {"tenant": _ROOMY, "user": (rate, burst)}
        limiter = RedisRateLimiter.connect(
            redis.redis_url, limits, lease_tokens=lease_tokens, lease_seconds=lease_seconds
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def _buckets() -> tuple[tuple[str, str], ...]:
    tenant = f"tenants/l{uuid.uuid4().hex[:8]}"
    return (("tenant", tenant), ("user", f"{tenant}/users/u"))


async def _until_refused(limiter: RedisRateLimiter, buckets: tuple[tuple[str, str], ...]) -> tuple[int, float]:
    """Calls let through before the first refusal, and that refusal's wait."""
    taken = 0
    while True:
        refused = await limiter.take(buckets)
        if refused is not None:
            assert refused[0] == "user"
            return taken, refused[1]
        taken += 1
        assert taken <= 10_000, "never refused"


async def test_one_process_lets_the_burst_through_and_refuses_the_next_call(
    limiters: Callable[..., RedisRateLimiter],
) -> None:
    limiter = limiters(0.001, 20.0, lease_tokens=5)
    taken, wait = await _until_refused(limiter, _buckets())
    assert taken == 20
    assert wait > 0


async def test_tokens_held_while_the_bucket_is_full_do_not_add_to_it(
    limiters: Callable[..., RedisRateLimiter],
) -> None:
    """A process leases 2 of 20 and spends one; while it holds the other, the bucket refills to
    full in Redis's view as much as in truth. After the refill, 20 calls pass, not 21."""
    limiter = limiters(0.5, 20.0, lease_tokens=20)
    buckets = _buckets()
    assert await limiter.take(buckets) is None
    await asyncio.sleep(2.5)  # at 0.5 a second the one spent token is back: the bucket is full
    taken, _ = await _until_refused(limiter, buckets)
    assert taken == 20


async def test_processes_sharing_a_bucket_never_get_more_than_it_holds(
    limiters: Callable[..., RedisRateLimiter],
) -> None:
    """Another process's lease (5 tokens) is all the others lose, and only while it lasts."""
    first, second = limiters(0.001, 50.0, lease_tokens=5), limiters(0.001, 50.0, lease_tokens=5)
    buckets = _buckets()
    assert await first.take(buckets) is None  # leases 5, spends 1
    taken, _ = await _until_refused(second, buckets)
    assert taken == 45
    rest, _ = await _until_refused(first, buckets)
    assert rest == 4
    assert 1 + rest + taken == 50


async def test_an_expired_lease_is_forfeit_until_its_process_hands_back_what_it_did_not_spend(
    limiters: Callable[..., RedisRateLimiter],
) -> None:
    first = limiters(0.001, 50.0, lease_tokens=5, lease_seconds=0.2)
    second = limiters(0.001, 50.0, lease_tokens=5)
    buckets = _buckets()
    assert await first.take(buckets) is None  # leases 5, spends 1, holds 4
    await asyncio.sleep(0.3)  # the lease expires: its 4 tokens may no longer be spent
    taken, _ = await _until_refused(second, buckets)
    assert taken == 45
    rest, _ = await _until_refused(first, buckets)  # hands back its 4, leases them again
    assert rest == 4
