"""The wait for an operator's decision (skm_runtime/blocked_actions.py) against a real svc_policy
(OpenFGA, PostgreSQL, Redis, Kafka), served in the test process on a fixed loopback port so
that a test can stop it and start it again on the same address.

svc_conversation waits with the principal in the metadata, svc_tools with none: both are
exercised here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from skm.policy.v1 import (
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
)
from skm_runtime.blocked_actions import GONE, wait_resolved
from skm_runtime.server import RuntimeSettings, signed_channel
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from svc_policy.settings import PolicySettings
from tests.support.policy import approval_tenant, hold, signed
from tests.support.ports import free_port
from tests.support.runtime import Served
from tests.support.tools import policy_settings, serving_at

BlockedAction = blocked_action_pb2.BlockedAction


@contextlib.asynccontextmanager
async def _policy_at(settings: PolicySettings, port: int) -> AsyncIterator[Served]:
    async with serving_at(await build_policy(settings, RuntimeSettings()), port) as served:
        yield served


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with _policy_at(policy_settings(stack), free_port()) as served:
        yield served


async def _new_tenant(channel: grpc.aio.Channel) -> str:
    return await approval_tenant(channel, "b")


async def _approve(channel: grpc.aio.Channel, tenant: str, name: str, note: str) -> None:
    await blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel).ApproveBlockedAction(
        blocked_action_service_pb2.ApproveBlockedActionRequest(name=name, note=note),
        metadata=signed(tenant, "olga"),
        timeout=10,
        wait_for_ready=True,  # after a restart, the channel may still be backing off its reconnection
    )


async def test_the_wait_ends_with_the_approved_entry(policy: Served) -> None:
    async with signed_channel(policy.target) as channel:
        tenant = await _new_tenant(channel)
        name = await hold(channel, tenant)
        blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        # As svc_conversation waits: the principal in the metadata, a deadline on each look.
        waiting = asyncio.create_task(wait_resolved(blocked, name, metadata=signed(tenant, "mike"), get_timeout=10))
        try:
            await asyncio.sleep(0.5)
            assert not waiting.done()  # still PENDING: the wait goes on

            await _approve(channel, tenant, name, "go ahead")
            async with asyncio.timeout(20):
                action = await waiting
        finally:
            waiting.cancel()  # a failed assertion leaves no wait behind
        assert action is not GONE
        assert (action.name, action.state, action.note) == (name, BlockedAction.STATE_APPROVED, "go ahead")


async def test_an_entry_svc_policy_does_not_have_is_gone(policy: Served) -> None:
    async with signed_channel(policy.target) as channel:
        tenant = await _new_tenant(channel)
        blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        async with asyncio.timeout(20):
            assert await wait_resolved(blocked, f"{tenant}/blockedActions/{uuid.uuid4()}") is GONE


async def test_a_refusal_no_retry_changes_ends_the_wait(policy: Served) -> None:
    """A name svc_policy cannot read (INVALID_ARGUMENT) used to be looked at every 5 s forever."""
    async with signed_channel(policy.target) as channel:
        blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        lost: list[grpc.StatusCode] = []
        async with asyncio.timeout(20):
            assert await wait_resolved(blocked, "blockedActions/not-a-name", on_watch_lost=lost.append) is GONE
        assert lost
        assert set(lost) <= {grpc.StatusCode.INVALID_ARGUMENT}


async def test_the_wait_outlasts_a_restart_of_svc_policy(stack: RunningStack) -> None:
    settings = policy_settings(stack)
    port = free_port()
    lost: list[grpc.StatusCode] = []
    async with contextlib.AsyncExitStack() as running:
        first = contextlib.AsyncExitStack()
        running.push_async_callback(first.aclose)
        served = await first.enter_async_context(_policy_at(settings, port))
        channel = await running.enter_async_context(signed_channel(served.target))
        tenant = await _new_tenant(channel)
        name = await hold(channel, tenant)
        # As svc_tools waits: no metadata, no deadline on the look.
        blocked = blocked_action_service_pb2_grpc.BlockedActionServiceStub(channel)
        waiting = asyncio.create_task(wait_resolved(blocked, name, max_backoff=0.5, on_watch_lost=lost.append))
        running.callback(waiting.cancel)  # a failed assertion leaves no wait behind
        await asyncio.sleep(0.5)

        # svc_policy goes away while the action is held ...
        await first.aclose()
        await asyncio.sleep(1.5)
        assert not waiting.done()
        assert lost, "the broken watch was not reported"
        assert set(lost).isdisjoint({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED}), lost

        # ... and comes back on the same address, where an operator approves.
        await running.enter_async_context(_policy_at(settings, port))
        await _approve(channel, tenant, name, "after the restart")
        async with asyncio.timeout(20):
            action = await waiting
        assert action is not GONE
        assert (action.name, action.state, action.note) == (name, BlockedAction.STATE_APPROVED, "after the restart")
