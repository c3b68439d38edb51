"""svc_policy settings: SKM_POLICY_* plus the stores the stack hands every service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from skm_runtime.settings import ServiceSettings, address, bounded

_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class PolicySettings(ServiceSettings):
    addr: str = address("127.0.0.1:50055")
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    redis_url: str = field(default="redis://127.0.0.1:56379/0", metadata={"env": "SKM_REDIS_URL"})
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    openfga_api_url: str = field(default="http://127.0.0.1:58080", metadata={"env": "SKM_OPENFGA_API_URL"})
    # File holding OpenFGA's preshared key (never the key itself in a variable or a log).
    openfga_api_token_file: str = field(default="", metadata={"env": "SKM_OPENFGA_API_TOKEN_FILE"})
    # The OpenFGA store of this deployment, found or created by name at start.
    openfga_store: str = "skm"
    model_path: Path = _REPO / "deploy" / "openfga" / "model.fga"
    decisions_path: Path = _REPO / "deploy" / "openfga" / "decisions.yaml"
    # How stale a cached decision may be (callers can ask for a fresh one).
    cache_ttl_seconds: float = bounded(5.0, low=0.0, high=300.0)
    # How long OpenFGA may answer from its own caches (its --check-iterator-cache-ttl; 0: it
    # does not cache). For that long after a relationship change, svc_policy asks it with
    # HIGHER_CONSISTENCY, which skips them.
    openfga_cache_ttl_seconds: float = bounded(2.0, low=0.0, high=300.0)
    # How often OpenFGA is asked whether it is up. While the last answer (a check's or this
    # probe's) was a failure, no cached decision is reused: every check fails closed.
    engine_probe_seconds: float = bounded(1.0, low=0.1, high=60.0)
    # How long a blocked action waits for an operator (and an approval for its claim).
    hold_ttl_seconds: float = bounded(86_400.0, low=1.0, high=30 * 86_400.0)
    # How often entries whose time is up are moved to EXPIRED.
    expiry_interval_seconds: float = bounded(5.0, low=0.1, high=3600.0)
