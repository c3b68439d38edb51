"""KnowledgeService and the knowledge_query tool through gRPC on the real stack (PostgreSQL,
Qdrant in local mode, the all-MiniLM-L6-v2 encoder, svc_policy for the tool's check)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from skm.tools.v1 import knowledge_pb2, knowledge_service_pb2, knowledge_service_pb2_grpc
from skm_runtime.server import RuntimeSettings
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from svc_tools.model import Space
from tests.support.runtime import Served, serving
from tests.support.tools import (
    Failure,
    Tenant,
    ToolsServer,
    expect_error,
    new_tenant,
    policy_settings,
    serving_tools,
    tools_settings,
)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"

HANDBOOK = """# Travel

Train tickets are booked through the travel portal at least three days ahead. First class
is allowed on journeys longer than four hours.

Hotel rooms must cost less than 150 euros a night, breakfast included.

# Equipment

Laptops are replaced every four years. A broken screen is repaired by the IT desk on the
second floor, usually within two working days.

# Leave

Holidays are requested in the HR system and approved by the team lead. Unused days expire
at the end of March of the following year.
"""


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


@pytest.fixture(scope="module")
async def tools(stack: RunningStack, policy: Served) -> AsyncIterator[ToolsServer]:
    async with serving_tools(tools_settings(stack, policy.target, slot_group=7)) as served:
        yield served


@pytest.fixture
async def tenant(policy: Served, tools: ToolsServer) -> AsyncIterator[Tenant]:
    async for t in new_tenant(policy, tools.target):
        yield t


def stub(t: Tenant) -> knowledge_service_pb2_grpc.KnowledgeServiceStub:
    return knowledge_service_pb2_grpc.KnowledgeServiceStub(t.tools)


def base(t: Tenant, name: str = "default") -> str:
    return f"{t.name}/knowledgeBases/{name}"


async def add(
    t: Tenant, content: str, *, title: str = "Handbook", mime_type: str = "text/markdown", kb: str = "default"
) -> Any:
    reply = await stub(t).ImportDocument(
        knowledge_service_pb2.ImportDocumentRequest(
            parent=base(t, kb), document=knowledge_pb2.Document(title=title, mime_type=mime_type, content=content)
        ),
        metadata=t.alice,
        timeout=60,
    )
    return reply.document


async def ask(t: Tenant, query: str, **arguments: Any) -> list[dict[str, Any]]:
    run = await t.run(t.call("knowledge_query", {"query": query, **arguments}), t.mike)
    run.check_order()
    passages: list[dict[str, Any]] = run.payload()["passages"]
    return passages


async def chunk_rows(stack: RunningStack, document: str) -> int:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tools.chunks WHERE document = $1", document))
    finally:
        await conn.close()


async def test_an_imported_document_answers_questions(tenant: Tenant, tools: ToolsServer, stack: RunningStack) -> None:
    document = await add(tenant, HANDBOOK)
    assert document.name.startswith(f"{base(tenant)}/documents/")
    assert document.sha256 == hashlib.sha256(HANDBOOK.encode()).hexdigest()
    assert document.chunk_count == 3  # one per section
    assert document.content == ""
    assert document.create_time.seconds > 0
    assert await chunk_rows(stack, document.name) == 3
    assert await tools.index.count(Space(tenant.name, base(tenant), MODEL)) == 3

    passages = await ask(tenant, "How much may a hotel night cost?")
    assert passages[0]["document"] == document.name
    assert passages[0]["title"] == "Handbook"
    assert "150 euros" in passages[0]["text"]
    assert passages[0]["chunk"] == 0
    assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
    fix = await ask(tenant, "Who repairs a cracked laptop display?", limit=1)
    assert "IT desk" in fix[0]["text"]
    assert await ask(tenant, "What is the capital of Peru?") == []
    assert await ask(tenant, "hotel", knowledge_base="other") == []


async def test_the_same_content_is_imported_once(tenant: Tenant) -> None:
    first = await add(tenant, "Parking permits for visitors are requested a day in advance.")
    again = await add(tenant, "Parking permits for visitors are requested a day in advance.", title="Copy")
    assert again.name == first.name
    assert again.title == first.title


async def test_documents_are_listed_newest_first_and_deleted(
    tenant: Tenant, tools: ToolsServer, stack: RunningStack
) -> None:
    names = [(await add(tenant, f"Fact number {i} about the office.", title=f"doc {i}")).name for i in range(3)]
    listing = stub(tenant).ListDocuments
    first = await listing(
        knowledge_service_pb2.ListDocumentsRequest(parent=base(tenant), page_size=2), metadata=tenant.mike, timeout=10
    )
    rest = await listing(
        knowledge_service_pb2.ListDocumentsRequest(parent=base(tenant), page_size=2, page_token=first.next_page_token),
        metadata=tenant.mike,
        timeout=10,
    )
    assert [d.name for d in [*first.documents, *rest.documents]] == list(reversed(names))
    assert rest.next_page_token == ""
    assert all(d.content == "" for d in first.documents)

    await stub(tenant).DeleteDocument(
        knowledge_service_pb2.DeleteDocumentRequest(name=names[1]), metadata=tenant.alice, timeout=10
    )
    assert await chunk_rows(stack, names[1]) == 0
    assert await tools.index.count(Space(tenant.name, base(tenant), MODEL)) == 2
    passages = await ask(tenant, "Fact number 1 about the office", threshold=-1)
    assert names[1] not in [p["document"] for p in passages]
    await expect_error(
        stub(tenant).DeleteDocument(
            knowledge_service_pb2.DeleteDocumentRequest(name=names[1]), metadata=tenant.alice, timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "DOCUMENT_NOT_FOUND",
    )


async def test_bad_imports_and_other_tenants_get_clear_codes(
    tenant: Tenant, policy: Served, tools: ToolsServer
) -> None:
    document = await add(tenant, "The canteen opens at noon.")
    new = knowledge_pb2.Document
    imports = stub(tenant).ImportDocument
    for parent, doc, code, reason in [
        (
            base(tenant),
            new(title="T", mime_type="application/pdf", content="x"),
            "INVALID_ARGUMENT",
            "UNSUPPORTED_MIME_TYPE",
        ),
        (
            base(tenant),
            new(title="T", mime_type="text/plain", content="x" * (2 * 1024 * 1024 + 1)),
            "INVALID_ARGUMENT",
            "DOCUMENT_TOO_LARGE",
        ),
        (base(tenant), new(title="T", mime_type="text/plain", content=""), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (base(tenant), new(title="", mime_type="text/plain", content="x"), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (
            f"{tenant.name}/knowledgeBases/Bad_Name",
            new(title="T", mime_type="text/plain", content="x"),
            "INVALID_ARGUMENT",
            "INVALID_RESOURCE_NAME",
        ),
    ]:
        await expect_error(
            imports(
                knowledge_service_pb2.ImportDocumentRequest(parent=parent, document=doc),
                metadata=tenant.alice,
                timeout=10,
            ),
            getattr(grpc.StatusCode, code),
            reason,
        )
    await expect_error(
        imports(
            knowledge_service_pb2.ImportDocumentRequest(
                parent=base(tenant), document=new(title="T", mime_type="text/plain", content="x")
            ),
            timeout=10,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "PRINCIPAL_MISSING",
    )
    async for other in new_tenant(policy, tools.target):
        await expect_error(
            stub(other).DeleteDocument(
                knowledge_service_pb2.DeleteDocumentRequest(name=document.name), metadata=other.alice, timeout=10
            ),
            grpc.StatusCode.NOT_FOUND,
            "DOCUMENT_NOT_FOUND",
        )
        assert await ask(other, "When does the canteen open?", threshold=-1) == []
    assert (await ask(tenant, "When does the canteen open?"))[0]["document"] == document.name
    run = await tenant.run(tenant.call("knowledge_query", {"query": "canteen"}), tenant.who("nobody"))
    assert run.decision.reason == "NOT_PERMITTED"
    assert run.failure()[0] == Failure.FAILURE_REASON_DENIED
