"""svc_profiles's domain: the model registry, tenants' model profiles, personas, and what a
role resolves to.

Resource names are kept whole ("models/{model}", "tenants/{t}/personas/{p}",
"tenants/{t}/modelProfiles/{p}"); `checks` parses and validates them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole, Money


class Capability(enum.Enum):
    """What a model's endpoint supports (skm.profiles.v1.ModelCapability)."""

    CHAT = "CHAT"
    TOOL_CALLS = "TOOL_CALLS"
    STRUCTURED_OUTPUT = "STRUCTURED_OUTPUT"
    EMBEDDINGS = "EMBEDDINGS"


# The order ListModelProfiles sorts by: the wire enums' numbers.
ROLE_ORDER = {role: number for number, role in enumerate(ModelRole, start=1)}
MODE_ORDER = {mode: number for number, mode in enumerate(DeploymentMode, start=1)}


@dataclass(frozen=True, slots=True)
class Model:
    """A registry entry: one model behind an OpenAI-compatible endpoint.

    `endpoint_uri` "local:" (optionally followed by a path) means the caller runs the model
    in its own process (svc_tools' embedding encoder) and `served_model` names what it loads.
    """

    name: str
    display_name: str
    endpoint_uri: str
    served_model: str
    context_length: int
    capabilities: tuple[Capability, ...]
    credential_secret: str = ""
    input_cost: Money = field(default_factory=Money)
    output_cost: Money = field(default_factory=Money)
    embedding_dimensions: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A tenant's choice of models for one (role, mode); `role`/`mode` None: unspecified."""

    name: str
    role: ModelRole | None
    mode: DeploymentMode | None
    model_tiers: tuple[str, ...]
    temperature: float | None = None
    max_output_tokens: int = 0
    auto_select: bool = False
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""


@dataclass(frozen=True, slots=True)
class RoleDefault:
    """The deployment's default for a role, in one mode (`mode` None: every mode)."""

    role: ModelRole
    model_tiers: tuple[str, ...]
    mode: DeploymentMode | None = None
    temperature: float | None = None
    max_output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a persona version came from (training mode)."""

    parent_persona: str = ""
    parent_bundle_digest: str = ""
    training_sessions: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.parent_persona or self.parent_bundle_digest or self.training_sessions)


@dataclass(frozen=True, slots=True)
class Persona:
    """An agent persona of one tenant.

    `built_in`: one of the deployment's personas, offered in every tenant that has none of
    its own with that id; it is not stored, and carries no create/update time.
    """

    name: str
    display_name: str
    system_prompt: str
    tone: str = ""
    voice: str = ""
    allowed_tools: tuple[str, ...] = ()
    memory_namespaces: tuple[str, ...] = ()
    model_preferences: tuple[ModelOverride, ...] = ()
    knowledge_snapshot: str = ""
    bundle_digest: str = ""
    signature: bytes = b""
    signing_key: str = ""
    lineage: Lineage = field(default_factory=Lineage)
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    built_in: bool = False

    @property
    def tenant(self) -> str:
        return "/".join(self.name.split("/")[:2])

    @property
    def persona_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class BuiltInPersona:
    """A deployment persona as configured: tools by id ("code_execution"), not by name, so
    that each tenant sees its own tools."""

    persona_id: str
    display_name: str
    system_prompt: str
    tone: str = ""
    voice: str = ""
    tool_ids: tuple[str, ...] = ()
    memory_namespaces: tuple[str, ...] = ()
    model_preferences: tuple[ModelOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class Defaults:
    """The deployment's configuration: models registered at start, role defaults, personas."""

    models: tuple[Model, ...] = ()
    role_defaults: tuple[RoleDefault, ...] = ()
    personas: tuple[BuiltInPersona, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedModelProfile:
    """A role resolved for one call site.

    `model_profile`: the tenant's profile used as the base, "" for the deployment default.
    `sources` says, per setting, where its value came from ("session override",
    "persona preference", "tenant profile", "deployment default"); for logs and tests.
    """

    role: ModelRole
    model_profile: str
    model_tiers: tuple[Model, ...]
    temperature: float | None
    max_output_tokens: int
    sources: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PersonaCursor:
    """Where a page of personas ends: the last (display_name, id) returned."""

    display_name: str
    persona_id: str


class Inserted(enum.Enum):
    """How an insert with an idempotency key went."""

    INSERTED = "INSERTED"
    # The resource's name (or (role, mode)) is taken.
    NAME_TAKEN = "NAME_TAKEN"
    # Another create with the same request_id won a race.
    REQUEST_TAKEN = "REQUEST_TAKEN"


@dataclass(frozen=True, slots=True)
class Relationship:
    """A relationship tuple of svc_policy's model (deploy/openfga/model.fga), objects and
    subjects as "type:name", e.g. ("persona:tenants/t1/personas/helper", "persona_user",
    "tool:tenants/t1/tools/code_execution")."""

    subject: str
    relation: str
    object: str


@dataclass(frozen=True, slots=True)
class Constitution:
    """A tenant's constitution as svc_policy holds it; `etag` "" when never stored."""

    content: str
    sha256: str
    etag: str = ""
