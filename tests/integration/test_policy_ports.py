"""One behaviour suite per port of svc_policy, run over every implementation of it: the
in-memory ones the unit tests use (tests/support/policy_memory.py) and the real adapters
(PostgresPolicyStore on PostgreSQL, OpenFgaAuthorizer on OpenFGA). What passes here for
both is what a unit test over the fake may rely on, as openfga's pkg/storage/test suite
holds every storage backend to one behaviour.

Each test gets empty state of its own: a fresh PostgreSQL database, a fresh OpenFGA store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from skm_runtime.access import AccessCheck, Decision, HeldState, Outcome, Payload, Principal, Verdict
from skm_stack import RunningStack
from svc_policy.adapters.openfga import MODEL_JSON, OpenFgaAuthorizer, bootstrap
from svc_policy.adapters.postgres import PostgresPolicyStore
from svc_policy.errors import InvalidCheck, InvalidPageToken, InvalidRelationship, TooManyRelationships
from svc_policy.model import BlockedAction, Condition, Relationship
from svc_policy.ports import Authorizer, BlockedActionStore
from tests.support.databases import fresh_database
from tests.support.policy_memory import MemoryAuthorizer, MemoryBlockedActionStore

T1, T2 = "tenants/t1", "tenants/t2"
EPOCH = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
FIXTURE = yaml.safe_load((MODEL_JSON.parent / "model.fga.yaml").read_text())


# -- the BlockedActionStore port ----------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, stack: RunningStack) -> AsyncIterator[BlockedActionStore]:
    if request.param == "memory":
        yield MemoryBlockedActionStore()
        return
    async with fresh_database(stack, "skm_ports") as dsn:
        postgres = await PostgresPolicyStore.open(dsn)
        try:
            yield postgres
        finally:
            await postgres.close()


def action(
    n: int,
    *,
    tenant: str = T1,
    request_id: str = "",
    session: str = "",
    state: HeldState = HeldState.PENDING,
    created: timedelta = timedelta(),
    expires: timedelta = timedelta(hours=1),
) -> BlockedAction:
    """Entry n of `tenant`, held at EPOCH + `created`, expiring `expires` after that."""
    name = f"{tenant}/blockedActions/a{n:03d}"
    check = AccessCheck(f"user:{tenant}/users/mike", "can_execute", f"tool:{tenant}/tools/code")
    at = EPOCH + created
    return BlockedAction(
        name=name,
        request_id=request_id or f"r{n}",
        principal=Principal(tenant, f"{tenant}/users/mike", ("member",)),
        check=check,
        decision=Decision(Verdict.REQUIRES_APPROVAL, "HIGH_RISK_TOOL_NEEDS_APPROVAL", f"d{n}", name),
        payload=Payload("type.googleapis.com/google.protobuf.StringValue", b"\n\x02hi"),
        summary=f"entry {n}",
        session=session,
        state=state,
        create_time=at,
        update_time=at,
        expire_time=at + expires,
    )


def moved(
    before: BlockedAction, state: HeldState, by: timedelta = timedelta(seconds=1), **fields: Any
) -> BlockedAction:
    return dataclasses.replace(before, state=state, update_time=before.update_time + by, **fields)


async def test_a_held_action_reads_back_as_held(store: BlockedActionStore) -> None:
    held = action(1, session=f"{T1}/sessions/s1")
    assert await store.hold(held) == held
    assert await store.get(held.name) == held
    assert await store.get(f"{T1}/blockedActions/none") is None


async def test_holding_is_idempotent_by_tenant_and_request_id(store: BlockedActionStore) -> None:
    first = await store.hold(action(1, request_id="same"))
    assert await store.hold(action(2, request_id="same")) == first
    assert await store.get(action(2).name) is None
    other_tenant = action(3, tenant=T2, request_id="same")
    assert await store.hold(other_tenant) == other_tenant


async def _names(
    store: BlockedActionStore, tenant: str = T1, states: Sequence[str] = (), session: str = "", size: int = 2
) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        page, token = await store.list_page(tenant, states, session, size, token)
        assert len(page) <= size
        names += [a.name for a in page]
        if not token:
            return names


async def test_a_listing_is_oldest_first_page_by_page(store: BlockedActionStore) -> None:
    # Held out of order; entries 2 and 3 at the same time, ordered by name.
    for n, seconds in ((1, 30), (3, 10), (2, 10), (4, 0), (5, 20)):
        await store.hold(action(n, created=timedelta(seconds=seconds)))
    await store.hold(action(9, tenant=T2))
    assert await _names(store) == [action(n).name for n in (4, 2, 3, 5, 1)]
    page, token = await store.list_page(T1, [], "", 5, "")
    assert (len(page), token) == (5, "")


async def test_a_listing_filters_by_state_and_session(store: BlockedActionStore) -> None:
    a = await store.hold(action(1, session=f"{T1}/sessions/x"))
    b = await store.hold(action(2, created=timedelta(seconds=1)))
    c = await store.hold(action(3, session=f"{T1}/sessions/x", created=timedelta(seconds=2)))
    assert await store.save_transition(b, moved(b, HeldState.APPROVED))
    assert await store.save_transition(c, moved(c, HeldState.REJECTED))
    assert await _names(store, states=["PENDING"]) == [a.name]
    assert await _names(store, states=["APPROVED", "REJECTED"]) == [b.name, c.name]
    assert await _names(store, session=f"{T1}/sessions/x") == [a.name, c.name]
    assert await _names(store, states=["REJECTED"], session=f"{T1}/sessions/x") == [c.name]
    assert await _names(store, states=["EXECUTED"]) == []


async def test_a_page_token_it_did_not_issue_is_refused(store: BlockedActionStore) -> None:
    with pytest.raises(InvalidPageToken):
        await store.list_page(T1, [], "", 10, "not-a-token")


async def test_a_transition_is_a_compare_and_set(store: BlockedActionStore) -> None:
    held = await store.hold(action(1))
    approved = moved(held, HeldState.APPROVED, resolver=f"{T1}/users/olga", resolve_time=EPOCH, note="ok")
    assert await store.save_transition(held, approved)
    assert await store.get(held.name) == approved
    # A writer that read the entry before the approval loses.
    assert not await store.save_transition(held, moved(held, HeldState.REJECTED, by=timedelta(seconds=2)))
    # So does one with the right state but another update time.
    stale = dataclasses.replace(approved, update_time=approved.update_time + timedelta(microseconds=1))
    assert not await store.save_transition(stale, moved(approved, HeldState.CANCELLED))
    assert await store.get(held.name) == approved
    claimed = moved(approved, HeldState.EXECUTING, claim_id="c1")
    assert await store.save_transition(approved, claimed)
    done = moved(claimed, HeldState.EXECUTED, outcome=Outcome(False, "EXIT_1"))
    assert await store.save_transition(claimed, done)
    assert await store.get(held.name) == done
    assert not await store.save_transition(action(2), moved(action(2), HeldState.APPROVED))


async def test_expiring_lists_due_pending_and_approved_entries_soonest_first(store: BlockedActionStore) -> None:
    due_late = await store.hold(action(1, expires=timedelta(minutes=30)))
    due_soon = await store.hold(action(2, expires=timedelta(minutes=10)))
    approved = await store.hold(action(3, tenant=T2, expires=timedelta(minutes=20)))
    assert await store.save_transition(approved, approved := moved(approved, HeldState.APPROVED))
    rejected = await store.hold(action(4, expires=timedelta(minutes=5)))
    assert await store.save_transition(rejected, moved(rejected, HeldState.REJECTED))
    await store.hold(action(5, expires=timedelta(hours=2)))
    now = EPOCH + timedelta(minutes=30)
    assert await store.expiring(now, 10) == [due_soon, approved, due_late]
    assert await store.expiring(now, 2) == [due_soon, approved]
    assert await store.expiring(EPOCH, 10) == []


async def _next(feed: AsyncIterator[BlockedAction]) -> BlockedAction:
    return await asyncio.wait_for(anext(feed), 5)


async def test_a_watch_delivers_later_changes_of_the_named_entries(store: BlockedActionStore) -> None:
    watched, other = await store.hold(action(1)), await store.hold(action(2))
    async with store.watch([watched.name]) as feed:
        assert await store.save_transition(other, moved(other, HeldState.APPROVED))
        approved = moved(watched, HeldState.APPROVED)
        assert await store.save_transition(watched, approved)
        assert await _next(feed) == approved
        cancelled = moved(approved, HeldState.CANCELLED)
        assert await store.save_transition(approved, cancelled)
        assert await _next(feed) == cancelled


async def test_a_tenant_watch_delivers_that_tenants_holds_and_changes(store: BlockedActionStore) -> None:
    async with store.watch([f"{T1}/*"]) as feed:
        await store.hold(action(9, tenant=T2))
        held = await store.hold(action(1))
        assert await _next(feed) == held
        rejected = moved(held, HeldState.REJECTED)
        assert await store.save_transition(held, rejected)
        assert await _next(feed) == rejected


# -- the Authorizer port ------------------------------------------------------------------


@pytest.fixture(params=["memory", "openfga"])
async def authorizer(request: pytest.FixtureRequest, stack: RunningStack) -> AsyncIterator[Authorizer]:
    if request.param == "memory":
        yield MemoryAuthorizer()
        return
    token = stack.openfga_token_file.read_text().strip()
    ids = await bootstrap(stack.openfga_api_url, token, f"skm-ports-{uuid.uuid4().hex[:12]}", MODEL_JSON)
    async with OpenFgaAuthorizer(stack.openfga_api_url, token, *ids) as openfga:
        yield openfga


TOOL = "tool:tenants/t1/tools/web_search"
HELPER, RESEARCHER = "persona:tenants/t1/personas/helper", "persona:tenants/t1/personas/researcher"
CAPPED = Relationship(RESEARCHER, "over_cost_ceiling", TOOL, Condition("cost_above_ceiling", {"ceiling_usd": 0.05}))
GRANTS = [Relationship(f"persona:tenants/t1/personas/p{n}", "persona_user", TOOL) for n in range(5)]


def _relationship(item: dict[str, Any]) -> Relationship:
    condition = item.get("condition")
    return Relationship(
        item["user"],
        item["relation"],
        item["object"],
        Condition(condition["name"], condition.get("context", {})) if condition else None,
    )


async def _read_all(authorizer: Authorizer, subject: str, relation: str, object_: str) -> list[Relationship]:
    found: list[Relationship] = []
    token = ""
    for _ in range(100):
        page, token = await authorizer.read(subject, relation, object_, 2, token)
        assert len(page) <= 2
        found += page
        if not token:
            return sorted(found, key=repr)
    raise AssertionError("the pages never ended")


def _sorted(relationships: Sequence[Relationship]) -> list[Relationship]:
    return sorted(relationships, key=repr)


async def test_the_model_tests_hold(authorizer: Authorizer) -> None:
    """Every check assertion of deploy/openfga/model.fga.yaml, on its tuples."""
    tuples = [_relationship(item) for item in FIXTURE["tuples"]]
    for start in range(0, len(tuples), 100):
        await authorizer.write(tuples[start : start + 100])
    checks = [
        (AccessCheck(item["user"], relation, item["object"], item.get("context", {})), expected)
        for test in FIXTURE["tests"]
        for item in test.get("check", [])
        for relation, expected in item["assertions"].items()
    ]
    answers = await authorizer.check([check for check, _ in checks], fresh=False)
    assert [(check, answer) for (check, _), answer in zip(checks, answers, strict=True)] == checks


async def test_the_model_defines_the_same_relations(authorizer: Authorizer) -> None:
    assert authorizer.defines("tool", "can_execute")
    assert authorizer.defines("tenant", "member")
    assert not authorizer.defines("tool", "member")
    assert not authorizer.defines("rocket", "can_execute")


async def test_a_condition_lacking_its_parameters_is_not_met(authorizer: Authorizer) -> None:
    await authorizer.write([CAPPED, Relationship(RESEARCHER, "persona_user", TOOL)])
    questions = ("over_cost_ceiling", "can_execute", "persona_user")
    answers = await authorizer.check([AccessCheck(RESEARCHER, q, TOOL) for q in questions], fresh=True)
    assert answers == [False, False, True]
    priced = await authorizer.check(
        [AccessCheck(RESEARCHER, q, TOOL, {"cost_usd": 0.01}) for q in questions], fresh=True
    )
    assert priced == [False, True, True]


async def test_a_question_the_model_cannot_express_is_refused(authorizer: Authorizer) -> None:
    with pytest.raises(InvalidCheck):
        await authorizer.check([AccessCheck(RESEARCHER, "can_fly", TOOL)], fresh=False)
    with pytest.raises(InvalidCheck):
        await authorizer.check([AccessCheck(RESEARCHER, "can_execute", TOOL, {"cost_usd": "cheap"})], fresh=False)


async def test_a_write_is_all_or_none(authorizer: Authorizer) -> None:
    for bad in (
        Relationship("user:tenants/t1/users/u", "tenant", TOOL),  # the model admits only a tenant there
        Relationship(HELPER, "can_fly", TOOL),
        Relationship(HELPER, "can_execute", TOOL),  # computed, not written
        Relationship(RESEARCHER, "over_cost_ceiling", TOOL),  # lacks its condition
    ):
        with pytest.raises(InvalidRelationship):
            await authorizer.write([GRANTS[0], bad])
    assert await _read_all(authorizer, "", "", TOOL) == []
    with pytest.raises(TooManyRelationships):
        await authorizer.write(
            [Relationship(f"user:tenants/t1/users/u{n}", "member", "tenant:tenants/t1") for n in range(101)]
        )


async def test_written_relationships_read_back_page_by_page(authorizer: Authorizer) -> None:
    tenancy = Relationship("tenant:tenants/t1", "tenant", TOOL)
    member = Relationship("user:tenants/t1/users/mia", "member", "tenant:tenants/t1")
    await authorizer.write([*GRANTS, CAPPED, tenancy, member])
    assert await _read_all(authorizer, "", "", TOOL) == _sorted([*GRANTS, CAPPED, tenancy])
    assert await _read_all(authorizer, "", "persona_user", TOOL) == _sorted(GRANTS)
    assert await _read_all(authorizer, RESEARCHER, "", TOOL) == [CAPPED]
    assert await _read_all(authorizer, RESEARCHER, "", "tool:") == [CAPPED]
    assert await _read_all(authorizer, "", "", "tool:") == _sorted([*GRANTS, CAPPED, tenancy])
    assert await _read_all(authorizer, "", "", "tenant:") == [member]


async def test_write_and_delete_are_idempotent(authorizer: Authorizer) -> None:
    await authorizer.write(GRANTS[:2])
    await authorizer.write([*GRANTS[:3], GRANTS[2]])  # existing ones and a duplicate in one request
    await authorizer.delete([GRANTS[0], GRANTS[4]])  # GRANTS[4] was never written
    await authorizer.delete([GRANTS[0]])
    assert await _read_all(authorizer, "", "", TOOL) == _sorted(GRANTS[1:3])


async def test_a_delete_ignores_the_condition(authorizer: Authorizer) -> None:
    await authorizer.write([CAPPED])
    await authorizer.delete([Relationship(CAPPED.subject, CAPPED.relation, CAPPED.object)])
    assert await _read_all(authorizer, "", "", TOOL) == []


async def test_a_relationship_is_not_rewritten_with_another_condition(authorizer: Authorizer) -> None:
    await authorizer.write([CAPPED])
    await authorizer.write([CAPPED])
    with pytest.raises(InvalidRelationship):
        await authorizer.write(
            [dataclasses.replace(CAPPED, condition=Condition("cost_above_ceiling", {"ceiling_usd": 1.0}))]
        )
    assert await _read_all(authorizer, "", "", TOOL) == [CAPPED]


async def test_a_userset_reaches_its_members(authorizer: Authorizer) -> None:
    budget = "model_budget:tenants/t1/modelBudgets/primary"
    await authorizer.write(
        [
            Relationship("user:tenants/t1/users/ada", "admin", "tenant:tenants/t1"),
            Relationship("tenant:tenants/t1#member", "spender", budget),
        ]
    )
    ask = [AccessCheck(f"user:tenants/t1/users/{u}", "can_spend", budget) for u in ("ada", "nils")]
    assert await authorizer.check(ask, fresh=True) == [True, False]
    await authorizer.delete([Relationship("user:tenants/t1/users/ada", "admin", "tenant:tenants/t1")])
    assert await authorizer.check(ask, fresh=True) == [False, False]
