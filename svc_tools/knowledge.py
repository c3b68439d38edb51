"""Tenants' knowledge bases: documents imported, chunked and embedded, recalled by meaning.

A knowledge base ("tenants/{t}/knowledgeBases/{kb}") exists once a document is imported into
it. Importing splits the text into chunks of at most CHUNK_CHARS characters (paragraphs kept
whole when they fit, then sentences, then words; Markdown headings start a new chunk; each
chunk begins with the end of the one before when that is short, so a fact cut at a boundary
is still found), embeds them, writes the vectors, then the document and its chunks' text: the
metadata store is the truth, as for memories (svc_tools.memory). The same content imported
twice into a knowledge base is stored once.

`knowledge_query` (a tool, through ExecuteTool) recalls chunks with their scores; the
KnowledgeService RPCs import, list and delete documents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, InvalidArgument, ServiceUnavailable
from skm_runtime.values import FailureReason
from svc_tools import catalogue
from svc_tools.errors import (
    DocumentNotFound,
    DocumentTooLarge,
    EmbeddingUnavailable,
    InvalidPageToken,
    InvalidResourceName,
    PrincipalMissing,
    UnsupportedMimeType,
)
from svc_tools.model import (
    Access,
    Chunk,
    Document,
    Execution,
    Failure,
    NewDocument,
    Passage,
    Result,
    Space,
    Success,
    VectorPoint,
)
from svc_tools.ports import Embedder, KnowledgeStore, Progress, VectorIndex

log = logging.getLogger("skm.tools.knowledge")

MIME_TYPES = ("text/plain", "text/markdown")
MAX_CONTENT_BYTES = 2 * 1024 * 1024
MAX_TITLE_CHARS = 500
# About 180 word pieces of English: all-MiniLM-L6-v2 reads 256, so a chunk is read whole.
CHUNK_CHARS = 800
# A chunk repeats the last piece of the one before when that piece is this short or shorter.
OVERLAP_CHARS = 200
# Chunks embedded per call of the embedding model.
_EMBED_BATCH = 64
_KNOWLEDGE_BASE = re.compile(r"[a-z0-9-]{1,63}")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_HEADING = re.compile(r"^#{1,6}\s")


class Knowledge:
    """The knowledge-base use cases over the stores and the embedding model."""

    def __init__(
        self, store: KnowledgeStore, index: VectorIndex, embedder: Embedder, *, now: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._index = index
        self._embedder = embedder
        self._now = now

    async def import_document(self, parent: str, document: NewDocument, principal: Principal | None) -> Document:
        tenant = _own(_knowledge_base_of(parent, "parent"), principal)
        _check_document(document)
        digest = hashlib.sha256(document.content.encode()).hexdigest()
        existing = await self._store.find(parent, digest)
        if existing is not None:
            return existing
        texts = chunk_text(document.content, document.mime_type)
        if not texts:
            raise InvalidArgument(
                "document.content has no text", violations=[FieldViolation("document.content", "only white space")]
            )
        vectors: list[list[float]] = []
        for start in range(0, len(texts), _EMBED_BATCH):
            vectors.extend(await self._embedder.embed(texts[start : start + _EMBED_BATCH]))
        stored = Document(
            name=f"{parent}/documents/{uuid.uuid4()}",
            title=document.title,
            mime_type=document.mime_type,
            sha256=digest,
            chunk_count=len(texts),
            model=self._embedder.model,
            create_time=self._now(),
            creator=principal.user if principal is not None else "",
        )
        chunks = [Chunk(str(uuid.uuid4()), stored.name, ordinal, text) for ordinal, text in enumerate(texts)]
        await self._index.upsert(stored.space, [VectorPoint(c.id, v) for c, v in zip(chunks, vectors, strict=True)])
        try:
            kept, added = await self._store.add(stored, chunks)
        except BaseException:
            await self._drop_vectors(stored.space, [c.id for c in chunks])
            raise
        if not added:
            # The same content was imported at the same time: one copy stays.
            await self._drop_vectors(stored.space, [c.id for c in chunks])
        log.info(
            "document imported",
            extra={"fields": {"document": kept.name, "tenant": tenant, "chunks": kept.chunk_count}},
        )
        return kept

    async def list_documents(
        self, parent: str, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[Document], str]:
        _own(_knowledge_base_of(parent, "parent"), principal)
        size = 50 if page_size <= 0 else min(page_size, 1000)
        after = _position_of(page_token, parent)
        page = await self._store.page(parent, after, size + 1)
        more = len(page) > size
        page = page[:size]
        return page, _token_of(parent, page[-1]) if more else ""

    async def delete_document(self, name: str, principal: Principal | None) -> None:
        parts = name.split("/")
        if len(parts) != 6 or parts[4] != "documents" or not parts[5]:
            raise InvalidResourceName(
                "expected tenants/{tenant}/knowledgeBases/{knowledge_base}/documents/{document}",
                metadata={"name": name[:200]},
            )
        tenant = _knowledge_base_of("/".join(parts[:4]), "name")
        if principal is None or not principal.tenant:
            raise PrincipalMissing("deleting a document needs the principal it is done for")
        if principal.tenant != tenant:
            # Another tenant's documents do not exist for this caller.
            raise DocumentNotFound("no such document", metadata={"name": name[:200]})
        removed = await self._store.remove(name)
        if removed is None:
            raise DocumentNotFound("no such document", metadata={"name": name[:200]})
        document, chunk_ids = removed
        await self._drop_vectors(document.space, chunk_ids)

    async def query(
        self, tenant: str, knowledge_base: str, query: str, *, threshold: float, limit: int
    ) -> list[Passage]:
        """The chunks of a knowledge base closest to `query`, score >= threshold, best first."""
        [vector] = await self._embedder.embed([query])
        space = Space(tenant, knowledge_base, self._embedder.model)
        hits = await self._index.search([space], vector, threshold=threshold, limit=limit + 8)
        found = {chunk.id: (chunk, doc) for chunk, doc in await self._store.chunks(tenant, [h.id for h in hits])}
        passages = []
        for hit in hits:
            if hit.id in found:
                chunk, document = found[hit.id]
                if document.knowledge_base == knowledge_base:
                    passages.append(Passage(document, chunk, hit.score))
        return passages[:limit]

    async def _drop_vectors(self, space: Space, ids: Sequence[str]) -> None:
        try:
            await self._index.delete(space, ids)
        except ServiceUnavailable:
            # Harmless: a vector without its chunk's text is never shown.
            log.warning("vectors of removed chunks stay in the index", extra={"fields": {"count": len(ids)}})


class KnowledgeQueryTool:
    """knowledge_query as ExecuteTool runs it."""

    tool_ids: tuple[str, ...] = ("knowledge_query",)

    def __init__(self, knowledge: Knowledge, threshold: float = catalogue.KNOWLEDGE_THRESHOLD) -> None:
        self._knowledge = knowledge
        self._threshold = threshold

    async def access(self, execution: Execution) -> list[Access]:
        # A tenant's knowledge base is open to its members: can_execute on the tool decides.
        return []

    async def run(self, execution: Execution, progress: Progress, committing: Callable[[], None]) -> Result:
        arguments: dict[str, Any] = json.loads(execution.arguments_json)
        base = arguments.get("knowledge_base", catalogue.DEFAULT_KNOWLEDGE_BASE)
        knowledge_base = f"{execution.tenant}/knowledgeBases/{base}"
        try:
            passages = await self._knowledge.query(
                execution.tenant,
                knowledge_base,
                arguments["query"],
                threshold=float(arguments.get("threshold", self._threshold)),
                limit=int(arguments.get("limit", 5)),
            )
        except EmbeddingUnavailable:
            return Failure(FailureReason.TOOL_ERROR, "the embedding model is not available")
        except ServiceUnavailable:
            log.warning("a knowledge store cannot be reached", extra={"fields": {"execution": execution.name}})
            return Failure(FailureReason.TOOL_ERROR, "the knowledge base cannot be reached")
        payload = {
            "passages": [
                {
                    "document": p.document.name,
                    "title": p.document.title,
                    "chunk": p.chunk.ordinal,
                    "text": p.chunk.text,
                    "score": round(p.score, 4),
                }
                for p in passages
            ]
        }
        return Success(json.dumps(payload, ensure_ascii=False))


# -- chunking ---------------------------------------------------------------------------


def chunk_text(text: str, mime_type: str = "text/plain", max_chars: int = CHUNK_CHARS) -> list[str]:
    """Split a document into chunks of at most `max_chars` characters (see the module)."""
    pieces = _pieces(text.replace("\r\n", "\n").replace("\r", "\n"), mime_type == "text/markdown", max_chars)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece, starts_section in pieces:
        joined = size + len(piece) + (1 if current else 0)
        if current and (joined > max_chars or starts_section):
            chunks.append(" ".join(current))
            last = current[-1]
            carry = (
                not starts_section
                and len(last) <= OVERLAP_CHARS
                and len(current) > 1
                and len(last) + 1 + len(piece) <= max_chars
            )
            current, size = ([last], len(last)) if carry else ([], 0)
        size += len(piece) + (1 if current else 0)
        current.append(piece)
    if current:
        chunks.append(" ".join(current))
    return chunks


def _pieces(text: str, markdown: bool, max_chars: int) -> list[tuple[str, bool]]:
    """Paragraphs, or sentences and words of long ones, each no longer than max_chars;
    True marks a piece that starts a new section (a Markdown heading)."""
    result: list[tuple[str, bool]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
        if not lines:
            continue
        if markdown:
            # A heading line is its own piece and starts a section.
            block: list[str] = []
            for line in lines:
                if _HEADING.match(line):
                    if block:
                        result.extend((p, False) for p in _split_long(" ".join(block), max_chars))
                        block = []
                    result.extend((p, i == 0) for i, p in enumerate(_split_long(line, max_chars)))
                else:
                    block.append(line)
            if block:
                result.extend((p, False) for p in _split_long(" ".join(block), max_chars))
        else:
            result.extend((p, False) for p in _split_long(" ".join(lines), max_chars))
    return result


def _split_long(text: str, max_chars: int) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        words: list[str] = []
        size = 0
        for word in sentence.split(" "):
            while len(word) > max_chars:  # no space to cut at
                if words:
                    pieces.append(" ".join(words))
                    words, size = [], 0
                pieces.append(word[:max_chars])
                word = word[max_chars:]
            if words and size + 1 + len(word) > max_chars:
                pieces.append(" ".join(words))
                words, size = [], 0
            size += len(word) + (1 if words else 0)
            words.append(word)
        if words:
            pieces.append(" ".join(words))
    return [p for p in pieces if p]


# -- names and validation ---------------------------------------------------------------


def _knowledge_base_of(name: str, field: str) -> str:
    """Check "tenants/{t}/knowledgeBases/{kb}"; returns "tenants/{t}"."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "tenants"
        or not parts[1]
        or parts[2] != "knowledgeBases"
        or not _KNOWLEDGE_BASE.fullmatch(parts[3])
    ):
        raise InvalidResourceName(
            f"{field}: expected tenants/{{tenant}}/knowledgeBases/{{knowledge_base}} ([a-z0-9-], 1-63 characters)",
            metadata={"name": name[:200]},
        )
    return "/".join(parts[:2])


def _own(tenant: str, principal: Principal | None) -> str:
    if principal is None or not principal.tenant:
        raise PrincipalMissing("knowledge bases are used on behalf of a principal")
    if principal.tenant != tenant:
        raise InvalidResourceName("the knowledge base is not in the caller's tenant", metadata={"tenant": tenant[:200]})
    return tenant


def _check_document(document: NewDocument) -> None:
    size = len(document.content.encode())
    if size > MAX_CONTENT_BYTES:
        raise DocumentTooLarge(
            f"document content is larger than {MAX_CONTENT_BYTES} bytes",
            metadata={"limit_bytes": str(MAX_CONTENT_BYTES), "size_bytes": str(size)},
        )
    if document.mime_type not in MIME_TYPES:
        raise UnsupportedMimeType(
            f"document.mime_type must be one of {', '.join(MIME_TYPES)}",
            metadata={"mime_type": document.mime_type[:100]},
        )
    violations = []
    if not document.title.strip():
        violations.append(FieldViolation("document.title", "required"))
    elif len(document.title) > MAX_TITLE_CHARS:
        violations.append(FieldViolation("document.title", f"longer than {MAX_TITLE_CHARS} characters"))
    if not document.content.strip():
        violations.append(FieldViolation("document.content", "required: the document's text"))
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations=violations)


def _position_of(token: str, parent: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        owner, time, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        position = (datetime.fromisoformat(time), str(name))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if owner != parent:
        raise InvalidPageToken("page_token was issued for other parameters")
    return position


def _token_of(parent: str, last: Document) -> str:
    return base64.urlsafe_b64encode(json.dumps([parent, last.create_time.isoformat(), last.name]).encode()).decode()
