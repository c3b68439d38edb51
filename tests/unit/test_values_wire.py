"""The shared value types on the wire (skm_runtime.values_wire), and how a service's edge
refuses a number a client sent that the contract does not define."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import pytest

from skm.conversation.v1 import session_pb2
from skm.profiles.v1 import model_profile_pb2
from skm_runtime import values_wire
from skm_runtime.values import DeploymentMode, FailureReason, ModelOverride, ModelRole, Money
from svc_conversation import convert
from svc_conversation.errors import InvalidSession


@pytest.mark.parametrize(
    ("of", "to", "kind"),
    [
        (values_wire.role_of, values_wire.role_to, ModelRole),
        (values_wire.mode_of, values_wire.mode_to, DeploymentMode),
        (values_wire.failure_reason_of, values_wire.failure_reason_to, FailureReason),
    ],
)
def test_every_member_goes_to_its_own_number_and_back_and_unspecified_or_unknown_is_none(
    of: Callable[[int], object], to: Callable[[Any], int], kind: type[enum.Enum]
) -> None:
    numbers = [to(member) for member in kind]
    assert len(set(numbers)) == len(numbers)
    assert 0 not in numbers
    assert [of(n) for n in numbers] == list(kind)
    assert of(0) is None
    assert of(97) is None
    assert to(None) == 0


def test_an_override_and_money_survive_the_wire() -> None:
    override = ModelOverride(ModelRole.UTILITY, ("models/a",), 0.5, 64)
    assert values_wire.override_of(values_wire.override_to(override)) == override
    unset = ModelOverride(None)
    assert values_wire.override_of(values_wire.override_to(unset)) == unset
    money = Money("EUR", 1, 250_000_000)
    assert values_wire.money_of(values_wire.money_to(money)) == money


def test_a_client_s_unknown_mode_or_role_is_its_error_naming_the_field() -> None:
    with pytest.raises(InvalidSession) as mode:
        convert.session_of(session_pb2.Session(mode=97))  # type: ignore[arg-type]  # a number no client should send
    assert [v.field for v in mode.value.violations] == ["session.mode"]
    bad = model_profile_pb2.ModelOverride(role=42)  # type: ignore[arg-type]  # a number no client should send
    with pytest.raises(InvalidSession) as role:
        convert.session_of(session_pb2.Session(mode=1, model_overrides=[bad]))  # type: ignore[arg-type]  # DEVELOPER
    assert [v.field for v in role.value.violations] == ["session.model_overrides.role"]
    assert convert.session_of(session_pb2.Session()).mode is None
