"""One suite over both implementations of svc_analytics's Warehouse port: the in-memory one
the unit tests drive ingestion with, and ClickHouse (chdb, in this process). Then what only
the real one holds: the columns of each table, as decoded from real events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skm.events.v1 import event_pb2
from skm.type.v1 import model_pb2
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.events import decode
from svc_analytics.adapters.queries import ClickHouseReader
from svc_analytics.model import (
    AGGREGATIONS,
    MODEL_CALL_METRICS,
    Aggregation,
    Delivery,
    Metric,
    Partition,
    Point,
    Poison,
    PoisonReason,
    Position,
    SeriesRead,
    Table,
)
from svc_analytics.ports import Warehouse, WarehouseReader
from tests.support.analytics_events import model_call
from tests.support.analytics_memory import MemoryWarehouse


@pytest.fixture(params=["memory", "clickhouse"])
async def warehouse(request: pytest.FixtureRequest, chdb_warehouse_url: str) -> AsyncIterator[Warehouse]:
    if request.param == "memory":
        yield MemoryWarehouse()
        return
    real = await ClickHouseWarehouse.open(chdb_warehouse_url)
    try:
        yield real
    finally:
        await real.close()


@pytest.fixture(params=["memory", "clickhouse"])
async def store(
    request: pytest.FixtureRequest, chdb_warehouse_url: str
) -> AsyncIterator[tuple[Warehouse, WarehouseReader]]:
    """A warehouse to write and its read side, in memory or ClickHouse."""
    if request.param == "memory":
        memory = MemoryWarehouse()
        yield memory, memory
        return
    real = await ClickHouseWarehouse.open(chdb_warehouse_url)
    try:
        yield real, ClickHouseReader(real)
    finally:
        await real.close()


def _topic() -> str:
    # The chdb folder is shared by the whole test process: each test reads its own topic.
    return f"t{uuid.uuid4().hex[:10]}"


def _delivery(topic: str, partition: int, offset: int, tenant: str = "tenants/w1") -> Delivery:
    record = decode(Position(topic, partition, offset, 1_700_000_000_000), b"k", model_call(tenant))
    assert isinstance(record, Delivery)
    return record


async def _write(warehouse: Warehouse, deliveries: list[Delivery]) -> None:
    for table in Table:
        rows = [(d.position, row) for d in deliveries for row in d.rows.get(table, ())]
        if rows:
            await warehouse.write(table, rows)


async def test_positions_are_the_highest_offset_each_table_holds_per_partition(warehouse: Warehouse) -> None:
    topic = _topic()
    before = await warehouse.positions()
    assert all(p.topic != topic for held in before.values() for p in held)
    await _write(warehouse, [_delivery(topic, 0, 4), _delivery(topic, 0, 9), _delivery(topic, 2, 3)])
    positions = await warehouse.positions()
    for table in (Table.MODEL_CALLS, Table.EVENTS):
        mine = {p: o for p, o in positions[table].items() if p.topic == topic}
        assert mine == {Partition(topic, 0): 9, Partition(topic, 2): 3}
    assert all(p.topic != topic for p in positions[Table.TURNS])


async def test_known_events_are_the_given_ids_the_events_table_holds(warehouse: Warehouse) -> None:
    topic = _topic()
    held = [_delivery(topic, 0, i) for i in range(3)]
    await _write(warehouse, held)
    other_tenant = _delivery(topic, 1, 0, tenant="tenants/w2")
    new = _delivery(topic, 0, 3)
    known = await warehouse.known_events([held[0], held[2], new, other_tenant])
    assert known == {held[0].event_id, held[2].event_id}


async def test_only_rows_in_the_events_table_make_an_event_known(warehouse: Warehouse) -> None:
    topic = _topic()
    half = _delivery(topic, 0, 0)
    await warehouse.write(Table.MODEL_CALLS, [(half.position, row) for row in half.rows[Table.MODEL_CALLS]])
    assert await warehouse.known_events([half]) == set()


async def test_dead_letters_have_positions_of_their_own(warehouse: Warehouse) -> None:
    topic = _topic()
    poison = Poison(Position(topic, 1, 7, 1_700_000_000_000), PoisonReason.NOT_AN_EVENT, "garbage", None, b"\xff")
    await warehouse.write_dead_letters([poison])
    positions = await warehouse.positions()
    assert positions[Table.DEAD_LETTERS][Partition(topic, 1)] == 7
    assert all(p.topic != topic for p in positions[Table.EVENTS])


async def test_a_model_call_is_stored_with_the_values_of_its_event(chdb_warehouse_url: str) -> None:
    warehouse = await ClickHouseWarehouse.open(chdb_warehouse_url)
    try:
        topic, tenant = _topic(), f"tenants/w{uuid.uuid4().hex[:8]}"
        at = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
        value = model_call(tenant, at=at, model="models/qwen", cost_nanos=2_500, input_tokens=40, output_tokens=10)
        record = decode(Position(topic, 2, 5, 1_764_504_000_500), b"key", value)
        assert isinstance(record, Delivery)
        await _write(warehouse, [record])
        rows = await warehouse.query(
            "SELECT event_time, model, role, input_tokens, output_tokens, ttft_s, duration_s, cost, currency,"
            " failed, topic, partition, offset, published_at, ingested_at FROM model_calls WHERE tenant = {t:String}",
            {"t": tenant},
        )
        assert len(rows) == 1
        (event_time, model, role, tin, tout, ttft, duration, cost, currency, failed, *position, published, ingested) = (
            rows[0]
        )
        assert event_time.replace(tzinfo=UTC) == at
        assert (model, role, tin, tout, currency, failed) == ("models/qwen", "PRIMARY", 40, 10, "USD", False)
        assert (ttft, duration, cost) == pytest.approx((0.3, 1.3, 2.5e-6))
        assert position == [topic, 2, 5]
        assert published.replace(tzinfo=UTC) == datetime(2025, 11, 30, 12, 0, 0, 500000, tzinfo=UTC)
        assert abs(ingested.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)
        stored = await warehouse.query(
            "SELECT event_type, source, event FROM events WHERE tenant = {t:String}",
            {"t": tenant},
            column_formats={"event": "bytes"},
        )
        assert stored == [("model_call_completed", "conversation", value)]
    finally:
        await warehouse.close()


async def test_a_policy_decision_is_stored_with_its_latency(chdb_warehouse_url: str) -> None:
    warehouse = await ClickHouseWarehouse.open(chdb_warehouse_url)
    try:
        tenant = f"tenants/w{uuid.uuid4().hex[:8]}"
        event = event_pb2.Event(event_id=str(uuid.uuid4()), tenant=tenant, source="policy")
        event.event_time.GetCurrentTime()
        event.policy_decided.check.subject = f"persona:{tenant}/personas/helper"
        event.policy_decided.check.relation = "can_execute"
        event.policy_decided.check.object = f"tool:{tenant}/tools/code"
        event.policy_decided.decision.verdict = 2  # DENY
        event.policy_decided.decision.reason = "NOT_PERMITTED"
        event.policy_decided.latency.nanos = 1_250_000
        record = decode(Position(_topic(), 0, 0), None, event.SerializeToString())
        assert isinstance(record, Delivery)
        await _write(warehouse, [record])
        rows = await warehouse.query(
            "SELECT persona, relation, object_type, verdict, reason, latency_s FROM policy_decisions"
            " WHERE tenant = {t:String}",
            {"t": tenant},
        )
        assert rows == [(f"{tenant}/personas/helper", "can_execute", "tool", "DENY", "NOT_PERMITTED", 0.00125)]
    finally:
        await warehouse.close()


# -- the read side: MODEL_FALLBACK_RATE and the role filter ------------------------------------

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
UTILITY = model_pb2.MODEL_ROLE_UTILITY


def _call(tenant: str, offset_s: int, **fields: Any) -> Delivery:
    value = model_call(tenant, at=T0 + timedelta(seconds=offset_s), **fields)
    record = decode(Position(_topic(), 0, offset_s), b"k", value)
    assert isinstance(record, Delivery)
    return record


def _rate(metric: Metric, tenant: str, **fields: Any) -> SeriesRead:
    return SeriesRead(
        tenant=tenant,
        metric=metric,
        aggregation=Aggregation.MEAN,
        start=T0,
        end=T0 + timedelta(hours=1),
        bucket_width=timedelta(hours=1),
        **fields,
    )


def _values(series: list[Any]) -> list[tuple[str, float, int]]:
    return [(s.model, round(p.value, 9), p.sample_count) for s in series for p in s.points]


async def test_a_failed_call_that_a_later_tier_of_its_turn_recovered_fell_back(
    store: tuple[Warehouse, WarehouseReader],
) -> None:
    warehouse, reader = store
    a = f"tenants/w{uuid.uuid4().hex[:8]}"
    b = f"{a}b"  # starts with a's name: the tenant is matched whole
    fail = "TIMEOUT"
    await _write(
        warehouse,
        [
            # Turn 1: tier 0 failed, tier 1 (another model) succeeded: a fallback.
            _call(a, 10, turn="t1", failure=fail),
            _call(a, 11, turn="t1", tier=1, model="models/m2"),
            # Turn 2: a failure nothing after it recovered; tenant b's success on a turn of
            # the same name, and a's own after the range, never count.
            _call(a, 20, turn="t2", failure=fail),
            _call(b, 21, turn="t2", tier=1, model="models/m2"),
            _call(a, 3700, turn="t2", tier=1, model="models/m2"),
            # Turn 3: a UTILITY call fell back; its PRIMARY call failed with no PRIMARY after.
            _call(a, 30, turn="t3", failure=fail),
            _call(a, 31, turn="t3", role=UTILITY, failure=fail),
            _call(a, 32, turn="t3", role=UTILITY, tier=2, model="models/m2"),
            # Outside any turn: nothing recovers anything.
            _call(a, 40, turn="", failure=fail),
            _call(a, 41, turn="", tier=1, model="models/m2"),
            # Tenant b: a call that failed with nothing after it.
            _call(b, 50, turn="t9", failure=fail),
        ],
    )
    # Eight calls of a in the range; two fell back, five failed.
    fell_back = await reader.series(_rate(Metric.MODEL_FALLBACK_RATE, a))
    assert _values(fell_back) == [("", 0.25, 8)]
    assert fell_back[0].unit == "1"
    assert _values(await reader.series(_rate(Metric.MODEL_FAILURE_RATE, a))) == [("", 0.625, 8)]
    # Only PRIMARY calls: t1's two, t2's, t3's first, the two outside turns.
    primary = _rate(Metric.MODEL_FALLBACK_RATE, a, roles=("PRIMARY",), by_model=True)
    assert _values(await reader.series(primary)) == [("models/m1", 0.25, 4), ("models/m2", 0.0, 2)]
    utility = _rate(Metric.MODEL_FALLBACK_RATE, a, roles=("UTILITY",))
    assert _values(await reader.series(utility)) == [("", 0.5, 2)]
    both = _rate(Metric.TOKENS, a, roles=("PRIMARY", "UTILITY"))
    assert [p.sample_count for s in await reader.series(both) for p in s.points] == [8]
    # The model filter narrows the calls that fell back, not the tiers that recovered them.
    m1 = _rate(Metric.MODEL_FALLBACK_RATE, a, models=("models/m1",))
    assert _values(await reader.series(m1)) == [("", 0.4, 5)]
    # Tenant b's own: two calls, none recovered in b.
    assert _values(await reader.series(_rate(Metric.MODEL_FALLBACK_RATE, b))) == [("", 0.0, 2)]


async def test_the_memory_warehouse_computes_every_model_call_series_as_clickhouse(chdb_warehouse_url: str) -> None:
    tenant = f"tenants/w{uuid.uuid4().hex[:8]}"
    calls = [
        _call(
            tenant,
            offset,
            turn=f"t{offset % 4}",
            tier=offset % 3,
            role=UTILITY if offset % 5 == 0 else model_pb2.MODEL_ROLE_PRIMARY,
            model=f"models/m{offset % 2}",
            failure="TIMEOUT" if offset % 3 == 0 else "",
            input_tokens=offset,
            cost_nanos=offset * 1_000,
        )
        for offset in range(1, 200, 7)
    ]
    memory = MemoryWarehouse()
    real = await ClickHouseWarehouse.open(chdb_warehouse_url)
    try:
        await _write(memory, calls)
        await _write(real, calls)
        clickhouse = ClickHouseReader(real)
        for metric in MODEL_CALL_METRICS:
            for aggregation in AGGREGATIONS[metric]:
                for roles in ((), ("UTILITY",)):
                    read = SeriesRead(
                        tenant=tenant,
                        metric=metric,
                        aggregation=aggregation,
                        start=T0,
                        end=T0 + timedelta(minutes=10),
                        bucket_width=timedelta(minutes=1),
                        roles=roles,
                        by_model=True,
                    )
                    want = sorted(await clickhouse.series(read), key=lambda s: (s.model, s.unit))
                    got = await memory.series(read)
                    assert want or roles, (metric, aggregation)  # TTFT is of PRIMARY calls only
                    assert [(s.model, s.unit, _rounded(s.points)) for s in got] == [
                        (s.model, s.unit, _rounded(s.points)) for s in want
                    ], (metric, aggregation, roles)
    finally:
        await real.close()


def _rounded(points: Sequence[Point]) -> list[tuple[datetime, float, int]]:
    return [(p.start_time, round(p.value, 9), p.sample_count) for p in points]
