"""One behaviour suite per speech port, run over the real engines and the test fixtures alike.

Each port's tests take the engine as a parametrized fixture: Silero VAD and the energy VAD;
whisper tiny.en, whisper base and the scripted recogniser; piper, espeak-ng and the tone. What
the suite asserts is what svc_audio's core relies on, so a fixture that passes it may stand in
for the real engine in the core's unit tests (as openfga's storage suite proves its in-memory
store). Checks only a real engine can pass (its speech is understood) run over the real ones.

No recordings: espeak-ng speaks the sentences at test time, through its own command line, not
through the engine under test. Run with ``pytest -s`` to see the decode times.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from skm_stack.catalogue import installed_path
from svc_audio.engines.espeak import EspeakSynthesizer
from svc_audio.engines.piper_voice import PiperSynthesizer, load_piper_voices
from svc_audio.engines.silero import SileroSpeechDetector
from svc_audio.engines.text import apply_replacements, bcp47, sentences
from svc_audio.engines.whisper import WhisperRecognizer
from svc_audio.errors import RecognizerUnavailable, SynthesizerUnavailable, UnsupportedLanguage
from svc_audio.model import SPEECH_RATE, Samples, SpeechStyle
from svc_audio.ports import Recognizer, SpeechDetector, Synthesizer
from svc_audio.wer import normalise, word_error_rate
from tests.support.audio_fakes import EnergySpeechDetector, ScriptedRecognizer, ToneSynthesizer

pytestmark = pytest.mark.timeout(300)

SENTENCE = "Can you tell me how to get to the train station?"
SPOKEN = [
    "Please send me the report before the meeting tomorrow morning.",
    "The children are reading books in the quiet library.",
    "Turn off the lights when you leave the room.",
]
VOICE = "piper-en_US-joe-medium"
WINDOW_SECONDS = 512 / SPEECH_RATE


def _to_16k(audio: Samples, rate: int) -> Samples:
    common = math.gcd(rate, SPEECH_RATE)
    return np.asarray(resample_poly(audio, SPEECH_RATE // common, rate // common), dtype=np.float32)


def _espeak(text: str, folder: Path) -> Samples:
    """`text` said by espeak-ng's American voice at 160 words a minute, at 16 kHz: speech made
    by the binary itself, so the synthesizer under test makes no test input."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: `python -m skm_stack install` puts it on the machine"
    path = folder / "speech.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "160", "-w", str(path), text], check=True, timeout=30)
    with wave.open(str(path), "rb") as clip:
        rate = clip.getframerate()
        samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2") / 32768.0
    return _to_16k(samples.astype(np.float32), rate)


def _whole_windows(audio: Samples) -> Samples:
    return audio[: len(audio) // 512 * 512]


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """SENTENCE spoken, about 2.9 s."""
    return _espeak(SENTENCE, tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def noise() -> Samples:
    """Two seconds of quiet room noise (-50 dBFS), not digital silence."""
    return np.random.default_rng(7).normal(0, 0.003, 2 * SPEECH_RATE).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_en() -> WhisperRecognizer:
    return WhisperRecognizer(installed_path("whisper-tiny.en"), device="cpu")


@pytest.fixture(scope="module")
def whisper_base() -> WhisperRecognizer:
    return WhisperRecognizer(installed_path("whisper-base"), device="cpu")


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer(installed_path(VOICE, "en_US-joe-medium.onnx"))


# --- SpeechDetector ---------------------------------------------------------------------------


@pytest.fixture(params=["silero", "energy"])
def detector(request: pytest.FixtureRequest) -> SpeechDetector:
    if request.param == "silero":
        return SileroSpeechDetector(installed_path("silero-vad-v6"))
    return EnergySpeechDetector()


def test_detector_windows_are_32_ms(detector: SpeechDetector) -> None:
    assert detector.window == 512


def test_silence_and_quiet_noise_are_not_speech(detector: SpeechDetector, noise: Samples) -> None:
    audio = _whole_windows(np.concatenate([np.zeros(SPEECH_RATE, np.float32), noise]))
    probabilities = detector.probabilities(detector.start(), audio)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(audio) // 512,)
    assert probabilities.max() < 0.1, probabilities


def test_speech_is_speech_and_the_noise_around_it_is_not(
    detector: SpeechDetector, sentence: Samples, noise: Samples
) -> None:
    audio = _whole_windows(np.concatenate([noise[:SPEECH_RATE], sentence, noise[SPEECH_RATE:]]))
    probabilities = detector.probabilities(detector.start(), audio)

    lead = int(1.0 / WINDOW_SECONDS)
    spoken = probabilities[lead + 1 : int((1.0 + len(sentence) / SPEECH_RATE) / WINDOW_SECONDS)]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert probabilities[:lead].max() < 0.1, probabilities[:lead]
    # Silero holds on for a few windows after the last word; the last half second is noise.
    assert probabilities[-int(0.5 / WINDOW_SECONDS) :].max() < 0.1
    assert np.median(spoken) > 0.9, spoken
    assert np.mean(spoken > 0.5) > 0.75, spoken


def test_state_carries_across_calls(detector: SpeechDetector, sentence: Samples, noise: Samples) -> None:
    """Whole audio in one call, one window a call, and uneven calls: the same probabilities."""
    audio = _whole_windows(np.concatenate([noise[:8000], sentence, noise[:8000]]))
    whole = detector.probabilities(detector.start(), audio)

    state = detector.start()
    one_by_one = np.concatenate([detector.probabilities(state, audio[i : i + 512]) for i in range(0, len(audio), 512)])

    state = detector.start()
    uneven, position = [], 0
    for count in [1, 3, 7, 2, 10] * 100:
        if position >= len(audio):
            break
        uneven.append(detector.probabilities(state, audio[position : position + count * 512]))
        position += count * 512
    np.testing.assert_allclose(one_by_one, whole, atol=1e-4)
    np.testing.assert_allclose(np.concatenate(uneven), whole, atol=1e-4)


def test_streams_do_not_share_state(detector: SpeechDetector, sentence: Samples, noise: Samples) -> None:
    """Two streams interleaved score as each would alone."""
    speech = _whole_windows(sentence)
    quiet = _whole_windows(noise)[: len(speech)]
    alone = detector.probabilities(detector.start(), speech)
    talking, silent = detector.start(), detector.start()
    interleaved = []
    for i in range(0, len(speech), 2048):
        interleaved.append(detector.probabilities(talking, speech[i : i + 2048]))
        detector.probabilities(silent, quiet[i : i + 2048])
    np.testing.assert_allclose(np.concatenate(interleaved), alone, atol=1e-4)


def test_detector_refuses_part_windows_and_foreign_state(detector: SpeechDetector) -> None:
    with pytest.raises(ValueError, match="512"):
        detector.probabilities(detector.start(), np.zeros(700, np.float32))
    with pytest.raises(TypeError):
        detector.probabilities(object(), np.zeros(512, np.float32))
    assert detector.probabilities(detector.start(), np.zeros(0, np.float32)).shape == (0,)


# --- Recognizer -------------------------------------------------------------------------------


@pytest.fixture(params=["whisper-tiny.en", "whisper-base", "scripted"])
def recognizer(request: pytest.FixtureRequest) -> Recognizer:
    if request.param == "scripted":
        return ScriptedRecognizer([SENTENCE] * 10)
    fixture = {"whisper-tiny.en": "tiny_en", "whisper-base": "whisper_base"}[request.param]
    engine: Recognizer = request.getfixturevalue(fixture)
    return engine


def test_speech_is_transcribed_with_words_in_order(recognizer: Recognizer, sentence: Samples) -> None:
    heard = recognizer.transcribe(sentence, "en-US", word_timestamps=True)

    assert word_error_rate(SENTENCE, heard.text) <= 0.25, heard.text
    assert heard.language == "en"
    assert 0.0 <= heard.confidence <= 1.0
    assert heard.audio_seconds == pytest.approx(len(sentence) / SPEECH_RATE)
    assert heard.compute_seconds >= 0.0
    # The words are the text's words, in order, inside the audio, in time order.
    assert normalise(" ".join(word.word for word in heard.words)) == normalise(heard.text)
    starts = [word.start for word in heard.words]
    assert starts == sorted(starts)
    for word in heard.words:
        assert 0.0 <= word.start <= word.end <= heard.audio_seconds, word
        assert 0.0 <= word.confidence <= 1.0, word


def test_no_word_timings_unless_asked(recognizer: Recognizer, sentence: Samples) -> None:
    heard = recognizer.transcribe(sentence, "en", word_timestamps=False)
    assert heard.words == ()
    assert normalise(heard.text)


def test_partial_results_are_the_cheap_path(
    recognizer: Recognizer, sentence: Samples, request: pytest.FixtureRequest
) -> None:
    """On the same 3 s, an interim result (greedy, no timestamps) against a final one."""
    window = np.pad(sentence, (0, max(3 * SPEECH_RATE - len(sentence), 0)))[: 3 * SPEECH_RATE]
    final = recognizer.transcribe(window, "en", word_timestamps=True)
    partial = recognizer.transcribe(window, "en", word_timestamps=True, partial=True)

    assert partial.words == ()
    assert partial.language == "en"
    assert 0.0 <= partial.confidence <= 1.0
    assert partial.audio_seconds == pytest.approx(3.0)
    print(
        f"\n{request.node.callspec.id}: 3 s decoded in {final.compute_seconds:.3f} s final "
        f"(beam, word timings), {partial.compute_seconds:.3f} s partial (greedy, no timestamps)"
    )


def test_an_unknown_language_is_refused_and_an_empty_one_detected(recognizer: Recognizer, sentence: Samples) -> None:
    with pytest.raises(UnsupportedLanguage):
        recognizer.transcribe(sentence, "zz-ZZ", word_timestamps=False)
    assert recognizer.transcribe(sentence, "", word_timestamps=False).language == "en"


def test_empty_audio_is_heard_as_nothing(recognizer: Recognizer) -> None:
    heard = recognizer.transcribe(np.zeros(0, np.float32), "en", word_timestamps=True)
    assert (heard.text, heard.words, heard.audio_seconds) == ("", (), 0.0)


def test_whisper_declares_its_model_and_languages(tiny_en: WhisperRecognizer, whisper_base: WhisperRecognizer) -> None:
    assert (tiny_en.name, tiny_en.languages) == ("faster-whisper/whisper-tiny.en", frozenset({"en"}))
    # whisper-base is multilingual: it takes any of Whisper's languages and detects them.
    assert (whisper_base.name, whisper_base.languages) == ("faster-whisper/whisper-base", None)
    # Without a GPU, "auto" (the default) quantises to int8 on the CPU.
    assert (tiny_en.device, tiny_en.compute_type) == ("cpu", "int8")


def test_a_missing_whisper_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(RecognizerUnavailable):
        WhisperRecognizer(tmp_path / "whisper-nowhere", device="cpu")


# --- Synthesizer ------------------------------------------------------------------------------


@pytest.fixture(params=["piper", "espeak-ng", "tone"])
def synthesizer(request: pytest.FixtureRequest) -> Synthesizer:
    if request.param == "piper":
        engine: Synthesizer = request.getfixturevalue("piper")
        return engine
    if request.param == "espeak-ng":
        return EspeakSynthesizer()
    return ToneSynthesizer()


def _speak(synthesizer: Synthesizer, text: str, style: SpeechStyle | None = None) -> list[Samples]:
    return list(synthesizer.synthesize(text, style or SpeechStyle()))


def _seconds(synthesizer: Synthesizer, chunks: list[Samples]) -> float:
    return sum(len(chunk) for chunk in chunks) / synthesizer.voice.sample_rate


def test_speech_comes_one_chunk_a_sentence_as_float_samples(synthesizer: Synthesizer) -> None:
    text = " ".join(SPOKEN[:2])
    chunks = _speak(synthesizer, text)

    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.dtype == np.float32
        assert chunk.ndim == 1
        assert np.isfinite(chunk).all()
        assert np.abs(chunk).max() <= 1.0
        assert np.abs(chunk).max() > 0.05
    words = len(text.split())
    assert 0.05 * words < _seconds(synthesizer, chunks) < 1.0 * words


def test_a_faster_rate_gives_shorter_audio(synthesizer: Synthesizer) -> None:
    normal = _seconds(synthesizer, _speak(synthesizer, SPOKEN[0]))
    fast = _seconds(synthesizer, _speak(synthesizer, SPOKEN[0], SpeechStyle(rate=2.0)))
    # Rates beyond 2.0 are clipped to it.
    faster_still = _seconds(synthesizer, _speak(synthesizer, SPOKEN[0], SpeechStyle(rate=10.0)))
    assert fast < 0.8 * normal, (fast, normal)
    assert faster_still == pytest.approx(fast, rel=0.25)


def test_replacements_apply_to_whole_words_in_any_case(synthesizer: Synthesizer) -> None:
    style = SpeechStyle(replacements=(("OK", "that is perfectly fine with me, thank you very much"),))
    plain = _seconds(synthesizer, _speak(synthesizer, "ok."))
    replaced = _seconds(synthesizer, _speak(synthesizer, "ok.", style))
    inside_a_word = _seconds(synthesizer, _speak(synthesizer, "okay.", style))
    assert replaced > 3 * plain, (replaced, plain)
    assert inside_a_word < 2 * plain, (inside_a_word, plain)


@pytest.mark.parametrize("text", ["", "   ", "...", " - "])
def test_text_with_nothing_to_say_yields_nothing(synthesizer: Synthesizer, text: str) -> None:
    # Decided: no error and no audio. The core refuses empty text (TextEmpty) before a voice
    # sees it; what reaches a voice empty (a reply that is all punctuation) is simply silent.
    assert _speak(synthesizer, text) == []


@pytest.mark.parametrize("voice", ["piper", "espeak-ng"])
def test_the_voice_is_understood_by_whisper(
    voice: str, tiny_en: WhisperRecognizer, request: pytest.FixtureRequest
) -> None:
    synthesizer: Synthesizer = request.getfixturevalue("piper") if voice == "piper" else EspeakSynthesizer()
    text = " ".join(SPOKEN)
    audio = np.concatenate(_speak(synthesizer, text))
    heard = tiny_en.transcribe(_to_16k(audio, synthesizer.voice.sample_rate), "en", word_timestamps=False)
    # Piper samples noise in every synthesis, so its rate varies a little from run to run.
    assert word_error_rate(text, heard.text) <= 0.2, heard.text


def test_the_voices_describe_themselves(piper: PiperSynthesizer) -> None:
    assert piper.voice.name == "voices/en_US-joe-medium"
    assert (piper.voice.display_name, piper.voice.languages) == ("joe (medium)", ("en-US",))
    assert (piper.voice.sample_rate, piper.voice.engine) == (22_050, "piper")
    espeak = EspeakSynthesizer().voice
    assert (espeak.name, espeak.languages, espeak.sample_rate, espeak.engine) == (
        "voices/espeak-ng-en-us",
        ("en-US",),
        22_050,
        "espeak-ng",
    )


def test_piper_voices_are_found_in_a_folder(tmp_path: Path) -> None:
    model = installed_path(VOICE, "en_US-joe-medium.onnx")
    (tmp_path / "nested").mkdir()
    for name in ("en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json"):
        (tmp_path / "nested" / name).symlink_to(model.with_name(name))
    # A model without its config is no voice.
    (tmp_path / "stray.onnx").symlink_to(model)
    assert [synthesizer.voice.name for synthesizer in load_piper_voices(tmp_path)] == ["voices/en_US-joe-medium"]


def test_a_broken_voice_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    (tmp_path / "broken.onnx.json").write_text("{}")
    with pytest.raises(SynthesizerUnavailable):
        PiperSynthesizer(tmp_path / "broken.onnx")
    with pytest.raises(SynthesizerUnavailable):
        _speak(EspeakSynthesizer(binary=str(tmp_path / "espeak-ng-nowhere")), "Hello.")
    with pytest.raises(SynthesizerUnavailable):
        _speak(EspeakSynthesizer(voice="zz-nowhere"), "Hello.")


# --- Text preparation shared by the voices ----------------------------------------------------


def test_replacements_match_whole_words_only() -> None:
    replacements = (("skm", "soma"), ("C++", "see plus plus"))
    assert (
        apply_replacements("SKM likes skm, not skms. C++!", replacements) == "soma likes soma, not skms. see plus plus!"
    )


def test_sentences_and_language_tags() -> None:
    assert sentences("One. Two?  Three!\nfour ... ") == ["One.", "Two?", "Three!", "four ..."]
    assert [bcp47(tag) for tag in ("en-us", "en_US", "cmn", "en-gb-x-rp", "zh-hant-tw")] == [
        "en-US",
        "en-US",
        "cmn",
        "en-GB-x-rp",
        "zh-Hant-TW",
    ]
