"""Piper voices (piper-tts 1.8, onnxruntime): neural speech, one chunk per sentence.

Any piper voice works: an `<name>.onnx` model with its `<name>.onnx.json` config beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper import PiperVoice, SynthesisConfig

from svc_audio.engines.text import apply_replacements, bcp47, speakable
from svc_audio.errors import SynthesizerUnavailable
from svc_audio.model import Samples, SpeechStyle, Voice

ENGINE = "piper"
# The speaking rates a style may ask for; beyond them piper's speech breaks up or drags.
_RATES = (0.5, 2.0)


class PiperSynthesizer:
    """`Synthesizer` over one piper voice: "voices/<model file stem>" ("voices/en_US-joe-medium").

    A style's rate scales piper's length scale (the voice's own, divided by the rate, clipped to
    0.5..2.0); its pitch is ignored, since piper has no pitch control. Chunks come as piper
    finishes each sentence, float32 in [-1, 1] at the voice's rate. Text with nothing to say
    (no letter or digit) yields no chunks. The voice runs on CUDA when onnxruntime has it.
    """

    def __init__(self, onnx_path: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None) -> None:
        model = Path(onnx_path)
        config_file = Path(config_path) if config_path is not None else model.with_name(model.name + ".json")
        name = f"voices/{model.stem}"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            self._voice = PiperVoice.load(
                model, config_path=config_file, use_cuda="CUDAExecutionProvider" in ort.get_available_providers()
            )
        except Exception as exc:  # piper and onnxruntime raise many types; all mean "no such voice here".
            raise SynthesizerUnavailable(
                f"the piper voice {name} cannot be loaded ({type(exc).__name__})", metadata={"voice": name}
            ) from exc
        language = config.get("language", {}).get("code") or self._voice.config.espeak_voice
        dataset = config.get("dataset") or model.stem
        quality = config.get("audio", {}).get("quality")
        self.voice = Voice(
            name=name,
            display_name=f"{dataset} ({quality})" if quality else dataset,
            languages=(bcp47(language),),
            sample_rate=self._voice.config.sample_rate,
            engine=ENGINE,
        )

    def synthesize(self, text: str, style: SpeechStyle) -> Iterator[Samples]:
        text = apply_replacements(text, style.replacements)
        if not speakable(text):
            return
        rate = min(max(style.rate, _RATES[0]), _RATES[1])
        config = SynthesisConfig(length_scale=self._voice.config.length_scale / rate)
        chunks = iter(self._voice.synthesize(text, syn_config=config))
        while True:
            # Only piper's own work is guarded: an exception thrown into this generator at its
            # yield (the caller closing it) must pass through untouched.
            try:
                chunk = next(chunks, None)
            except Exception as exc:  # onnxruntime and the phonemizer raise many types.
                raise SynthesizerUnavailable(
                    f"the piper voice {self.voice.name} failed ({type(exc).__name__})",
                    metadata={"voice": self.voice.name},
                ) from exc
            if chunk is None:
                return
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)


def load_piper_voices(folder: str | os.PathLike[str]) -> list[PiperSynthesizer]:
    """Every piper voice under `folder` (any depth): each `*.onnx` that has its `.onnx.json`,
    in name order. A model without a config is not a voice and is passed over."""
    return [
        PiperSynthesizer(model, model.with_name(model.name + ".json"))
        for model in sorted(Path(folder).rglob("*.onnx"))
        if model.with_name(model.name + ".json").is_file()
    ]
