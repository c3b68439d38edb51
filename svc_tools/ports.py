"""What svc_tools's core needs from the world, as protocols its adapters implement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from skm_runtime.access import AccessCheck, Approval, Decision, Outcome, Principal
from svc_tools.model import (
    Access,
    Change,
    Chunk,
    Document,
    Execution,
    Hit,
    HoldRequest,
    Memory,
    MemoryOperation,
    Result,
    SandboxJob,
    SandboxOutcome,
    Space,
    Stream,
    VectorPoint,
)


class ExecutionStore(Protocol):
    """Durable executions (Postgres), each driven by at most one process at a time.

    A process drives an execution while it holds its lease (renewed by `renew`); a lease
    that ran out lets another process take the execution over. Every write that moves an
    execution into a terminal state also writes its ToolCompleted audit event, in the same
    transaction; `create` writes ToolRequested for direct runs (no turn).
    Raises `skm_runtime.errors.ServiceUnavailable` when the database cannot be reached.
    """

    async def create(self, execution: Execution, driver: str) -> tuple[Execution, bool]:
        """Insert it, driven by `driver`; when its (tenant, request_id) exists already,
        return the stored one and False instead."""
        ...

    async def get(self, name: str) -> Execution | None: ...

    async def take(self, name: str, driver: str) -> Execution | None:
        """Become the driver of a non-terminal execution that nobody drives (no driver,
        or the driver's lease ran out). None when it is driven or finished."""
        ...

    async def save(self, before: Execution, after: Execution, driver: str) -> bool:
        """Write `after` only if the stored state is still `before.state` and `driver`
        still drives it. A terminal `after` ends the drive. False if it changed."""
        ...

    async def release(self, name: str, driver: str) -> None:
        """Stop driving a non-terminal execution, so that any process may take it."""
        ...

    async def renew(self, driver: str, names: Sequence[str]) -> None:
        """Extend `driver`'s lease on the named executions (those it drives right now)."""
        ...

    async def orphans(self, limit: int) -> list[Execution]:
        """Executions waiting for approval or running whose driver is gone."""
        ...

    async def unreported(self, limit: int) -> list[Execution]:
        """Finished executions whose claimed blocked action was not completed yet."""
        ...

    async def mark_reported(self, name: str) -> None: ...

    async def request_cancel(self, name: str) -> None:
        """Record that a caller wants the execution stopped, and tell its driver."""
        ...

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[Change]]:
        """Executions as they change (or are asked to stop), in every process."""
        ...


class PolicyGate(Protocol):
    """svc_policy: checks, the hold of runs that need approval, and the shared
    hold -> wait -> claim -> complete protocol (skm_runtime.held_actions).

    `check`, `hold` and `cancel` raise `svc_tools.errors.PolicyUnavailable` when svc_policy
    cannot be reached or answers with an error: callers fail closed.
    """

    async def check(self, checks: Sequence[AccessCheck], principal: Principal) -> list[Decision]:
        """One decision per check, in order; nothing is held."""
        ...

    async def hold(self, check: AccessCheck, principal: Principal, hold: HoldRequest, execution: Execution) -> Decision:
        """Check again and, on REQUIRES_APPROVAL, hold `execution` as the blocked action's
        payload; retrying with the same hold.request_id returns the same blocked action."""
        ...

    async def approval(self, blocked_action: str, claim_id: str) -> Approval:
        """Wait for the operator's decision (across lost streams and restarts of svc_policy)
        and claim an approved action with `claim_id` before answering CLAIMED (again
        CLAIMED for a claim made before; TAKEN when another claim id has it)."""
        ...

    async def complete(self, blocked_action: str, claim_id: str, outcome: Outcome) -> None:
        """Report the outcome of a claimed action (idempotent); one svc_policy cannot take
        now is kept durably and reported again in the background."""
        ...

    async def cancel(self, blocked_action: str) -> None:
        """Withdraw a PENDING action; one resolved already is left as it is."""
        ...


OutputSink = Callable[[Stream, bytes], None]


class Sandbox(Protocol):
    """Runs untrusted code in isolation: no network, a read-only system, a private work
    dir, resource limits, a wall-clock timeout, capped output, and no process left behind.

    `run` streams output to `sink` as it is produced and returns how the run ended.
    Cancelling the awaiting task stops the sandbox at once (every process of it killed)
    before the cancellation propagates.
    """

    async def run(self, job: SandboxJob, sink: OutputSink) -> SandboxOutcome: ...


class Embedder(Protocol):
    """Turns texts into vectors of `dimensions` floats with the model named `model`.

    Raises `svc_tools.errors.EmbeddingUnavailable` when the model cannot answer.
    """

    @property
    def model(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


class VectorIndex(Protocol):
    """Vectors by space (Qdrant): points are ids with a vector, searched by cosine similarity.

    Only ids and vectors live here; what they stand for lives in the metadata stores, which
    are the truth: a vector whose metadata is gone is never shown. Raises
    `skm_runtime.errors.ServiceUnavailable` when the index cannot be used.
    """

    async def upsert(self, space: Space, points: Sequence[VectorPoint]) -> None: ...

    async def search(
        self, spaces: Sequence[Space], vector: Sequence[float], *, threshold: float, limit: int
    ) -> list[Hit]:
        """The `limit` nearest points of all `spaces` together with score >= threshold,
        best first."""
        ...

    async def delete(self, space: Space, ids: Sequence[str]) -> None:
        """Remove these points (ids that are not there are ignored)."""
        ...


class MemoryStore(Protocol):
    """Memories' metadata and text (Postgres), with their audit events (outbox).

    Raises `skm_runtime.errors.ServiceUnavailable` when the database cannot be reached.
    """

    async def add(self, memory: Memory, operation: MemoryOperation) -> None: ...

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        """The tenant's memories among `ids` (others' and unknown ids are left out)."""
        ...

    async def remove(self, tenant: str, ids: Sequence[str], operations: Sequence[MemoryOperation]) -> list[Memory]:
        """Delete the tenant's memories among `ids` and record `operations`; returns what
        was deleted."""
        ...

    async def record(self, operations: Sequence[MemoryOperation]) -> None:
        """Record operations that changed nothing (recalls), together."""
        ...


class KnowledgeStore(Protocol):
    """Knowledge-base documents and their chunks' text (Postgres).

    Raises `skm_runtime.errors.ServiceUnavailable` when the database cannot be reached.
    """

    async def find(self, knowledge_base: str, sha256: str) -> Document | None:
        """The document of this knowledge base whose content has this digest."""
        ...

    async def add(self, document: Document, chunks: Sequence[Chunk]) -> tuple[Document, bool]:
        """Store both; when a document with the same digest was stored meanwhile, store
        nothing and return that one and False."""
        ...

    async def get(self, name: str) -> Document | None: ...

    async def page(self, knowledge_base: str, after: tuple[datetime, str] | None, limit: int) -> list[Document]:
        """Documents newest first (by create_time, then name), starting after `after`."""
        ...

    async def remove(self, name: str) -> tuple[Document, list[str]] | None:
        """Delete a document and its chunks; returns it and its chunks' ids."""
        ...

    async def chunks(self, tenant: str, ids: Sequence[str]) -> list[tuple[Chunk, Document]]:
        """The tenant's chunks among `ids`, with their documents."""
        ...


Progress = Callable[[str], None]


class ToolRunner(Protocol):
    """Runs the tools other than code_execution for the core (memory, knowledge).

    `access` says what policy must allow besides can_execute on the tool (asked for the
    user and the persona alike, before anything runs). `run` does the work and returns the
    single result; expected failures are Failure results, not exceptions. Before it changes
    anything it calls `committing()`: from then on the run is not cancelled, so that a
    result never says CANCELLED about a change that was made.
    """

    tool_ids: tuple[str, ...]

    async def access(self, execution: Execution) -> list[Access]: ...

    async def run(self, execution: Execution, progress: Progress, committing: Callable[[], None]) -> Result: ...
