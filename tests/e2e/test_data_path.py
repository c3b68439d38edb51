"""svc_gateway is not on the data path: Envoy carries a public stream straight to the service
that owns the method, which admits it itself (skm_runtime.gate). Measured as a client sees
the mesh: a live stream's frames through Envoy cost svc_gateway's process no CPU to speak
of, while they cost the owning service's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import grpc

from skm.conversation.v1 import conversation_service_pb2 as pb
from skm_stack import RunningStack
from tests.e2e.test_conversation import _tenant

CONVERSE = "/skm.conversation.v1.ConversationService/Converse"
FRAME_BYTES = 640  # 20 ms of 16 kHz 16-bit mono PCM
FRAME_SECONDS = 0.02
STREAM_SECONDS = 10.0
# What svc_gateway may spend over the whole stream (0.4 ms a frame): it is idle but for its
# own timers and anything that happens to ask it for health meanwhile (0.00 s measured on a
# dev machine). The test also asserts that the same frames cost svc_conversation, the
# process that does carry them, more than this (0.64 s measured: a gRPC message read and
# parsed, the runtime's interceptor, the session read for each ack), so the bound is one a
# process on the data path breaks, and the test can fail.
GATEWAY_CPU_BOUND = 0.2


def _frame() -> bytes:
    """A Converse message of exactly FRAME_BYTES: an ack of sequence 0 (a command
    svc_conversation runs, reads the session for and answers nothing to: 0 is never above
    the acknowledged sequence), padded with an unknown field (number 15, length-delimited)
    that the parser keeps and the servicer never looks at.

    A stand-in until svc_audio serves StreamConversation, whose frames are audio of this
    size: sent as raw bytes, since a generated message has no field to pad with."""
    ack = pb.ConverseRequest(ack=pb.AcknowledgeEvents(sequence=0)).SerializeToString()
    tag = bytes([(15 << 3) | 2])
    padding = FRAME_BYTES - len(ack) - len(tag) - 2  # a two-byte length: 128 <= padding < 16384
    length = bytes([(padding & 0x7F) | 0x80, padding >> 7])
    frame = ack + tag + length + b"\x00" * padding
    assert len(frame) == FRAME_BYTES
    parsed = pb.ConverseRequest.FromString(frame)
    assert (parsed.WhichOneof("request"), parsed.ack.sequence) == ("ack", 0)
    return frame


def _process_tree(pid: int) -> tuple[int, ...]:
    """`pid` and every process under it (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [pid], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        tree += children
        todo += children
    return tuple(tree)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process and those under it."""
    total = 0
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def test_svc_gateway_is_not_on_the_data_path(mesh: RunningStack) -> None:
    _, client = await _tenant(mesh)
    session = await client.session()
    frame = _frame()
    gateway = mesh.services["gateway"].process.pid
    conversation = mesh.services["conversation"].process.pid
    async with grpc.aio.insecure_channel(mesh.envoy_url.removeprefix("http://")) as channel:
        call = channel.stream_stream(CONVERSE)(metadata=client.metadata, timeout=120)
        await call.write(pb.ConverseRequest(session=session.name, config=pb.ConverseConfig()).SerializeToString())
        assert pb.ConverseResponse.FromString(await call.read()).HasField("attached")
        answers: list[pb.ConverseResponse] = []

        async def read() -> None:
            while (message := await call.read()) is not grpc.aio.EOF:
                answers.append(pb.ConverseResponse.FromString(message))

        reader = asyncio.create_task(read())
        gateway_before, conversation_before = _cpu_seconds(gateway), _cpu_seconds(conversation)
        frames = int(STREAM_SECONDS / FRAME_SECONDS)
        start = time.monotonic()
        for index in range(frames):
            await call.write(frame)
            await asyncio.sleep(max(0.0, start + (index + 1) * FRAME_SECONDS - time.monotonic()))
        await asyncio.sleep(0.5)  # the last frames served
        gateway_cpu = _cpu_seconds(gateway) - gateway_before
        conversation_cpu = _cpu_seconds(conversation) - conversation_before
        assert not reader.done(), reader.result()  # the stream got no error: still open
        assert [answer for answer in answers if answer.HasField("rejected")] == []
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    measured = f"{frames} frames: svc_gateway {gateway_cpu:.3f} s CPU, svc_conversation {conversation_cpu:.3f} s"
    assert conversation_cpu > GATEWAY_CPU_BOUND, f"the frames did not reach svc_conversation? {measured}"
    assert gateway_cpu < GATEWAY_CPU_BOUND, measured
