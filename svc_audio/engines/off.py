"""Recognition switched off (SKM_AUDIO_ASR_MODEL=off): streams still get voice activity,
utterances and their features, and every final result is empty. For deployments that only
measure audio, and for measuring the rest of the pipeline without a decoder's cost."""

from __future__ import annotations

from svc_audio.model import SPEECH_RATE, Samples, Transcript


class NoRecognizer:
    """A Recognizer that hears no words."""

    name = "off"
    languages: frozenset[str] | None = None

    def transcribe(self, audio: Samples, language: str, *, word_timestamps: bool, partial: bool = False) -> Transcript:
        return Transcript("", language.split("-")[0].lower(), 0.0, audio_seconds=len(audio) / SPEECH_RATE)
