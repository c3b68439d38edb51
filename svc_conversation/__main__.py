"""svc_conversation: sessions, turns and the agent loop.

Composition root: settings -> adapters (Postgres + outbox to Kafka, Redis mirror and live
event streams, the OpenAI-compatible model client, svc_profiles / svc_tools / svc_policy /
svc_analytics and the other svc_conversation processes over gRPC) -> core -> servicers -> server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import grpc

from skm_runtime.contract import services_of
from skm_runtime.interceptors import outliving_context
from skm_runtime.outbox import OutboxRelay
from skm_runtime.pending_reports import PostgresPendingReports
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from svc_conversation import api
from svc_conversation.adapters.budgets import GrpcBudgets
from svc_conversation.adapters.mesh import GrpcProfiles, GrpcTools
from svc_conversation.adapters.openai import OpenAICompatibleClient
from svc_conversation.adapters.owners import GrpcTurnOwners
from svc_conversation.adapters.policy import GrpcPolicy
from svc_conversation.adapters.postgres import SCHEMA, TOPIC_AUDIT, PostgresSessionStore
from svc_conversation.adapters.redis import RedisHotState, RedisSessionStreams
from svc_conversation.core import Conversation
from svc_conversation.settings import ConversationSettings

log = logging.getLogger("skm.conversation")


async def _maintain_forever(conversation: Conversation, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await conversation.maintain()
        except Exception:
            log.exception("maintenance pass failed; trying again")


def runner_id(settings: ConversationSettings) -> str:
    """Stable across restarts of the same instance, so a restarted process resumes its own
    turns at once instead of waiting for their leases to run out."""
    return os.environ.get("SKM_CONVERSATION_INSTANCE") or f"{socket.gethostname()}:{settings.addr}"


async def build(settings: ConversationSettings, runtime: RuntimeSettings) -> ServiceSpec:
    store = await PostgresSessionStore.open(settings.postgres_dsn)
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=(TOPIC_AUDIT,))
    hot = RedisHotState.open(settings.redis_url)
    streams = RedisSessionStreams.open(
        settings.redis_url,
        max_length=settings.live_events_max_length,
        ttl_seconds=settings.live_events_ttl_seconds,
    )
    channels = [
        open_channel(addr, runtime)
        for addr in (settings.profiles_addr, settings.tools_addr, settings.policy_addr, settings.analytics_addr)
    ]
    owners = GrpcTurnOwners(runtime, limit=settings.owner_channels)
    llm = OpenAICompatibleClient(
        first_token_timeout=settings.model_first_token_timeout_seconds,
        idle_timeout=settings.model_idle_timeout_seconds,
    )
    policy = GrpcPolicy(channels[2], reports=PostgresPendingReports(store.pool, SCHEMA))
    conversation = Conversation(
        store,
        hot,
        GrpcProfiles(channels[0]),
        GrpcTools(channels[1]),
        policy,
        llm,
        settings,
        runner_id=runner_id(settings),
        streams=streams,
        owners=owners,
        address=settings.advertised,
        task_context=outliving_context,
        budgets=GrpcBudgets(channels[2], channels[3], cache_seconds=settings.budget_cache_seconds),
    )
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        relay.start()
        policy.start()
        await conversation.start()
        tasks.append(asyncio.create_task(_maintain_forever(conversation, settings.maintain_interval_seconds)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await conversation.close()
        await policy.close()
        await owners.close()
        await streams.close()
        await relay.close()
        await llm.close()
        for channel in channels:
            await channel.close()
        await hot.close()
        await store.close()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, conversation)

    return ServiceSpec(
        name="conversation", service_names=services_of("conversation"), register=register, start=start, stop=stop
    )


if __name__ == "__main__":
    raise SystemExit(run("conversation", ConversationSettings, build))
