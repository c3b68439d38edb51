"""The knowledge-base core (chunking, import, listing, deletion, knowledge_query) on in-memory
ports: the numpy vector index, a dict document store and the bag-of-words embedder."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from skm_runtime.access import Principal
from skm_runtime.errors import InvalidArgument
from svc_tools.adapters.numpy_index import NumpyVectorIndex
from svc_tools.errors import (
    DocumentNotFound,
    DocumentTooLarge,
    EmbeddingUnavailable,
    InvalidPageToken,
    InvalidResourceName,
    PrincipalMissing,
    UnsupportedMimeType,
)
from svc_tools.knowledge import CHUNK_CHARS, Knowledge, KnowledgeQueryTool, chunk_text
from svc_tools.model import (
    Chunk,
    Document,
    Execution,
    ExecutionState,
    Failure,
    NewDocument,
    Space,
    Success,
)
from tests.unit.test_memory_core import MODEL, BagOfWords, Clock

T1 = "tenants/t1"
KB = f"{T1}/knowledgeBases/handbook"
ADA = Principal(T1, f"{T1}/users/ada", ("admin",))
EVE = Principal("tenants/t2", "tenants/t2/users/eve", ("admin",))


@dataclass
class DictKnowledgeStore:
    documents: dict[str, Document] = field(default_factory=dict)
    stored_chunks: dict[str, Chunk] = field(default_factory=dict)

    async def find(self, knowledge_base: str, sha256: str) -> Document | None:
        return next(
            (d for d in self.documents.values() if d.knowledge_base == knowledge_base and d.sha256 == sha256), None
        )

    async def add(self, document: Document, chunks: Sequence[Chunk]) -> tuple[Document, bool]:
        existing = await self.find(document.knowledge_base, document.sha256)
        if existing is not None:
            return existing, False
        self.documents[document.name] = document
        self.stored_chunks.update((c.id, c) for c in chunks)
        return document, True

    async def get(self, name: str) -> Document | None:
        return self.documents.get(name)

    async def page(self, knowledge_base: str, after: tuple[datetime, str] | None, limit: int) -> list[Document]:
        ordered = sorted(
            (d for d in self.documents.values() if d.knowledge_base == knowledge_base),
            key=lambda d: (d.create_time, d.name),
            reverse=True,
        )
        if after is not None:
            ordered = [d for d in ordered if (d.create_time, d.name) < after]
        return ordered[:limit]

    async def remove(self, name: str) -> tuple[Document, list[str]] | None:
        document = self.documents.pop(name, None)
        if document is None:
            return None
        ids = [c.id for c in self.stored_chunks.values() if c.document == name]
        for chunk_id in ids:
            del self.stored_chunks[chunk_id]
        return document, ids

    async def chunks(self, tenant: str, ids: Sequence[str]) -> list[tuple[Chunk, Document]]:
        found = []
        for chunk_id in ids:
            chunk = self.stored_chunks.get(chunk_id)
            if chunk is not None and self.documents[chunk.document].tenant == tenant:
                found.append((chunk, self.documents[chunk.document]))
        return found


@dataclass
class World:
    store: DictKnowledgeStore
    index: NumpyVectorIndex
    embedder: BagOfWords
    knowledge: Knowledge

    async def add(self, title: str, content: str, mime_type: str = "text/plain", parent: str = KB) -> Document:
        return await self.knowledge.import_document(parent, NewDocument(title, mime_type, content), ADA)


@pytest.fixture
def world() -> World:
    store, index, embedder = DictKnowledgeStore(), NumpyVectorIndex(), BagOfWords()
    return World(store, index, embedder, Knowledge(store, index, embedder, now=Clock()))


# -- chunking ---------------------------------------------------------------------------

LONG = " ".join(f"Sentence number {i} tells about topic {i % 7} in some detail." for i in range(200))


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_a_short_text_is_one_chunk() -> None:
    assert chunk_text("  Hello   world.\n\nSecond  paragraph. ") == ["Hello world. Second paragraph."]
    assert chunk_text(" \n\n ") == []


def test_long_text_is_cut_at_sentences_into_bounded_chunks_that_keep_every_word() -> None:
    chunks = chunk_text(LONG)
    assert len(chunks) > 10
    assert all(len(c) <= CHUNK_CHARS for c in chunks)
    assert all(c.startswith("Sentence number") for c in chunks)
    # Each chunk starts with the (short) last sentence of the one before; without those
    # repeats the chunks hold the text, word for word.
    rebuilt = _words(chunks[0])
    for before, after in itertools.pairwise(chunks):
        last = re.split(r"(?<=\.)\s+", before)[-1]
        assert after.startswith(last)
        rebuilt += _words(after[len(last) :])
    assert rebuilt == _words(LONG)


def test_words_longer_than_a_chunk_are_cut() -> None:
    chunks = chunk_text("x" * (CHUNK_CHARS * 2 + 5))
    assert [len(c) for c in chunks] == [CHUNK_CHARS, CHUNK_CHARS, 5]


def test_markdown_headings_start_new_chunks() -> None:
    text = "# Setup\nInstall it.\n\nRun it.\n## Usage\nCall it.\n\n# Limits\nNone."
    assert chunk_text(text, "text/markdown") == ["# Setup Install it. Run it.", "## Usage Call it.", "# Limits None."]
    assert chunk_text(text) == ["# Setup Install it. Run it. ## Usage Call it. # Limits None."]


# -- documents ---------------------------------------------------------------------------


async def test_import_chunks_embeds_and_query_recalls_passages(world: World) -> None:
    document = await world.add("Handbook", "Holidays are booked in the portal.\n\nThe canteen opens at noon.")
    assert document.name.startswith(f"{KB}/documents/")
    assert (document.chunk_count, document.model, document.creator) == (1, MODEL, ADA.user)
    assert world.index.count(Space(T1, KB, MODEL)) == 1

    passages = await world.knowledge.query(T1, KB, "when does the canteen open", threshold=0.2, limit=5)
    assert [p.document.name for p in passages] == [document.name]
    assert "canteen opens at noon" in passages[0].chunk.text
    assert await world.knowledge.query(T1, f"{T1}/knowledgeBases/other", "canteen", threshold=-1, limit=5) == []
    assert await world.knowledge.query("tenants/t2", KB, "canteen", threshold=-1, limit=5) == []


async def test_the_same_content_is_stored_once(world: World) -> None:
    first = await world.add("A", "Same words here.")
    again = await world.add("B", "Same words here.")
    assert again == first
    assert len(world.store.documents) == 1
    other = await world.add("C", "Same words here.", parent=f"{T1}/knowledgeBases/other")
    assert other.name != first.name


async def test_documents_are_listed_newest_first_in_pages(world: World) -> None:
    names = [(await world.add(f"doc {i}", f"content number {i}")).name for i in range(5)]
    page, token = await world.knowledge.list_documents(KB, 2, "", ADA)
    seen = [d.name for d in page]
    while token:
        page, token = await world.knowledge.list_documents(KB, 2, token, ADA)
        seen += [d.name for d in page]
    assert seen == list(reversed(names))
    _, token = await world.knowledge.list_documents(KB, 2, "", ADA)
    with pytest.raises(InvalidPageToken):
        await world.knowledge.list_documents(f"{T1}/knowledgeBases/other", 2, token, ADA)
    with pytest.raises(InvalidPageToken):
        await world.knowledge.list_documents(KB, 2, "garbage", ADA)


async def test_delete_removes_the_document_its_chunks_and_vectors(world: World) -> None:
    document = await world.add("Handbook", LONG)
    assert world.index.count(Space(T1, KB, MODEL)) == document.chunk_count > 1
    with pytest.raises(DocumentNotFound):
        await world.knowledge.delete_document(document.name, EVE)
    await world.knowledge.delete_document(document.name, ADA)
    assert world.store.documents == {}
    assert world.store.stored_chunks == {}
    assert world.index.count(Space(T1, KB, MODEL)) == 0
    assert await world.knowledge.query(T1, KB, "Sentence number 3", threshold=-1, limit=5) == []
    with pytest.raises(DocumentNotFound):
        await world.knowledge.delete_document(document.name, ADA)
    with pytest.raises(InvalidResourceName):
        await world.knowledge.delete_document(f"{KB}/files/x", ADA)


@pytest.mark.parametrize(
    ("parent", "document", "error"),
    [
        ("tenants/t1/kb/handbook", NewDocument("T", "text/plain", "x"), InvalidResourceName),
        ("tenants/t1/knowledgeBases/Hand_Book", NewDocument("T", "text/plain", "x"), InvalidResourceName),
        (KB, NewDocument("T", "application/pdf", "x"), UnsupportedMimeType),
        (KB, NewDocument("T", "text/plain", "x" * (2 * 1024 * 1024 + 1)), DocumentTooLarge),
        (KB, NewDocument("", "text/plain", "x"), InvalidArgument),
        (KB, NewDocument("T", "text/plain", "   "), InvalidArgument),
        ("tenants/t2/knowledgeBases/handbook", NewDocument("T", "text/plain", "x"), InvalidResourceName),
    ],
)
async def test_bad_imports_are_refused_and_store_nothing(
    world: World, parent: str, document: NewDocument, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await world.knowledge.import_document(parent, document, ADA)
    assert world.store.documents == {}
    assert world.embedder.calls == 0


async def test_knowledge_needs_a_principal(world: World) -> None:
    with pytest.raises(PrincipalMissing):
        await world.knowledge.import_document(KB, NewDocument("T", "text/plain", "x"), None)
    with pytest.raises(PrincipalMissing):
        await world.knowledge.list_documents(KB, 0, "", None)


async def test_without_the_embedding_model_nothing_is_imported(world: World) -> None:
    world.embedder.fail = True
    with pytest.raises(EmbeddingUnavailable):
        await world.add("Handbook", "text")
    assert world.store.documents == {}


async def test_the_knowledge_query_tool_returns_passages_with_titles(world: World) -> None:
    document = await world.add("Canteen", "The canteen opens at noon and closes at three.")
    tool = KnowledgeQueryTool(world.knowledge, threshold=0.2)
    execution = Execution(
        name=f"{T1}/executions/{uuid.uuid4()}",
        tool=f"{T1}/tools/knowledge_query",
        arguments_json=json.dumps({"query": "when the canteen opens", "knowledge_base": "handbook"}),
        principal=ADA,
        request_id=str(uuid.uuid4()),
        fingerprint="",
        state=ExecutionState.RUNNING,
        create_time=datetime(2026, 11, 1, tzinfo=UTC),
    )
    assert await tool.access(execution) == []
    result = await tool.run(execution, lambda m: None, lambda: None)
    assert isinstance(result, Success)
    [passage] = json.loads(result.output_json)["passages"]
    assert (passage["document"], passage["title"], passage["chunk"]) == (document.name, "Canteen", 0)
    assert passage["score"] > 0.2
    world.embedder.fail = True
    assert isinstance(await tool.run(execution, lambda m: None, lambda: None), Failure)
