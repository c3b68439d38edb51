"""svc_profiles settings: SKM_PROFILES_* plus the database the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from skm_runtime.settings import ServiceSettings, address, bounded

# The repository's deployment defaults (read by svc_profiles.adapters.defaults).
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "deploy" / "profiles" / "defaults.yaml"
# The deployment's default constitution for new tenants (read by svc_profiles.__main__).
CONSTITUTION_FILE = DEFAULTS_FILE.with_name("constitution.md")


@dataclass(frozen=True, slots=True)
class ProfilesSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50056")
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    # The deployment defaults (models registered at start, role defaults, built-in personas);
    # the repository's deploy/profiles/defaults.yaml unless set.
    defaults_file: Path = DEFAULTS_FILE
    # Trusted persona publisher keys, "key_id=BASE64" of the 32 raw Ed25519 public key bytes,
    # comma-separated.
    persona_keys: tuple[str, ...] = ()
    # A folder of trusted persona publisher keys, one PEM public key per `{key_id}.pem`.
    persona_keys_dir: Path | None = None
    # The deployment's Ed25519 private key (unencrypted PEM) that signs the built-in personas,
    # its public half trusted as `builtin_signing_key_id`. Unset: built-in personas are
    # unsigned, so svc_conversation runs them in DEVELOPER mode only.
    builtin_signing_key_file: Path | None = None
    builtin_signing_key_id: str = "deployment"
    # Where svc_profiles's outbox relay publishes its events (topics `profiles` and
    # `model.profile.scored`).
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    # svc_policy: relationships and constitutions written by onboarding and persona bundles.
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    # svc_conversation: the turns training mode makes examples of.
    conversation_addr: str = address("127.0.0.1:50052", env="SKM_CONVERSATION_ADDR")
    # svc_tools: its catalogue's tools and risk levels, which onboarding links to a new tenant.
    tools_addr: str = address("127.0.0.1:50054", env="SKM_TOOLS_ADDR")
    # The constitution onboarding writes for a tenant that has none and was given none (Markdown);
    # the repository's deploy/profiles/constitution.md unless set.
    constitution_file: Path = CONSTITUTION_FILE
    # svc_analytics: the production telemetry the scoring job reads (QueryMetrics).
    analytics_addr: str = address("127.0.0.1:50057", env="SKM_ANALYTICS_ADDR")
    # The scoring job's schedule: one run per interval across all replicas; 0 disables it
    # (RunScoring still runs it on demand).
    scoring_interval_seconds: int = bounded(3600, low=0)
    # The telemetry window each run scores: the last this many seconds (at least 60).
    scoring_window_seconds: int = bounded(7 * 86400, low=60, high=90 * 86400)
    # The score's weights, "quality=0.4,cost=0.2,latency=0.2,reliability=0.2": each
    # non-negative, summing to 1; a weight left out is 0.
    score_weights: tuple[str, ...] = ("quality=0.4", "cost=0.2", "latency=0.2", "reliability=0.2")
