"""Speech recognition and synthesis on their own: StreamingRecognize, StreamingSynthesize,
ListVoices; and the rules every client audio stream follows (`AudioInput`).

Stream rules (the contract's, after Google Speech v2): the first message is the setup only,
every later one audio only, 1 byte to 32 KiB, whole samples; a stream with no audio for
`idle_seconds` ends with DEADLINE_EXCEEDED (STREAM_IDLE). Each breach ends that stream only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from svc_audio.core.engines import Recognition, SpeechDetection, Synthesis
from svc_audio.core.pcm import StreamResampler, check_format, decode
from svc_audio.core.recognition import RecognitionOptions, StoreFeatures, UtteranceStream, check_language
from svc_audio.core.synthesis import Utterer, check_text, output_format, persona_style, sentences_of
from svc_audio.errors import (
    AudioChunkTooLarge,
    AudioEmpty,
    FirstMessageNotConfig,
    InvalidPageToken,
    InvalidResourceName,
    InvalidVadConfig,
    StreamIdle,
    UnexpectedConfig,
    UnsupportedAudioFormat,
)
from svc_audio.model import (
    MAX_CHUNK_BYTES,
    SPEECH_RATE,
    AudioFormat,
    ClientMessage,
    Encoding,
    FeaturePoint,
    Output,
    PersonaVoice,
    Quality,
    QualityReport,
    RecognitionEnd,
    RecognitionSetup,
    Samples,
    SpokenAudio,
    SynthesisStart,
    Utterance,
    UtteranceFeatures,
    VadParams,
    VadRequest,
    Voice,
    WireFormat,
)
from svc_audio.ports import FeatureStore, Personas, QualityLog
from svc_audio.wer import word_error_rate

log = logging.getLogger("skm.audio")

# Takes how long a chunk waited from its arrival to its speech decision, in seconds.
LagObserver = Callable[[float], None]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def stream_format(wire: WireFormat) -> AudioFormat:
    """A client's input format, checked: a set encoding, an allowed rate, mono."""
    if wire.encoding is None or wire.channels not in (0, 1):
        raise UnsupportedAudioFormat(
            "the audio format must name an encoding and be mono",
            metadata={"sample_rate_hertz": str(wire.sample_rate), "channel_count": str(wire.channels)},
        )
    return check_format(wire.encoding, wire.sample_rate)


def vad_params(request: VadRequest, defaults: VadParams) -> VadParams:
    """A stream's VAD settings: the defaults with what the client set, checked."""
    threshold = request.speech_threshold or defaults.speech_threshold
    if not 0.0 < threshold < 1.0:
        raise InvalidVadConfig("speech_threshold must be in (0, 1)", metadata={"field": "vad.speech_threshold"})
    silence = defaults.min_silence if request.min_silence is None else request.min_silence
    if not 0.1 <= silence <= 5.0:
        raise InvalidVadConfig("min_silence must be 100 ms to 5 s", metadata={"field": "vad.min_silence"})
    return VadParams(threshold, silence, defaults.min_speech, defaults.pad)


class AudioInput:
    """A client audio stream after its setup: its chunks checked, decoded and brought to 16 kHz."""

    def __init__(self, messages: AsyncIterator[ClientMessage], fmt: AudioFormat, idle_seconds: float) -> None:
        self._messages = messages
        self.format = fmt
        self._idle = idle_seconds
        self._resampler = StreamResampler(fmt.sample_rate, SPEECH_RATE)
        self.arrivals: list[tuple[float, float]] = []
        self.last_arrival = 0.0  # (stream seconds at the chunk's end, monotonic arrival)
        self._seconds = 0.0

    def __aiter__(self) -> AsyncIterator[Samples]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Samples]:
        async for message in self._messages:
            yield self.take(message)
        tail = self._resampler.flush()
        if len(tail):
            yield tail

    async def watch_idle(self, fail: Callable[[BaseException], None]) -> None:
        """Fails the stream once no message has come for `idle_seconds` (one timer per stream,
        rather than one per message)."""
        last = self.last_arrival or time.monotonic()
        while True:
            await asyncio.sleep(max(0.05, last + self._idle - time.monotonic()))
            last = self.last_arrival or last
            if time.monotonic() - last >= self._idle:
                fail(StreamIdle("no audio arrived for too long", metadata={"limit_seconds": str(int(self._idle))}))
                return

    def take(self, message: ClientMessage) -> Samples:
        """One later message's audio at 16 kHz, after the stream rules."""
        if message.setup is not None:
            raise UnexpectedConfig("only the first message of a stream carries the configuration")
        chunk = message.audio or b""
        check_chunk(chunk, self.format)
        self._seconds += self.format.seconds(len(chunk))
        self.last_arrival = time.monotonic()
        self.arrivals.append((self._seconds, self.last_arrival))
        del self.arrivals[:-500]
        return self._resampler.push(decode(chunk, self.format))

    def arrived(self, stream_seconds: float) -> float | None:
        """When (monotonic) the audio at `stream_seconds` arrived, if still remembered."""
        for seconds, at in self.arrivals:
            if seconds >= stream_seconds:
                return at
        return None


def storing(store: FeatureStore, tenant: str, session: str = "", voice_stream: str = "") -> StoreFeatures:
    """Saves a stream's utterance features; a store that cannot be reached costs the
    utterance its vector id (empty), not its result."""

    async def save(found: UtteranceFeatures) -> str:
        point = FeaturePoint(tenant, session, voice_stream, found.utterance, "", found.features, found.agitation_score)
        try:
            return await store.add(point)
        except ServiceUnavailable:
            log.warning("utterance features not stored", extra={"fields": {"voice_stream": voice_stream}})
            return ""

    return save


def check_chunk(chunk: bytes, fmt: AudioFormat) -> None:
    if not chunk:
        raise AudioEmpty("a message after the first must carry audio")
    if len(chunk) > MAX_CHUNK_BYTES:
        raise AudioChunkTooLarge(
            "a message may carry at most 32 KiB of audio", metadata={"limit_bytes": str(MAX_CHUNK_BYTES)}
        )
    if fmt.encoding is Encoding.LINEAR16 and len(chunk) % 2:
        raise AudioEmpty("LINEAR16 audio must hold whole 16-bit samples (an even number of bytes)")


async def first_setup(messages: AsyncIterator[ClientMessage]) -> ClientMessage:
    """The stream's first message, which must be its setup and only that."""
    try:
        first = await anext(messages)
    except StopAsyncIteration:
        raise FirstMessageNotConfig("the stream ended before its configuration") from None
    if first.setup is None or first.audio:
        raise FirstMessageNotConfig("the first message of a stream carries the configuration, and only that")
    return first


class Speech:
    """Recognition, synthesis and the voice list, as the RPCs serve them."""

    def __init__(
        self,
        detection: SpeechDetection,
        recognition: Recognition,
        synthesis: Synthesis,
        personas: Personas,
        quality_log: QualityLog,
        *,
        vad_defaults: VadParams,
        idle_seconds: float,
        store: FeatureStore | None = None,
        observe_lag: LagObserver | None = None,
    ) -> None:
        self._observe_lag = observe_lag
        self._detection = detection
        self._recognition = recognition
        self._synthesis = synthesis
        self._personas = personas
        self._quality_log = quality_log
        self._vad_defaults = vad_defaults
        self._idle = idle_seconds
        self._store = store

    async def recognize(
        self, principal: Principal, messages: AsyncIterator[ClientMessage]
    ) -> AsyncIterator[Output | RecognitionEnd]:
        """StreamingRecognize: per utterance its activity, results and features; then the
        stream's quality once."""
        first = await first_setup(messages)
        setup = first.setup
        if not isinstance(setup, RecognitionSetup):
            raise FirstMessageNotConfig("the first message carries the recognition configuration")
        fmt = stream_format(setup.format)
        options = RecognitionOptions(
            language=check_language(setup.language, self._recognition.languages),
            interim=setup.interim,
            features=setup.features,
            speaker_labels=setup.speaker_labels,
            vad=vad_params(setup.vad, self._vad_defaults),
        )
        stream = UtteranceStream(
            self._detection,
            self._recognition,
            options,
            store=storing(self._store, principal.tenant) if self._store and setup.features else None,
        )
        feeding = asyncio.create_task(
            pump(AudioInput(messages, fmt, self._idle), stream, self._observe_lag), name="recognize input"
        )
        finals: list[Utterance] = []
        try:
            while (output := await stream.next_output()) is not None:
                if isinstance(output, Utterance):
                    finals.append(output)
                else:
                    yield output
        finally:
            feeding.cancel()
            await stream.close()
        quality = _recognition_quality(finals, setup.reference)
        self._quality_log.record(QualityReport(principal.tenant, quality, recognizer=self._recognition.name))
        yield RecognitionEnd(quality)

    async def synthesize(
        self,
        principal: Principal,
        text: str,
        voice: str,
        persona: str,
        wire: WireFormat | None,
        speaking_rate: float,
    ) -> AsyncIterator[SynthesisStart | SpokenAudio | Quality]:
        """StreamingSynthesize: the format, the audio sentence by sentence, then its quality."""
        check_text(text)
        if persona and not persona.startswith(f"{principal.tenant}/personas/"):
            raise InvalidResourceName("persona must be one of the caller's tenant", metadata={"field": "persona"})
        speaks = await self._personas.voice_of(principal, persona) if persona else PersonaVoice()
        name = voice or speaks.voice or self._synthesis.default_voice
        spoken = self._synthesis.voice(name)
        if wire is not None and wire.channels not in (0, 1):
            raise UnsupportedAudioFormat("only mono audio is produced", metadata={"channel_count": str(wire.channels)})
        fmt = output_format(wire.encoding if wire else None, wire.sample_rate if wire else 0, spoken.sample_rate)
        utterer = Utterer(self._synthesis, spoken.name, fmt, persona_style(speaks, speaking_rate))
        yield SynthesisStart(fmt)
        for sentence in sentences_of(text):
            async for piece in utterer.say(sentence):
                yield piece
        for piece in utterer.flush():
            yield piece
        quality = utterer.quality()
        self._quality_log.record(QualityReport(principal.tenant, quality, persona=persona, voice=spoken.name))
        yield quality

    def list_voices(self, language: str, page_size: int, page_token: str) -> tuple[list[Voice], str]:
        """The voices speaking `language` ("" all), by name, a page at a time."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        after = _page_after(page_token, language)
        wanted = language.lower()
        voices = [
            v
            for v in self._synthesis.voices()
            if v.name > after
            and (
                not wanted
                or any(code.lower() == wanted or code.lower().split("-")[0] == wanted for code in v.languages)
            )
        ]
        page = voices[:size]
        token = _page_token(page[-1].name, language) if len(voices) > size else ""
        return page, token


async def pump(source: AudioInput, stream: UtteranceStream, observe_lag: LagObserver | None = None) -> None:
    """Feeds a stream its input; a broken input (a rule broken, an idle client) fails it.
    `observe_lag` gets each chunk's time from arrival to its speech decision (seconds)."""
    watchdog = asyncio.get_running_loop().create_task(source.watch_idle(stream.fail), name="idle watch")
    try:
        async for samples in source:
            decided = await stream.push(samples)
            if decided and observe_lag is not None and source.last_arrival:
                observe_lag(time.monotonic() - source.last_arrival)
        watchdog.cancel()  # the input is complete: what is left is the stream's own work
        await stream.finish()
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001  # the stream fails with it; its reader raises it
        stream.fail(error)
    finally:
        watchdog.cancel()


def _recognition_quality(finals: list[Utterance], reference: str) -> Quality:
    latencies = [u.final_at - u.ended_at for u in finals]
    audio = sum(u.transcript.audio_seconds for u in finals)
    compute = sum(u.transcript.compute_seconds for u in finals)
    wer = None
    if reference:
        wer = word_error_rate(reference, " ".join(u.result.text for u in finals))
    return Quality(
        word_error_rate=wer,
        recognition_latency=sum(latencies) / len(latencies) if latencies else None,
        recognition_rtf=compute / audio if audio else None,
    )


def _page_token(after: str, language: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after, "language": language}).encode()).decode()


def _page_after(token: str, language: str) -> str:
    if not token:
        return ""
    try:
        fields = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, issued_for = fields["after"], fields["language"]
    except (ValueError, KeyError, TypeError):
        raise InvalidPageToken("the page token is malformed") from None
    if not isinstance(after, str) or issued_for != language:
        raise InvalidPageToken("the page token was issued for another filter")
    return after
