"""The voice loop's core with in-memory ports and fixture engines: turn-taking, turns started
from final transcripts, answers spoken sentence by sentence, barge-in, the browser pair's
sequence rules and relay, and the stream rules' errors.

"Speech" here is tone bursts an energy detector hears; the recogniser is scripted and the
voice a tone (tests/support/audio_fakes.py): what is checked is the loop, not the engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from skm_runtime.access import Principal
from svc_audio.core.engines import Recognition, SpeechDetection, Synthesis
from svc_audio.core.streams import VoiceStreams
from svc_audio.core.voice import VoiceConversations
from svc_audio.errors import (
    AudioAfterEnd,
    AudioSequenceGap,
    FirstMessageNotConfig,
    SessionMismatch,
    SessionNotFound,
    StreamIdle,
    UnexpectedConfig,
    VoiceStreamNotFound,
)
from svc_audio.model import (
    AgentEvent,
    AnswerAudio,
    AnswerQuality,
    ClientMessage,
    Encoding,
    RecognitionResult,
    VadParams,
    VoiceSetup,
    VoiceStarted,
    WireFormat,
)
from tests.support.audio_fakes import EnergySpeechDetector, ScriptedRecognizer, ToneSynthesizer
from tests.support.audio_memory import (
    MemoryConversations,
    MemoryDirectory,
    MemoryFeatureStore,
    MemoryPersonas,
    MemoryQualityLog,
)

pytestmark = pytest.mark.timeout(60)

RATE = 16_000
TENANT = "tenants/acme"
ANN = Principal(TENANT, f"{TENANT}/users/ann", ("member",))
FORMAT = WireFormat(Encoding.LINEAR16, RATE)
VAD = VadParams(speech_threshold=0.5, min_silence=0.3, min_speech=0.15, pad=0.1)


def burst(seconds: float, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = amplitude * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def quiet(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


class Mic:
    """Audio the test decides on as it goes; silence in between, a little faster than real time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def say(self, pcm: bytes) -> None:
        self.queue.put_nowait(pcm)

    def hang_up(self) -> None:
        self.queue.put_nowait(None)

    async def messages(self, first: ClientMessage | None) -> AsyncIterator[ClientMessage]:
        if first is not None:
            yield first
        pending = b""
        while True:
            if not pending:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = quiet(0.02)
                if item is None:
                    return
                pending = item
            chunk, pending = pending[:640], pending[640:]
            yield ClientMessage(audio=chunk)
            await asyncio.sleep(0.004)


class World:
    def __init__(self, texts: list[str], *, token_seconds: float = 0.005) -> None:
        self.conversations = MemoryConversations(token_seconds=token_seconds)
        self.quality = MemoryQualityLog()
        self.store = MemoryFeatureStore()
        self.recognizer = ScriptedRecognizer(texts)
        tone = ToneSynthesizer()
        self.voices = VoiceConversations(
            SpeechDetection(EnergySpeechDetector()),
            Recognition(self.recognizer),
            Synthesis({tone.voice.name: tone}, tone.voice.name),
            self.conversations,
            MemoryPersonas(),
            self.quality,
            vad_defaults=VAD,
            idle_seconds=2.0,
            store=self.store,
        )
        self.session = self.conversations.create(TENANT)

    def setup(self, **fields: Any) -> VoiceSetup:
        return VoiceSetup(input=FORMAT, output=fields.pop("output", FORMAT), **fields)


async def _collect(outputs: AsyncIterator[Any], into: list[Any]) -> None:
    async for output in outputs:
        into.append(output)


_running: list[asyncio.Task[None]] = []


async def _until(check: Any, seconds: float = 20.0) -> None:
    """Waits for `check()`; a failed stream fails the wait at once, with its error."""
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        for task in _running:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # checked on the line above
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def _start(outputs: AsyncIterator[Any], into: list[Any]) -> asyncio.Task[None]:
    task = asyncio.create_task(_collect(outputs, into))
    _running[:] = [task]
    return task


def _answered(outputs: list[Any], turn: str) -> bool:
    return any(isinstance(o, AnswerAudio) and o.turn == turn and o.last for o in outputs)


def _turns(outputs: list[Any]) -> list[str]:
    return list(dict.fromkeys(o.turn for o in outputs if isinstance(o, AgentEvent)))


async def test_three_utterances_start_three_turns_whose_answers_are_spoken_in_order() -> None:
    world = World(["first question", "second question", "third question"])
    mic, outputs = Mic(), []
    running = _start(
        world.voices.converse(ANN, mic.messages(ClientMessage(world.setup(), session=world.session))), outputs
    )
    for n in (1, 2, 3):
        mic.say(burst(0.6) + quiet(0.1))
        await _until(lambda n=n: len(_turns(outputs)) >= n and _answered(outputs, _turns(outputs)[n - 1]))
    mic.hang_up()
    await asyncio.wait_for(running, 20)

    assert isinstance(outputs[0], VoiceStarted)
    finals = [o for o in outputs if isinstance(o, RecognitionResult) and o.is_final]
    assert [f.text for f in finals] == ["first question", "second question", "third question"]
    turns = _turns(outputs)
    assert len(turns) == 3
    for turn, final in zip(turns, finals, strict=True):
        first_event = next(i for i, o in enumerate(outputs) if isinstance(o, AgentEvent) and o.turn == turn)
        assert outputs.index(final) < first_event
        audio = [o for o in outputs if isinstance(o, AnswerAudio) and o.turn == turn]
        assert sum(len(a.audio) for a in audio) > 0
        assert audio[-1].last
        assert not audio[-1].failure_reason
        assert [a.offset for a in audio] == sorted(a.offset for a in audio)
    qualities = [o for o in outputs if isinstance(o, AnswerQuality)]
    assert [q.turn for q in qualities] == turns
    assert all(q.quality.response_latency and q.quality.recognition_latency is not None for q in qualities)
    assert len(world.quality.reports) == 3
    contexts = world.conversations.session(world.session).policy_contexts
    assert all(0.0 <= c["agitation_score"] <= 1.0 for c in contexts)
    assert len(contexts) == 3
    assert len(world.store.points) == 3


async def test_speech_over_an_answer_interrupts_it_and_a_short_noise_does_not() -> None:
    world = World(["tell me a long story", "stop, what time is it"], token_seconds=0.15)
    mic, outputs = Mic(), []
    running = _start(
        world.voices.converse(ANN, mic.messages(ClientMessage(world.setup(), session=world.session))), outputs
    )
    mic.say(burst(0.6) + quiet(0.1))
    await _until(lambda: any(isinstance(o, AnswerAudio) and o.audio for o in outputs))
    first = _turns(outputs)[0]
    mic.say(burst(0.06) + quiet(0.3))  # a cough: shorter than the minimum speech
    await asyncio.sleep(0.4)
    assert not world.conversations.interrupted
    mic.say(burst(0.6) + quiet(0.1))
    await _until(lambda: first in world.conversations.interrupted)
    await _until(lambda: len(_turns(outputs)) >= 2 and _answered(outputs, _turns(outputs)[1]))
    mic.hang_up()
    await asyncio.wait_for(running, 20)
    stopped = [o for o in outputs if isinstance(o, AnswerAudio) and o.turn == first and o.last]
    assert stopped[0].failure_reason == "INTERRUPTED"
    states = [o.state for o in outputs if isinstance(o, AgentEvent) and o.turn == first and o.state]
    assert states[-1] == "INTERRUPTED"
    finals = [o.text for o in outputs if isinstance(o, RecognitionResult) and o.is_final]
    assert finals == ["tell me a long story", "stop, what time is it"]


async def test_a_broken_event_stream_is_resumed_after_the_last_event_seen() -> None:
    world = World(["first question", "second question"])
    world.conversations.breaks = 2
    mic, outputs = Mic(), []
    running = _start(
        world.voices.converse(ANN, mic.messages(ClientMessage(world.setup(), session=world.session))), outputs
    )
    for n in (1, 2):
        mic.say(burst(0.6) + quiet(0.1))
        await _until(lambda n=n: len(_turns(outputs)) >= n and _answered(outputs, _turns(outputs)[n - 1]))
    mic.hang_up()
    await asyncio.wait_for(running, 20)
    assert world.conversations.breaks == 0
    sequences = [o.sequence for o in outputs if isinstance(o, AgentEvent)]
    assert sequences == sorted(set(sequences)), "no event twice, none out of order"
    assert sequences == [e.sequence for e in world.conversations.session(world.session).events]


async def test_without_barge_in_the_next_utterance_waits_for_the_turn() -> None:
    world = World(["one", "two"], token_seconds=0.02)
    mic, outputs = Mic(), []
    setup = world.setup(barge_in=False)
    running = _start(world.voices.converse(ANN, mic.messages(ClientMessage(setup, session=world.session))), outputs)
    mic.say(burst(0.6) + quiet(0.4) + burst(0.6) + quiet(0.1))
    await _until(lambda: len(_turns(outputs)) >= 2 and _answered(outputs, _turns(outputs)[1]), 30)
    mic.hang_up()
    await asyncio.wait_for(running, 20)
    assert not world.conversations.interrupted
    states = [o.state for o in outputs if isinstance(o, AgentEvent) and o.state]
    assert states == ["RUNNING", "COMPLETED", "RUNNING", "COMPLETED"]


async def test_text_only_streams_get_the_session_events_and_no_audio() -> None:
    world = World(["hello"])
    mic, outputs = Mic(), []
    setup = world.setup(output=None)
    running = _start(world.voices.converse(ANN, mic.messages(ClientMessage(setup, session=world.session))), outputs)
    mic.say(burst(0.6) + quiet(0.1))
    await _until(lambda: any(isinstance(o, AnswerQuality) for o in outputs))
    mic.hang_up()
    await asyncio.wait_for(running, 20)
    assert not any(isinstance(o, AnswerAudio) for o in outputs)
    assert outputs[0] == VoiceStarted(outputs[0].voice_stream, None)


async def _run(world: World, messages: list[ClientMessage], pause: float = 0.0) -> list[Any]:
    async def source() -> AsyncIterator[ClientMessage]:
        for message in messages:
            yield message
        await asyncio.sleep(pause)

    return [o async for o in world.voices.converse(ANN, source())]


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([ClientMessage(audio=quiet(0.02))], FirstMessageNotConfig),
        ([], FirstMessageNotConfig),
        ("config twice", UnexpectedConfig),
        ("another session", SessionMismatch),
        ("unknown session", SessionNotFound),
        ("idle", StreamIdle),
    ],
)
async def test_stream_rules(messages: Any, error: type[Exception]) -> None:
    world = World([])
    config = ClientMessage(world.setup(), session=world.session)
    pause = 0.0
    if messages == "config twice":
        messages = [config, ClientMessage(audio=quiet(0.02)), config]
    elif messages == "another session":
        messages = [config, ClientMessage(audio=quiet(0.02), session=f"{TENANT}/sessions/other")]
    elif messages == "unknown session":
        messages = [ClientMessage(world.setup(), session=f"{TENANT}/sessions/nope")]
    elif messages == "idle":
        messages, pause = [config, ClientMessage(audio=quiet(0.02))], 3.0
    with pytest.raises(error):
        await _run(world, messages, pause)
    assert world.conversations.session(world.session).events == []


class LocalRelay:
    """Relays to another replica in the same process, as GrpcRelay does over the network."""

    def __init__(self) -> None:
        self.replicas: dict[str, VoiceStreams] = {}

    async def push(
        self, holder: str, principal: Principal, voice_stream: str, sequence: int, audio: bytes, last: bool
    ) -> int:
        return await self.replicas[holder].push(principal, voice_stream, sequence, audio, last, relayed=True)


async def test_the_browser_pair_takes_chunks_in_sequence_on_any_replica() -> None:
    world = World(["pushed question"])
    directory, relay = MemoryDirectory(), LocalRelay()
    one = VoiceStreams(world.voices, directory, relay, "one:1")
    two = VoiceStreams(world.voices, directory, relay, "two:2")
    relay.replicas = {"one:1": one, "two:2": two}
    outputs: list[Any] = []
    reader = _start(one.open(ANN, world.session, world.setup()), outputs)
    await _until(lambda: bool(outputs))
    name = outputs[0].voice_stream
    speech = burst(0.6) + quiet(0.5)
    pieces = [speech[i : i + 3200] for i in range(0, len(speech), 3200)]
    for number, piece in enumerate(pieces, start=1):
        assert await two.push(ANN, name, number, piece, False, relayed=False) == number
        if number == 2:
            assert await two.push(ANN, name, 1, pieces[0], False, relayed=False) == 2  # a retry
            with pytest.raises(AudioSequenceGap) as gap:
                await two.push(ANN, name, 5, piece, False, relayed=False)
            assert gap.value.metadata["expected_sequence"] == "3"
        await asyncio.sleep(0.02)
    assert await two.push(ANN, name, len(pieces) + 1, b"", True, relayed=False) == len(pieces) + 1
    with pytest.raises(AudioAfterEnd):
        await one.push(ANN, name, len(pieces) + 2, pieces[0], False, relayed=False)
    with pytest.raises(VoiceStreamNotFound):
        await two.push(Principal("tenants/other", "tenants/other/users/x"), name, 1, pieces[0], False, relayed=False)
    await asyncio.wait_for(reader, 20)
    assert [o.text for o in outputs if isinstance(o, RecognitionResult) and o.is_final] == ["pushed question"]
    assert any(isinstance(o, AnswerAudio) and o.last for o in outputs)
    with pytest.raises(VoiceStreamNotFound):
        await two.push(ANN, name, 1, pieces[0], False, relayed=False)
    assert name not in directory.holders
