"""Long-term memory: Agent Zero's memory tools, made safe for many tenants.

A memory is a text in a namespace of a tenant, with an embedding for recall by meaning.
Namespaces are policy objects (OpenFGA type memory_namespace): an area "main" is the user's
own, "tenants/{t}/users/{u}/memoryNamespaces/main"; any other area is shared in the tenant,
"tenants/{t}/memoryNamespaces/{area}" (Agent Zero's fragments and solutions, or a persona's
own). Reading needs can_read on the namespace, saving, deleting and forgetting can_write;
ExecuteTool asks policy for them before a memory tool runs (`MemoryTools.access`).

Two stores hold a memory: its text and metadata in the MemoryStore (the truth) and its
vector in the VectorIndex. A save writes the vector first, then the metadata; a deletion
removes the metadata first, then the vector; recall looks every hit up in the metadata and
drops hits without it. So a failure between the two writes leaves at worst a vector that is
never shown, never a memory that cannot be recalled or deleted.

Semantics follow Agent Zero: memory_save stores one text; memory_load returns memories at
or above a score threshold, best first, at most `limit`; memory_delete deletes by id;
memory_forget deletes what a query matches at or above a (higher) threshold.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.values import FailureReason
from svc_tools import catalogue
from svc_tools.errors import EmbeddingUnavailable
from svc_tools.model import (
    Access,
    Execution,
    Failure,
    Memory,
    MemoryOperation,
    MemoryOperationKind,
    Recalled,
    Result,
    Space,
    Success,
    VectorPoint,
)
from svc_tools.ports import Embedder, MemoryStore, Progress, VectorIndex

log = logging.getLogger("skm.tools.memory")

# Most memories one memory_forget deletes.
FORGET_LIMIT = 1000
# Extra hits asked of the index, so that a few vectors without metadata (a failed save or
# deletion) do not shorten a recall.
_SPARE_HITS = 8


def namespace_of(area: str, principal: Principal) -> str:
    """The namespace an area names for this principal."""
    if area == "main":
        return f"{principal.user}/memoryNamespaces/main"
    return f"{principal.tenant}/memoryNamespaces/{area}"


def area_of(namespace: str) -> str:
    return namespace.rsplit("/", 1)[-1]


class Memories:
    """The memory use cases over the stores and the embedding model."""

    def __init__(
        self, store: MemoryStore, index: VectorIndex, embedder: Embedder, *, now: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._index = index
        self._embedder = embedder
        self._now = now

    @property
    def model(self) -> str:
        return self._embedder.model

    async def save(self, execution: Execution, namespace: str, text: str, committing: Callable[[], None]) -> Memory:
        """Embed and store one memory (raises EmbeddingUnavailable before anything is stored)."""
        [vector] = await self._embedder.embed([text])
        memory = Memory(
            id=str(uuid.uuid4()),
            tenant=execution.tenant,
            namespace=namespace,
            text=text,
            model=self._embedder.model,
            create_time=self._now(),
            author=execution.principal.user,
            persona=execution.persona,
            execution=execution.name,
        )
        committing()
        await self._index.upsert(memory.space, [VectorPoint(memory.id, vector)])
        try:
            await self._store.add(memory, MemoryOperation(MemoryOperationKind.SAVE, namespace, (memory.id,), execution))
        except BaseException:
            await self._drop_vectors([memory])
            raise
        return memory

    async def load(
        self, execution: Execution, namespaces: Sequence[str], query: str, *, threshold: float, limit: int
    ) -> list[Recalled]:
        """The memories of `namespaces` closest to `query`, score >= threshold, best first."""
        [vector] = await self._embedder.embed([query])
        spaces = [Space(execution.tenant, namespace, self._embedder.model) for namespace in namespaces]
        hits = await self._index.search(spaces, vector, threshold=threshold, limit=limit + _SPARE_HITS)
        found = {m.id: m for m in await self._store.get(execution.tenant, [hit.id for hit in hits])}
        recalled = [
            Recalled(found[hit.id], hit.score)
            for hit in hits
            if hit.id in found and found[hit.id].namespace == hit.space.name
        ][:limit]
        by_namespace: dict[str, list[str]] = {namespace: [] for namespace in namespaces}
        for item in recalled:
            by_namespace[item.memory.namespace].append(item.memory.id)
        await self._store.record(
            [
                MemoryOperation(MemoryOperationKind.LOAD, namespace, tuple(ids), execution)
                for namespace, ids in by_namespace.items()
            ]
        )
        return recalled

    async def find(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        """The tenant's memories among `ids`."""
        return await self._store.get(tenant, ids)

    async def delete(self, execution: Execution, memories: Sequence[Memory]) -> list[Memory]:
        """Delete these memories (found with `find`); returns those that were still there."""
        return await self._remove(execution, [m.id for m in memories], MemoryOperationKind.DELETE)

    async def forget(
        self,
        execution: Execution,
        namespaces: Sequence[str],
        query: str,
        *,
        threshold: float,
        committing: Callable[[], None],
    ) -> list[Memory]:
        """Delete the memories of `namespaces` that `query` matches with score >= threshold."""
        [vector] = await self._embedder.embed([query])
        spaces = [Space(execution.tenant, namespace, self._embedder.model) for namespace in namespaces]
        hits = await self._index.search(spaces, vector, threshold=threshold, limit=FORGET_LIMIT)
        committing()
        return await self._remove(execution, [hit.id for hit in hits], MemoryOperationKind.FORGET)

    async def _remove(self, execution: Execution, ids: Sequence[str], kind: MemoryOperationKind) -> list[Memory]:
        if not ids:
            return []
        # The audit records name the namespaces; they are known once the metadata is read.
        known = await self._store.get(execution.tenant, ids)
        operations = [
            MemoryOperation(kind, namespace, tuple(m.id for m in known if m.namespace == namespace), execution)
            for namespace in sorted({m.namespace for m in known})
        ]
        removed = await self._store.remove(execution.tenant, [m.id for m in known], operations)
        await self._drop_vectors(removed)
        return removed

    async def _drop_vectors(self, memories: Sequence[Memory]) -> None:
        by_space: dict[Space, list[str]] = defaultdict(list)
        for memory in memories:
            by_space[memory.space].append(memory.id)
        for space, ids in by_space.items():
            try:
                await self._index.delete(space, ids)
            except ServiceUnavailable:
                # Harmless: a vector without metadata is never shown.
                log.warning("vectors of deleted memories stay in the index", extra={"fields": {"count": len(ids)}})


@dataclass(frozen=True, slots=True)
class MemoryDefaults:
    """Default thresholds of memory_load and memory_forget (as the catalogue shows them)."""

    load_threshold: float = catalogue.LOAD_THRESHOLD
    forget_threshold: float = catalogue.FORGET_THRESHOLD


class MemoryTools:
    """memory_save, memory_load, memory_delete and memory_forget as ExecuteTool runs them."""

    tool_ids: tuple[str, ...] = ("memory_save", "memory_load", "memory_delete", "memory_forget")

    def __init__(self, memories: Memories, defaults: MemoryDefaults = MemoryDefaults()) -> None:
        self._memories = memories
        self._defaults = defaults

    async def access(self, execution: Execution) -> list[Access]:
        arguments = _arguments(execution)
        tool = execution.tool_id
        if tool == "memory_save":
            namespaces = [namespace_of(arguments.get("area", "main"), execution.principal)]
        elif tool == "memory_delete":
            found = await self._memories.find(execution.tenant, _ids(arguments))
            namespaces = sorted({memory.namespace for memory in found})
        else:
            namespaces = _namespaces(arguments, execution.principal)
        relation = "can_read" if tool == "memory_load" else "can_write"
        return [Access(relation, f"memory_namespace:{namespace}") for namespace in namespaces]

    async def run(self, execution: Execution, progress: Progress, committing: Callable[[], None]) -> Result:
        arguments = _arguments(execution)
        try:
            if execution.tool_id == "memory_save":
                return await self._save(execution, arguments, committing)
            if execution.tool_id == "memory_load":
                return await self._load(execution, arguments)
            if execution.tool_id == "memory_delete":
                return await self._delete(execution, arguments, committing)
            return await self._forget(execution, arguments, committing)
        except EmbeddingUnavailable:
            return Failure(FailureReason.TOOL_ERROR, "the embedding model is not available; memory was not changed")
        except ServiceUnavailable:
            # Every change is made in one store write that either happened or did not,
            # and a failure before it changes nothing (see the module).
            log.warning("a memory store cannot be reached", extra={"fields": {"execution": execution.name}})
            return Failure(FailureReason.TOOL_ERROR, "the memory store cannot be reached; memory was not changed")

    async def _save(self, execution: Execution, arguments: dict[str, Any], committing: Callable[[], None]) -> Result:
        area = arguments.get("area", "main")
        memory = await self._memories.save(
            execution, namespace_of(area, execution.principal), arguments["text"], committing
        )
        return _success({"id": memory.id, "area": area})

    async def _load(self, execution: Execution, arguments: dict[str, Any]) -> Result:
        recalled = await self._memories.load(
            execution,
            _namespaces(arguments, execution.principal),
            arguments["query"],
            threshold=float(arguments.get("threshold", self._defaults.load_threshold)),
            limit=int(arguments.get("limit", 10)),
        )
        return _success(
            {
                "memories": [
                    {
                        "id": item.memory.id,
                        "area": area_of(item.memory.namespace),
                        "text": item.memory.text,
                        "score": round(item.score, 4),
                        "saved": item.memory.create_time.isoformat(),
                    }
                    for item in recalled
                ]
            }
        )

    async def _delete(self, execution: Execution, arguments: dict[str, Any], committing: Callable[[], None]) -> Result:
        ids = _ids(arguments)
        found = await self._memories.find(execution.tenant, ids)
        missing = sorted(set(ids) - {memory.id for memory in found})
        if missing:
            # Another tenant's memories do not exist for this caller either.
            return Failure(
                FailureReason.TOOL_ERROR,
                f"not found: no memory with id {', '.join(missing[:10])}; nothing was deleted",
            )
        committing()
        deleted = await self._memories.delete(execution, found)
        return _success({"deleted": [memory.id for memory in deleted]})

    async def _forget(self, execution: Execution, arguments: dict[str, Any], committing: Callable[[], None]) -> Result:
        deleted = await self._memories.forget(
            execution,
            _namespaces(arguments, execution.principal),
            arguments["query"],
            threshold=float(arguments.get("threshold", self._defaults.forget_threshold)),
            committing=committing,
        )
        return _success({"deleted": [memory.id for memory in deleted]})


def _arguments(execution: Execution) -> dict[str, Any]:
    arguments: dict[str, Any] = json.loads(execution.arguments_json)
    return arguments


def _ids(arguments: dict[str, Any]) -> list[str]:
    # Ids are stored as lowercase UUID text.
    return [str(i).lower() for i in arguments["ids"]]


def _namespaces(arguments: dict[str, Any], principal: Principal) -> list[str]:
    return [namespace_of(area, principal) for area in arguments.get("areas", catalogue.DEFAULT_AREAS)]


def _success(payload: dict[str, Any]) -> Success:
    return Success(json.dumps(payload, ensure_ascii=False))
