"""Methods any member of a tenant may call still ask policy: whether the user is a member."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from skm_runtime.admission import MEMBERSHIP, Admission, PolicyAnswer, Principal
from skm_runtime.admission_errors import PermissionDenied
from skm_runtime.contract import methods
from skm_runtime.gate import public_rules
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Limiter, _token, _verifier

LIST_TOOLS = "/skm.tools.v1.ToolService/ListTools"
GET_CONSTITUTION = "/skm.policy.v1.ConstitutionService/GetConstitution"


class _Membership:
    def __init__(self, member: bool) -> None:
        self.member = member
        self.asked: list[tuple[str, str, str, tuple[str, ...]]] = []

    async def allows(
        self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()
    ) -> PolicyAnswer:
        self.asked.append((principal.user, permission, object_, tuple(also)))
        return PolicyAnswer(self.member, "ROLE_ALLOWS" if self.member else "NOT_A_TENANT_MEMBER", "d1")


def _admission(policy: _Membership, constitution: str = DIGEST) -> tuple[Admission, Principal]:
    pem, jwks = _keys()
    along = {"tenant": ["can_administer", MEMBERSHIP, "can_operate"]}
    admission = Admission(_verifier(jwks), _Constitutions(constitution), _Limiter(), policy, along=along)
    return admission, admission.authenticate(f"Bearer {_token(pem, exp=time.time() + 600)}")


def test_every_any_tenant_member_method_is_a_tenant_question() -> None:
    open_to_members = [m for m in methods().values() if m.authz is not None and m.authz.any_tenant_member]
    assert {m.path for m in open_to_members} >= {LIST_TOOLS, GET_CONSTITUTION}
    assert {m.authz.resource_type for m in open_to_members if m.authz is not None} == {"tenant"}


async def test_a_member_is_admitted_after_policy_says_so() -> None:
    policy = _Membership(member=True)
    admission, principal = _admission(policy)
    await admission.admit(principal, public_rules()[LIST_TOOLS], "tenants/t1")
    assert policy.asked == [
        ("tenants/t1/users/olga", MEMBERSHIP, "tenant:tenants/t1", ("can_administer", MEMBERSHIP, "can_operate"))
    ]


async def test_a_user_who_is_no_member_is_refused_although_the_token_names_the_tenant() -> None:
    policy = _Membership(member=False)
    admission, principal = _admission(policy)
    with pytest.raises(PermissionDenied) as raised:
        await admission.admit(principal, public_rules()[LIST_TOOLS], "tenants/t1")
    assert raised.value.metadata["permission"] == MEMBERSHIP
    assert raised.value.metadata["decision_reason"] == "NOT_A_TENANT_MEMBER"


async def test_a_member_with_a_stale_hash_still_reads_the_constitution_and_only_a_member() -> None:
    policy = _Membership(member=True)
    admission, principal = _admission(policy, constitution="b" * 64)
    await admission.admit(principal, public_rules()[GET_CONSTITUTION], "tenants/t1/constitution")
    policy.member = False
    with pytest.raises(PermissionDenied):
        await admission.admit(principal, public_rules()[GET_CONSTITUTION], "tenants/t1/constitution")
