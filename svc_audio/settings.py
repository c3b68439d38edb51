"""svc_audio settings (SKM_AUDIO_*), plus the stores and services the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from skm_runtime.settings import ServiceSettings, address, bounded

_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class AudioSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50053")
    # Where the other replicas reach this one (PushAudio is relayed to the replica holding a
    # voice stream); empty: `addr`.
    advertise_addr: str = ""
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    # Quality events (AudioQualityMeasured, topic analytics) go out through the outbox.
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    # Which replica holds which voice stream.
    redis_url: str = field(default="redis://127.0.0.1:56379/0", metadata={"env": "SKM_REDIS_URL"})
    conversation_addr: str = address("127.0.0.1:50052", env="SKM_CONVERSATION_ADDR")
    profiles_addr: str = address("127.0.0.1:50056", env="SKM_PROFILES_ADDR")

    # Models. A name is a folder under `models_dir` (where `python -m skm_stack models` puts
    # the catalogue's assets); an absolute path is used as it is, so any faster-whisper model
    # folder and any piper voice work.
    models_dir: Path = _REPO / ".cache" / "models"
    # "off": no decoding (voice activity, utterances and features only; finals are empty).
    asr_model: str = "whisper-tiny.en"
    # "auto": CUDA when CTranslate2 sees a GPU, else the CPU (int8).
    asr_device: str = "auto"
    # Beam width of final transcripts; 1 (greedy) is fastest but misses more words on short
    # utterances; interim results are always greedy.
    asr_beam_size: int = bounded(5, low=1, high=10)
    asr_threads: int = bounded(1, low=1, high=16)
    vad_model: str = "silero-vad-v6/silero_vad_v6.onnx"
    # Folders of piper voices (each *.onnx with its .onnx.json); espeak-ng is always added.
    voice_dirs: tuple[str, ...] = ("piper-en_US-joe-medium",)
    default_voice: str = "voices/en_US-joe-medium"
    tts_threads: int = bounded(1, low=1, high=16)
    # A MOS predictor (ONNX, 16 kHz float32 [1, n] in, one score out). No predictor's weights
    # are reachable here, so MOS is reported as not computed unless one is configured.
    mos_model: Path | None = None

    # Turn-taking defaults (VadConfig overrides the first two per stream).
    vad_threshold: float = bounded(0.5, low=0.05, high=0.95)
    min_silence_ms: int = bounded(500, low=100, high=5000)
    # Speech shorter than this is noise: it starts no utterance and interrupts no answer.
    min_speech_ms: int = bounded(150, low=30, high=2000)
    # Audio kept before the detected onset: soft first sounds ("wh", "h") score low in VAD.
    speech_pad_ms: int = bounded(300, low=0, high=1000)
    # A stream that carries no audio for this long ends (DEADLINE_EXCEEDED, STREAM_IDLE).
    idle_seconds: float = bounded(30.0, low=1.0, high=3600.0)

    # Utterance feature vectors: a local folder (embedded Qdrant, one process per folder) or
    # a server URL; empty: not stored.
    qdrant_location: str = str(_REPO / ".state" / "audio" / "qdrant")
    qdrant_api_key: str = field(default="", metadata={"secret": True})

    def model_path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.models_dir / path
