"""svc_tools: sandboxed, policy-gated tools and the tenant knowledge base.

Composition root: settings -> adapters (bubblewrap sandbox, Postgres + outbox to Kafka,
svc_policy over gRPC) -> core -> servicers -> server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import grpc

from skm_runtime.contract import services_of
from skm_runtime.outbox import OutboxRelay
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_tools import api
from svc_tools.adapters.bubblewrap import BubblewrapSandbox, SandboxLimits, SandboxPrograms
from svc_tools.adapters.policy import GrpcPolicyGate
from svc_tools.adapters.postgres import SCHEMA, TOPIC_AUDIT, PostgresExecutionStore
from svc_tools.core import Tools
from svc_tools.settings import ToolsSettings

log = logging.getLogger("skm.tools")


def _now() -> datetime:
    return datetime.now(UTC)


async def _maintain_forever(tools: Tools, interval: float) -> None:
    while True:
        try:
            await tools.maintain()
        except Exception:
            log.exception("maintenance pass failed; trying again")
        await asyncio.sleep(interval)


def sandbox_of(settings: ToolsSettings) -> BubblewrapSandbox:
    limits = SandboxLimits(
        cpu_seconds=settings.sandbox_cpu_seconds,
        memory_bytes=settings.sandbox_memory_bytes,
        max_processes=settings.sandbox_max_processes,
        max_file_bytes=settings.sandbox_max_file_bytes,
        work_bytes=settings.sandbox_work_bytes,
        tmp_bytes=settings.sandbox_tmp_bytes,
        output_bytes=settings.sandbox_output_bytes,
        tail_bytes=settings.sandbox_tail_bytes,
    )
    return BubblewrapSandbox(
        limits,
        programs=SandboxPrograms(bwrap=settings.bwrap_path, python=settings.python_path),
        uid_base=settings.sandbox_uid_base,
        slots=settings.sandbox_slots,
    )


async def build(
    settings: ToolsSettings, runtime: RuntimeSettings, *, sandbox: BubblewrapSandbox | None = None
) -> ServiceSpec:
    """The service; `sandbox` replaces the one the settings describe (tests watch runs)."""
    sandbox = sandbox or sandbox_of(settings)
    # A host where the sandbox cannot work must not serve code_execution at all.
    await sandbox.self_test()
    store = await PostgresExecutionStore.open(settings.postgres_dsn, lease_seconds=settings.lease_seconds)
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=(TOPIC_AUDIT,))
    channel = open_channel(settings.policy_addr, runtime)
    tools = Tools(
        store,
        GrpcPolicyGate(channel),
        sandbox,
        now=_now,
        max_timeout_seconds=settings.max_timeout_seconds,
    )
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        relay.start()
        await tools.start()
        tasks.append(asyncio.create_task(_maintain_forever(tools, settings.maintain_interval_seconds)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await tools.close()
        await relay.close()
        await channel.close()
        await store.close()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, tools)

    return ServiceSpec(name="tools", service_names=services_of("tools"), register=register, start=start, stop=stop)


if __name__ == "__main__":
    raise SystemExit(run("tools", ToolsSettings, build))
