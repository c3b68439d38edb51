"""Live events and interventions across svc_conversation processes: a second process on the
mesh's Postgres database and Redis, streams attached and interventions sent to it directly (as
the gateway forwards them), while the turns run on the mesh's own process (messages go through
Envoy and the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm.conversation.v1 import conversation_service_pb2_grpc, turn_pb2
from skm_runtime.principal import FORWARDED_BY_KEY, principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.services import ServiceProcess, start_service
from tests.e2e.test_conversation import TERMINAL, Client, _kinds, _read_turn, _tenant
from tests.support.ports import free_port

Turn = turn_pb2.Turn


def _another(mesh: RunningStack, instance: str) -> ServiceProcess:
    """Another svc_conversation process, configured as the mesh's one but on its own address."""
    spec = next(s for s in mesh.service_specs if s.name == "conversation")
    addr = f"127.0.0.1:{free_port()}"
    spec = replace(
        spec,
        port=int(addr.rpartition(":")[2]),
        extra_env={**spec.extra_env, spec.addr_env_var: addr, "SKM_CONVERSATION_INSTANCE": instance},
    )
    return start_service(spec, mesh.state_dir, mesh.service_env())


@pytest.fixture(scope="module")
def second(mesh: RunningStack) -> Iterator[ServiceProcess]:
    process = _another(mesh, "fanout-second")
    try:
        yield process
    finally:
        process.stop()


class Direct:
    """A client's calls to one svc_conversation process, with the principal the gateway
    would forward for it."""

    def __init__(self, addr: str, client: Client, user: str = "alice") -> None:
        tenant = client.tenant
        principal = principal_message(tenant, f"{tenant}/users/{user}", ("member",))
        self.metadata = (*principal_metadata(principal), (FORWARDED_BY_KEY, "gateway"))
        self.channel = signed_channel(addr)
        self.stub = conversation_service_pb2_grpc.ConversationServiceStub(self.channel)

    def events(self, session: str, after: int = 0) -> AsyncIterator[pb.StreamEventsResponse]:
        call = self.stub.StreamEvents(
            pb.StreamEventsRequest(session=session, after_sequence=after), metadata=self.metadata, timeout=300
        )
        return call.__aiter__()

    async def interrupt(self, turn: str) -> Turn:
        reply = await self.stub.InterruptTurn(
            pb.InterruptTurnRequest(name=turn, request_id=str(uuid.uuid4())), metadata=self.metadata, timeout=10
        )
        return reply.turn

    async def resume(self, turn: str) -> Turn:
        reply = await self.stub.ResumeTurn(
            pb.ResumeTurnRequest(name=turn, request_id=str(uuid.uuid4())), metadata=self.metadata, timeout=10
        )
        return reply.turn


async def _until_token(stream: AsyncIterator[pb.StreamEventsResponse], into: list[Any]) -> None:
    async for message in stream:
        if message.HasField("event"):
            into.append(message.event)
            if message.event.WhichOneof("event") == "token_delta":
                return
    raise AssertionError("the stream ended before the first token")


def _interrupted_once(events: list[Any]) -> None:
    """The interruption reached the stream once, last, and no token of the stopped
    generation came after it."""
    _once_in_order(events)
    kinds = _kinds(events)
    assert kinds.count("intervention") == 1
    at = kinds.index("intervention")
    assert events[at].intervention.kind == events[at].intervention.KIND_INTERRUPT
    states = [e.turn_state_changed.state for e in events if e.WhichOneof("event") == "turn_state_changed"]
    assert states.count(Turn.STATE_INTERRUPTED) == 1
    assert kinds[at:] == ["intervention", "turn_state_changed"]
    assert events[-1].turn_state_changed.state == Turn.STATE_INTERRUPTED


async def _attached(stream: AsyncIterator[pb.StreamEventsResponse]) -> pb.StreamEventsResponse:
    first = await anext(stream)
    assert first.HasField("attached")
    return first


async def _read_all(stream: AsyncIterator[pb.StreamEventsResponse], into: list[Any]) -> None:
    async for message in stream:
        into.append(message.event)


async def _read_until_end(stream: AsyncIterator[pb.StreamEventsResponse], turn: str, into: list[Any]) -> None:
    """Like _read_turn, but what was read stays in ``into`` when the stream ends early."""
    async for message in stream:
        if not message.HasField("event"):
            continue
        event = message.event
        into.append(event)
        if event.turn == turn and event.HasField("turn_state_changed") and event.turn_state_changed.state in TERMINAL:
            return
    raise AssertionError("the stream ended before the turn did")


def _once_in_order(events: list[Any]) -> None:
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences))


async def test_a_stream_on_another_process_gets_every_event_of_the_turn_live(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    direct = Direct(second.addr, client)
    on_a = client.events(session.name)
    on_b = direct.events(session.name)
    await _attached(on_a)
    await _attached(on_b)
    turn = await client.send(session.name, "Work out 6 times 7 with Python.", tool_choice="code_execution")
    seen_a, seen_b = await asyncio.gather(_read_turn(on_a, turn.name), _read_turn(on_b, turn.name))
    # Nothing was stored when both attached: every event reached B live, deltas included.
    _once_in_order(seen_b)
    assert "token_delta" in _kinds(seen_b)
    assert seen_b[-1].turn_state_changed.state in TERMINAL
    assert [e.SerializeToString() for e in seen_b] == [e.SerializeToString() for e in seen_a]
    # A second turn, with the first's events long read: B goes on from where it was.
    again = await client.send(session.name, "And 6 times 8?")
    seen_a, seen_b = await asyncio.gather(_read_turn(on_a, again.name), _read_turn(on_b, again.name))
    assert [e.SerializeToString() for e in seen_b] == [e.SerializeToString() for e in seen_a]
    assert all(e.turn == again.name for e in seen_b)
    await direct.channel.close()


async def test_attaching_to_another_process_after_an_event_it_never_loaded(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    direct = Direct(second.addr, client)
    # B holds the session from before the turn (this stream keeps it loaded there).
    early = direct.events(session.name)
    await _attached(early)
    on_a = client.events(session.name)
    await _attached(on_a)
    turn = await client.send(session.name, "Work out 6 times 7 with Python.", tool_choice="code_execution")
    before: list[Any] = []
    async for message in on_a:
        before.append(message.event)
        if message.event.WhichOneof("event") == "token_delta":
            break
    seen = before[-1].sequence
    late = direct.events(session.name, after=seen)
    attached = await _attached(late)
    assert attached.attached.after_sequence == seen
    rest_a, rest_b, all_b = await asyncio.gather(
        _read_turn(on_a, turn.name), _read_turn(late, turn.name), _read_turn(early, turn.name)
    )
    assert rest_b[-1].turn_state_changed.state in TERMINAL
    assert all(e.sequence > seen for e in rest_b)
    _once_in_order(rest_b)
    # The rest of the turn live, as A's own stream had it.
    assert [e.SerializeToString() for e in rest_b] == [e.SerializeToString() for e in rest_a]
    assert [e.SerializeToString() for e in all_b] == [e.SerializeToString() for e in before + rest_a]
    await direct.channel.close()


async def test_redis_stopped_while_following_ends_the_stream_and_postgres_has_the_rest(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    direct = Direct(second.addr, client)
    on_a = client.events(session.name)
    on_b = direct.events(session.name)
    await _attached(on_a)
    await _attached(on_b)
    turn = await client.send(session.name, "Work out 6 times 7 with Python.", tool_choice="code_execution")
    got: list[Any] = []
    async for message in on_b:
        got.append(message.event)
        if message.event.WhichOneof("event") == "token_delta":
            break
    assert mesh.redis is not None
    mesh.redis.stop()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await _read_all(on_b, got)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        # The turn goes on where it runs, and its own process's stream is not affected.
        whole = await _read_turn(on_a, turn.name)
        assert whole[-1].turn_state_changed.state in TERMINAL
    finally:
        await asyncio.to_thread(mesh.start_server, "redis")
    # Re-attached after the last event it had, the client reads the rest (stored) in order.
    cursor = got[-1].sequence
    rest = await _read_turn(direct.events(session.name, after=cursor), turn.name)
    _once_in_order(got + rest)
    assert rest[-1].turn_state_changed.state in TERMINAL
    stored_after = [e for e in whole if e.sequence > cursor and e.WhichOneof("event") != "token_delta"]
    assert [e.sequence for e in rest if e.WhichOneof("event") != "token_delta"] == [e.sequence for e in stored_after]
    assert rest[-1].SerializeToString() == whole[-1].SerializeToString()
    await direct.channel.close()


async def test_a_turn_that_moves_between_processes_reaches_a_stream_once_and_in_order(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    direct = Direct(second.addr, client)
    stream = direct.events(session.name)
    await _attached(stream)
    turn = await client.send(session.name, "Work out 6 times 7 with Python.", tool_choice="code_execution")
    got: list[Any] = []
    async for message in stream:
        got.append(message.event)
        if message.event.WhichOneof("event") == "token_delta":
            break
    # The process running the turn dies mid-generation; the turn is resumed after its lease
    # by whichever process takes it first (the restarted one, or the one this stream is on).
    await asyncio.to_thread(mesh.restart_service, "conversation", kill=True)
    endings = []
    for _ in range(20):
        try:
            await _read_until_end(stream, turn.name, got)
            break
        except grpc.aio.AioRpcError as ended:
            # Ended on the server's side: re-attach after the last event seen, as clients do.
            endings.append(ended.code())
            stream = direct.events(session.name, after=got[-1].sequence)
            await _attached(stream)
    assert set(endings) <= {grpc.StatusCode.UNAVAILABLE}
    assert got[-1].turn == turn.name
    assert got[-1].turn_state_changed.state in TERMINAL
    _once_in_order(got)
    stored = await client.stub.ListTurnEvents(
        pb.ListTurnEventsRequest(parent=turn.name, page_size=1000), metadata=client.metadata, timeout=10
    )
    # Every stored event reached the stream (the deltas of an attempt cut short by the
    # crash are never stored; those of the finished turn are compacted away).
    seen = {e.sequence: e.SerializeToString() for e in got}
    for event in stored.events:
        assert seen.get(event.sequence) == event.SerializeToString()
    await direct.channel.close()


async def test_an_interrupt_sent_to_another_process_stops_the_turn_where_it_runs_and_resume_goes_on(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    direct = Direct(second.addr, client)
    on_a = client.events(session.name)
    on_b = direct.events(session.name)
    await _attached(on_a)
    await _attached(on_b)
    # The turn runs on the mesh's process (A); the interrupt goes to B, which does not run it.
    turn = await client.send(session.name, "Tell me a long story.")
    seen_a: list[Any] = []
    await _until_token(on_a, seen_a)
    interrupted = await direct.interrupt(turn.name)
    assert interrupted.state == Turn.STATE_INTERRUPTED
    rest_a, seen_b = await asyncio.gather(_read_turn(on_a, turn.name), _read_turn(on_b, turn.name))
    seen_a += rest_a
    _interrupted_once(seen_a)
    _interrupted_once(seen_b)
    assert [e.SerializeToString() for e in seen_b] == [e.SerializeToString() for e in seen_a]
    stopped_at = seen_a[-1].sequence
    # What is stored ends with the interruption: A's runner wrote nothing after it.
    for stub, metadata in ((client.stub, client.metadata), (direct.stub, direct.metadata)):
        got = await stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=metadata, timeout=10)
        assert got.turn.state == Turn.STATE_INTERRUPTED
        assert got.turn.last_sequence == stopped_at
        current = await stub.GetSession(pb.GetSessionRequest(name=session.name), metadata=metadata, timeout=10)
        assert current.session.last_sequence == stopped_at
    # Interrupting it again, through either process, changes nothing.
    assert (await direct.interrupt(turn.name)).state == Turn.STATE_INTERRUPTED

    resumed = await direct.resume(turn.name)
    assert resumed.state == Turn.STATE_RUNNING
    after_a, after_b = await asyncio.gather(_read_turn(on_a, turn.name), _read_turn(on_b, turn.name))
    for events in (after_a, after_b):
        assert events[0].intervention.kind == events[0].intervention.KIND_RESUME
        assert events[-1].turn_state_changed.state in TERMINAL
        assert all(e.sequence > stopped_at for e in events)
        _once_in_order(events)
    assert [e.SerializeToString() for e in after_b] == [e.SerializeToString() for e in after_a]
    got = await client.stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=client.metadata, timeout=10)
    assert got.turn.state in TERMINAL
    await direct.channel.close()


async def test_an_interrupt_for_a_turn_whose_process_is_gone_waits_for_its_lease(
    mesh: RunningStack, second: ServiceProcess
) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    third = _another(mesh, "fanout-third")
    try:
        on_c = Direct(third.addr, client)
        stream = on_c.events(session.name)
        await _attached(stream)
        reply = await on_c.stub.SendMessage(
            pb.SendMessageRequest(session=session.name, text="Tell me a long story.", request_id=str(uuid.uuid4())),
            metadata=on_c.metadata,
            timeout=30,
        )
        turn = reply.turn
        await _until_token(stream, [])
        # The process that runs the turn dies; its lease is still live.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(third.process.record.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            third.process.popen.wait(timeout=10)
        await on_c.channel.close()
    finally:
        third.stop()
    direct = Direct(second.addr, client)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await direct.interrupt(turn.name)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info_of(refused.value)
    assert info is not None
    assert (info.reason, info.domain) == ("TURN_OWNER_UNREACHABLE", "conversation.skm")
    assert info.metadata["turn"] == turn.name
    # Nothing was written: the turn still runs as far as anyone can tell.
    got = await direct.stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=direct.metadata, timeout=10)
    assert got.turn.state == Turn.STATE_RUNNING
    # The client retries, as told; once the lease has run out the turn is taken over and
    # the interrupt acts where it then runs.
    codes = set()
    for _ in range(120):
        try:
            interrupted = await direct.interrupt(turn.name)
            break
        except grpc.aio.AioRpcError as error:
            codes.add(error.code())
            await asyncio.sleep(0.5)
    else:
        raise AssertionError("the turn was never taken over")
    assert codes <= {grpc.StatusCode.UNAVAILABLE}
    assert interrupted.state == Turn.STATE_INTERRUPTED
    for stub, metadata in ((client.stub, client.metadata), (direct.stub, direct.metadata)):
        got = await stub.GetTurn(pb.GetTurnRequest(name=turn.name), metadata=metadata, timeout=10)
        assert got.turn.state == Turn.STATE_INTERRUPTED
    await direct.channel.close()
