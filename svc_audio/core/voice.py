"""Voice conversations: a user's speech in, the agent's spoken answers out (StreamConversation,
and the browser pair StreamVoiceEvents + PushAudio).

One `VoiceCall` per stream runs three things side by side:

- the input: client audio, checked and brought to 16 kHz, through speech detection and
  recognition (`UtteranceStream`);
- the session: svc_conversation's events of the session from the moment the stream opened;
  the events of the turns this stream follows are passed on, their tokens cut into sentences;
- the answer: each sentence synthesised as soon as it is complete, so the first audio leaves
  while the model still writes.

A final transcript becomes a user message (SendMessage, request id derived from the voice
stream and the utterance, so a retry never starts a second turn), with the utterance's
agitation score as policy context. Barge-in: when speech starts while an answer is being
produced or played, the answer's audio stops at once and the turn is interrupted
(InterruptTurn); the session's INTERRUPTED event tells the client which audio to drop. With
barge-in disabled, transcripts that arrive during a turn wait and are sent when it ends.
Noise shorter than the minimum speech duration starts no utterance, so it interrupts nothing.

Per answered utterance, quality: speech end -> final transcript -> first agent token -> first
audio byte, the recogniser's and the voice's real-time factors; sent to the client and logged
as an AudioQualityMeasured event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from svc_audio.core.engines import Recognition, SpeechDetection, Synthesis
from svc_audio.core.recognition import RecognitionOptions, UtteranceStream, check_language
from svc_audio.core.replies import ReplyText
from svc_audio.core.sentences import SentenceCutter, speakable
from svc_audio.core.speech import AudioInput, LagObserver, first_setup, pump, storing, stream_format, vad_params
from svc_audio.core.synthesis import Utterer, output_format, persona_style
from svc_audio.errors import FirstMessageNotConfig, SessionMismatch, SynthesizerUnavailable, UnsupportedAudioFormat
from svc_audio.model import (
    TURN_ENDED,
    AgentEvent,
    AgentEventKind,
    AnswerAudio,
    AnswerQuality,
    AudioFormat,
    ClientMessage,
    PersonaVoice,
    Quality,
    QualityReport,
    Utterance,
    VadParams,
    VoiceOutput,
    VoiceSetup,
    VoiceStarted,
)
from svc_audio.ports import Conversations, FeatureStore, Personas, QualityLog

log = logging.getLogger("skm.audio.voice")

# Times in a row the session's event stream may break (and be resumed) before the voice
# stream gives up.
_EVENT_RETRIES = 5
# Turns whose events are kept while nobody follows them yet.
_UNCLAIMED_TURNS = 8

_REQUEST_IDS = uuid.UUID("2b7e1c55-0d7e-4c4e-9a51-3f0f0c6d7a10")

# Times in a row the session's event stream may break (and be resumed) before the voice
# stream gives up.
_EVENT_RETRIES = 5
# Turns whose events are kept while nobody follows them yet.
_UNCLAIMED_TURNS = 8

_REQUEST_IDS = uuid.UUID("2b7e1c55-0d7e-4c4e-9a51-3f0f0c6d7a10")


@dataclass(slots=True)
class _Answer:
    """One turn this stream follows: its sentences, its speaker task, its timings."""

    turn: str
    utterance: Utterance | None
    sent_at: float
    cutter: SentenceCutter = field(default_factory=SentenceCutter)
    sentences: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    spoken_text: str = ""
    reply: ReplyText = field(default_factory=ReplyText)
    iteration: int = 0
    first_token_at: float | None = None
    speaker: asyncio.Task[None] | None = None
    ended: bool = False


class VoiceConversations:
    """Opens voice streams on sessions and runs them."""

    def __init__(
        self,
        detection: SpeechDetection,
        recognition: Recognition,
        synthesis: Synthesis,
        conversations: Conversations,
        personas: Personas,
        quality_log: QualityLog,
        *,
        vad_defaults: VadParams,
        idle_seconds: float,
        max_seconds: float = 60 * 60.0,
        store: FeatureStore | None = None,
        observe_lag: LagObserver | None = None,
    ) -> None:
        self._observe_lag = observe_lag
        self._detection = detection
        self._recognition = recognition
        self._synthesis = synthesis
        self._conversations = conversations
        self._personas = personas
        self._quality_log = quality_log
        self._vad_defaults = vad_defaults
        self._idle = idle_seconds
        self._max_seconds = max_seconds
        self._store = store

    async def converse(
        self, principal: Principal, messages: AsyncIterator[ClientMessage]
    ) -> AsyncIterator[VoiceOutput]:
        """StreamConversation: the first message names the session and carries the setup."""
        first = await _first_voice_message(messages)
        assert isinstance(first.setup, VoiceSetup)
        call = await self.open(principal, first.session, first.setup)
        async for output in call.run(_same_session(messages, first.session)):
            yield output

    async def open(self, principal: Principal, session: str, setup: VoiceSetup) -> VoiceCall:
        """Checks the setup and the session, and makes the stream (not yet running)."""
        fmt = stream_format(setup.input)
        language = check_language(setup.language, self._recognition.languages)
        vad = vad_params(setup.vad, self._vad_defaults)
        view = await self._conversations.session_view(principal, session)
        speaks = await self._personas.voice_of(principal, view.persona)
        out: AudioFormat | None = None
        voice = self._synthesis.voice(setup.voice or speaks.voice or self._synthesis.default_voice)
        if setup.output is not None:
            if setup.output.channels not in (0, 1):
                raise UnsupportedAudioFormat(
                    "only mono audio is produced", metadata={"channel_count": str(setup.output.channels)}
                )
            out = output_format(setup.output.encoding, setup.output.sample_rate, voice.sample_rate)
        name = f"{session}/voiceStreams/{uuid.uuid4()}"
        options = RecognitionOptions(
            language=language,
            interim=setup.interim,
            features=True,
            agitation=True,
            vad=vad,
            max_seconds=self._max_seconds,
        )
        return VoiceCall(
            name=name,
            principal=principal,
            session=session,
            persona=view.persona,
            running_turn=view.running_turn,
            last_sequence=view.last_sequence,
            input_format=fmt,
            output_format=out,
            voice=voice.name,
            style_source=speaks,
            barge_in=setup.barge_in,
            options=options,
            service=self,
        )


class VoiceCall:
    """One running voice stream."""

    def __init__(
        self,
        *,
        name: str,
        principal: Principal,
        session: str,
        persona: str,
        running_turn: str,
        last_sequence: int,
        input_format: AudioFormat,
        output_format: AudioFormat | None,
        voice: str,
        style_source: PersonaVoice,
        barge_in: bool,
        options: RecognitionOptions,
        service: VoiceConversations,
    ) -> None:
        self.name = name
        self.principal = principal
        self.session = session
        self.persona = persona
        self.input_format = input_format
        self.output_format = output_format
        self.voice = voice
        self._style = persona_style(style_source)
        self._barge_in = barge_in
        self._options = options
        self._s = service
        self._last_sequence = last_sequence
        self._outputs: asyncio.Queue[VoiceOutput | BaseException | None] = asyncio.Queue()
        self._answers: dict[str, _Answer] = {}
        self._current: _Answer | None = None
        self._waiting: deque[Utterance] = deque()
        self._interrupting: asyncio.Task[None] | None = None
        self._playing_until = 0.0  # monotonic time the client's playback of sent audio ends
        self._input_done = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unclaimed: dict[str, list[AgentEvent]] = {}
        if running_turn:
            self._follow(running_turn, None, time.monotonic())

    async def run(self, messages: AsyncIterator[ClientMessage]) -> AsyncIterator[VoiceOutput]:
        """The stream's outputs until the input ends and the last answer is spoken."""
        store = storing(self._s._store, self.principal.tenant, self.session, self.name) if self._s._store else None
        stream = UtteranceStream(
            self._s._detection, self._s._recognition, self._options, store=store, on_onset=self._on_speech
        )
        source = AudioInput(messages, self.input_format, self._s._idle)
        self._source = source
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(pump(source, stream, self._s._observe_lag), name=f"voice input {self.name}"),
            loop.create_task(self._recognized(stream), name=f"voice recognition {self.name}"),
            loop.create_task(self._session_events(), name=f"voice session {self.name}"),
        ]
        yield VoiceStarted(self.name, self.output_format)
        try:
            while True:
                output = await self._outputs.get()
                if output is None:
                    return
                if isinstance(output, BaseException):
                    raise output
                yield output
        finally:
            for task in self._tasks:
                task.cancel()
            for answer in self._answers.values():
                if answer.speaker is not None:
                    answer.speaker.cancel()
            await stream.close()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- input -------------------------------------------------------------------------------

    async def _recognized(self, stream: UtteranceStream) -> None:
        try:
            while (output := await stream.next_output()) is not None:
                if isinstance(output, Utterance):
                    await self._on_utterance(output)
                    continue
                self._outputs.put_nowait(output)
            self._input_done = True
            self._maybe_done()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  # the stream ends with it; run() raises it
            self._outputs.put_nowait(error)

    def _on_speech(self, offset: float) -> None:
        """Speech started: barge in on the answer being produced or played."""
        answer = self._current
        playing = time.monotonic() < self._playing_until
        if not self._barge_in or answer is None or (answer.ended and not playing):
            return
        turn_running = not answer.ended
        self._stop_audio(answer)
        self._playing_until = 0.0
        if turn_running:
            heard = self._source.arrived(offset)
            self._interrupting = asyncio.get_running_loop().create_task(self._interrupt(answer, heard))

    async def _interrupt(self, answer: _Answer, heard: float | None) -> None:
        await self._s._conversations.interrupt(self.principal, answer.turn, str(uuid.uuid4()))
        if heard is not None:
            log.info(
                "barge-in",
                extra={
                    "fields": {
                        "voice_stream": self.name,
                        "turn": answer.turn,
                        "ms": round((time.monotonic() - heard) * 1000, 1),
                    }
                },
            )

    async def _on_utterance(self, utterance: Utterance) -> None:
        if not utterance.result.text.strip():
            return
        if self._current is not None and not self._current.ended and not self._barge_in:
            self._waiting.append(utterance)
            return
        await self._send(utterance)

    async def _send(self, utterance: Utterance) -> None:
        if self._interrupting is not None:
            with contextlib.suppress(Exception):
                await self._interrupting
            self._interrupting = None
        request_id = str(uuid.uuid5(_REQUEST_IDS, f"{self.name}|{utterance.result.utterance}"))
        context = {"agitation_score": round(utterance.agitation_score, 4)}
        sent_at = time.monotonic()
        turn = await self._s._conversations.send_message(
            self.principal, self.session, utterance.result.text, request_id, context
        )
        self._follow(turn, utterance, sent_at)

    def _follow(self, turn: str, utterance: Utterance | None, sent_at: float) -> None:
        if turn in self._answers:
            return
        answer = _Answer(turn, utterance, sent_at)
        self._answers[turn] = answer
        self._current = answer
        if self.output_format is not None:
            answer.speaker = asyncio.get_running_loop().create_task(self._speak(answer), name=f"speak {turn}")
        for event in self._unclaimed.pop(turn, []):
            self._outputs.put_nowait(event)
            self._on_event(answer, event)

    # -- the session -------------------------------------------------------------------------

    async def _session_events(self) -> None:
        """The session's events, resumed after the last one seen when the stream breaks (a
        svc_conversation process restarting); a few failures in a row end the voice stream."""
        failures = 0
        while True:
            before = self._last_sequence
            try:
                await self._follow_events()  # ends only when the server ends the stream
                error: Exception = ServiceUnavailable("svc_conversation ended the session's event stream")
            except asyncio.CancelledError:
                raise
            except ServiceUnavailable as unavailable:
                error = unavailable
            except Exception as other:  # noqa: BLE001  # the stream ends with it; run() raises it
                self._outputs.put_nowait(other)
                return
            failures = 1 if self._last_sequence > before else failures + 1
            if failures > _EVENT_RETRIES:
                self._outputs.put_nowait(error)
                return
            log.warning("session events broke; resuming", extra={"fields": {"voice_stream": self.name}})
            await asyncio.sleep(0.2 * failures)

    async def _follow_events(self) -> None:
        async for event in self._s._conversations.events(self.principal, self.session, self._last_sequence):
            self._last_sequence = max(self._last_sequence, event.sequence)
            answer = self._answers.get(event.turn)
            if answer is None:
                # A turn's first events can arrive before SendMessage has told us its
                # name: kept until it does (or until newer turns push them out).
                self._unclaimed.setdefault(event.turn, []).append(event)
                while len(self._unclaimed) > _UNCLAIMED_TURNS:
                    self._unclaimed.pop(next(iter(self._unclaimed)))
                continue
            self._outputs.put_nowait(event)
            self._on_event(answer, event)

    def _on_event(self, answer: _Answer, event: AgentEvent) -> None:
        if event.kind is AgentEventKind.TOKEN and not answer.ended:
            if answer.first_token_at is None:
                answer.first_token_at = time.monotonic()
            if event.iteration != answer.iteration:  # a new model call: a new reply to read
                answer.iteration, answer.reply = event.iteration, ReplyText()
            words = answer.reply.push(event.text)
            answer.spoken_text += words
            for sentence in answer.cutter.push(words):
                answer.sentences.put_nowait(sentence)
        elif event.kind is AgentEventKind.FINAL_RESPONSE and not answer.ended:
            # A reply that came without tokens (a refusal, a tool's answer) is spoken whole;
            # one that streamed is spoken as it streamed.
            rest = event.text[len(answer.spoken_text) :] if event.text.startswith(answer.spoken_text) else ""
            if not answer.spoken_text:
                rest = event.text
            for sentence in [*answer.cutter.push(rest), *answer.cutter.flush()]:
                answer.sentences.put_nowait(sentence)
        elif event.kind is AgentEventKind.TURN_STATE and event.state in TURN_ENDED:
            if event.state == "INTERRUPTED":
                self._stop_audio(answer)
            elif not answer.ended:
                for sentence in answer.cutter.flush():
                    answer.sentences.put_nowait(sentence)
            answer.ended = True
            answer.sentences.put_nowait(None)
            if answer.speaker is None:
                self._answered(answer, None)
            self._next_waiting()

    def _next_waiting(self) -> None:
        if self._waiting and (self._current is None or self._current.ended):
            utterance = self._waiting.popleft()
            task = asyncio.get_running_loop().create_task(self._send_waiting(utterance))
            self._tasks.append(task)
        self._maybe_done()

    async def _send_waiting(self, utterance: Utterance) -> None:
        try:
            await self._send(utterance)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  # the stream ends with it; run() raises it
            self._outputs.put_nowait(error)

    def _maybe_done(self) -> None:
        """After a half-close: done once the last utterance is answered and spoken."""
        if not self._input_done or self._waiting:
            return
        if all(a.ended and (a.speaker is None or a.speaker.done()) for a in self._answers.values()):
            self._outputs.put_nowait(None)

    # -- the answer --------------------------------------------------------------------------

    def _stop_audio(self, answer: _Answer) -> None:
        if answer.speaker is not None and not answer.speaker.done():
            answer.speaker.cancel()
            self._outputs.put_nowait(AnswerAudio(answer.turn, b"", 0.0, last=True, failure_reason="INTERRUPTED"))
        answer.ended = True

    async def _speak(self, answer: _Answer) -> None:
        assert self.output_format is not None
        utterer = Utterer(self._s._synthesis, self.voice, self.output_format, self._style)
        failure = ""
        try:
            while (sentence := await answer.sentences.get()) is not None:
                if failure or not speakable(sentence):
                    continue
                try:
                    async for piece in utterer.say(sentence):
                        self._sent(utterer, piece.audio, piece.offset, answer)
                except SynthesizerUnavailable as error:
                    failure = error.reason  # the rest of the answer goes as text only
                    log.warning("synthesis failed; the answer goes on as text", extra={"fields": {"turn": answer.turn}})
            for piece in utterer.flush():
                self._sent(utterer, piece.audio, piece.offset, answer)
            self._outputs.put_nowait(AnswerAudio(answer.turn, b"", utterer.seconds, last=True, failure_reason=failure))
            self._answered(answer, utterer)
        finally:
            self._maybe_done_soon()

    def _maybe_done_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._maybe_done)

    def _sent(self, utterer: Utterer, audio: bytes, offset: float, answer: _Answer) -> None:
        now = time.monotonic()
        fmt = self.output_format
        assert fmt is not None
        self._playing_until = max(self._playing_until, now) + fmt.seconds(len(audio))
        self._outputs.put_nowait(AnswerAudio(answer.turn, audio, offset))

    def _answered(self, answer: _Answer, utterer: Utterer | None) -> None:
        spoken = utterer.quality() if utterer is not None else Quality()
        utterance = answer.utterance
        quality = Quality(
            recognition_latency=(utterance.final_at - utterance.ended_at) if utterance else None,
            first_token_latency=(answer.first_token_at - answer.sent_at) if answer.first_token_at else None,
            response_latency=(
                (utterer.first_audio_at - utterance.ended_at)
                if utterance and utterer is not None and utterer.first_audio_at
                else None
            ),
            synthesis_latency=spoken.synthesis_latency,
            recognition_rtf=(
                utterance.transcript.compute_seconds / utterance.transcript.audio_seconds
                if utterance and utterance.transcript.audio_seconds
                else None
            ),
            synthesis_rtf=spoken.synthesis_rtf,
            synthesized_seconds=spoken.synthesized_seconds,
        )
        self._outputs.put_nowait(AnswerQuality(answer.turn, quality))
        self._s._quality_log.record(
            QualityReport(
                self.principal.tenant,
                quality,
                voice_stream=self.name,
                turn=answer.turn,
                persona=self.persona,
                recognizer=self._s._recognition.name,
                voice=self.voice if self.output_format is not None else "",
            )
        )


async def _first_voice_message(messages: AsyncIterator[ClientMessage]) -> ClientMessage:
    first = await first_setup(messages)
    if not isinstance(first.setup, VoiceSetup) or not first.session:
        raise FirstMessageNotConfig("the first message names the session and carries the configuration, only that")
    return first


async def _same_session(messages: AsyncIterator[ClientMessage], session: str) -> AsyncIterator[ClientMessage]:
    async for message in messages:
        if message.session and message.session != session:
            raise SessionMismatch("a message names another session than the stream's", metadata={"session": session})
        yield message
