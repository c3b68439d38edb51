"""svc_audio's domain errors; reasons are skm.audio.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError

DOMAIN = "audio.skm"


class AudioError(SkmError):
    domain = DOMAIN


class InvalidResourceName(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class FirstMessageNotConfig(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "FIRST_MESSAGE_NOT_CONFIG"


class UnexpectedConfig(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "UNEXPECTED_CONFIG"


class SessionMismatch(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "SESSION_MISMATCH"


class AudioChunkTooLarge(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "AUDIO_CHUNK_TOO_LARGE"


class AudioEmpty(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "AUDIO_EMPTY"


class UnsupportedAudioFormat(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "UNSUPPORTED_AUDIO_FORMAT"


class UnsupportedLanguage(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "UNSUPPORTED_LANGUAGE"


class StreamDurationExceeded(AudioError):
    code = Code.OUT_OF_RANGE
    reason = "STREAM_DURATION_EXCEEDED"


class StreamIdle(AudioError):
    """No audio for longer than the idle limit: the stream is ended, its resources freed."""

    code = Code.DEADLINE_EXCEEDED
    reason = "STREAM_IDLE"


class SessionNotFound(AudioError):
    code = Code.NOT_FOUND
    reason = "SESSION_NOT_FOUND"


class VoiceStreamNotFound(AudioError):
    code = Code.NOT_FOUND
    reason = "VOICE_STREAM_NOT_FOUND"


class AudioSequenceGap(AudioError):
    code = Code.FAILED_PRECONDITION
    reason = "AUDIO_SEQUENCE_GAP"


class AudioAfterEnd(AudioError):
    code = Code.FAILED_PRECONDITION
    reason = "AUDIO_AFTER_END"


class VoiceNotFound(AudioError):
    code = Code.NOT_FOUND
    reason = "VOICE_NOT_FOUND"


class TextEmpty(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "TEXT_EMPTY"


class TextTooLong(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "TEXT_TOO_LONG"


class RecognizerUnavailable(AudioError):
    code = Code.UNAVAILABLE
    reason = "RECOGNIZER_UNAVAILABLE"


class SynthesizerUnavailable(AudioError):
    code = Code.UNAVAILABLE
    reason = "SYNTHESIZER_UNAVAILABLE"


class InvalidVadConfig(AudioError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_VAD_CONFIG"
