"""The catalogue's speech models through their real engines: each loads and runs, and the
recognisers and the voice are measured against known sentences.

No mocks and no recordings: espeak-ng (installed with the stack's Debian packages) speaks
known sentences for the recognisers, and the piper voice's own speech is transcribed back.
Every clip is resampled to what Whisper, Silero VAD and Smart Turn take: 16 kHz mono float32.
Run with ``pytest -s`` to see the word error rates, real-time factors (processing seconds per
second of audio; below 1 is faster than real time) and the voice's time to first audio.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from piper import PiperVoice
from scipy.signal import resample_poly

from skm_stack.catalogue import installed_path
from svc_audio.wer import normalise, word_errors

pytestmark = pytest.mark.timeout(180)

Audio = npt.NDArray[np.float32]

RATE = 16_000
VOICE = "piper-en_US-joe-medium"

# Ordinary sentences with one spelling each (American, as Whisper writes; no numbers).
ASR_SENTENCES = [
    "The weather is nice today, so we will walk to the park.",
    "Please send me the report before the meeting tomorrow morning.",
    "She bought fresh bread and a bottle of milk at the corner shop.",
    "My brother plays the guitar in a small band on weekends.",
    "Can you tell me how to get to the train station?",
    "We should leave early because the roads are very busy.",
    "The children are reading books in the quiet library.",
    "I forgot my keys at home and had to call my neighbor.",
    "Turn off the lights when you leave the room.",
    "The doctor said I need to drink more water every day.",
]
TTS_SENTENCES = [
    "Please send me the report before the meeting tomorrow morning.",
    "The children are reading books in the quiet library.",
    "Turn off the lights when you leave the room.",
    "We are going to visit our grandparents next summer.",
    "He opened the window to let some fresh air into the kitchen.",
]


def _to_16k(audio: npt.NDArray[np.floating], rate: int) -> Audio:
    """``audio`` (mono, floats in [-1, 1]) at 16 kHz, by polyphase filtering (22,050 -> 16,000 is 320/441)."""
    common = math.gcd(rate, RATE)
    resampled = resample_poly(audio.astype(np.float32), RATE // common, rate // common)
    return np.asarray(resampled, dtype=np.float32)


def _espeak(text: str, folder: Path) -> Audio:
    """``text`` spoken by espeak-ng's American English voice, at 16 kHz."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    path = folder / f"espeak-{hashlib.sha256(text.encode()).hexdigest()[:12]}.wav"
    # 160 words a minute, a little slower than espeak's default 175: clear speech, as a
    # careful speaker would say it.
    subprocess.run([espeak, "-v", "en-us", "-s", "160", "-w", str(path), text], check=True, timeout=30)
    with wave.open(str(path), "rb") as clip:
        assert (clip.getnchannels(), clip.getsampwidth()) == (1, 2)
        rate = clip.getframerate()
        samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    return _to_16k(samples / 32768.0, rate)


def _transcribe(model: WhisperModel, audio: Audio, *, vad: bool = False) -> str:
    # Beam search at temperature 0 alone (no fallback to sampling), so that a run repeats.
    segments, _ = model.transcribe(audio, language="en", beam_size=5, temperature=0.0, vad_filter=vad)
    return " ".join(segment.text.strip() for segment in segments)


def _whisper(asset_id: str) -> WhisperModel:
    # A Whisper asset is a CTranslate2 folder; faster-whisper loads it as it is.
    return WhisperModel(str(installed_path(asset_id)), device="cpu", compute_type="int8")


def _voice() -> PiperVoice:
    return PiperVoice.load(
        installed_path(VOICE, "en_US-joe-medium.onnx"),
        config_path=installed_path(VOICE, "en_US-joe-medium.onnx.json"),
    )


def _session(asset_id: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(installed_path(asset_id)), providers=["CPUExecutionProvider"])


def test_resampling_to_16k_keeps_duration_and_pitch() -> None:
    seconds = np.arange(22_050) / 22_050
    tone = _to_16k(0.5 * np.sin(2 * np.pi * 440.0 * seconds), 22_050)
    assert tone.dtype == np.float32
    assert tone.shape == (RATE,)
    spectrum = np.abs(np.fft.rfft(tone))
    assert np.argmax(spectrum) * RATE / len(tone) == pytest.approx(440.0, abs=1.0)


@pytest.fixture(scope="module")
def tiny_en() -> WhisperModel:
    return _whisper("whisper-tiny.en")


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> Audio:
    """One espeak-ng sentence (about 3 s) for the smoke tests."""
    return _espeak("Can you tell me how to get to the train station?", tmp_path_factory.mktemp("speech"))


@pytest.mark.parametrize("asset_id", ["whisper-tiny.en", "whisper-base"])
def test_whisper_hears_english_in_speech_and_nothing_in_silence(asset_id: str, sentence: Audio) -> None:
    model = _whisper(asset_id)
    segments, info = model.transcribe(sentence, beam_size=5, temperature=0.0)
    assert normalise(" ".join(segment.text for segment in segments))
    # whisper-base is multilingual: this is its own language detection at work.
    assert info.language == "en"
    assert info.duration == pytest.approx(len(sentence) / RATE)

    # Silence as svc_audio will hand it over: behind a VAD, here faster-whisper's own (Silero).
    # Without one, whisper-base in int8 hears "I'm sorry, I'm sorry, ..." in a second of digital
    # silence on some CPUs (this one: AMD EPYC, AVX-512; float32 hears nothing): Whisper's known
    # hallucination on non-speech, which is why the voice path gates ASR with a VAD.
    assert _transcribe(model, np.zeros(RATE, dtype=np.float32), vad=True) == ""


def test_the_piper_voice_speaks_a_sentence_at_22050_hz() -> None:
    voice = _voice()
    assert voice.config.sample_rate == 22_050
    chunks = list(voice.synthesize("Turn off the lights when you leave the room."))
    assert chunks
    assert {chunk.sample_rate for chunk in chunks} == {22_050}
    assert {chunk.sample_channels for chunk in chunks} == {1}
    audio = np.concatenate([chunk.audio_float_array for chunk in chunks])
    assert 1.0 < len(audio) / 22_050 < 6.0
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() > 0.2
    assert np.sqrt(np.mean(audio**2)) > 0.02


def _speech_probabilities(session: ort.InferenceSession, audio: Audio) -> npt.NDArray[np.float32]:
    """Silero VAD v6's speech probability for each 32 ms frame (512 samples) of ``audio``.

    The model takes each frame with the 64 samples before it and carries its LSTM state
    (``h``, ``c``) from one frame to the next, as a stream would feed it.
    """
    context = 64
    assert session.get_inputs()[0].shape == ["seq_len", 512 + context]
    state = {"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}
    previous = np.zeros(context, np.float32)
    probabilities = []
    for start in range(0, len(audio) - 511, 512):
        frame = audio[start : start + 512]
        speech, state["h"], state["c"] = session.run(None, {"input": np.concatenate([previous, frame])[None], **state})
        probabilities.append(float(speech[0]))
        previous = frame[-context:]
    return np.array(probabilities, dtype=np.float32)


def test_silero_vad_tells_speech_from_silence(sentence: Audio) -> None:
    session = _session("silero-vad-v6")
    assert [o.name for o in session.get_outputs()] == ["speech_probs", "hn", "cn"]
    # A second of quiet noise (-50 dBFS, not digital zeros) either side of the sentence.
    noise = np.random.default_rng(7).normal(0, 0.003, 2 * RATE).astype(np.float32)
    audio = np.concatenate([noise[:RATE], sentence, noise[RATE:]])
    probabilities = _speech_probabilities(session, audio)

    frame_seconds = 512 / RATE
    lead = int(1.0 / frame_seconds)
    spoken = slice(lead + 1, int((1.0 + len(sentence) / RATE) / frame_seconds))
    # The model holds on for a few frames after speech ends; the last half second is silence.
    tail = slice(-int(0.5 / frame_seconds), None)
    assert probabilities[:lead].max() < 0.1, probabilities[:lead]
    assert probabilities[tail].max() < 0.1, probabilities[tail]
    assert np.median(probabilities[spoken]) > 0.9, probabilities[spoken]
    assert np.mean(probabilities[spoken] > 0.5) > 0.75, probabilities[spoken]


def _turn_features(audio: Audio) -> Audio:
    """Smart Turn's input for ``audio``: Whisper's 80 log-mel bands over the last 8 s (800 frames).

    Shorter audio is padded with silence in front, and the waveform is normalised to zero mean
    and unit variance first, as pipecat does for this model.
    """
    window = 8 * RATE
    audio = np.pad(audio[-window:], (max(window - len(audio), 0), 0))
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    features = FeatureExtractor(feature_size=80, chunk_length=8)(audio, padding=0)
    return np.asarray(features, dtype=np.float32)


def test_smart_turn_scores_a_batch_of_turns(sentence: Audio) -> None:
    session = _session("smart-turn-v3.2")
    (features,) = session.get_inputs()
    assert (features.name, features.shape[1:]) == ("input_features", [80, 800])
    batch = np.stack([_turn_features(sentence), _turn_features(sentence[: len(sentence) // 2])])
    (scores,) = session.run(None, {"input_features": batch})
    # The output is already a probability that the turn is complete. Whether it is right is not
    # asserted: the catalogue notes it judges synthetic speech poorly (it scores this whole
    # espeak sentence as unfinished and its first half as finished).
    assert scores.shape == (2, 1)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert abs(float(scores[0, 0]) - float(scores[1, 0])) > 0.01, "the model ignores its input"


def _corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Errors over all sentences per reference word over all sentences (not a mean of rates)."""
    errors = sum(word_errors(r, h) for r, h in zip(references, hypotheses, strict=True))
    return errors / sum(len(normalise(r)) for r in references)


def _mismatches(references: list[str], hypotheses: list[str]) -> list[tuple[str, str]]:
    return [(r, h) for r, h in zip(references, hypotheses, strict=True) if word_errors(r, h)]


def test_whisper_tiny_en_transcribes_espeak_within_15_percent_wer(tiny_en: WhisperModel, tmp_path: Path) -> None:
    clips = [_espeak(text, tmp_path) for text in ASR_SENTENCES]
    started = time.perf_counter()
    heard = [_transcribe(tiny_en, clip) for clip in clips]
    elapsed = time.perf_counter() - started
    audio_seconds = sum(len(clip) for clip in clips) / RATE

    wer = _corpus_wer(ASR_SENTENCES, heard)
    print(
        f"\nASR whisper-tiny.en on espeak-ng: WER {wer:.3f} over {len(clips)} sentences, "
        f"{audio_seconds:.1f} s of audio in {elapsed:.2f} s, RTF {elapsed / audio_seconds:.3f}"
    )
    assert wer <= 0.15, _mismatches(ASR_SENTENCES, heard)


def _timed_synthesis(voice: PiperVoice, text: str) -> Iterator[tuple[float, npt.NDArray[np.float32]]]:
    """Each audio chunk of ``text`` with the seconds from the call to its arrival."""
    started = time.perf_counter()
    for chunk in voice.synthesize(text):
        yield time.perf_counter() - started, chunk.audio_float_array


def test_the_piper_voice_is_understood_by_whisper_within_10_percent_wer(tiny_en: WhisperModel) -> None:
    # Piper samples noise in every synthesis, so the rate varies from run to run (0 to 0.04
    # over a dozen runs when written; the bound is five wrong words in 49).
    voice = _voice()
    first_audio: list[float] = []
    synthesis_seconds = audio_seconds = 0.0
    heard = []
    for text in TTS_SENTENCES:
        timed = list(_timed_synthesis(voice, text))
        first_audio.append(timed[0][0])
        synthesis_seconds += timed[-1][0]
        audio = np.concatenate([samples for _, samples in timed])
        audio_seconds += len(audio) / voice.config.sample_rate
        heard.append(_transcribe(tiny_en, _to_16k(audio, voice.config.sample_rate)))

    wer = _corpus_wer(TTS_SENTENCES, heard)
    print(
        f"\nTTS {VOICE} heard by whisper-tiny.en: WER {wer:.3f} over {len(TTS_SENTENCES)} sentences; "
        f"piper RTF {synthesis_seconds / audio_seconds:.3f} ({audio_seconds:.1f} s of audio in "
        f"{synthesis_seconds:.2f} s), time to first audio {first_audio[0]:.3f} s for the first "
        f"sentence, {max(first_audio[1:]):.3f} s at most after it"
    )
    assert wer <= 0.10, _mismatches(TTS_SENTENCES, heard)
