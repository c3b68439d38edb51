"""What svc_profiles's core needs from the world, as protocols its adapters implement.

Every store method raises `skm_runtime.errors.ServiceUnavailable` when the database cannot
be reached. Writes that must not overwrite a concurrent change are compare-and-set on the
etag the caller read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from skm_runtime.access import Principal
from skm_runtime.values import ModelRole
from svc_profiles.model import (
    AutoSelected,
    BenchmarkRun,
    BundleInstalled,
    BundleRefused,
    Capability,
    CatalogueTool,
    Constitution,
    Exchange,
    Inserted,
    InstalledBundle,
    Model,
    ModelProfile,
    ModelRecommendation,
    ModelScore,
    ModelTelemetry,
    Persona,
    PersonaCursor,
    Relationship,
    ScoringRun,
    ScoringTrigger,
    Tenant,
    TrustedKey,
)


class PersonaStore(Protocol):
    """Tenants' own personas (built-in ones are not stored)."""

    async def get_persona(self, name: str) -> Persona | None: ...

    async def persona_by_request(self, tenant: str, request_id: str) -> tuple[Persona, str] | None:
        """The persona a create with this request_id made, and that create's fingerprint."""
        ...

    async def insert_persona(self, persona: Persona, request_id: str, fingerprint: str) -> Inserted:
        """Insert it, and its `revision` (set by the core) as its first revision, in one
        transaction; NAME_TAKEN when the tenant has a persona with its id, REQUEST_TAKEN
        when (tenant, request_id) is taken (request_id "" is never taken)."""
        ...

    async def replace_persona(self, persona: Persona, etag: str) -> bool:
        """Overwrite the stored persona of that name if its etag is still `etag`, and record
        it as its `revision` (a new one, set by the core), in one transaction."""
        ...

    async def delete_persona(self, name: str, etag: str) -> bool:
        """Delete it if it exists and, unless `etag` is "", its etag is still `etag`. Its
        revisions stay: sessions pinned to one keep running it, and a persona made again with
        the id numbers its revisions after them."""
        ...

    async def persona_revision(self, name: str, revision_id: int) -> Persona | None:
        """The persona as it was at that revision (None: no such persona or revision)."""
        ...

    async def list_persona_revisions(self, name: str, before: int, limit: int) -> list[Persona]:
        """Up to `limit` revisions of the persona, newest first, with ids below `before`
        (0: from the newest)."""
        ...

    async def list_personas(self, tenant: str, after: PersonaCursor | None, limit: int) -> list[Persona]:
        """Up to `limit` personas of the tenant ordered by (display_name, id) in code point
        order, starting after `after`."""
        ...

    async def stored_persona_ids(self, tenant: str, persona_ids: Collection[str]) -> set[str]:
        """Which of these ids the tenant has a persona of its own for."""
        ...


class ModelRegistry(Protocol):
    """The deployment's models."""

    async def get_models(self, names: Collection[str]) -> dict[str, Model]:
        """The registered ones among `names`, by name."""
        ...

    async def insert_model(self, model: Model) -> bool:
        """False when the name is taken."""
        ...

    async def replace_model(self, model: Model, etag: str) -> bool: ...

    async def upsert_models(self, models: Sequence[Model]) -> None:
        """Register or overwrite each; an entry that already holds the same values keeps its
        etag and update time."""
        ...

    async def list_models(self, capability: Capability | None, after: str, limit: int) -> list[Model]:
        """Up to `limit` models by name, names after `after`, only those with `capability`."""
        ...


class ModelProfileStore(Protocol):
    """Tenants' model profiles, at most one per (tenant, role, mode)."""

    async def get_model_profile(self, name: str) -> ModelProfile | None: ...

    async def model_profile_by_request(self, tenant: str, request_id: str) -> tuple[ModelProfile, str] | None: ...

    async def insert_model_profile(self, profile: ModelProfile, request_id: str, fingerprint: str) -> Inserted:
        """As insert_persona: the profile and its first revision in one transaction."""
        ...

    async def replace_model_profile(
        self, profile: ModelProfile, etag: str, auto_selected: AutoSelected | None = None
    ) -> bool:
        """As replace_persona: compare-and-set, recording `profile.revision` with it; with
        `auto_selected`, auto mode's event of the change too, in the same transaction."""
        ...

    async def delete_model_profile(self, name: str, etag: str) -> bool:
        """Delete it and its revisions (compare-and-set unless `etag` is "")."""
        ...

    async def model_profile_revision(self, name: str, revision_id: int) -> ModelProfile | None: ...

    async def list_model_profile_revisions(self, name: str, before: int, limit: int) -> list[ModelProfile]:
        """As list_persona_revisions."""
        ...

    async def list_model_profiles(self, tenant: str) -> list[ModelProfile]:
        """All of the tenant's profiles (at most one per role and mode), in any order."""
        ...


class ProfileStore(PersonaStore, ModelRegistry, ModelProfileStore, Protocol):
    """All three, as one database serves them."""


class PersonaKeys(Protocol):
    """The deployment's trusted persona publisher keys (Ed25519 public keys by id)."""

    def is_trusted(self, key_id: str) -> bool: ...

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        """True only when `key_id` is trusted and `signature` is its Ed25519 signature of
        `message`."""
        ...


class PersonaSigner(Protocol):
    """The deployment's own publisher key, which signs the built-in personas."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of `message`."""
        ...


class TenantPolicy(Protocol):
    """What svc_profiles writes in svc_policy for a tenant: relationships (onboarding, persona
    bundles) and the constitution (onboarding). Raises `skm_runtime.errors.ServiceUnavailable`
    when svc_policy cannot be reached or refuses; nothing is half-written by one call (svc_policy
    writes a call's relationships all or none)."""

    async def write_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        """Write them (existing ones are no error); any number, in calls of at most 100."""
        ...

    async def delete_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        """Delete them (missing ones are no error); any number, in calls of at most 100."""
        ...

    async def read_relationships(
        self, tenant: str, subject: str = "", relation: str = "", object: str = ""
    ) -> list[Relationship]:
        """The tenant's relationships matching the filter (svc_policy's ReadRelationships:
        `object` may be a type alone, "tool:"), all pages."""
        ...

    async def constitution(self, tenant: str) -> Constitution:
        """The tenant's constitution (the empty document when it never stored one)."""
        ...

    async def replace_constitution(self, tenant: str, content: str, etag: str) -> Constitution:
        """Store it if the current etag is still `etag`; raises EtagMismatch otherwise."""
        ...


class TenantStore(Protocol):
    """The deployment's tenants (svc_profiles's record of onboarding)."""

    async def get_tenant(self, name: str) -> Tenant | None: ...

    async def insert_tenant(self, tenant: Tenant) -> bool:
        """Store a new PROVISIONING tenant; False when the name is taken."""
        ...

    async def activate_tenant(self, tenant: Tenant) -> bool:
        """Store `tenant` (ACTIVE, with what onboarding wrote) over its PROVISIONING record
        and, in the same transaction, its TenantOnboarded event; False when it is no longer
        PROVISIONING (another create finished it first)."""
        ...

    async def list_tenants(self, after: str, limit: int) -> list[Tenant]:
        """Up to `limit` tenants by name, names after `after`."""
        ...


class ToolCatalogue(Protocol):
    """svc_tools' catalogue: every tool a tenant has, with its risk level. Raises
    `skm_runtime.errors.ServiceUnavailable` when svc_tools cannot be reached."""

    async def tools(self, tenant: str) -> list[CatalogueTool]: ...


class RegisteredModels(Protocol):
    """What the scoring job reads of the registry (ModelRegistry's reads)."""

    async def get_models(self, names: Collection[str]) -> dict[str, Model]: ...

    async def list_models(self, capability: Capability | None, after: str, limit: int) -> list[Model]: ...


class TenantModelProfiles(Protocol):
    """What the scoring job reads of the tenants' profiles (ModelProfileStore's listing)."""

    async def list_model_profiles(self, tenant: str) -> list[ModelProfile]: ...


class BenchmarkStore(Protocol):
    """Benchmark runs recorded by the benchmark runner (RecordBenchmark)."""

    async def benchmark_by_request(self, request_id: str) -> tuple[BenchmarkRun, str] | None:
        """The run recorded with this request_id, and that record's fingerprint."""
        ...

    async def insert_benchmark(self, run: BenchmarkRun, request_id: str, fingerprint: str) -> bool:
        """Record it; False when another record with the request_id won a race."""
        ...

    async def latest_benchmarks(self) -> list[BenchmarkRun]:
        """The latest run of each (model, role, suite)."""
        ...


class ScoringStore(BenchmarkStore, Protocol):
    """The scoring job's runs, scores and recommendations, and its single-flight lock."""

    def single_flight(self) -> AbstractAsyncContextManager[bool]:
        """Held across replicas for as long as the context lasts; enters with False (and holds
        nothing) when another holder has it."""
        ...

    async def unfinished_run(self) -> ScoringRun | None:
        """A run still RUNNING (only a crashed holder of the lock leaves one)."""
        ...

    async def latest_run(self, trigger: ScoringTrigger | None = None) -> ScoringRun | None:
        """The run created last (of that trigger)."""
        ...

    async def insert_run(self, run: ScoringRun) -> None: ...

    async def update_run(self, run: ScoringRun) -> None:
        """Store its state, counts, end time and failure reason."""
        ...

    async def tenants_scored(self, run: str) -> set[str]:
        """The tenants whose results the run has stored."""
        ...

    async def store_tenant_scores(
        self,
        run: ScoringRun,
        tenant: str,
        scores: Sequence[ModelScore],
        recommendations: Sequence[ModelRecommendation],
        profiles_by_role: Mapping[str, Sequence[str]],
    ) -> None:
        """In one transaction: the tenant's scores and recommendations as its latest, the run's
        record that the tenant is done (tenants_done + 1), and one ModelProfileScored event
        per role scored (`profiles_by_role`: role value -> the tenant's profiles of it)."""
        ...

    async def scoring_tenants(self) -> list[str]:
        """The tenants the scheduled job scores: the onboarded (ACTIVE) ones and any other
        with a model profile or scores."""
        ...

    async def latest_scores(self, tenant: str) -> list[ModelScore]:
        """The tenant's scores from the latest run that scored it, in any order."""
        ...

    async def latest_recommendations(self, tenant: str) -> list[ModelRecommendation]:
        """The tenant's recommendations from the latest run that scored it, in any order."""
        ...


class Telemetry(Protocol):
    """Production telemetry of model calls (svc_analytics)."""

    async def model_telemetry(
        self, tenant: str, role: ModelRole, start: datetime, end: datetime
    ) -> dict[str, ModelTelemetry]:
        """Per model ("models/{model}") of the tenant's calls in the role in [start, end):
        only that role's calls, so that a model's figures in one role never rate it in
        another. Raises `skm_runtime.errors.ServiceUnavailable` when the telemetry cannot be
        read."""
        ...


class BundleStore(Protocol):
    """Tenants' trusted publisher keys and the persona bundles installed with them."""

    async def insert_trusted_key(self, key: TrustedKey) -> bool:
        """False when the tenant has a key with that id."""
        ...

    async def get_trusted_key(self, name: str) -> TrustedKey | None: ...

    async def list_trusted_keys(self, tenant: str, after: str, limit: int) -> list[TrustedKey]:
        """Up to `limit` keys of the tenant by id, ids after `after`."""
        ...

    async def delete_trusted_key(self, name: str) -> bool:
        """False when there is no such key."""
        ...

    async def installed_bundle(self, persona: str) -> InstalledBundle | None:
        """What the persona was last installed (or upgraded, or rolled back) to."""
        ...

    async def bundle_with_digest(self, persona: str, bundle_digest: str) -> InstalledBundle | None:
        """The newest install of the persona whose bundle had this digest (a rollback
        brings those permissions back)."""
        ...

    async def install_by_request(self, tenant: str, request_id: str) -> tuple[str, str] | None:
        """The persona an install with this request_id installed, and that bundle's SHA-256."""
        ...

    async def record_install(
        self, installed: InstalledBundle, event: BundleInstalled | None, request_id: str, bundle_sha256: str
    ) -> None:
        """Make `installed` the persona's current install, keep it in the persona's history
        of installs, and write its event (none for a rollback), in one transaction."""
        ...

    async def record_refusal(self, refused: BundleRefused) -> None:
        """Write the refusal's audit event; nothing else changes."""
        ...

    async def forget_installs(self, persona: str) -> None:
        """Remove the persona's install and its history (it was uninstalled)."""
        ...


class Conversations(Protocol):
    """svc_conversation's sessions and turns, read as the operator who trains a persona (so
    the operator's own access to the sessions applies). Raises TurnNotFound for a turn that
    does not exist or is not the operator's to read, `skm_runtime.errors.ServiceUnavailable`
    when svc_conversation cannot be reached."""

    async def exchange(self, turn: str, principal: Principal) -> Exchange: ...
