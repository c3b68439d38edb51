"""The shared value types (skm_runtime.values) to and from their wire forms, for the services'
convert.py modules (edge code: it imports the generated contract).

Enums map by their wire names (MODEL_ROLE_PRIMARY is ModelRole.PRIMARY). UNSPECIFIED, and
any number this build does not know (a newer peer, or garbage), read as None; a caller that
must refuse an unknown number a client sent checks `number and value is None`.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from skm.profiles.v1 import model_profile_pb2
from skm.tools.v1 import execution_pb2
from skm.type.v1 import deployment_mode_pb2, model_pb2, money_pb2
from skm_runtime.values import DeploymentMode, FailureReason, ModelOverride, ModelRole, Money

E = TypeVar("E", bound=enum.Enum)


def enum_numbers(wire: Any, prefix: str, kind: type[E]) -> dict[int, E]:
    """Wire number -> domain member, for a domain enum whose members are named as the wire
    enum's values without their prefix (MODEL_ROLE_PRIMARY is ModelRole.PRIMARY)."""
    return {int(wire.Value(prefix + member.name)): member for member in kind}


_ROLES = enum_numbers(model_pb2.ModelRole, "MODEL_ROLE_", ModelRole)
_MODES = enum_numbers(deployment_mode_pb2.DeploymentMode, "DEPLOYMENT_MODE_", DeploymentMode)
_FAILURES = enum_numbers(execution_pb2.FailureReason, "FAILURE_REASON_", FailureReason)
_ROLE_NUMBERS = {role: number for number, role in _ROLES.items()}
_MODE_NUMBERS = {mode: number for number, mode in _MODES.items()}
_FAILURE_NUMBERS = {reason: number for number, reason in _FAILURES.items()}


def role_of(number: int) -> ModelRole | None:
    return _ROLES.get(number)


def role_to(role: ModelRole | None) -> model_pb2.ModelRole.ValueType:
    return model_pb2.ModelRole.ValueType(_ROLE_NUMBERS[role] if role else 0)


def mode_of(number: int) -> DeploymentMode | None:
    return _MODES.get(number)


def mode_to(mode: DeploymentMode | None) -> deployment_mode_pb2.DeploymentMode.ValueType:
    return deployment_mode_pb2.DeploymentMode.ValueType(_MODE_NUMBERS[mode] if mode else 0)


def failure_reason_of(number: int) -> FailureReason | None:
    return _FAILURES.get(number)


def failure_reason_to(reason: FailureReason | None) -> execution_pb2.FailureReason.ValueType:
    return execution_pb2.FailureReason.ValueType(_FAILURE_NUMBERS[reason] if reason else 0)


def money_of(message: money_pb2.Money) -> Money:
    return Money(message.currency_code, message.units, message.nanos)


def money_to(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency_code, units=money.units, nanos=money.nanos)


def override_of(message: model_profile_pb2.ModelOverride) -> ModelOverride:
    return ModelOverride(
        role=role_of(message.role),
        model_tiers=tuple(message.model_tiers),
        temperature=message.temperature if message.HasField("temperature") else None,
        max_output_tokens=message.max_output_tokens,
    )


def override_to(override: ModelOverride) -> model_profile_pb2.ModelOverride:
    message = model_profile_pb2.ModelOverride(
        role=role_to(override.role),
        model_tiers=list(override.model_tiers),
        max_output_tokens=override.max_output_tokens,
    )
    if override.temperature is not None:
        message.temperature = override.temperature
    return message
