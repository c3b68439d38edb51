"""svc_profiles: personas, the model registry, tenants' model profiles, and role resolution.

Composition root: settings -> adapters (Postgres and its outbox relay to Kafka, trusted persona
keys, the deployment defaults file) -> core -> servicers -> server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from datetime import UTC, datetime, timedelta

import grpc

from skm_runtime.contract import services_of
from skm_runtime.outbox import OutboxRelay
from skm_runtime.server import RuntimeSettings, ServiceSpec, open_channel, run
from skm_runtime.settings import SettingsError
from svc_profiles import api
from svc_profiles.adapters.analytics import GrpcTelemetry
from svc_profiles.adapters.bundle_keys import BundleAwarePersonaKeys
from svc_profiles.adapters.conversation import GrpcConversations
from svc_profiles.adapters.defaults import load_defaults, with_served_engine
from svc_profiles.adapters.events import TOPICS
from svc_profiles.adapters.keys import Ed25519PersonaKeys, Ed25519PersonaSigner, PersonaKeysInvalid
from svc_profiles.adapters.pg import SCHEMA
from svc_profiles.adapters.policy import GrpcTenantPolicy
from svc_profiles.adapters.postgres import PostgresProfileStore
from svc_profiles.adapters.postgres_bundles import PostgresBundleStore
from svc_profiles.adapters.postgres_scoring import PostgresScoringStore
from svc_profiles.adapters.postgres_tenants import PostgresTenantStore
from svc_profiles.adapters.tools import GrpcToolCatalogue
from svc_profiles.core import Profiles
from svc_profiles.core.bundles import Bundles
from svc_profiles.core.scoring import Scoring, weights_of
from svc_profiles.core.tenants import Tenants
from svc_profiles.core.training import Training
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
    constitution = _default_constitution(settings)
    weights, weight_problems = weights_of(settings.score_weights)
    if weight_problems:
        raise SettingsError([f"SKM_PROFILES_SCORE_WEIGHTS: {p}" for p in weight_problems])
    store = await PostgresProfileStore.open(settings.postgres_dsn)
    tenant_store = PostgresTenantStore(store.pool)
    await tenant_store.migrate()
    # Onboarding's channels: every call signed as this service (a caller of the mesh).
    policy_channel = open_channel(settings.policy_addr, runtime)
    tools_channel = open_channel(settings.tools_addr, runtime)
    relay = OutboxRelay(store.pool, SCHEMA, settings.kafka_bootstrap, topics=TOPICS)
    scoring_store = PostgresScoringStore(store.pool)
    await scoring_store.migrate()
    analytics_channel = open_channel(settings.analytics_addr, runtime)
    schedule: list[asyncio.Task[None]] = []
    bundle_store = PostgresBundleStore(store.pool)
    await bundle_store.migrate()
    # Installed personas are signed by their tenant's trusted keys (adapters.bundle_keys).
    profiles = Profiles(store, BundleAwarePersonaKeys(keys), defaults, now=_now, builtin_signer=signer)
    scoring = Scoring(
        scoring_store,
        store,
        store,
        GrpcTelemetry(analytics_channel),
        profiles.revise_model_profile,
        defaults,
        weights=weights,
        window=timedelta(seconds=settings.scoring_window_seconds),
        interval=timedelta(seconds=settings.scoring_interval_seconds),
        now=_now,
    )
    bundles = Bundles(profiles, bundle_store, GrpcTenantPolicy(policy_channel), now=_now)
    # Training mode reads turns from svc_conversation as the operator (a signed principal).
    conversation_channel = open_channel(settings.conversation_addr, runtime)
    training = Training(profiles, GrpcConversations(conversation_channel))
    tenants = Tenants(
        tenant_store,
        GrpcTenantPolicy(policy_channel),
        GrpcToolCatalogue(tools_channel),
        defaults.personas,
        constitution,
        now=_now,
    )

    async def start() -> None:
        await profiles.start()
        relay.start()
        if settings.scoring_interval_seconds > 0:
            # Every replica ticks; the store's lock lets one run per interval (core.scoring).
            schedule.append(asyncio.create_task(scoring.run_schedule(), name="scoring-schedule"))
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
        for task in schedule:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await analytics_channel.close()
        await relay.close()
        await policy_channel.close()
        await tools_channel.close()
        await conversation_channel.close()
        await store.close()

    def register(server: grpc.aio.Server) -> None:
        api.register(server, profiles, tenants, scoring, bundles, training)

    return ServiceSpec(
        name="profiles", service_names=services_of("profiles"), register=register, start=start, stop=stop
    )


def _default_constitution(settings: ProfilesSettings) -> str:
    try:
        return settings.constitution_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefaultsInvalid(
            str(settings.constitution_file), [f"the default constitution cannot be read: {exc}"]
        ) from None


def main() -> int:
    try:
        return run("profiles", ProfilesSettings, build)
    except (DefaultsInvalid, PersonaKeysInvalid, SettingsError) as exc:
        # Configuration, like a bad SKM_* value: named on stderr, exit 2, no traceback.
        print(f"svc_profiles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
