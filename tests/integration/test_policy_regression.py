"""The policy regression suite and the OpenFGA adapter, against the stack's real OpenFGA.

- Every case of policy_cases.yaml goes through svc_policy's Checker (ids, cross-tenant
  rule, decision table) and OpenFgaAuthorizer, on a fresh store holding the fixture
  relationships of deploy/openfga/model.fga.yaml.
- The check assertions of model.fga.yaml (run offline by `fga model test`) run here too,
  on the real server, relation by relation.
- The adapter itself: writes, deletes and reads with paging, idempotency, all-or-none,
  consistency, bootstrap and model pinning, and failing closed when OpenFGA is
  unreachable, slow, failing or refuses the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from skm_runtime.access import AccessCheck, Verdict
from skm_stack import RunningStack
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import OpenFgaAuthorizer, bootstrap, read_model
from svc_policy.checks import Checker
from svc_policy.errors import InvalidCheck, InvalidRelationship, PolicyBackendUnavailable, PolicyError
from svc_policy.model import Condition, Relationship
from tests.support.ports import free_port

OPENFGA = Path(__file__).resolve().parents[2] / "deploy" / "openfga"
MODEL = OPENFGA / "model.json"
FIXTURE = yaml.safe_load((OPENFGA / "model.fga.yaml").read_text())
CASES = yaml.safe_load((Path(__file__).parent / "policy_cases.yaml").read_text())["cases"]


def _relationship(item: dict[str, Any]) -> Relationship:
    condition = item.get("condition")
    return Relationship(
        item["user"],
        item["relation"],
        item["object"],
        Condition(condition["name"], condition.get("context", {})) if condition else None,
    )


FIXTURE_RELATIONSHIPS = [_relationship(item) for item in FIXTURE["tuples"]]


@dataclass(frozen=True)
class Fga:
    api_url: str
    token: str

    def authorizer(self, store_id: str, model_id: str, **options: Any) -> OpenFgaAuthorizer:
        return OpenFgaAuthorizer(self.api_url, self.token, store_id, model_id, **options)

    async def fresh_store(self, model: Path = MODEL) -> tuple[str, str]:
        return await bootstrap(self.api_url, self.token, f"skm-test-{uuid.uuid4().hex[:12]}", model)


@pytest.fixture(scope="session")
def fga(stack: RunningStack) -> Fga:
    return Fga(stack.openfga_api_url, stack.openfga_token_file.read_text().strip())


@pytest.fixture(scope="session")
async def fixture_store(fga: Fga) -> tuple[str, str]:
    """A fresh store with the model and the suite's fixture relationships."""
    store_id, model_id = await fga.fresh_store()
    async with fga.authorizer(store_id, model_id) as authorizer:
        for start in range(0, len(FIXTURE_RELATIONSHIPS), 100):
            await authorizer.write(FIXTURE_RELATIONSHIPS[start : start + 100])
    return store_id, model_id


@pytest.fixture(scope="session")
async def authorizer(fga: Fga, fixture_store: tuple[str, str]) -> AsyncIterator[OpenFgaAuthorizer]:
    async with fga.authorizer(*fixture_store) as authorizer:
        yield authorizer


@pytest.fixture(scope="session")
def checker(authorizer: OpenFgaAuthorizer) -> Checker:
    # No decision cache: every case is decided by the engine.
    return Checker(authorizer, load_decision_table(OPENFGA / "decisions.yaml", defines=authorizer.defines), ttl=0.0)


# -- the regression suite -------------------------------------------------------------------


def test_the_suite_is_broad_and_every_cross_tenant_case_denies() -> None:
    assert len(CASES) >= 60
    assert len({case["id"] for case in CASES}) == len(CASES)
    cross = [case for case in CASES if _tenant(case["check"][0]) != _tenant(case["check"][2])]
    assert len(cross) >= 10
    assert all(case.get("expect") == ["DENY", "CROSS_TENANT"] for case in cross), [c["id"] for c in cross]
    verdicts = {case["expect"][0] for case in CASES if "expect" in case}
    assert verdicts == set(Verdict.__members__)


def _tenant(value: str) -> str:
    """ "user:tenants/t1/users/u" or "tenant:tenants/t1#member" -> "t1"."""
    return value.split(":", 1)[1].split("#")[0].split("/")[1]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
async def test_policy_case(case: dict[str, Any], checker: Checker) -> None:
    subject, relation, object_ = case["check"]
    check = AccessCheck(subject, relation, object_, case.get("context", {}))
    if "error" in case:
        with pytest.raises(PolicyError) as raised:
            await checker.check(check)
        assert raised.value.reason == case["error"]
        return
    decision = await checker.check(check)
    assert (decision.verdict.value, decision.reason) == tuple(case["expect"])


def _model_checks() -> list[Any]:
    """One param per test of model.fga.yaml: its check assertions, relation by relation."""
    return [
        pytest.param(
            [
                (AccessCheck(item["user"], relation, item["object"], item.get("context", {})), expected)
                for item in test.get("check", [])
                for relation, expected in item["assertions"].items()
            ],
            id=re.sub(r"[^a-z0-9]+", "-", test["name"].lower()).strip("-"),
        )
        for test in FIXTURE["tests"]
    ]


@pytest.mark.parametrize("checks", _model_checks())
async def test_model_assertions_hold_on_the_real_server(
    checks: list[tuple[AccessCheck, bool]], authorizer: OpenFgaAuthorizer
) -> None:
    answers = await authorizer.check([check for check, _ in checks], fresh=False)
    wrong = [(check, expected) for (check, expected), answer in zip(checks, answers, strict=True) if answer != expected]
    assert not wrong


async def test_a_batch_larger_than_one_request_keeps_its_order(authorizer: OpenFgaAuthorizer) -> None:
    users = ["ada", "otto", "mia", "nils"] * 30  # 120 checks: three BatchCheck requests
    checks = [AccessCheck(f"user:tenants/acme/users/{user}", "member", "tenant:tenants/acme") for user in users]
    assert await authorizer.check(checks, fresh=False) == [user != "nils" for user in users]


async def test_a_condition_without_its_parameters_is_false_not_an_error(authorizer: OpenFgaAuthorizer) -> None:
    researcher, web_search = "persona:tenants/acme/personas/researcher", "tool:tenants/acme/tools/web_search"
    answers = await authorizer.check(
        [
            AccessCheck(researcher, "over_cost_ceiling", web_search),
            AccessCheck(researcher, "can_execute", web_search),
            AccessCheck(researcher, "persona_user", web_search),
        ],
        fresh=True,
    )
    assert answers == [False, False, True]


# -- the adapter: relationships -------------------------------------------------------------


@pytest.fixture
async def scratch(fga: Fga) -> AsyncIterator[OpenFgaAuthorizer]:
    """An authorizer on a store of its own, empty."""
    async with fga.authorizer(*await fga.fresh_store()) as authorizer:
        yield authorizer


TOOL = "tool:tenants/t1/tools/web_search"
PERSONAS = [f"persona:tenants/t1/personas/p{n}" for n in range(5)]
CAPPED = Relationship(PERSONAS[0], "over_cost_ceiling", TOOL, Condition("cost_above_ceiling", {"ceiling_usd": 0.25}))
GRANTS = [Relationship(persona, "persona_user", TOOL) for persona in PERSONAS]


async def _read_all(authorizer: OpenFgaAuthorizer, subject: str, relation: str, object_: str) -> list[Relationship]:
    found: list[Relationship] = []
    token, pages = "", 0
    while True:
        page, token = await authorizer.read(subject, relation, object_, 2, token)
        assert len(page) <= 2
        found += page
        pages += 1
        if not token:
            return found
        assert pages < 50


async def test_written_relationships_read_back_page_by_page(scratch: OpenFgaAuthorizer) -> None:
    await scratch.write([*GRANTS, CAPPED, Relationship("tenant:tenants/t1", "tenant", TOOL)])
    everything = await _read_all(scratch, "", "", TOOL)
    assert sorted(everything, key=repr) == sorted(
        [*GRANTS, CAPPED, Relationship("tenant:tenants/t1", "tenant", TOOL)], key=repr
    )
    assert sorted(await _read_all(scratch, "", "persona_user", TOOL), key=repr) == sorted(GRANTS, key=repr)
    # The condition comes back with its parameters.
    assert await _read_all(scratch, PERSONAS[0], "over_cost_ceiling", TOOL) == [CAPPED]
    # Type-wide, with and without a subject.
    assert await _read_all(scratch, PERSONAS[1], "", "tool:") == [GRANTS[1]]
    assert len(await _read_all(scratch, "", "", "tool:")) == 7
    assert await _read_all(scratch, "", "", "persona:") == []


async def test_write_and_delete_are_idempotent(scratch: OpenFgaAuthorizer) -> None:
    await scratch.write(GRANTS[:2])
    await scratch.write([*GRANTS[:3], GRANTS[2]])  # existing ones and a duplicate in one request
    await scratch.delete([GRANTS[0], GRANTS[4]])  # GRANTS[4] was never written
    await scratch.delete([GRANTS[0]])
    assert sorted(await _read_all(scratch, "", "", TOOL), key=repr) == sorted(GRANTS[1:3], key=repr)


async def test_a_delete_ignores_the_condition(scratch: OpenFgaAuthorizer) -> None:
    await scratch.write([CAPPED])
    await scratch.delete([Relationship(CAPPED.subject, CAPPED.relation, CAPPED.object)])
    assert await _read_all(scratch, "", "", TOOL) == []


async def test_rewriting_with_another_condition_is_refused(scratch: OpenFgaAuthorizer) -> None:
    await scratch.write([CAPPED])
    await scratch.write([CAPPED])
    other = Relationship(
        CAPPED.subject, CAPPED.relation, CAPPED.object, Condition("cost_above_ceiling", {"ceiling_usd": 9})
    )
    with pytest.raises(InvalidRelationship, match="different condition"):
        await scratch.write([other])
    assert await _read_all(scratch, "", "", TOOL) == [CAPPED]


@pytest.mark.parametrize(
    "bad",
    [
        Relationship(PERSONAS[1], "can_fly", TOOL),  # no such relation
        Relationship("user:tenants/t1/users/u", "persona_user", TOOL),  # type not allowed there
        Relationship(PERSONAS[1], "over_cost_ceiling", TOOL, Condition("no_such_condition", {})),
        Relationship(PERSONAS[1], "persona_user", "rocket:tenants/t1/rockets/r"),  # no such type
    ],
    ids=["unknown-relation", "subject-type-not-allowed", "unknown-condition", "unknown-type"],
)
async def test_a_write_is_all_or_none(bad: Relationship, scratch: OpenFgaAuthorizer) -> None:
    with pytest.raises(InvalidRelationship):
        await scratch.write([GRANTS[0], bad])
    assert await _read_all(scratch, "", "", TOOL) == []


async def test_a_fresh_check_sees_the_write_just_before(scratch: OpenFgaAuthorizer) -> None:
    question = AccessCheck(PERSONAS[3], "can_execute", TOOL)
    assert await scratch.check([question], fresh=True) == [False]
    await scratch.write([GRANTS[3]])
    assert await scratch.check([question], fresh=True) == [True]
    await scratch.delete([GRANTS[3]])
    assert await scratch.check([question], fresh=True) == [False]


async def test_unknown_relations_and_types_are_invalid_checks(authorizer: OpenFgaAuthorizer) -> None:
    mia = "user:tenants/acme/users/mia"
    with pytest.raises(InvalidCheck):  # refused before asking the server
        await authorizer.check([AccessCheck(mia, "can_fly", "tool:tenants/acme/tools/memory_load")], fresh=False)
    with pytest.raises(InvalidCheck):
        await authorizer.check([AccessCheck(mia, "can_execute", "rocket:tenants/acme/rockets/r1")], fresh=False)
    with pytest.raises(InvalidCheck, match="type 'robot' not found"):  # the server's answer
        await authorizer.check(
            [AccessCheck("robot:tenants/acme/robots/r2", "can_execute", "tool:tenants/acme/tools/memory_load")],
            fresh=False,
        )


# -- the adapter: bootstrap and the pinned model -------------------------------------------


async def test_bootstrap_is_idempotent_and_writes_a_changed_model_once(fga: Fga, tmp_path: Path) -> None:
    name = f"skm-test-{uuid.uuid4().hex[:12]}"
    store_id, first = await bootstrap(fga.api_url, fga.token, name, OPENFGA / "model.fga")
    assert await bootstrap(fga.api_url, fga.token, name, MODEL) == (store_id, first)
    changed = _with_tenant_relation(tmp_path, "can_converse", {"computedUserset": {"relation": "admin"}})
    second_store, second = await bootstrap(fga.api_url, fga.token, name, changed)
    assert second_store == store_id
    assert second != first
    assert await bootstrap(fga.api_url, fga.token, name, changed) == (store_id, second)


async def test_copies_starting_together_settle_on_one_store(fga: Fga) -> None:
    name = f"skm-test-{uuid.uuid4().hex[:12]}"
    started = await asyncio.gather(*(bootstrap(fga.api_url, fga.token, name, MODEL) for _ in range(4)))
    assert len({store_id for store_id, _ in started}) == 1
    # Later starts find that store and its model as they are.
    assert await bootstrap(fga.api_url, fga.token, name, MODEL) in started


async def test_the_authorizer_answers_from_its_pinned_model(fga: Fga, tmp_path: Path) -> None:
    name = f"skm-test-{uuid.uuid4().hex[:12]}"
    store_id, original = await bootstrap(fga.api_url, fga.token, name, MODEL)
    # A later model in which members may no longer converse.
    changed = _with_tenant_relation(tmp_path, "can_converse", {"computedUserset": {"relation": "admin"}})
    _, later = await bootstrap(fga.api_url, fga.token, name, changed)
    question = AccessCheck("user:tenants/t1/users/mia", "can_converse", "tenant:tenants/t1")
    async with fga.authorizer(store_id, original) as pinned, fga.authorizer(store_id, later) as newer:
        await pinned.write([Relationship("user:tenants/t1/users/mia", "member", "tenant:tenants/t1")])
        assert await pinned.check([question], fresh=True) == [True]
        assert await newer.check([question], fresh=True) == [False]


def _with_tenant_relation(tmp_path: Path, relation: str, rewrite: dict[str, Any]) -> Path:
    model = read_model(MODEL)
    tenant = next(definition for definition in model["type_definitions"] if definition["type"] == "tenant")
    tenant["relations"][relation] = rewrite
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


# -- the adapter: failing closed -----------------------------------------------------------

QUESTION = AccessCheck("user:tenants/t1/users/mia", "can_converse", "tenant:tenants/t1")
ANY_ID = "01JZ0000000000000000000000"


async def _every_call_fails_closed(authorizer: OpenFgaAuthorizer) -> list[PolicyBackendUnavailable]:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: authorizer.check([QUESTION], fresh=False),
        lambda: authorizer.check([QUESTION], fresh=True),
        lambda: authorizer.write([GRANTS[0]]),
        lambda: authorizer.delete([GRANTS[0]]),
        lambda: authorizer.read("", "", TOOL, 10, ""),
    ]
    raised = []
    for call in calls:
        with pytest.raises(PolicyBackendUnavailable) as error:
            await call()
        raised.append(error.value)
    return raised


async def test_an_unreachable_openfga_fails_every_call_closed() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with OpenFgaAuthorizer(url, "token", ANY_ID, ANY_ID) as authorizer:
        errors = await _every_call_fails_closed(authorizer)
    assert {error.reason for error in errors} == {"POLICY_BACKEND_UNAVAILABLE"}
    with pytest.raises(PolicyBackendUnavailable):
        await bootstrap(url, "token", "skm", MODEL)


async def test_a_wrong_token_fails_closed_and_says_so(fga: Fga, fixture_store: tuple[str, str]) -> None:
    async with OpenFgaAuthorizer(fga.api_url, "not-the-key", *fixture_store) as authorizer:
        errors = await _every_call_fails_closed(authorizer)
    assert {error.metadata["cause"] for error in errors} == {"UNAUTHENTICATED"}
    with pytest.raises(PolicyBackendUnavailable, match="credentials"):
        await bootstrap(fga.api_url, "not-the-key", "skm", MODEL)


async def test_a_missing_store_fails_closed(fga: Fga) -> None:
    async with fga.authorizer(ANY_ID, ANY_ID) as authorizer:
        with pytest.raises(PolicyBackendUnavailable):
            await authorizer.check([QUESTION], fresh=False)


@contextlib.asynccontextmanager
async def _http_server(handler: Any) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_failing_openfga_fails_closed() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"code": "unavailable", "message": "datastore down"}, status=503)

    async with _http_server(unavailable) as url, OpenFgaAuthorizer(url, "token", ANY_ID, ANY_ID) as authorizer:
        errors = await _every_call_fails_closed(authorizer)
    assert {error.metadata["status"] for error in errors} == {"503"}


async def test_a_check_is_tried_once_more_after_a_429_or_5xx() -> None:
    answers = [
        web.json_response({"code": "rate_limit_exceeded", "message": "slow down"}, status=429),
        web.json_response({"result": {"0": {"allowed": True}}}),
        web.json_response({"code": "internal_error", "message": "oops"}, status=500),
        web.json_response({"code": "unavailable", "message": "datastore down"}, status=503),
    ]

    async def next_answer(request: web.Request) -> web.Response:
        return answers.pop(0)

    async with _http_server(next_answer) as url, OpenFgaAuthorizer(url, "token", ANY_ID, ANY_ID) as authorizer:
        assert await authorizer.check([QUESTION], fresh=False) == [True]
        with pytest.raises(PolicyBackendUnavailable) as error:
            await authorizer.check([QUESTION], fresh=False)
    assert error.value.metadata["status"] == "503"
    assert not answers


async def test_a_silent_openfga_fails_closed_within_the_timeout() -> None:
    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with OpenFgaAuthorizer(url, "token", ANY_ID, ANY_ID, timeout=0.3) as authorizer:
            loop = asyncio.get_running_loop()
            for call in (lambda: authorizer.check([QUESTION], fresh=False), lambda: authorizer.write([GRANTS[0]])):
                started = loop.time()
                with pytest.raises(PolicyBackendUnavailable, match="did not answer"):
                    await call()
                assert loop.time() - started < 2
    finally:
        server.close()
        await server.wait_closed()
