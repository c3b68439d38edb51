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


class RevisionOrigin(enum.Enum):
    """What made a revision (skm.profiles.v1.Revision.Origin)."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    ROLLBACK = "ROLLBACK"
    # The scoring job's automatic choice of a profile's tier 0 (auto_select).
    AUTO_SELECT = "AUTO_SELECT"
    BUNDLE_INSTALL = "BUNDLE_INSTALL"
    TRAINING = "TRAINING"


@dataclass(frozen=True, slots=True)
class Revision:
    """One version of a persona or model profile: "1", "2", ... in the order they were made.

    `author`: "tenants/{t}/users/{u}", or "services/{service}" for a change no user made;
    `note`: why, in words (the revision rolled back to, the scoring run, the bundle version).
    """

    revision_id: str
    create_time: datetime | None
    origin: RevisionOrigin
    author: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class AutoSelectBounds:
    """What auto mode's choice of a model must stay within: a blended cost per million
    tokens (zero: no limit) and a benchmark quality in [0, 1] (0: no limit)."""

    max_cost: Money = field(default_factory=Money)
    min_quality: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A tenant's choice of models for one (role, mode); `role`/`mode` None: unspecified.

    `revision`: the version this value is (None before it is stored);
    `auto_select_bounds` None: auto mode is bounded by nothing.
    """

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
    revision: Revision | None = None
    auto_select_bounds: AutoSelectBounds | None = None


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
    """Where a persona version came from (training mode): the persona and revision it was
    derived from, the sessions its examples came from and the operator who marked them."""

    parent_persona: str = ""
    parent_bundle_digest: str = ""
    training_sessions: tuple[str, ...] = ()
    operator: str = ""
    parent_revision_id: str = ""

    @property
    def is_empty(self) -> bool:
        return not (
            self.parent_persona
            or self.parent_bundle_digest
            or self.training_sessions
            or self.operator
            or self.parent_revision_id
        )


@dataclass(frozen=True, slots=True)
class PersonaExample:
    """One exchange shown to the model as an example of a persona's answers; `source_turn`
    is the turn it was captured from ("" when written by hand)."""

    user_text: str
    agent_text: str
    source_turn: str = ""


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
    # The version this value is; None for a built-in persona (and before it is stored).
    revision: Revision | None = None
    # Exchanges shown to the model as examples of the persona's answers (training mode).
    examples: tuple[PersonaExample, ...] = ()
    # The publisher's version of the bundle it was installed from; 0: not from a bundle.
    bundle_version: int = 0

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


# -- the scoring job (svc_profiles.core.scoring) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """w_q, w_c, w_l, w_r of the score formula: non-negative, summing to 1 (settings)."""

    quality: float = 0.4
    cost: float = 0.2
    latency: float = 0.2
    reliability: float = 0.2


@dataclass(frozen=True, slots=True)
class BenchmarkRun:
    """One benchmark capsule run against one model in one role (RecordBenchmark)."""

    model: str
    role: ModelRole | None
    suite: str
    attempts: int
    successes: int
    failures: int = 0
    latency_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ModelTelemetry:
    """One model's production calls of one tenant over the window (svc_analytics).

    None: not measured (no call, or the metric has no sample). `cost_per_million` is the
    blended cost per million tokens (cost over tokens, whatever the input/output mix was).
    """

    calls: int = 0
    time_to_first_token_seconds: float | None = None
    tokens_per_second: float | None = None
    failure_rate: float | None = None
    cost_per_million: Money | None = None
    fallback_rate: float | None = None


@dataclass(frozen=True, slots=True)
class ModelScore:
    """The scoring job's rating of one model in one role for one tenant (see the proto)."""

    model: str
    role: ModelRole
    quality: float
    cost_per_million_tokens: Money
    latency_seconds: float | None
    reliability: float
    score: float
    weights: ScoreWeights
    sample_count: int
    window_start: datetime
    window_end: datetime
    time_to_first_token_seconds: float | None = None
    tokens_per_second: float = 0.0
    error_rate: float = 0.0
    fallback_rate: float = 0.0
    scoring_run: str = ""


class ScoringState(enum.Enum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class ScoringTrigger(enum.Enum):
    SCHEDULE = "SCHEDULE"
    ON_DEMAND = "ON_DEMAND"


@dataclass(frozen=True, slots=True)
class ScoringRun:
    """One run of the scoring job; `tenant` "" scores every tenant."""

    name: str
    state: ScoringState
    trigger: ScoringTrigger
    window_start: datetime
    window_end: datetime
    create_time: datetime
    tenant: str = ""
    tenants_done: int = 0
    tenants_total: int = 0
    profiles_changed: int = 0
    end_time: datetime | None = None
    failure_reason: str = ""


@dataclass(frozen=True, slots=True)
class ModelRecommendation:
    """The best-scored model of a role against the one at tier 0 now (`model_profile` "":
    the deployment default)."""

    model_profile: str
    role: ModelRole
    current_model: str
    recommended_model: str
    score_change: float
    cost_change: float
    summary: str
    scoring_run: str
    create_time: datetime
    applied: bool = False
    not_applied_reason: str = ""


@dataclass(frozen=True, slots=True)
class AutoSelected:
    """A change auto mode made: the profile, its tier 0 before and after, the revisions."""

    model_profile: str
    previous_model: str
    model: str
    previous_revision_id: str
    revision_id: str
    scoring_run: str
    summary: str


class TenantState(enum.Enum):
    """Where a tenant's onboarding stands (skm.profiles.v1.Tenant.State)."""

    # Some steps are still to be written; creating the tenant again finishes them.
    PROVISIONING = "PROVISIONING"
    # Every step is written.
    ACTIVE = "ACTIVE"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as onboarding made it: "tenants/{t}", its first admins as
    "tenants/{t}/users/{u}", and, once ACTIVE, what onboarding wrote."""

    name: str
    display_name: str
    admins: tuple[str, ...]
    state: TenantState = TenantState.PROVISIONING
    constitution_sha256: str = ""
    personas: tuple[str, ...] = ()
    relationship_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def tenant_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class ToolRisk(enum.Enum):
    """A catalogue tool's risk level, as svc_tools declares it (skm.tools.v1.RiskLevel)."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


@dataclass(frozen=True, slots=True)
class CatalogueTool:
    """One tool of the deployment's catalogue: its id ("code_execution") and risk level."""

    tool_id: str
    risk: ToolRisk


# -- persona bundles ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A publisher key a tenant trusts for persona bundles: an Ed25519 public key (32 raw
    bytes) by id, "tenants/{t}/trustedKeys/{id}", until `expire_time`."""

    name: str
    public_key: bytes
    expire_time: datetime | None
    display_name: str = ""
    create_time: datetime | None = None

    @property
    def key_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class BundlePermissions:
    """What a persona bundle grants its persona in svc_policy: tools it may call (by id) and
    shared memory namespaces it reads and writes."""

    tools: tuple[str, ...] = ()
    memory_read: tuple[str, ...] = ()
    memory_write: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InstalledBundle:
    """The bundle a persona was installed from, as its install recorded it: the publisher's
    version, the trusted key's id, the persona's bundle digest and the relationships the
    install wrote (those a later upgrade, rollback or uninstall must remove)."""

    persona: str
    version: int
    key_id: str
    bundle_digest: str
    permissions: BundlePermissions
    relationships: tuple[Relationship, ...] = ()
    install_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class BundleInstalled:
    """An install or upgrade, for the audit (PersonaBundleInstalled)."""

    persona: str
    version: int
    previous_version: int
    key_id: str
    bundle_digest: str
    revision_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class BundleRefused:
    """A refused bundle, for the audit (PersonaBundleRefused): `reason` is the refusal's
    ErrorInfo reason; `persona` and `version` only when the payload could be trusted."""

    tenant: str
    reason: str
    key_id: str
    bundle_sha256: str
    at: datetime
    persona: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class Exchange:
    """One turn of a session as training mode reads it from svc_conversation: what the user
    said, what the agent answered, and the session's persona and mode. `completed`: the turn
    ended COMPLETED (its answer is whole)."""

    turn: str
    session: str
    persona: str
    mode: DeploymentMode | None
    completed: bool
    user_text: str
    agent_text: str
