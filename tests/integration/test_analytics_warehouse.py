"""One suite over both implementations of svc_analytics's Warehouse port: the in-memory one
the unit tests drive ingestion with, and ClickHouse (chdb, in this process). Then what only
the real one holds: the columns of each table, as decoded from real events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from skm.events.v1 import event_pb2
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.events import decode
from svc_analytics.model import Delivery, Partition, Poison, PoisonReason, Position, Table
from svc_analytics.ports import Warehouse
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
