"""What svc_tools checks before anything is stored or run: resource names, the ExecuteTool
request, tool arguments against their schemas, catalogue pages; and the pure pieces of a
run (a sandbox outcome as a result, a hold's summary, the most restrictive decision)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from skm_runtime.access import Decision, Principal, Verdict
from skm_runtime.errors import InvalidArgument
from skm_runtime.values import FailureReason
from svc_tools.catalogue import MAX_CODE_CHARS, TOOLS
from svc_tools.core.acceptance import accept_request
from svc_tools.core.approvals import hold_of, most_restrictive
from svc_tools.core.arguments import MAX_ARGUMENTS_BYTES, ArgumentSchemas
from svc_tools.core.executions import FAILURE_EXCERPT_CHARS, code_result
from svc_tools.core.listing import Catalogue
from svc_tools.core.names import check_tenant, id_in, own_execution, session_of, split_name, turn_ids
from svc_tools.errors import (
    ArgumentsInvalid,
    ArgumentsTooLarge,
    ExecutionNotFound,
    InvalidPageToken,
    InvalidResourceName,
    PrincipalMissing,
    ToolNotExecutable,
    ToolNotFound,
)
from svc_tools.model import ExecuteRequest, ExecutionState, Failure, SandboxEnd, SandboxOutcome, Success

T1 = "tenants/t1"
ALICE = Principal(T1, f"{T1}/users/alice", ("member",))
CODE = f"{T1}/tools/code_execution"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
CATALOGUE = Catalogue(TOOLS)
SCHEMAS = ArgumentSchemas(TOOLS)


def code_arguments(**arguments: Any) -> str:
    return json.dumps({"runtime": "python", "code": "print(1)", **arguments})


def request(**changes: Any) -> ExecuteRequest:
    values: dict[str, Any] = {"tool": CODE, "arguments_json": code_arguments(), "request_id": str(uuid.uuid4())}
    return ExecuteRequest(**{**values, **changes})


def accept(req: ExecuteRequest, principal: Principal | None = ALICE, *, trusted: bool = True) -> Any:
    return accept_request(
        req,
        principal,
        catalogue=CATALOGUE,
        schemas=SCHEMAS,
        max_timeout_seconds=60.0,
        now=NOW,
        trusted_context=trusted,
        trace_id="t" * 32,
    )


# -- names ------------------------------------------------------------------------------------


def test_names_are_parsed_by_their_collection_and_tenant() -> None:
    assert split_name(CODE, "tools") == (T1, "code_execution")
    for bad in ("tools/x", f"{T1}/tools/", "tenants//tools/x", f"{T1}/personas/x", f"{CODE}/more"):
        with pytest.raises(InvalidResourceName):
            split_name(bad, "tools")
    assert id_in(f"{T1}/personas/helper", T1, "personas") == "helper"
    assert id_in("tenants/t2/personas/helper", T1, "personas") is None
    assert turn_ids(f"{T1}/sessions/s1/turns/u1", T1) == ("s1", "u1")
    assert turn_ids(f"{T1}/sessions/s1/turns/", T1) is None
    assert turn_ids("tenants/t2/sessions/s1/turns/u1", T1) is None
    assert session_of(f"{T1}/sessions/s1/turns/u1") == f"{T1}/sessions/s1"
    assert session_of("") == ""
    assert check_tenant(T1) == T1
    with pytest.raises(InvalidResourceName):
        check_tenant(f"{T1}/users/alice")


def test_another_tenants_execution_does_not_exist_for_the_caller() -> None:
    name = f"{T1}/executions/e1"
    assert own_execution(name, ALICE) == name
    assert own_execution(name, None) == name
    with pytest.raises(ExecutionNotFound):
        own_execution(name, Principal("tenants/t2", "tenants/t2/users/eve"))
    with pytest.raises(InvalidResourceName):
        own_execution(f"{T1}/tools/code_execution", ALICE)


# -- the catalogue ------------------------------------------------------------------------------


def test_the_catalogue_pages_in_id_order_with_tokens_bound_to_their_parent() -> None:
    everything, token = CATALOGUE.list_tools(T1, 0, "")
    assert [t.id for t in everything] == sorted(t.id for t in TOOLS)
    assert token == ""

    paged, token = CATALOGUE.list_tools(T1, 3, "")
    while token:
        page, token = CATALOGUE.list_tools(T1, 3, token)
        paged += page
    assert paged == everything

    _, first_token = CATALOGUE.list_tools(T1, 3, "")
    with pytest.raises(InvalidPageToken, match="other parameters"):
        CATALOGUE.list_tools("tenants/t2", 3, first_token)
    with pytest.raises(InvalidPageToken, match="not one this service issued"):
        CATALOGUE.list_tools(T1, 3, "not a token")
    with pytest.raises(InvalidResourceName):
        CATALOGUE.list_tools("t1", 3, "")
    assert CATALOGUE.find("code_execution") is not None
    assert CATALOGUE.find("nothing") is None


# -- the request ----------------------------------------------------------------------------------


def test_an_accepted_request_becomes_a_checking_execution_of_the_tenant() -> None:
    req = request(
        persona=f"{T1}/personas/helper",
        turn=f"{T1}/sessions/s1/turns/u1",
        tool_call_id="call-1",
        timeout_seconds=600.0,
        policy_context={"hour": 3},
    )
    execution = accept(req)
    assert execution.name.startswith(f"{T1}/executions/")
    assert execution.state is ExecutionState.CHECKING
    assert execution.principal == ALICE
    assert execution.create_time == NOW
    # Capped to the deployment's limit.
    assert execution.timeout_seconds == 60.0
    assert execution.policy_context == {"hour": 3}
    assert execution.trace_id == "t" * 32

    assert accept(request(), trusted=True).timeout_seconds == 30.0
    assert accept(req, trusted=False).policy_context == {}


def test_the_fingerprint_tells_a_retry_from_another_request() -> None:
    req = request()
    assert accept(req).fingerprint == accept(req).fingerprint
    assert accept(req).fingerprint != accept(request(request_id=req.request_id, tool_call_id="other")).fingerprint
    bob = Principal(T1, f"{T1}/users/bob")
    assert accept(req).fingerprint != accept(req, bob).fingerprint


@pytest.mark.parametrize(
    "principal",
    [None, Principal("", ""), Principal(T1, ""), Principal(T1, "tenants/t2/users/eve"), Principal(T1, T1)],
)
def test_running_a_tool_needs_a_user_of_the_tools_tenant(principal: Principal | None) -> None:
    with pytest.raises(PrincipalMissing):
        accept(request(), principal)


def test_unknown_foreign_and_conversation_side_tools_are_refused() -> None:
    with pytest.raises(ToolNotFound):
        accept(request(tool=f"{T1}/tools/rm_rf"))
    with pytest.raises(ToolNotFound):
        accept(request(tool="tenants/t2/tools/code_execution"))
    with pytest.raises(ToolNotExecutable):
        accept(request(tool=f"{T1}/tools/response", arguments_json='{"text": "hi"}'))
    with pytest.raises(InvalidResourceName):
        accept(request(tool="code_execution"))


def test_every_field_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        accept(
            request(
                request_id="not-a-uuid",
                persona="tenants/t2/personas/helper",
                turn=f"{T1}/sessions/s1",
                tool_call_id="x" * 201,
                timeout_seconds=0.0,
            )
        )
    assert [v.field for v in raised.value.violations] == ["request_id", "persona", "turn", "tool_call_id", "timeout"]


# -- arguments --------------------------------------------------------------------------------------


def _violations(arguments_json: str) -> list[tuple[str, str]]:
    code = CATALOGUE.find("code_execution")
    assert code is not None
    with pytest.raises(ArgumentsInvalid) as raised:
        SCHEMAS.check(code, arguments_json)
    return [(v.field, v.description) for v in raised.value.violations]


def test_arguments_must_be_a_json_object_of_the_tools_schema() -> None:
    assert _violations("{") == [("arguments_json", "not valid JSON")]
    assert _violations("[1]") == [("arguments_json", "not a JSON object")]
    assert _violations('{"runtime": "python"}') == [("arguments_json", "missing required property: code")]
    assert _violations(code_arguments(shell=True, env={})) == [("arguments_json", "unknown properties: env, shell")]
    assert _violations(code_arguments(runtime="ruby")) == [
        ("arguments_json.runtime", "must be one of python, terminal")
    ]
    assert _violations(code_arguments(code=7)) == [("arguments_json.code", "must be of type string")]
    assert _violations(code_arguments(code="")) == [("arguments_json.code", "violates minLength 1")]


def test_a_violation_never_quotes_the_value() -> None:
    secret = "hunter2-" + "x" * 50
    problems = _violations(code_arguments(runtime=secret, **{secret: 1}))
    assert problems
    assert all(secret not in description for _, description in problems if "unknown properties" not in description)


def test_arguments_have_a_size_limit_before_they_are_parsed() -> None:
    code = CATALOGUE.find("code_execution")
    assert code is not None
    SCHEMAS.check(code, code_arguments(code="x" * MAX_CODE_CHARS))
    with pytest.raises(ArgumentsTooLarge):
        SCHEMAS.check(code, "x" * (MAX_ARGUMENTS_BYTES + 1))


def test_argument_problems_stop_a_request_before_it_is_accepted() -> None:
    with pytest.raises(ArgumentsInvalid):
        accept(request(arguments_json='{"runtime": "python"}'))


# -- the pure pieces of a run ----------------------------------------------------------------------


def _outcome(end: SandboxEnd, exit_code: int = 0, stderr: bytes = b"", detail: str = "") -> SandboxOutcome:
    return SandboxOutcome(end, exit_code, b"out", stderr, detail)


def test_a_sandbox_outcome_becomes_the_runs_result() -> None:
    ok = code_result(_outcome(SandboxEnd.EXITED), 30.0)
    assert isinstance(ok, Success)
    assert json.loads(ok.output_json) == {"exit_code": 0, "stdout": "out", "stderr": ""}
    assert code_result(_outcome(SandboxEnd.EXITED, 2, b"boom"), 30.0) == Failure(
        FailureReason.TOOL_ERROR, "the code exited with status 2; end of stderr:\nboom"
    )
    assert code_result(_outcome(SandboxEnd.TIMEOUT), 5.0) == Failure(
        FailureReason.TIMEOUT, "the run exceeded its 5 s time limit and was stopped"
    )
    assert code_result(_outcome(SandboxEnd.OUTPUT_LIMIT, detail="1 MiB"), 5.0) == Failure(
        FailureReason.OUTPUT_LIMIT, "the run wrote more than 1 MiB of output; it was stopped and the rest discarded"
    )
    limited = code_result(_outcome(SandboxEnd.RESOURCE_LIMIT, detail="CPU time"), 5.0)
    assert isinstance(limited, Failure)
    assert limited.reason is FailureReason.RESOURCE_LIMIT
    killed = code_result(_outcome(SandboxEnd.SIGNALLED, -11, b"x" * 5000, "SIGSEGV"), 5.0)
    assert isinstance(killed, Failure)
    assert killed.message.startswith("the code was killed by SIGSEGV; end of stderr:")
    assert len(killed.message) < FAILURE_EXCERPT_CHARS + 100


def test_a_hold_is_summarised_without_the_arguments_and_derived_from_the_execution() -> None:
    execution = accept(
        request(
            arguments_json=code_arguments(code="import os\nos.system('secret')\n"),
            persona=f"{T1}/personas/helper",
            turn=f"{T1}/sessions/s1/turns/u1",
        )
    )
    hold = hold_of(execution)
    assert hold.summary == f"code_execution (python, 2 lines) for {ALICE.user} as {T1}/personas/helper"
    assert "secret" not in hold.summary
    assert hold.session == f"{T1}/sessions/s1"
    assert hold_of(execution).request_id == hold.request_id
    assert hold_of(accept(request())).request_id != hold.request_id


def test_the_most_restrictive_decision_wins_and_the_first_of_equals() -> None:
    allow = Decision(Verdict.ALLOW, "A")
    held = Decision(Verdict.REQUIRES_APPROVAL, "H1")
    held_again = Decision(Verdict.REQUIRES_APPROVAL, "H2")
    deny = Decision(Verdict.DENY, "D")
    assert most_restrictive([allow, held, held_again]) is held
    assert most_restrictive([held, deny, allow]) is deny
    assert most_restrictive([allow]) is allow
