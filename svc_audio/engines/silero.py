"""Silero VAD v6 through onnxruntime: the speech probability of each 32 ms window of a stream.

The model is a sequence model: one `run` takes n consecutive windows of ONE stream, each with
the 64 samples before it, and carries its LSTM state (`h`, `c`) from window to window; the
state it returns continues the stream in the next call. So a stream's state is the LSTM state
plus the last 64 samples it has seen, and any number of whole windows goes through one call.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from svc_audio.model import Samples

# 32 ms at 16 kHz: the window Silero VAD v6 is trained on.
WINDOW = 512
# Samples of the previous window the model sees in front of each window.
_CONTEXT = 64
_STATE_SHAPE = (1, 1, 128)


class SileroState:
    """One stream's place in the model: the LSTM state after its last window and that
    window's last 64 samples (zeros before the stream's first window)."""

    __slots__ = ("c", "context", "h")

    def __init__(self) -> None:
        self.h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self.c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(_CONTEXT, dtype=np.float32)


class SileroSpeechDetector:
    """`SpeechDetector` over a Silero VAD v6 ONNX file (silero_vad_v6.onnx).

    One InferenceSession serves every stream (its `run` is thread-safe; each stream's state
    lives in its own `SileroState`). The session runs on one thread: a window costs well under
    a millisecond, and streams run in parallel threads rather than one call over many cores.
    """

    window = WINDOW

    def __init__(self, model_path: str | os.PathLike[str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # onnxruntime's warnings about unused initialisers are noise in a service's log.
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])

    def start(self) -> SileroState:
        return SileroState()

    def probabilities(self, state: object, audio: Samples) -> Samples:
        """The speech probability of each window of `audio` (n * 512 samples), in one model call."""
        if not isinstance(state, SileroState):
            raise TypeError(f"state must come from SileroSpeechDetector.start(), not {type(state).__name__}")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) % WINDOW:
            raise ValueError(f"audio must be whole windows of {WINDOW} samples, got shape {audio.shape}")
        count = len(audio) // WINDOW
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio.reshape(count, WINDOW)
        # Each window travels with the 64 samples before it: the previous call's tail for the
        # first, the window before it in this call for the rest.
        contexts = np.empty((count, _CONTEXT), dtype=np.float32)
        contexts[0] = state.context
        contexts[1:] = windows[:-1, -_CONTEXT:]
        speech, state.h, state.c = self._session.run(
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": state.h, "c": state.c}
        )
        state.context = windows[-1, -_CONTEXT:].copy()
        return np.asarray(speech, dtype=np.float32).reshape(count)
