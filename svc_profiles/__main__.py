"""svc_profiles: personas, the model registry, tenants' model profiles, and role resolution.

Composition root: settings -> adapters (Postgres and its outbox relay to Kafka, trusted persona
keys, the deployment defaults file) -> core -> servicers -> server.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import grpc

from skm_runtime.contract import services_of
from skm_runtime.outbox import OutboxRelay
from skm_runtime.server import RuntimeSettings, ServiceSpec, run
from svc_profiles import api
from svc_profiles.adapters.defaults import load_defaults, with_served_engine
from svc_profiles.adapters.events import TOPICS
from svc_profiles.adapters.keys import Ed25519PersonaKeys, Ed25519PersonaSigner, PersonaKeysInvalid
from svc_profiles.adapters.postgres import SCHEMA, PostgresProfileStore
from svc_profiles.core import Profiles
from svc_profiles.errors import DefaultsInvalid
from svc_profiles.settings import ProfilesSettings

log = logging.getLogger("skm.profiles")


def _now() -> datetime:
    return datetime.now(UTC)


async def build(settings: ProfilesSettings, runtime: RuntimeSettings) -> ServiceSpec:
    # Configuration errors stop the start before any connection is opened.
    defaults = with_served_engine(load_defaults(settings.defaults_file))
    keys = Ed25519PersonaKeys.load(settings.persona_keys, settings.persona_keys_dir)
    signer = None
    if settings.builtin_signing_key_file is not None:
        signer = Ed25519PersonaSigner.load(settings.builtin_signing_key_id, settings.builtin_signing_key_file)
        keys = keys.trusting(signer.key_id, signer.public_key)
    store = await PostgresProfileStore.open(settings.postgres_dsn)
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=TOPICS)
    profiles = Profiles(store, keys, defaults, now=_now, builtin_signer=signer)

    async def start() -> None:
        await profiles.start()
        relay.start()
        log.info(
            "deployment defaults loaded",
            extra={
                "fields": {
                    "models": len(defaults.models),
                    "role_defaults": len(defaults.role_defaults),
                    "personas": len(defaults.personas),
                    "trusted_keys": len(keys.key_ids),
                    "built_in_personas_signed": signer is not None,
                }
            },
        )

    async def stop() -> None:
        await relay.close()
        await store.close()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, profiles)

    return ServiceSpec(
        name="profiles", service_names=services_of("profiles"), register=register, start=start, stop=stop
    )


def main() -> int:
    try:
        return run("profiles", ProfilesSettings, build)
    except (DefaultsInvalid, PersonaKeysInvalid) as exc:
        # Configuration, like a bad SKM_* value: named on stderr, exit 2, no traceback.
        print(f"svc_profiles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
