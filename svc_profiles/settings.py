"""svc_profiles settings: SKM_PROFILES_* plus the database the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from skm_runtime.settings import ServiceSettings, address

# The repository's deployment defaults (read by svc_profiles.adapters.defaults).
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "deploy" / "profiles" / "defaults.yaml"


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
