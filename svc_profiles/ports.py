"""What svc_profiles's core needs from the world, as protocols its adapters implement.

Every store method raises `skm_runtime.errors.ServiceUnavailable` when the database cannot
be reached. Writes that must not overwrite a concurrent change are compare-and-set on the
etag the caller read.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from svc_profiles.model import (
    Capability,
    Constitution,
    Inserted,
    Model,
    ModelProfile,
    Persona,
    PersonaCursor,
    Relationship,
)


class PersonaStore(Protocol):
    """Tenants' own personas (built-in ones are not stored)."""

    async def get_persona(self, name: str) -> Persona | None: ...

    async def persona_by_request(self, tenant: str, request_id: str) -> tuple[Persona, str] | None:
        """The persona a create with this request_id made, and that create's fingerprint."""
        ...

    async def insert_persona(self, persona: Persona, request_id: str, fingerprint: str) -> Inserted:
        """Insert it; NAME_TAKEN when the tenant has a persona with its id, REQUEST_TAKEN
        when (tenant, request_id) is taken (request_id "" is never taken)."""
        ...

    async def replace_persona(self, persona: Persona, etag: str) -> bool:
        """Overwrite the stored persona of that name if its etag is still `etag`."""
        ...

    async def delete_persona(self, name: str, etag: str) -> bool:
        """Delete it if it exists and, unless `etag` is "", its etag is still `etag`."""
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

    async def insert_model_profile(self, profile: ModelProfile, request_id: str, fingerprint: str) -> Inserted: ...

    async def replace_model_profile(self, profile: ModelProfile, etag: str) -> bool: ...

    async def delete_model_profile(self, name: str, etag: str) -> bool: ...

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
