"""Ingestion (svc_analytics.core.ingest) over in-memory ports: each event once in each of its
tables, whatever cuts a batch short, duplicates dropped, poison dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from svc_analytics.core.ingest import Ingestion, next_offsets
from svc_analytics.errors import EventLogUnavailable, WarehouseUnavailable
from svc_analytics.model import Partition, PoisonReason, Table
from tests.support.analytics_events import event_id_of, model_call, turn_started
from tests.support.analytics_memory import MemoryDeadLetters, MemoryEventLog, MemoryWarehouse

AUDIT = [Partition("audit", 0), Partition("audit", 1)]


def _ingestion(log: MemoryEventLog, warehouse: MemoryWarehouse, dead: MemoryDeadLetters, batch: int = 50) -> Ingestion:
    return Ingestion(log, warehouse, dead, batch_records=batch, batch_seconds=0.01)


def _fill(log: MemoryEventLog, n: int) -> list[str]:
    ids = []
    for i in range(n):
        value = model_call() if i % 2 else turn_started()
        log.append(AUDIT[i % 2], value)
        ids.append(event_id_of(value))
    return ids


async def _drain(ingestion: Ingestion, log: MemoryEventLog) -> None:
    """Steps until every record is committed; a failing step is recovered as run() does."""
    for _ in range(1000):
        if all(log.committed.get(p, 0) == len(r) for p, r in log.records.items()):
            return
        try:
            await ingestion.step()
        except (EventLogUnavailable, WarehouseUnavailable):
            ingestion._positions = None  # what run() does before rewinding
            await log.rewind()
    raise AssertionError("ingestion did not drain the log")


def _assert_once(warehouse: MemoryWarehouse, ids: list[str]) -> None:
    assert sorted(warehouse.ids(Table.EVENTS)) == sorted(ids)
    typed = warehouse.ids(Table.MODEL_CALLS) + warehouse.ids(Table.TURNS)
    assert sorted(typed) == sorted(ids)


async def test_every_event_lands_once_in_each_of_its_tables_and_offsets_are_committed_after() -> None:
    log, warehouse, dead = MemoryEventLog(), MemoryWarehouse(), MemoryDeadLetters()
    ids = _fill(log, 120)
    await _drain(_ingestion(log, warehouse, dead), log)
    _assert_once(warehouse, ids)
    assert len(warehouse.ids(Table.MODEL_CALLS)) == 60
    assert log.committed == {AUDIT[0]: 60, AUDIT[1]: 60}


@pytest.mark.parametrize("writes_before_failure", range(7))
async def test_a_batch_cut_short_after_any_write_is_finished_without_repeating_a_row(
    writes_before_failure: int,
) -> None:
    log, warehouse, dead = MemoryEventLog(), MemoryWarehouse(), MemoryDeadLetters()
    ids = _fill(log, 200)
    log.append(AUDIT[0], b"\xff not an event")
    ingestion = _ingestion(log, warehouse, dead, batch=80)
    warehouse.fail_after_writes = writes_before_failure
    await _drain(ingestion, log)
    _assert_once(warehouse, ids)
    assert len(warehouse.dead) == 1


@pytest.mark.parametrize("read_delay", [0.0, 0.05])
@pytest.mark.parametrize(("writes_before_failure", "failed_commits"), [(0, 0), (1, 0), (3, 2), (None, 3)])
async def test_running_reads_the_next_batch_while_writing_and_recovers_from_failures(
    writes_before_failure: int | None, failed_commits: int, read_delay: float
) -> None:
    """With a read still in flight when a write or commit fails, too: it is dropped before
    the rewind, so it cannot move the log past records nobody wrote."""
    log, warehouse, dead = (
        MemoryEventLog(fail_commits=failed_commits, delay=read_delay),
        MemoryWarehouse(),
        MemoryDeadLetters(),
    )
    ids = _fill(log, 300)
    warehouse.fail_after_writes = writes_before_failure
    ingestion = Ingestion(log, warehouse, dead, batch_records=40, batch_seconds=0.01, retry_seconds=0.02)
    running = asyncio.create_task(ingestion.run())
    try:
        async with asyncio.timeout(20):
            while not all(log.committed.get(p, 0) == len(r) for p, r in log.records.items()):
                assert not running.done(), running
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    _assert_once(warehouse, ids)


async def test_a_commit_that_fails_reads_the_batch_again_and_writes_nothing_twice() -> None:
    log, warehouse, dead = MemoryEventLog(fail_commits=3), MemoryWarehouse(), MemoryDeadLetters()
    ids = _fill(log, 100)
    await _drain(_ingestion(log, warehouse, dead, batch=30), log)
    _assert_once(warehouse, ids)


async def test_a_relay_publishing_an_event_twice_counts_it_once() -> None:
    log, warehouse, dead = MemoryEventLog(), MemoryWarehouse(), MemoryDeadLetters()
    ids = _fill(log, 20)
    first = model_call()
    log.append(AUDIT[0], first)
    log.append(AUDIT[0], first)  # the same batch
    ingestion = _ingestion(log, warehouse, dead)
    await _drain(ingestion, log)
    log.append(AUDIT[1], first)  # a later batch, another partition
    written = await ingestion.step()
    assert written is not None
    assert (written.duplicates, written.events) == (1, 0)
    _assert_once(warehouse, [*ids, event_id_of(first)])


async def test_a_record_that_is_not_an_event_is_dead_lettered_with_its_reason_and_ingestion_goes_on() -> None:
    log, warehouse, dead = MemoryEventLog(), MemoryWarehouse(), MemoryDeadLetters()
    log.append(AUDIT[0], b"\x08\x96\x01 garbage \xff")
    log.append(AUDIT[0], None)
    ids = _fill(log, 10)
    await _drain(_ingestion(log, warehouse, dead), log)
    _assert_once(warehouse, ids)
    assert [(p.position.offset, p.reason) for p in dead.sent] == [
        (0, PoisonReason.NOT_AN_EVENT),
        (1, PoisonReason.NOT_AN_EVENT),
    ]
    assert [p.position.offset for p in warehouse.dead] == [0, 1]


async def test_next_offsets_are_one_past_the_last_record_of_each_partition() -> None:
    log = MemoryEventLog()
    _fill(log, 5)
    batch = await log.next_batch(100, 0)
    assert next_offsets(batch) == {AUDIT[0]: 3, AUDIT[1]: 2}


async def test_an_event_whose_id_is_no_id_is_dead_lettered() -> None:
    log, warehouse, dead = MemoryEventLog(), MemoryWarehouse(), MemoryDeadLetters()
    log.append(AUDIT[0], model_call(event_id="a,b"))
    log.append(AUDIT[0], model_call(event_id="x" * 129))
    ids = _fill(log, 4)
    await _drain(_ingestion(log, warehouse, dead), log)
    _assert_once(warehouse, ids)
    assert [p.reason for p in dead.sent] == [PoisonReason.INCOMPLETE_ENVELOPE] * 2
