"""The memory core (Memories, MemoryTools) on in-memory ports: a real numpy vector index, a
dict metadata store and a bag-of-words embedder (scores follow shared words, so every
expectation below can be worked out by hand)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from skm_runtime.access import Principal
from skm_runtime.errors import ServiceUnavailable
from skm_runtime.values import FailureReason
from svc_tools.adapters.numpy_index import NumpyVectorIndex
from svc_tools.errors import EmbeddingUnavailable
from svc_tools.memory import Memories, MemoryDefaults, MemoryTools, namespace_of
from svc_tools.model import (
    Access,
    Execution,
    ExecutionState,
    Failure,
    Memory,
    MemoryOperation,
    MemoryOperationKind,
    Result,
    Space,
    Success,
    VectorPoint,
)

T1, T2 = "tenants/t1", "tenants/t2"
ALICE = Principal(T1, f"{T1}/users/alice", ("member",))
BOB = Principal(T1, f"{T1}/users/bob", ("member",))
EVE = Principal(T2, f"{T2}/users/eve", ("member",))
MODEL = "bag-of-words"


class BagOfWords:
    """Each word (lower case) adds 1 to a hashed dimension: cosine = word overlap."""

    model = MODEL
    dimensions = 256

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.fail:
            raise EmbeddingUnavailable("down")
        vectors = []
        for text in texts:
            vector = np.zeros(self.dimensions, dtype=np.float32)
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dimensions] += 1
            vectors.append(vector.tolist())
        return vectors


@dataclass
class DictMemoryStore:
    memories: dict[str, Memory] = field(default_factory=dict)
    operations: list[MemoryOperation] = field(default_factory=list)
    fail_add: bool = False

    async def add(self, memory: Memory, operation: MemoryOperation) -> None:
        if self.fail_add:
            raise ServiceUnavailable("database down")
        self.memories[memory.id] = memory
        self.operations.append(operation)

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        return [self.memories[i] for i in ids if i in self.memories and self.memories[i].tenant == tenant]

    async def remove(self, tenant: str, ids: Sequence[str], operations: Sequence[MemoryOperation]) -> list[Memory]:
        removed = [self.memories.pop(m.id) for m in await self.get(tenant, ids)]
        self.operations.extend(operations)
        return removed

    async def record(self, operations: Sequence[MemoryOperation]) -> None:
        self.operations.extend(operations)


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at


@dataclass
class World:
    store: DictMemoryStore
    index: NumpyVectorIndex
    embedder: BagOfWords
    tools: MemoryTools
    commits: list[str] = field(default_factory=list)

    async def run(
        self, tool: str, arguments: dict[str, Any], principal: Principal = ALICE, persona: str = ""
    ) -> Result:
        execution = _execution(tool, arguments, principal, persona)
        return await self.tools.run(execution, lambda message: None, lambda: self.commits.append(tool))

    async def ok(self, tool: str, arguments: dict[str, Any], principal: Principal = ALICE) -> dict[str, Any]:
        result = await self.run(tool, arguments, principal)
        assert isinstance(result, Success), result
        payload: dict[str, Any] = json.loads(result.output_json)
        return payload

    async def access(self, tool: str, arguments: dict[str, Any], principal: Principal = ALICE) -> list[Access]:
        return await self.tools.access(_execution(tool, arguments, principal, ""))


def _execution(tool: str, arguments: dict[str, Any], principal: Principal, persona: str) -> Execution:
    return Execution(
        name=f"{principal.tenant}/executions/{uuid.uuid4()}",
        tool=f"{principal.tenant}/tools/{tool}",
        arguments_json=json.dumps(arguments),
        principal=principal,
        request_id=str(uuid.uuid4()),
        fingerprint="",
        state=ExecutionState.RUNNING,
        create_time=datetime(2026, 11, 1, tzinfo=UTC),
        persona=persona,
    )


@pytest.fixture
def world() -> World:
    store, index, embedder = DictMemoryStore(), NumpyVectorIndex(), BagOfWords()
    memories = Memories(store, index, embedder, now=Clock())
    return World(
        store, index, embedder, MemoryTools(memories, MemoryDefaults(load_threshold=0.3, forget_threshold=0.6))
    )


async def test_save_then_load_recalls_by_meaning_best_first(world: World) -> None:
    saved = await world.ok("memory_save", {"text": "the staging database password rotates monthly"})
    await world.ok("memory_save", {"text": "alice prefers reports as pdf files", "area": "fragments"})
    await world.ok("memory_save", {"text": "the database backup runs nightly", "area": "solutions"})
    assert saved["area"] == "main"
    assert uuid.UUID(saved["id"])

    found = await world.ok("memory_load", {"query": "when does the staging database password change"})
    memories = found["memories"]
    assert [m["id"] for m in memories][:1] == [saved["id"]]
    assert memories[0]["text"] == "the staging database password rotates monthly"
    assert memories[0]["area"] == "main"
    assert memories[0]["saved"].startswith("2026-11-01T")
    scores = [m["score"] for m in memories]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= 0.3 for s in scores)
    stored = world.store.memories[saved["id"]]
    assert (stored.author, stored.model, stored.namespace) == (ALICE.user, MODEL, f"{ALICE.user}/memoryNamespaces/main")


async def test_threshold_and_limit_bound_what_comes_back(world: World) -> None:
    for text in ("red apple pie", "red apple juice", "red car", "blue sky"):
        await world.ok("memory_save", {"text": text})
    query = {"query": "red apple"}
    everything = await world.ok("memory_load", {**query, "threshold": -1, "limit": 100})
    assert len(everything["memories"]) == 4
    strict = await world.ok("memory_load", {**query, "threshold": 0.8})
    assert [m["text"] for m in strict["memories"]] == ["red apple pie", "red apple juice"]
    assert (await world.ok("memory_load", {**query, "threshold": 0.99}))["memories"] == []
    assert len((await world.ok("memory_load", {**query, "threshold": -1, "limit": 1}))["memories"]) == 1
    # The default threshold (0.3) keeps "red car" (one shared word of three) and drops "blue sky".
    assert "blue sky" not in [m["text"] for m in (await world.ok("memory_load", query))["memories"]]


async def test_areas_main_is_private_and_the_others_are_shared(world: World) -> None:
    await world.ok("memory_save", {"text": "alice private note about tulips"})
    await world.ok("memory_save", {"text": "shared note about tulips", "area": "solutions"})
    bob = await world.ok("memory_load", {"query": "tulips"}, BOB)
    assert [m["text"] for m in bob["memories"]] == ["shared note about tulips"]
    only_main = await world.ok("memory_load", {"query": "tulips", "areas": ["main"]})
    assert [m["text"] for m in only_main["memories"]] == ["alice private note about tulips"]
    assert namespace_of("main", ALICE) == "tenants/t1/users/alice/memoryNamespaces/main"
    assert namespace_of("research-notes", ALICE) == "tenants/t1/memoryNamespaces/research-notes"


async def test_another_tenant_never_sees_or_deletes_the_memories(world: World) -> None:
    saved = await world.ok("memory_save", {"text": "secret tulip formula", "area": "solutions"})
    assert (await world.ok("memory_load", {"query": "secret tulip formula", "threshold": -1}, EVE))["memories"] == []
    result = await world.run("memory_delete", {"ids": [saved["id"]]}, EVE)
    assert isinstance(result, Failure)
    assert result.reason is FailureReason.TOOL_ERROR
    assert "not found" in result.message
    assert (await world.ok("memory_forget", {"query": "secret tulip formula", "threshold": -1}, EVE))["deleted"] == []
    assert saved["id"] in world.store.memories
    assert await world.access("memory_delete", {"ids": [saved["id"]]}, EVE) == []


async def test_delete_is_all_or_nothing(world: World) -> None:
    first = await world.ok("memory_save", {"text": "first fact"})
    second = await world.ok("memory_save", {"text": "second fact", "area": "fragments"})
    unknown = str(uuid.uuid4())
    result = await world.run("memory_delete", {"ids": [first["id"], unknown]})
    assert isinstance(result, Failure)
    assert unknown in result.message
    assert set(world.store.memories) == {first["id"], second["id"]}
    assert "memory_delete" not in world.commits

    deleted = await world.ok("memory_delete", {"ids": [first["id"].upper(), second["id"]]})
    assert sorted(deleted["deleted"]) == sorted([first["id"], second["id"]])
    assert world.store.memories == {}
    assert world.index.count(Space(T1, f"{ALICE.user}/memoryNamespaces/main", MODEL)) == 0
    kinds = [
        (op.kind, op.namespace, op.memory_ids) for op in world.store.operations if op.kind is MemoryOperationKind.DELETE
    ]
    assert sorted(kinds) == sorted(
        [
            (MemoryOperationKind.DELETE, f"{ALICE.user}/memoryNamespaces/main", (first["id"],)),
            (MemoryOperationKind.DELETE, f"{T1}/memoryNamespaces/fragments", (second["id"],)),
        ]
    )


async def test_forget_deletes_only_what_the_query_matches_closely(world: World) -> None:
    keep = await world.ok("memory_save", {"text": "the printer on floor three jams"})
    drop = await world.ok("memory_save", {"text": "the coffee machine is broken"})
    drop_too = await world.ok("memory_save", {"text": "coffee machine broken again", "area": "fragments"})
    forgotten = await world.ok("memory_forget", {"query": "coffee machine broken"})
    assert sorted(forgotten["deleted"]) == sorted([drop["id"], drop_too["id"]])
    assert set(world.store.memories) == {keep["id"]}
    assert world.commits[-1] == "memory_forget"
    # Nothing close enough: nothing goes.
    assert (await world.ok("memory_forget", {"query": "printer"}))["deleted"] == []
    assert set(world.store.memories) == {keep["id"]}


async def test_policy_is_asked_for_the_namespaces_each_tool_touches(world: World) -> None:
    main = f"memory_namespace:{ALICE.user}/memoryNamespaces/main"
    solutions = f"memory_namespace:{T1}/memoryNamespaces/solutions"
    fragments = f"memory_namespace:{T1}/memoryNamespaces/fragments"
    assert await world.access("memory_save", {"text": "x"}) == [Access("can_write", main)]
    assert await world.access("memory_save", {"text": "x", "area": "solutions"}) == [Access("can_write", solutions)]
    assert await world.access("memory_load", {"query": "x"}) == [
        Access("can_read", main),
        Access("can_read", fragments),
        Access("can_read", solutions),
    ]
    assert await world.access("memory_forget", {"query": "x", "areas": ["solutions"]}) == [
        Access("can_write", solutions)
    ]
    a = await world.ok("memory_save", {"text": "a", "area": "solutions"})
    b = await world.ok("memory_save", {"text": "b"})
    # Sorted by namespace name; unknown ids add nothing (the run fails on them).
    assert await world.access("memory_delete", {"ids": [a["id"], b["id"], str(uuid.uuid4())]}) == [
        Access("can_write", solutions),
        Access("can_write", main),
    ]


async def test_without_the_embedding_model_nothing_is_stored(world: World) -> None:
    world.embedder.fail = True
    result = await world.run("memory_save", {"text": "lost"})
    assert result == Failure(FailureReason.TOOL_ERROR, "the embedding model is not available; memory was not changed")
    assert world.store.memories == {}
    assert world.commits == []
    assert isinstance(await world.run("memory_forget", {"query": "lost"}), Failure)


async def test_a_failed_metadata_write_leaves_no_vector(world: World) -> None:
    world.store.fail_add = True
    result = await world.run("memory_save", {"text": "half written"})
    assert result == Failure(FailureReason.TOOL_ERROR, "the memory store cannot be reached; memory was not changed")
    assert world.index.count(Space(T1, f"{ALICE.user}/memoryNamespaces/main", MODEL)) == 0


async def test_a_vector_without_metadata_is_never_shown(world: World) -> None:
    saved = await world.ok("memory_save", {"text": "orphan candidate tulips"})
    space = Space(T1, f"{ALICE.user}/memoryNamespaces/main", MODEL)
    [vector] = await world.embedder.embed(["orphan candidate tulips"])
    await world.index.upsert(space, [VectorPoint(str(uuid.uuid4()), vector)])
    found = await world.ok("memory_load", {"query": "orphan candidate tulips"})
    assert [m["id"] for m in found["memories"]] == [saved["id"]]


async def test_recalls_are_recorded_per_namespace_and_loads_commit_nothing(world: World) -> None:
    saved = await world.ok("memory_save", {"text": "audit me", "area": "solutions"})
    world.commits.clear()
    await world.ok("memory_load", {"query": "audit me", "areas": ["solutions", "main"]})
    loads = [op for op in world.store.operations if op.kind is MemoryOperationKind.LOAD]
    assert [(op.namespace, op.memory_ids) for op in loads] == [
        (f"{T1}/memoryNamespaces/solutions", (saved["id"],)),
        (f"{ALICE.user}/memoryNamespaces/main", ()),
    ]
    assert world.commits == []
    saves = [op for op in world.store.operations if op.kind is MemoryOperationKind.SAVE]
    assert saves[0].execution.tool.endswith("/memory_save")
