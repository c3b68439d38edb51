"""A malformed resource name is the client's error (INVALID_ARGUMENT, RESOURCE_NAME_INVALID),
found at admission before policy is asked, and never turned into a policy outage when
policy is the one that cannot read it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from skm_runtime.admission import Admission, PolicyAnswer, Principal, Rule, object_of
from skm_runtime.admission_errors import PolicyUnavailable, ResourceNameInvalid
from skm_runtime.admission_policy import GrpcAdmissionPolicy
from skm_runtime.server import signed_channel
from skm_runtime.status import DETAILS_KEY
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Limiter, _token, _verifier

READ_SESSION = Rule("can_read", "session", "name")
TENANT = "tenants/t1"


@pytest.mark.parametrize(
    "name",
    [
        "tenants/t1/sessions/s1 ",
        "tenants/t1/sessions/s1\n",
        " tenants/t1/sessions/s1",
        "tenants/t1/sessions/s 1",
        "tenants/t1/sessions/s1\t",
        "tenants/t1/sessions/s1\u00a0",  # no-break space
        "tenants/t1/sessions/s1\x00",
        "tenants/t1/sessions/s#1",
        "tenants/t1/sessions/*",
        "tenants/t1/sessions/user:x",
        "tenants/t1//sessions/s1",
        "tenants/t1/sessions/" + "s" * 300,
        # "@" is only a revision suffix: a positive number at the very end, after an id.
        "tenants/t1/sessions/s1@",
        "tenants/t1/sessions/s1@0",
        "tenants/t1/sessions/s1@01",
        "tenants/t1/sessions/s1@x",
        "tenants/t1/sessions/s1@2/turns/4",
        "tenants/t1/sessions/@2",
        "tenants/t1/sessions/s1@2@3",
        "tenants/t1@2",
    ],
)
def test_a_malformed_name_is_refused_before_policy(name: str) -> None:
    with pytest.raises(ResourceNameInvalid) as raised:
        object_of(READ_SESSION, name, TENANT)
    assert raised.value.metadata["field"] == "name"


def test_well_formed_names_name_their_object() -> None:
    assert object_of(READ_SESSION, "tenants/t1/sessions/s-1.a_b~c/turns/4", TENANT) == (
        "session:tenants/t1/sessions/s-1.a_b~c"
    )
    assert object_of(Rule("can_converse", "tenant", ""), "", TENANT) == "tenant:tenants/t1"


def test_a_revision_is_judged_as_its_resource() -> None:
    """GetPersona of "tenants/t1/personas/p@3" (AIP-162) asks policy about the persona."""
    persona = Rule("can_read", "persona", "name")
    assert object_of(persona, "tenants/t1/personas/p@3", TENANT) == "persona:tenants/t1/personas/p"
    assert object_of(Rule("", "tenant", "name"), "tenants/t1/personas/p@12", TENANT) == "tenant:tenants/t1"


class _UnreadablePolicy:
    """svc_policy as the adapter reports it when it cannot read the object."""

    async def allows(
        self, principal: Principal, permission: str, object_: str, also: Sequence[str] = ()
    ) -> PolicyAnswer:
        raise ResourceNameInvalid("the resource name is not one policy can decide on", metadata={"policy_reason": "X"})


async def test_a_name_policy_cannot_read_is_the_clients_error_with_its_field() -> None:
    pem, jwks = _keys()
    admission = Admission(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), _UnreadablePolicy())
    principal = admission.authenticate(f"Bearer {_token(pem, exp=time.time() + 600)}")
    with pytest.raises(ResourceNameInvalid) as raised:
        await admission.admit(principal, READ_SESSION, "tenants/t1/sessions/s1")
    assert raised.value.metadata == {"policy_reason": "X", "field": "name"}


def _rpc_error(code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="policy.skm"))
    status = status_pb2.Status(code=code.value[0], message="no", details=[info])
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString())),
        details="no",
    )


class _RefusingClient:
    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.error = error

    def remembered(self, subject: str, relation: str, object_: str) -> None:
        return None  # nothing remembered: every question is asked

    async def check(self, request: Any, **options: Any) -> Any:
        raise self.error

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ResourceNameInvalid),
        (grpc.StatusCode.UNAVAILABLE, PolicyUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, PolicyUnavailable),
    ],
)
async def test_svc_policys_invalid_argument_is_a_bad_name_and_only_that(
    code: grpc.StatusCode, refused: type[Exception]
) -> None:
    async with signed_channel("127.0.0.1:9") as channel:
        policy = GrpcAdmissionPolicy(channel, constitution_ttl=1.0)
        policy._decisions = _RefusingClient(_rpc_error(code, "INVALID_CHECK"))  # type: ignore[assignment]  # a fake of the shared client
        principal = Principal(TENANT, f"{TENANT}/users/olga", (), DIGEST)
        with pytest.raises(refused):
            await policy.allows(principal, "can_read", "session:tenants/t1/sessions/s1")
