"""Listing and watching held actions through svc_policy's core, over in-memory ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import timedelta

import pytest

from skm_runtime.access import AccessCheck, HeldState, Hold
from svc_policy.errors import BlockedActionNotFound, InvalidPageToken, InvalidResourceName
from svc_policy.model import BlockedAction, Relationship
from tests.support.policy_memory import MemoryPolicy
from tests.unit.test_policy_core_holds import PAYLOAD, T, tenant_core, who

OLGA = who("olga")


@pytest.fixture
async def core() -> MemoryPolicy:
    """Tenant t1 of test_policy_core_holds, and tenant t2 where mike's runs of `code` are held too."""
    core = await tenant_core()
    t2 = "tenant:tenants/t2"
    await core.policy.write_relationships(
        "tenants/t2",
        [
            Relationship("user:tenants/t2/users/mike", "member", t2),
            Relationship(t2, "tenant", "tool:tenants/t2/tools/code"),
            Relationship(t2, "high_risk", "tool:tenants/t2/tools/code"),
        ],
    )
    return core


async def hold(core: MemoryPolicy, request_id: str, session: str = "", tenant: str = T) -> BlockedAction:
    """mike's run of the tenant's tool `code`, held; a second after the previous hold."""
    core.clock.advance(timedelta(seconds=1))
    decision = await core.policy.check(
        AccessCheck(f"user:{tenant}/users/mike", "can_execute", f"tool:{tenant}/tools/code"),
        fresh=False,
        hold=Hold(request_id, PAYLOAD, session=session),
        principal=who("mike", tenant),
    )
    return await core.policy.get_blocked(decision.blocked_action)


async def test_held_actions_are_listed_oldest_first_page_by_page(core: MemoryPolicy) -> None:
    held = [await hold(core, f"r{n}") for n in range(5)]
    names, token, pages = [], "", 0
    while True:
        page, token = await core.policy.list_blocked(T, [], "", 2, token)
        names += [action.name for action in page]
        pages += 1
        if not token:
            break
    assert (names, pages) == ([action.name for action in held], 3)


async def test_a_listing_filters_by_state_and_session(core: MemoryPolicy) -> None:
    first = await hold(core, "r1", f"{T}/sessions/a")
    second = await hold(core, "r2", f"{T}/sessions/b")
    third = await hold(core, "r3", f"{T}/sessions/a")
    await core.policy.approve(second.name, OLGA, "", "")
    await core.policy.reject(third.name, OLGA, "", "")

    async def names(states: list[HeldState], session: str = "") -> list[str]:
        page, _ = await core.policy.list_blocked(T, states, session, 0, "")
        return [action.name for action in page]

    assert await names([HeldState.PENDING]) == [first.name]
    assert await names([HeldState.APPROVED, HeldState.REJECTED]) == [second.name, third.name]
    assert await names([], f"{T}/sessions/a") == [first.name, third.name]
    assert await names([HeldState.EXECUTED]) == []
    other, _ = await core.policy.list_blocked("tenants/t2", [], "", 0, "")
    assert other == []


async def test_a_listing_refuses_what_it_did_not_issue(core: MemoryPolicy) -> None:
    with pytest.raises(InvalidPageToken):
        await core.policy.list_blocked(T, [], "", 10, "not-a-token")
    with pytest.raises(InvalidResourceName):
        await core.policy.list_blocked("t1", [], "", 10, "")


async def _next(feed: AsyncGenerator[BlockedAction, None]) -> BlockedAction:
    return await asyncio.wait_for(anext(feed), 1)


async def test_a_watch_of_named_entries_sends_the_resolved_ones_first(core: MemoryPolicy) -> None:
    decided, waiting = await hold(core, "r1"), await hold(core, "r2")
    await core.policy.reject(decided.name, OLGA, "", "")
    feed = core.policy.watch(T, [decided.name, waiting.name])
    try:
        assert (await _next(feed)).state is HeldState.REJECTED
        later = asyncio.ensure_future(_next(feed))
        await asyncio.sleep(0)
        approved = await core.policy.approve(waiting.name, OLGA, "", "")
        assert await later == approved
    finally:
        await feed.aclose()


async def test_a_tenant_watch_sends_resolutions_of_that_tenant_only(core: MemoryPolicy) -> None:
    feed = core.policy.watch(T, [])
    try:
        first = asyncio.ensure_future(_next(feed))
        await core.store.subscribed.wait()
        mine = await hold(core, "r1")  # a new PENDING entry is no resolution
        theirs = await hold(core, "r9", tenant="tenants/t2")
        await core.policy.cancel(theirs.name)
        cancelled = await core.policy.cancel(mine.name)
        assert await first == cancelled
    finally:
        await feed.aclose()


async def test_a_watch_of_another_tenants_entry_is_refused(core: MemoryPolicy) -> None:
    feed = core.policy.watch(T, ["tenants/t2/blockedActions/x"])
    with pytest.raises(BlockedActionNotFound):
        await anext(feed)
