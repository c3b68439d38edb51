"""The value types that more than one service's domain speaks, declared once.

Mirrors of skm.type.v1 ModelRole, DeploymentMode and Money, skm.profiles.v1 ModelOverride
and skm.tools.v1 FailureReason, for the cores to share without generated code. Each enum's
member names are the wire value names without their prefix ("MODEL_ROLE_PRIMARY" is
``ModelRole.PRIMARY``), so a service's convert.py maps them by name. No enum has an
UNSPECIFIED member: where a field may be unspecified, its type is ``X | None``.

Pure: stdlib only (no grpc, no generated code, no drivers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ModelRole(enum.Enum):
    """The job a model does in the agent loop (skm.type.v1.ModelRole)."""

    PRE_SLM = "PRE_SLM"
    PRIMARY = "PRIMARY"
    UTILITY = "UTILITY"
    EMBEDDING = "EMBEDDING"


class DeploymentMode(enum.Enum):
    """The mode a session runs in (skm.type.v1.DeploymentMode)."""

    DEVELOPER = "DEVELOPER"
    TEST = "TEST"
    PRODUCTION = "PRODUCTION"


class FailureReason(enum.Enum):
    """Why a tool call failed (skm.tools.v1.FailureReason)."""

    DENIED = "DENIED"
    REJECTED = "REJECTED"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    SANDBOX_VIOLATION = "SANDBOX_VIOLATION"
    RESOURCE_LIMIT = "RESOURCE_LIMIT"
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    TOOL_ERROR = "TOOL_ERROR"
    INTERRUPTED = "INTERRUPTED"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount with the semantics of google.type.Money: units + nanos / 10^9."""

    currency_code: str = ""
    units: int = 0
    nanos: int = 0

    @property
    def is_zero(self) -> bool:
        return self.units == 0 and self.nanos == 0


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """Replaces parts of a role's profile: session overrides, persona preferences.

    `role` None is the wire's UNSPECIFIED (invalid); empty tiers ("models/{model}"), None
    temperature and 0 tokens keep what applies otherwise.
    """

    role: ModelRole | None
    model_tiers: tuple[str, ...] = ()
    temperature: float | None = None
    max_output_tokens: int = 0
