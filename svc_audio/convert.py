"""svc_audio's wire <-> domain conversions (skm.audio.v1, skm.type.v1.AudioFormat)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from skm.audio.v1 import audio_metrics_pb2, audio_service_pb2, recognition_pb2, voice_pb2
from skm.conversation.v1 import session_event_pb2
from skm.type.v1 import audio_format_pb2, principal_pb2
from skm_runtime.access import Principal
from skm_runtime.principal import role_names
from svc_audio.model import (
    ActivityKind,
    AgentEvent,
    AnswerAudio,
    AnswerQuality,
    AudioFormat,
    ClientMessage,
    Encoding,
    Output,
    Quality,
    RecognitionEnd,
    RecognitionResult,
    RecognitionSetup,
    SpokenAudio,
    SynthesisStart,
    UtteranceFeatures,
    VadRequest,
    Voice,
    VoiceActivity,
    VoiceOutput,
    VoiceSetup,
    VoiceStarted,
    WireFormat,
)

_ENCODINGS = {
    audio_format_pb2.AUDIO_ENCODING_LINEAR16: Encoding.LINEAR16,
    audio_format_pb2.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    audio_format_pb2.AUDIO_ENCODING_ALAW: Encoding.ALAW,
}
_ENCODING_NUMBERS = {encoding: number for number, encoding in _ENCODINGS.items()}
# What a replica marks the PushAudio it hands to the stream's holder with
# (`x-skm-forwarded-by`), so that the holder never hands it on again.
RELAYED_BY = "audio"

_KINDS = {
    ActivityKind.SPEECH_STARTED: recognition_pb2.VoiceActivity.KIND_SPEECH_STARTED,
    ActivityKind.SPEECH_ENDED: recognition_pb2.VoiceActivity.KIND_SPEECH_ENDED,
}


def principal_of(message: principal_pb2.Principal) -> Principal:
    return Principal(message.tenant, message.user, role_names(message))


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def wire_format(message: audio_format_pb2.AudioFormat) -> WireFormat:
    return WireFormat(_ENCODINGS.get(message.encoding), message.sample_rate_hertz, message.channel_count or 1)


def format_to(fmt: AudioFormat) -> audio_format_pb2.AudioFormat:
    return audio_format_pb2.AudioFormat(
        encoding=_ENCODING_NUMBERS[fmt.encoding], sample_rate_hertz=fmt.sample_rate, channel_count=1
    )


def _vad(message: recognition_pb2.VadConfig, present: bool) -> VadRequest:
    if not present:
        return VadRequest()
    silence = message.min_silence.ToNanoseconds() / 1e9 if message.HasField("min_silence") else None
    return VadRequest(message.speech_threshold, silence)


def recognize_message(request: audio_service_pb2.StreamingRecognizeRequest) -> ClientMessage:
    kind = request.WhichOneof("streaming_request")
    if kind == "config":
        config = request.config
        return ClientMessage(
            setup=RecognitionSetup(
                format=wire_format(config.format),
                language=config.language_code,
                interim=config.interim_results,
                vad=_vad(config.vad, config.HasField("vad")),
                features=config.enable_audio_features,
                speaker_labels=config.enable_speaker_labels,
                reference=config.reference_transcript,
            )
        )
    return ClientMessage(audio=request.audio if kind == "audio" else None)


def voice_setup(config: audio_service_pb2.VoiceConfig) -> VoiceSetup:
    output = None
    if (
        config.HasField("output_format")
        and config.output_format.encoding != audio_format_pb2.AUDIO_ENCODING_UNSPECIFIED
    ):
        output = wire_format(config.output_format)
    return VoiceSetup(
        input=wire_format(config.input_format),
        output=output,
        language=config.language_code,
        vad=_vad(config.vad, config.HasField("vad")),
        voice=config.voice,
        barge_in=not config.disable_barge_in,
        interim=config.interim_results,
    )


def conversation_message(request: audio_service_pb2.StreamConversationRequest) -> ClientMessage:
    kind = request.WhichOneof("streaming_request")
    if kind == "config":
        return ClientMessage(setup=voice_setup(request.config), session=request.session)
    return ClientMessage(audio=request.audio if kind == "audio" else None, session=request.session)


def _activity(activity: VoiceActivity) -> recognition_pb2.VoiceActivity:
    return recognition_pb2.VoiceActivity(kind=_KINDS[activity.kind], offset=_duration(activity.offset))


def _result(result: RecognitionResult) -> recognition_pb2.RecognitionResult:
    return recognition_pb2.RecognitionResult(
        utterance=result.utterance,
        is_final=result.is_final,
        transcript=result.text,
        confidence=result.confidence,
        words=[
            recognition_pb2.WordInfo(
                word=w.word, start_offset=_duration(w.start), end_offset=_duration(w.end), confidence=w.confidence
            )
            for w in result.words
        ],
        start_offset=_duration(result.start),
        end_offset=_duration(result.end),
        language_code=result.language,
        speaker_label=result.speaker_label,
    )


def _features(found: UtteranceFeatures) -> audio_metrics_pb2.AudioFeatures:
    f = found.features
    return audio_metrics_pb2.AudioFeatures(
        utterance=found.utterance,
        start_offset=_duration(found.start),
        end_offset=_duration(found.end),
        rms=f.rms,
        zero_crossing_rate=f.zero_crossing_rate,
        spectral_entropy=f.spectral_entropy,
        agitation_score=found.agitation_score,
        vector_id=found.vector_id,
    )


def quality_metrics(q: Quality) -> audio_metrics_pb2.QualityMetrics:
    """A Quality on the wire; what was not measured (None) stays unset."""
    metrics = audio_metrics_pb2.QualityMetrics()
    if q.word_error_rate is not None:
        metrics.word_error_rate = q.word_error_rate
    if q.mean_opinion_score is not None:
        metrics.mean_opinion_score = q.mean_opinion_score
    if q.recognition_rtf is not None:
        metrics.recognition_real_time_factor = q.recognition_rtf
    if q.synthesis_rtf is not None:
        metrics.synthesis_real_time_factor = q.synthesis_rtf
    durations = (
        (metrics.recognition_latency, q.recognition_latency),
        (metrics.response_latency, q.response_latency),
        (metrics.synthesis_latency, q.synthesis_latency),
        (metrics.first_token_latency, q.first_token_latency),
        (metrics.synthesized_duration, q.synthesized_seconds),
    )
    for field, seconds in durations:
        if seconds is not None:
            field.CopyFrom(_duration(seconds))
    return metrics


def _quality(quality: Quality) -> audio_metrics_pb2.QualityMetrics:
    return quality_metrics(quality)


def recognize_response(output: Output | RecognitionEnd) -> audio_service_pb2.StreamingRecognizeResponse:
    match output:
        case VoiceActivity():
            return audio_service_pb2.StreamingRecognizeResponse(voice_activity=_activity(output))
        case RecognitionResult():
            return audio_service_pb2.StreamingRecognizeResponse(result=_result(output))
        case UtteranceFeatures():
            return audio_service_pb2.StreamingRecognizeResponse(audio_features=_features(output))
        case RecognitionEnd(quality):
            return audio_service_pb2.StreamingRecognizeResponse(quality_metrics=_quality(quality))
    raise TypeError(f"not a recognition output: {type(output).__name__}")


def voice_event(output: VoiceOutput) -> audio_service_pb2.VoiceEvent:
    match output:
        case VoiceStarted(name, fmt):
            started = audio_service_pb2.VoiceStreamStarted(voice_stream=name)
            if fmt is not None:
                started.output_format.CopyFrom(format_to(fmt))
            return audio_service_pb2.VoiceEvent(started=started)
        case VoiceActivity():
            return audio_service_pb2.VoiceEvent(voice_activity=_activity(output))
        case RecognitionResult():
            return audio_service_pb2.VoiceEvent(recognition_result=_result(output))
        case UtteranceFeatures():
            return audio_service_pb2.VoiceEvent(audio_features=_features(output))
        case AgentEvent(wire=wire):
            assert isinstance(wire, session_event_pb2.SessionEvent)
            return audio_service_pb2.VoiceEvent(session_event=wire)
        case AnswerAudio(turn, audio, offset, last, failure):
            return audio_service_pb2.VoiceEvent(
                synthesized_audio=audio_service_pb2.SynthesizedAudio(
                    turn=turn, audio=audio, offset=_duration(offset), last=last, failure_reason=failure
                )
            )
        case AnswerQuality(_, quality):
            return audio_service_pb2.VoiceEvent(quality_metrics=_quality(quality))
    raise TypeError(f"not a voice output: {type(output).__name__}")


def synthesize_response(
    output: SynthesisStart | SpokenAudio | Quality,
) -> audio_service_pb2.StreamingSynthesizeResponse:
    match output:
        case SynthesisStart(fmt):
            return audio_service_pb2.StreamingSynthesizeResponse(format=format_to(fmt))
        case SpokenAudio(audio, _):
            return audio_service_pb2.StreamingSynthesizeResponse(audio=audio)
        case Quality():
            return audio_service_pb2.StreamingSynthesizeResponse(quality_metrics=_quality(output))
    raise TypeError(f"not a synthesis output: {type(output).__name__}")


def voice_to(voice: Voice) -> voice_pb2.Voice:
    return voice_pb2.Voice(
        name=voice.name,
        display_name=voice.display_name,
        language_codes=list(voice.languages),
        sample_rate_hertz=voice.sample_rate,
        engine=voice.engine,
    )
