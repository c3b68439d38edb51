"""CPU per forwarded 640-byte frame on the path from Envoy to the service that owns the stream.

A voice client will stream 20 ms audio frames (640 bytes of 16 kHz PCM) on one bidi stream
through Envoy to the service that owns it. Until svc_audio exists, ConversationService.Converse
stands in: the stream is opened (first message: the session and its config) through Envoy
with the bearer token (admission in svc_conversation as the stream opens, policy on the
first message) and, in alternating rounds, straight to svc_conversation with a principal
signed with the mesh key (no admission). Then N frames are written back to back, each a
Converse `ack` message padded to 640 bytes with an unknown length-delimited field (number
15; parsers keep unknown fields and nothing reads them): the smallest command that
produces no reply, so the frames flow one way as audio will. They are sent as raw bytes on
`channel.stream_stream(path)` without serializers, so the client spends nothing encoding
them and the wire carries exactly 640-byte messages.

Each ack names sequence 0, never above the session's acknowledged sequence, so
svc_conversation writes nothing; but it reads the session from PostgreSQL first (the
handle brought up to what is stored, one SELECT of the session and its newest turn, as
`Sessions.acknowledge` does for every ack), and the stream's commands run one after the
other. That read is the service's work, not the path's: it is the same on both paths, and
shown apart (svc_conversation's CPU on the direct path, and PostgreSQL's). It bounds the
frames/s too (one PostgreSQL round trip a frame), so frames/s is the service's rate, not
the path's; a real-time voice stream needs 50 frames/s.

The stream is drained before the CPU is read: after the N frames comes a sentinel command,
interrupt_turn naming a turn that cannot exist (".../turns/sentinel"), which fails before
touching any store and is answered `rejected` with its request_id; commands are served in
order, so its answer means every frame before it has been. CPU: user + system time of each
process (PostgreSQL: its postmaster and backends) from the first frame written to that
answer, less its idle rate (a second sampled with the stream open and quiet before each
path's frames, pooled over the rounds) times that time, per frame.

Usage: python -m bench frames [--rounds N] [--frames N]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence

import grpc

from bench.conversation import ConversationStub, Metadata, _create_session, _new_user
from bench.gateway import path_processes, path_stack
from bench.measure import CpuMeter, CpuRun
from skm.conversation.v1 import conversation_service_pb2 as pb
from skm_stack import RunningStack

CONVERSE = "/skm.conversation.v1.ConversationService/Converse"
FRAME_BYTES = 640  # 20 ms of 16 kHz 16-bit mono PCM
_PADDING_FIELD = 15  # not a field of ConverseRequest: kept as unknown, never read
_WARM_FRAMES = 50
_IDLE_SECONDS = 1.0
_PATHS = {
    "direct": "direct: svc_conversation, mesh principal",
    "envoy": "envoy: Envoy -> svc_conversation, token",
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def padded_ack(size: int = FRAME_BYTES) -> bytes:
    """A ConverseRequest carrying `ack` (sequence 0), padded to exactly `size` bytes with
    an unknown length-delimited field."""
    ack = pb.ConverseRequest(ack=pb.AcknowledgeEvents(sequence=0)).SerializeToString()
    tag = _varint(_PADDING_FIELD << 3 | 2)
    for length in range(size, -1, -1):
        frame = ack + tag + _varint(length) + b"\x00" * length
        if len(frame) == size:
            parsed = pb.ConverseRequest.FromString(frame)
            if parsed.WhichOneof("request") != "ack" or parsed.ack.sequence != 0:
                raise ValueError("the padded frame does not parse as an ack of sequence 0")
            return frame
    raise ValueError(f"no ack pads to {size} bytes")


class _Converse:
    """One Converse stream of raw bytes; its answers read in the background."""

    def __init__(self, channel: grpc.aio.Channel, session: str, metadata: Metadata) -> None:
        self.session = session
        self.call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(CONVERSE)(
            metadata=metadata, timeout=600
        )
        self._waiting: dict[str, asyncio.Future[pb.CommandRejected]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        first = pb.ConverseRequest(session=self.session, config=pb.ConverseConfig())
        await self.call.write(first.SerializeToString())
        raw = await self.call.read()
        if not isinstance(raw, bytes) or not pb.ConverseResponse.FromString(raw).HasField("attached"):
            raise RuntimeError("Converse did not start with `attached`")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.call.read()
                if not isinstance(raw, bytes):  # grpc.aio.EOF
                    raise RuntimeError("the Converse stream ended")
                reply = pb.ConverseResponse.FromString(raw)
                if reply.HasField("rejected"):
                    waiting = self._waiting.pop(reply.rejected.request_id, None)
                    if waiting is None:
                        raise RuntimeError(f"a frame was rejected: {reply.rejected.reason} {reply.rejected.message}")
                    waiting.set_result(reply.rejected)
                # Events (a replay of the session's, none here) are read and dropped.
        except BaseException as error:
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(error if isinstance(error, Exception) else RuntimeError("stream closed"))
            raise

    async def drained(self) -> None:
        """Sends the sentinel and waits for its answer: every frame before it has been served."""
        request_id = str(uuid.uuid4())
        answer: asyncio.Future[pb.CommandRejected] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        sentinel = pb.ConverseRequest(
            interrupt_turn=pb.InterruptTurnRequest(name=f"{self.session}/turns/sentinel", request_id=request_id)
        )
        await self.call.write(sentinel.SerializeToString())
        assert self._reader is not None  # opened
        # The reader ends only on an error (the stream's, or a rejected frame): raise it.
        await asyncio.wait((answer, self._reader), timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if self._reader.done():
            self._reader.result()
        if not answer.done():
            raise TimeoutError("the sentinel got no answer within 300 s")
        rejected = answer.result()
        if rejected.reason != "TURN_NOT_FOUND":
            raise RuntimeError(f"the sentinel was answered {rejected.reason}, not TURN_NOT_FOUND")

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


async def _measure(stack: RunningStack, rounds: int, frames: int) -> None:
    if stack.envoy is None:
        raise RuntimeError("the stack runs no Envoy")
    user = await _new_user(stack)
    processes = path_processes(stack)
    meter = CpuMeter(processes)
    targets: Mapping[str, tuple[str, Metadata]] = {
        "direct": (stack.services["conversation"].addr, user.forwarded),
        "envoy": (stack.envoy_url.removeprefix("http://"), user.bearer),
    }
    channels = {name: grpc.aio.insecure_channel(addr) for name, (addr, _) in targets.items()}
    frame = padded_ack()
    runs: dict[str, list[CpuRun]] = {name: [] for name in targets}
    try:
        for channel in channels.values():
            await asyncio.wait_for(channel.channel_ready(), 20)
        session = await _create_session(ConversationStub(channels["direct"]), user, user.forwarded)
        for index in range(rounds):
            print(f"frames round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            # Alternate which path goes first, so drift falls on both alike.
            order = list(targets) if index % 2 == 0 else list(targets)[::-1]
            for name in order:
                stream = _Converse(channels[name], session, targets[name][1])
                try:
                    await stream.open()
                    for _ in range(_WARM_FRAMES):  # warm the stream and the session's handle
                        await stream.call.write(frame)
                    await stream.drained()
                    await meter.sample_idle(_IDLE_SECONDS)
                    before, started = meter.read(), time.perf_counter()
                    for _ in range(frames):
                        await stream.call.write(frame)
                    await stream.drained()
                    runs[name].append(meter.since(before, started, frames))
                finally:
                    await stream.close()
    finally:
        for channel in channels.values():
            await channel.close()
    _print(rounds, frames, list(processes), runs, meter)


def _print(
    rounds: int, frames: int, processes: Sequence[str], runs: Mapping[str, list[CpuRun]], meter: CpuMeter
) -> None:
    cpu = {name: [meter.per_call(run) for run in path_runs] for name, path_runs in runs.items()}
    rates = {name: [run.count / run.elapsed for run in path_runs] for name, path_runs in runs.items()}

    def us(name: str, process: str) -> float:
        return statistics.median(run[process] for run in cpu[name]) * 1e6

    print(
        f"\nConverse, {FRAME_BYTES}-byte frames (an ack padded with unknown field {_PADDING_FIELD}) written back to"
        f" back on one stream: median of {rounds} alternating rounds, {frames} frames a path each\n"
    )
    print(f"  {'':<42}{'frames/s':>9}   CPU us a frame:" + "".join(f"{proc:>13}" for proc in processes))
    for name, label in _PATHS.items():
        print(
            f"  {label:<42}{statistics.median(rates[name]):9.0f}   {'':<15}"
            + "".join(f"{us(name, proc):13.1f}" for proc in processes)
        )
    envoy, extra = us("envoy", "envoy"), us("envoy", "conversation") - us("direct", "conversation")
    lines = (
        ("the path's CPU a frame (Envoy + svc_conversation's extra on it)", f"{envoy + extra:6.1f} us"),
        ("  Envoy", f"{envoy:6.1f} us"),
        ("  svc_conversation, envoy - direct", f"{extra:+6.1f} us"),
        ("  svc_gateway (not on the path, so ~0)", f"{us('envoy', 'gateway'):6.1f} us"),
        (
            "the service's own work a frame (direct: svc_conversation + PostgreSQL)",
            f"{us('direct', 'conversation'):6.1f} us + {us('direct', 'postgres'):.1f} us",
        ),
    )
    print()
    for label, value in lines:
        print(f"  {label:<72}{value}")
    print(
        "\n  An ack costs svc_conversation a read of the session from PostgreSQL (one SELECT; sequence 0 is never"
        "\n    above the acknowledged one, so nothing is written), one after the other on the stream: that is the"
        "\n    service's work, the same on both paths, and it bounds frames/s (real time: 50 frames/s a stream)."
        "\n  CPU: the run time (user + system) of each process's threads (/proc schedstat, in ns) from the first"
        "\n    frame to the sentinel's answer (every frame served), less the process's idle rate times that time,"
        "\n    per frame; the client not counted. Idle CPU subtracted (us per second of wall time, over"
        f" {2 * rounds} x {_IDLE_SECONDS:.0f} s):\n    "
        + ", ".join(f"{proc} {rate * 1e6:.0f}" for proc, rate in meter.idle_rates().items())
    )


def main(rounds: int = 5, frames: int = 2000) -> None:
    """Starts the path's servers and services, measures, prints, stops them."""
    print("\n== frames: CPU per forwarded 640-byte frame, Envoy -> svc_conversation against direct ==", flush=True)
    with path_stack("skm-bench-frames-") as stack:
        asyncio.run(_measure(stack, rounds, frames))
