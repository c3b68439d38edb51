"""svc_policy: authorization on OpenFGA, the requeue of blocked actions, tenant constitutions.

Composition root: settings -> adapters (OpenFGA, Postgres, Redis, Kafka outbox) -> core
-> servicers -> server. Relationship changes go out on Redis; this process follows the
other processes' changes there too, emptying its decision cache on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from skm_runtime.contract import services_of
from skm_runtime.outbox import BufferedOutbox, OutboxRelay
from skm_runtime.policy_client import ChangeSubscription
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_policy import api
from svc_policy.adapters.audit import TOPIC_AUDIT, OutboxAuditTrail
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import OpenFgaAuthorizer, bootstrap
from svc_policy.adapters.postgres import SCHEMA, TOPIC_BLOCKED, PostgresPolicyStore
from svc_policy.adapters.redis import RedisBlockedIndex, RedisChangeFeed
from svc_policy.checks import Checker
from svc_policy.core import Policy
from svc_policy.settings import PolicySettings

log = logging.getLogger("skm.policy")


def _now() -> datetime:
    return datetime.now(UTC)


async def _expire_forever(policy: Policy, interval: float) -> None:
    while True:
        try:
            expired = await policy.expire_due()
            if expired:
                log.info("blocked actions expired", extra={"fields": {"count": expired}})
        except Exception:
            log.exception("expiry pass failed; trying again")
        await asyncio.sleep(interval)


async def build(settings: PolicySettings, runtime: RuntimeSettings) -> ServiceSpec:
    token_file = settings.openfga_api_token_file
    token = (await asyncio.to_thread(Path(token_file).read_text)).strip() if token_file else ""
    store_id, model_id = await bootstrap(settings.openfga_api_url, token, settings.openfga_store, settings.model_path)
    # Whatever is opened is closed again, also when a later step of the start fails.
    resources = contextlib.AsyncExitStack()
    try:
        authorizer = OpenFgaAuthorizer(
            settings.openfga_api_url, token, store_id, model_id, model_path=settings.model_path
        )
        resources.push_async_callback(authorizer.close)
        table = load_decision_table(settings.decisions_path, defines=authorizer.defines)
        checker = Checker(
            authorizer, table, ttl=settings.cache_ttl_seconds, engine_cache_ttl=settings.openfga_cache_ttl_seconds
        )
        index = RedisBlockedIndex.connect(settings.redis_url)
        resources.push_async_callback(index.close)
        changes = RedisChangeFeed.connect(settings.redis_url)
        resources.push_async_callback(changes.close)
        store = await PostgresPolicyStore.open(settings.postgres_dsn, index)
        resources.push_async_callback(store.close)
        await store.rebuild_index()
    except BaseException:
        await resources.aclose()
        raise
    outbox = BufferedOutbox(store.pool, SCHEMA)
    audit = OutboxAuditTrail(outbox)
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=(TOPIC_AUDIT, TOPIC_BLOCKED))
    policy = Policy(
        checker,
        authorizer,
        store,
        store,
        audit,
        hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
        now=_now,
        changes=changes,
    )
    tasks: list[asyncio.Task[None]] = []
    # Other svc_policy processes' changes empty this one's cache as well (its own, twice).
    others = ChangeSubscription(settings.redis_url, checker.invalidate)

    async def start() -> None:
        outbox.start()
        relay.start()
        others.start()
        tasks.append(asyncio.create_task(_expire_forever(policy, settings.expiry_interval_seconds)))
        tasks.append(asyncio.create_task(checker.watch_engine(settings.engine_probe_seconds)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await others.close()
        audit.flush()
        await outbox.close()
        await relay.close()
        await resources.aclose()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, policy)

    return ServiceSpec(name="policy", service_names=services_of("policy"), register=register, start=start, stop=stop)


if __name__ == "__main__":
    raise SystemExit(run("policy", PolicySettings, build))
