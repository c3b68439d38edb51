"""svc_analytics: Kafka to ClickHouse, each event once; dashboards and the audit log.

Composition root: settings -> adapters (the warehouse, Kafka, svc_policy for the budgets) ->
core (ingestion, queries, the budget watch) -> servicers -> server. Ingestion and the budget
watch run as background tasks of the server's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
from datetime import UTC, datetime

import grpc

from skm_runtime.contract import services_of
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_analytics import api
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.kafka import KafkaAnnouncements, KafkaDeadLetters, KafkaEventLog
from svc_analytics.adapters.policy import GrpcBudgetSource
from svc_analytics.adapters.queries import ClickHouseReader
from svc_analytics.core.budgets import BudgetWatch
from svc_analytics.core.ingest import Ingestion
from svc_analytics.core.queries import Queries
from svc_analytics.errors import WarehouseUnavailable
from svc_analytics.model import Written
from svc_analytics.settings import AnalyticsSettings

log = logging.getLogger("skm.analytics")


def _now() -> datetime:
    return datetime.now(UTC)


def _logged(written: Written) -> None:
    log.debug(
        "batch written",
        extra={
            "fields": {
                "records": written.records,
                "events": written.events,
                "duplicates": written.duplicates,
                "dead_letters": written.dead_letters,
            }
        },
    )


async def build(settings: AnalyticsSettings, runtime: RuntimeSettings) -> ServiceSpec:
    warehouse = await ClickHouseWarehouse.open(
        settings.warehouse_url, settings.warehouse_user, settings.warehouse_password
    )
    events = KafkaEventLog(
        settings.kafka_bootstrap,
        settings.topics,
        settings.consumer_group,
        instance=settings.consumer_instance or f"{socket.gethostname()}:{settings.addr}",
        poll_records=settings.poll_records,
    )
    dead_letters = KafkaDeadLetters(settings.kafka_bootstrap, settings.dead_letter_topic)
    reader = ClickHouseReader(warehouse)
    queries = Queries(reader, now=_now)
    policy = open_channel(settings.policy_addr, runtime)
    announcements = KafkaAnnouncements(settings.kafka_bootstrap)
    watch = BudgetWatch(GrpcBudgetSource(policy), reader, announcements, now=_now)

    def written(batch: Written) -> None:
        _logged(batch)
        watch.charged(batch.charged)

    ingestion = Ingestion(
        events,
        warehouse,
        dead_letters,
        batch_records=settings.batch_records,
        batch_seconds=settings.batch_seconds,
        on_written=written,
    )
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        # A batch makes tens of thousands of short-lived tuples: with CPython's default
        # thresholds (700 allocations) the collector ran ~70 times a batch and took about 40% of
        # decoding's CPU (bench/analytics.py). Collect young objects every 50,000 allocations,
        # and never traverse what exists at start again (modules, clients).
        gc.freeze()
        gc.set_threshold(50_000, 20, 10)
        tasks.append(asyncio.create_task(ingestion.run(), name="analytics-ingestion"))
        tasks.append(asyncio.create_task(watch.run(), name="analytics-budgets"))
        log.info(
            "ingesting",
            extra={"fields": {"topics": list(settings.topics), "group": settings.consumer_group}},
        )

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await events.close()
        await announcements.close()
        await policy.close()
        await dead_letters.close()
        await warehouse.close()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, queries)

    return ServiceSpec(
        name="analytics", service_names=services_of("analytics"), register=register, start=start, stop=stop
    )


def main() -> int:
    try:
        return run("analytics", AnalyticsSettings, build)
    except (WarehouseUnavailable, ValueError) as exc:
        print(f"svc_analytics: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
