"""Voice conversations through Envoy, with the real models: Silero VAD, Whisper tiny.en, the
piper voice, and the real Qwen2.5 0.5B answering (on the test's own engine).

The user's speech is espeak-ng's, streamed in real time as 20 ms chunks of 16 kHz LINEAR16;
the client waits for each answer to finish before it speaks again, as a person would, except
where it barges in on purpose. Answers come back as 16 kHz audio, which the test transcribes
itself. Figures (WER, latencies) are printed; run with `pytest -s` to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from faster_whisper import WhisperModel

from skm.audio.v1 import audio_service_pb2 as pb
from skm.audio.v1 import audio_service_pb2_grpc, recognition_pb2
from skm.conversation.v1 import conversation_service_pb2 as conv_pb
from skm.conversation.v1 import turn_pb2
from skm.type.v1 import audio_format_pb2
from skm_runtime.principal import FORWARDED_BY_KEY, principal_message, principal_metadata
from skm_runtime.server import signed_channel
from skm_runtime.status import error_info_of
from skm_stack import RunningStack
from skm_stack.catalogue import installed_path
from skm_stack.services import ServiceProcess, start_service
from svc_audio.wer import word_error_rate
from tests.e2e.test_conversation import Client
from tests.e2e.test_real_model import _tenant_on_the_real_model
from tests.integration.test_audio_service import RATE, chunks, espeak, silence
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(600)

LINEAR16 = audio_format_pb2.AUDIO_ENCODING_LINEAR16
FORMAT = audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=RATE)
Turn = turn_pb2.Turn
CHUNK = 640  # 20 ms


@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    return WhisperModel(str(installed_path("whisper-tiny.en")), device="cpu", compute_type="int8")


def _hear(model: WhisperModel, pcm: bytes) -> str:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    segments, _ = model.transcribe(samples, language="en", beam_size=5, temperature=0.0)
    return " ".join(s.text.strip() for s in segments)


@dataclass
class Received:
    """What a voice stream sent, with the monotonic time each event arrived."""

    events: list[pb.VoiceEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: pb.VoiceEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self.changed.set()

    def kinds(self) -> list[str]:
        return [e.WhichOneof("event") or "" for e in self.events]

    def finals(self) -> list[recognition_pb2.RecognitionResult]:
        return [
            e.recognition_result
            for e in self.events
            if e.HasField("recognition_result") and e.recognition_result.is_final
        ]

    def turns(self) -> list[str]:
        seen: list[str] = []
        for e in self.events:
            if e.HasField("session_event") and e.session_event.turn not in seen:
                seen.append(e.session_event.turn)
        return seen

    def audio(self, turn: str) -> bytes:
        return b"".join(
            e.synthesized_audio.audio
            for e in self.events
            if e.HasField("synthesized_audio") and e.synthesized_audio.turn == turn
        )

    def answered(self, turn: str) -> bool:
        return any(
            e.HasField("synthesized_audio") and e.synthesized_audio.turn == turn and e.synthesized_audio.last
            for e in self.events
        )

    def state_of(self, turn: str) -> list[int]:
        return [
            e.session_event.turn_state_changed.state
            for e in self.events
            if e.HasField("session_event")
            and e.session_event.turn == turn
            and e.session_event.HasField("turn_state_changed")
        ]

    async def until(self, check: Any, seconds: float = 120.0) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; got {self.kinds()[-30:]}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


class Speaker:
    """A client that streams audio in real time, 20 ms a chunk, silence when it has nothing to say."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent_seconds = 0.0
        self.closed = False

    def say(self, pcm: bytes) -> None:
        self.queue.put_nowait(pcm)

    def hang_up(self) -> None:
        self.queue.put_nowait(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        started = time.monotonic()
        pending = b""
        while True:
            if not pending:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = silence(0.02)
                if item is None:
                    return
                pending = item
            chunk, pending = pending[:CHUNK], pending[CHUNK:]
            yield chunk
            self.sent_seconds += len(chunk) / 2 / RATE
            delay = started + self.sent_seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


def _voice_config(**fields: Any) -> pb.VoiceConfig:
    return pb.VoiceConfig(input_format=FORMAT, output_format=FORMAT, language_code="en-US", **fields)


async def _converse(
    stub: Any, metadata: Any, session: str, speaker: Speaker, received: Received, **config: Any
) -> None:
    async def requests() -> AsyncIterator[pb.StreamConversationRequest]:
        yield pb.StreamConversationRequest(session=session, config=_voice_config(**config))
        async for chunk in speaker.chunks():
            yield pb.StreamConversationRequest(audio=chunk)

    call = stub.StreamConversation(requests(), metadata=metadata, timeout=540)
    async for response in call:
        received.add(response.event)


def _answer_of(received: Received, turn: str) -> str:
    return " ".join(
        e.session_event.final_response.text
        for e in received.events
        if e.HasField("session_event") and e.session_event.turn == turn and e.session_event.HasField("final_response")
    )


def _audio_stub(client: Client) -> audio_service_pb2_grpc.AudioServiceStub:
    return audio_service_pb2_grpc.AudioServiceStub(client.channel)


async def test_three_spoken_questions_get_three_spoken_answers_in_contract_order(
    mesh: RunningStack, real_engine: RunningStack, whisper: WhisperModel
) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    session = await client.session()
    questions = ["What is the capital of France?", "What color is the sky on a clear day?", "Say hello to my friend."]
    speaker, received = Speaker(), Received()
    conversation = asyncio.create_task(_converse(_audio_stub(client), client.metadata, session.name, speaker, received))
    for number, question in enumerate(questions, start=1):
        speaker.say(espeak(question) + silence(0.2))
        await received.until(
            lambda n=number: len(received.turns()) >= n and received.answered(received.turns()[n - 1]), 240
        )
    speaker.hang_up()
    await asyncio.wait_for(conversation, 120)  # ends with OK after the half-close

    kinds = received.kinds()
    assert kinds[0] == "started"
    assert received.events[0].started.voice_stream.startswith(f"{session.name}/voiceStreams/")
    finals = received.finals()
    assert [f.utterance for f in finals] == [1, 2, 3], kinds
    wers = [word_error_rate(q, f.transcript) for q, f in zip(questions, finals, strict=True)]
    print("final transcripts:", [f.transcript for f in finals], "WER:", [round(w, 3) for w in wers])
    assert sum(wers) / 3 <= 0.25
    turns = received.turns()
    assert len(turns) == 3
    for number, turn in enumerate(turns, start=1):
        # The utterance's events come before the turn it starts; the turn's events are in order.
        final_at = next(
            i
            for i, e in enumerate(received.events)
            if e.HasField("recognition_result")
            and e.recognition_result.is_final
            and e.recognition_result.utterance == number
        )
        own = [i for i, e in enumerate(received.events) if e.HasField("session_event") and e.session_event.turn == turn]
        assert final_at < own[0]
        sequences = [received.events[i].session_event.sequence for i in own]
        assert sequences == sorted(sequences)
        assert received.state_of(turn)[0] == Turn.STATE_RUNNING
        assert received.state_of(turn)[-1] == Turn.STATE_COMPLETED
        answer = next(
            received.events[i].session_event.final_response.text
            for i in own
            if received.events[i].session_event.HasField("final_response")
        )
        spoken = received.audio(turn)
        assert len(spoken) > RATE  # more than half a second of speech
        heard = _hear(whisper, spoken)
        print(f"turn {number}: answer {answer!r}; heard back {heard!r}; WER {word_error_rate(answer, heard):.3f}")
        assert word_error_rate(answer, heard) <= 0.5
        offsets = [
            e.synthesized_audio.offset.ToNanoseconds()
            for e in received.events
            if e.HasField("synthesized_audio") and e.synthesized_audio.turn == turn
        ]
        assert offsets == sorted(offsets)
    qualities = [e.quality_metrics for e in received.events if e.HasField("quality_metrics")]
    assert len(qualities) == 3
    for q in qualities:
        assert q.response_latency.ToNanoseconds() > 0
        assert q.recognition_latency.ToNanoseconds() > 0
        assert q.HasField("recognition_real_time_factor")
        assert q.HasField("synthesis_real_time_factor")
        final_ms = q.recognition_latency.ToNanoseconds() / 1e6
        token_ms = q.first_token_latency.ToNanoseconds() / 1e6
        audio_ms = q.response_latency.ToNanoseconds() / 1e6
        print(
            f"speech end -> final {final_ms:.0f} ms, first token {token_ms:.0f} ms after sending, "
            f"speech end -> first audio {audio_ms:.0f} ms"
        )


async def test_speaking_over_an_answer_stops_it_and_the_new_question_is_answered(
    mesh: RunningStack, real_engine: RunningStack
) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    session = await client.session()
    speaker, received = Speaker(), Received()
    conversation = asyncio.create_task(_converse(_audio_stub(client), client.metadata, session.name, speaker, received))
    # An answer that takes the model seconds to write, so that it is still running when the
    # user speaks over its first sentence.
    speaker.say(espeak("Count from one to one hundred, writing every number as a word.") + silence(0.2))
    await received.until(
        lambda: any(e.HasField("synthesized_audio") and e.synthesized_audio.audio for e in received.events), 240
    )
    first = received.turns()[0]
    spoke_at = time.monotonic()
    speaker.say(espeak("What is the capital of France?") + silence(0.2))
    await received.until(lambda: Turn.STATE_INTERRUPTED in received.state_of(first) or len(received.turns()) > 1, 60)
    assert Turn.STATE_INTERRUPTED in received.state_of(first), (received.state_of(first), _answer_of(received, first))
    interrupted_at = received.times[
        next(
            i
            for i, e in enumerate(received.events)
            if e.HasField("session_event")
            and e.session_event.turn == first
            and e.session_event.turn_state_changed.state == Turn.STATE_INTERRUPTED
        )
    ]
    barge_in_ms = (interrupted_at - spoke_at) * 1000
    print(f"barge-in: first chunk of speech sent -> turn INTERRUPTED seen by the client: {barge_in_ms:.0f} ms")
    await received.until(lambda: len(received.turns()) >= 2 and received.answered(received.turns()[1]), 240)
    speaker.hang_up()
    await asyncio.wait_for(conversation, 120)
    index = received.events.index(
        next(
            e
            for e in received.events
            if e.HasField("session_event")
            and e.session_event.turn == first
            and e.session_event.turn_state_changed.state == Turn.STATE_INTERRUPTED
        )
    )
    after = [
        e
        for e in received.events[index + 1 :]
        if e.HasField("synthesized_audio") and e.synthesized_audio.turn == first and e.synthesized_audio.audio
    ]
    assert not after, "no audio of the interrupted turn after it was interrupted"
    second = received.turns()[1]
    assert received.state_of(second)[-1] == Turn.STATE_COMPLETED
    assert "france" in received.finals()[-1].transcript.lower()


@pytest.fixture(scope="module")
def second_audio(mesh: RunningStack) -> Iterator[ServiceProcess]:
    """Another svc_audio replica on the mesh's stores, with its own address and Qdrant folder."""
    spec = next(s for s in mesh.service_specs if s.name == "audio")
    addr = f"127.0.0.1:{free_port()}"
    spec = replace(
        spec,
        port=int(addr.rpartition(":")[2]),
        extra_env={
            **spec.extra_env,
            spec.addr_env_var: addr,
            "SKM_AUDIO_QDRANT_LOCATION": str(mesh.state_dir / "audio" / "qdrant-second"),
        },
    )
    process = start_service(spec, mesh.state_dir, mesh.service_env())
    try:
        yield process
    finally:
        process.stop()


def _direct(addr: str, client: Client) -> tuple[grpc.aio.Channel, audio_service_pb2_grpc.AudioServiceStub, Any]:
    """A replica called directly, with the principal a gateway would forward for the client."""
    principal = principal_message(client.tenant, f"{client.tenant}/users/alice", ("member",))
    metadata = (*principal_metadata(principal), (FORWARDED_BY_KEY, "gateway"))
    channel = signed_channel(addr)
    return channel, audio_service_pb2_grpc.AudioServiceStub(channel), metadata


async def test_the_browser_pair_across_two_replicas_answers_as_the_bidi_stream_does(
    mesh: RunningStack, second_audio: ServiceProcess
) -> None:
    from tests.e2e.test_conversation import _tenant

    _, client = await _tenant(mesh)
    session = await client.session()
    question = espeak("Turn off the lights when you leave the room.") + silence(1.0)
    # The event half through Envoy (the mesh's replica), the push half to the other replica.
    received = Received()
    events = _audio_stub(client).StreamVoiceEvents(
        pb.StreamVoiceEventsRequest(session=session.name, config=_voice_config(disable_barge_in=True)),
        metadata=client.metadata,
        timeout=300,
    )

    async def read() -> None:
        async for response in events:
            received.add(response.event)

    reader = asyncio.create_task(read())
    await received.until(lambda: bool(received.events), 30)
    stream = received.events[0].started.voice_stream
    channel, other, metadata = _direct(second_audio.spec.addr, client)
    async with channel:
        pieces = chunks(question, 3200)  # 100 ms a chunk
        sequence = 0
        for number, piece in enumerate(pieces, start=1):
            reply = await other.PushAudio(
                pb.PushAudioRequest(voice_stream=stream, sequence=number, audio=piece), metadata=metadata, timeout=10
            )
            sequence = reply.accepted_sequence
            assert sequence == number
            if number == 3:  # a retry of what is in already: acknowledged, ignored
                again = await other.PushAudio(
                    pb.PushAudioRequest(voice_stream=stream, sequence=2, audio=pieces[1]), metadata=metadata, timeout=10
                )
                assert again.accepted_sequence == 3
                with pytest.raises(grpc.aio.AioRpcError) as gap:
                    await other.PushAudio(
                        pb.PushAudioRequest(voice_stream=stream, sequence=9, audio=piece), metadata=metadata, timeout=10
                    )
                assert gap.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                info = error_info_of(gap.value)
                assert info.reason == "AUDIO_SEQUENCE_GAP"
                assert info.metadata["expected_sequence"] == "4"
            await asyncio.sleep(0.1)
        await other.PushAudio(
            pb.PushAudioRequest(voice_stream=stream, sequence=sequence + 1, last=True), metadata=metadata, timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as after_end:
            await other.PushAudio(
                pb.PushAudioRequest(voice_stream=stream, sequence=sequence + 2, audio=pieces[0]),
                metadata=metadata,
                timeout=10,
            )
        assert error_info_of(after_end.value).reason == "AUDIO_AFTER_END"
        await asyncio.wait_for(reader, 240)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await other.PushAudio(
                pb.PushAudioRequest(voice_stream=stream, sequence=1, audio=pieces[0]), metadata=metadata, timeout=10
            )
        assert error_info_of(gone.value).reason == "VOICE_STREAM_NOT_FOUND"
    pushed = received
    # The same speech over the bidi stream, on a fresh session.
    bidi_session = await client.session()
    speaker, bidi = Speaker(), Received()
    conversation = asyncio.create_task(
        _converse(_audio_stub(client), client.metadata, bidi_session.name, speaker, bidi, disable_barge_in=True)
    )
    speaker.say(question)
    await bidi.until(lambda: bool(bidi.turns()) and bidi.answered(bidi.turns()[0]), 240)
    speaker.hang_up()
    await asyncio.wait_for(conversation, 120)
    assert [f.transcript for f in pushed.finals()] == [f.transcript for f in bidi.finals()]

    def shape(r: Received) -> list[str]:
        return [k if k != "session_event" else "session_event" for k in dict.fromkeys(r.kinds())]

    assert shape(pushed) == shape(bidi)
    assert pushed.state_of(pushed.turns()[0])[-1] == Turn.STATE_COMPLETED
    assert pushed.audio(pushed.turns()[0])


async def test_a_killed_replica_loses_no_turn_and_runs_none_twice(
    mesh: RunningStack, second_audio: ServiceProcess
) -> None:
    from tests.e2e.test_conversation import _tenant

    _, client = await _tenant(mesh)
    session = await client.session()
    speaker, received = Speaker(), Received()
    conversation = asyncio.create_task(
        _converse(_audio_stub(client), client.metadata, session.name, speaker, received, disable_barge_in=True)
    )
    speaker.say(espeak("Please send me the report before the meeting.") + silence(0.3))
    await received.until(lambda: bool(received.turns()), 120)
    mesh.restart_service("audio", kill=True)  # mid-turn: its stream dies with it
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(conversation, 60)
    # The client reconnects, to the other replica, and goes on.
    channel, other, metadata = _direct(second_audio.spec.addr, client)
    async with channel:
        speaker2, after = Speaker(), Received()
        again = asyncio.create_task(_converse(other, metadata, session.name, speaker2, after, disable_barge_in=True))
        await after.until(lambda: bool(after.events), 30)
        speaker2.say(espeak("Turn off the lights when you leave the room.") + silence(0.3))
        await after.until(lambda: any(t != received.turns()[0] and after.answered(t) for t in after.turns()), 240)
        speaker2.hang_up()
        await asyncio.wait_for(again, 120)
    listed = await client.stub.ListTurns(
        conv_pb.ListTurnsRequest(parent=session.name), metadata=client.metadata, timeout=10
    )
    texts = [t.input_text for t in listed.turns]
    assert len(texts) == 2, texts
    assert len(set(texts)) == 2


async def test_bad_voice_streams_get_their_own_status_and_leave_the_session_untouched(mesh: RunningStack) -> None:
    from tests.e2e.test_conversation import _tenant

    _, client = await _tenant(mesh)
    session = await client.session()
    stub = _audio_stub(client)

    async def refused(messages: list[pb.StreamConversationRequest], pause: float = 0.0) -> tuple[Any, str]:
        async def requests() -> AsyncIterator[pb.StreamConversationRequest]:
            for message in messages:
                yield message
            if pause:
                await asyncio.sleep(pause)

        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in stub.StreamConversation(requests(), metadata=client.metadata, timeout=60):
                pass
        info = error_info_of(error.value)
        return error.value.code(), info.reason if info else ""

    config = pb.StreamConversationRequest(session=session.name, config=_voice_config())
    audio = pb.StreamConversationRequest(audio=silence(0.02))
    other_tenant = pb.StreamConversationRequest(session="tenants/elsewhere/sessions/x", config=_voice_config())
    unknown = pb.StreamConversationRequest(session=f"{client.tenant}/sessions/{uuid.uuid4()}", config=_voice_config())
    # Admission reads the session from the first message: without one, it refuses the stream.
    assert await refused([audio]) == (grpc.StatusCode.INVALID_ARGUMENT, "RESOURCE_NAME_INVALID")
    audio_first = pb.StreamConversationRequest(session=session.name, audio=silence(0.02))
    assert await refused([audio_first]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIRST_MESSAGE_NOT_CONFIG")
    assert await refused([config, audio, config]) == (grpc.StatusCode.INVALID_ARGUMENT, "UNEXPECTED_CONFIG")
    bad_rate = pb.StreamConversationRequest(
        session=session.name,
        config=pb.VoiceConfig(input_format=audio_format_pb2.AudioFormat(encoding=LINEAR16, sample_rate_hertz=12_345)),
    )
    assert await refused([bad_rate]) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_AUDIO_FORMAT")
    assert await refused([config, pb.StreamConversationRequest(audio=b"\x00" * 641)]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "AUDIO_EMPTY",
    )
    assert await refused([config, pb.StreamConversationRequest(audio=bytes(40_000))]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "AUDIO_CHUNK_TOO_LARGE",
    )
    assert await refused(
        [config, pb.StreamConversationRequest(session=f"{client.tenant}/sessions/other", audio=silence(0.02))]
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "SESSION_MISMATCH")
    # Policy answers before the session is looked up: no relationship to it, no access.
    assert (await refused([unknown]))[0] in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    assert (await refused([other_tenant]))[0] in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    assert await refused([config, audio], pause=5.0) == (grpc.StatusCode.DEADLINE_EXCEEDED, "STREAM_IDLE")
    found = await client.stub.GetSession(
        conv_pb.GetSessionRequest(name=session.name), metadata=client.metadata, timeout=10
    )
    assert found.session.last_sequence == session.last_sequence, "nothing was written to the session"


async def test_skm_voice_speaks_a_wav_file_and_keeps_the_answer(
    mesh: RunningStack, real_engine: RunningStack, tmp_path: Path
) -> None:
    client = await _tenant_on_the_real_model(mesh, real_engine)
    question = tmp_path / "question.wav"
    with wave.open(str(question), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(espeak("What is the capital of France?"))
    answer = tmp_path / "answer.wav"
    env = {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": client.token}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "skm_cli", "voice", "--in", str(question), "--out", str(answer), "--fast", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    finals = [e["recognitionResult"]["transcript"] for e in events if e.get("recognitionResult", {}).get("isFinal")]
    assert len(finals) == 1
    assert "capital" in finals[0].lower()
    assert "france" in finals[0].lower()
    responses = [
        e["sessionEvent"]["finalResponse"]["text"] for e in events if "finalResponse" in e.get("sessionEvent", {})
    ]
    assert responses
    assert "Paris" in responses[0]
    with wave.open(str(answer), "rb") as spoken:
        assert (spoken.getnchannels(), spoken.getframerate()) == (1, RATE)
        assert spoken.getnframes() > 0.3 * RATE
    assert "written to" in run.stderr
    voices = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "skm_cli", "voice", "--list-voices", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert voices.returncode == 0, voices.stderr
    assert "voices/en_US-joe-medium" in [json.loads(line)["name"] for line in voices.stdout.splitlines()]
