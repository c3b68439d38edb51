"""The warehouse's tables: their columns, in the order the rows of svc_analytics.model carry
them, and the versioned migrations that create them.

Every table ends with the same four columns, which ingestion fills from the Kafka record:
``topic``, ``partition``, ``offset`` (where the row's event sits; the highest offset per
partition written to a table is where ingestion resumes for that table) and
``ingested_at`` (when the row became queryable; with the record's ``published_at`` it
gives the end-to-end lag). Every event table starts with ``event_id``, ``tenant``,
``event_time`` and ``session``.

Times are DateTime64 in UTC; durations are Float64 seconds (Nullable where the event may
not carry one); money is Float64 in the currency of the ``currency`` column.

Tables are plain MergeTree ordered by (tenant, event_time, event_id, ...). Ingestion writes
each event once (svc_analytics.core.ingest), so queries count rows as they are, with no FINAL
and no deduplication at read time. (Not ReplacingMergeTree: its background merges would
hide a duplicate the tests must be able to see, and a query before the merge would still
count it.)
"""

from __future__ import annotations

from dataclasses import dataclass

from svc_analytics.model import Table


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class TableSchema:
    table: Table
    # The columns a row carries, in order (not the position columns ingestion adds).
    columns: tuple[Column, ...]
    order_by: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _c(spec: str) -> tuple[Column, ...]:
    """Columns from "name Type, name Type, ..." (types may not contain commas at top level
    except inside parentheses)."""
    out: list[Column] = []
    depth, start = 0, 0
    for i, ch in enumerate(spec + ","):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            name, _, type_ = spec[start:i].strip().partition(" ")
            out.append(Column(name, type_.strip()))
            start = i + 1
    return tuple(out)


_EVENT = "event_id String, tenant LowCardinality(String), event_time DateTime64(6, 'UTC'), session String"
_LC = "LowCardinality(String)"

POSITION_COLUMNS = _c(
    "topic LowCardinality(String), partition UInt32, offset UInt64, published_at DateTime64(3, 'UTC')"
)

SCHEMAS: dict[Table, TableSchema] = {
    s.table: s
    for s in (
        # Every event (the audit trail): the envelope's fields and the Event itself, as
        # protobuf bytes, for QueryAuditEvents.
        TableSchema(
            Table.EVENTS,
            _c(f"{_EVENT}, source {_LC}, event_type {_LC}, principal_user String, trace_id String, event String"),
            "tenant, event_time, event_id",
        ),
        # ModelCallCompleted: one row per model call. cost in `currency` ("" when unpriced);
        # ttft_s is NULL for calls that do not stream; failed when failure_reason is set.
        TableSchema(
            Table.MODEL_CALLS,
            _c(
                f"{_EVENT}, source {_LC}, turn String, persona {_LC}, model {_LC}, role {_LC},"
                " tier UInt16, input_tokens UInt64, output_tokens UInt64, input_tokens_estimated Bool,"
                f" ttft_s Nullable(Float64), duration_s Float64, tokens_per_second Float64,"
                f" cost Float64, currency {_LC}, failure_reason {_LC}, failed Bool, interrupted Bool"
            ),
            "tenant, event_time, event_id",
        ),
        # TurnStarted (kind "started") and TurnCompleted (kind "completed": state, duration).
        TableSchema(
            Table.TURNS,
            _c(
                f"{_EVENT}, kind {_LC}, turn String, persona {_LC}, mode {_LC}, state {_LC},"
                f" duration_s Nullable(Float64), failure_reason {_LC}, refused Bool, refusal_reason {_LC},"
                " iterations UInt32, rerun Bool, model_calls UInt32"
            ),
            "tenant, event_time, event_id",
        ),
        # InterventionApplied.
        TableSchema(
            Table.INTERVENTIONS,
            _c(f"{_EVENT}, turn String, kind {_LC}"),
            "tenant, event_time, event_id",
        ),
        # PolicyDecided. persona: the subject when it is a persona ("" otherwise);
        # latency_s: svc_policy's time to decide (NULL for events from before it said).
        TableSchema(
            Table.POLICY_DECISIONS,
            _c(
                f"{_EVENT}, subject String, persona {_LC}, relation {_LC}, object_type {_LC},"
                f" object String, verdict {_LC}, reason {_LC}, cached Bool, latency_s Nullable(Float64)"
            ),
            "tenant, event_time, event_id",
        ),
        # ToolCompleted: the execution as it ended. duration_s from start to end (NULL when
        # it never started); failure_reason is the ToolFailure reason name, "" on success;
        # limit_hit: the sandbox stopped it (RESOURCE_LIMIT, TIMEOUT or SANDBOX_VIOLATION).
        TableSchema(
            Table.TOOL_EXECUTIONS,
            _c(
                f"{_EVENT}, execution String, tool {_LC}, persona {_LC}, turn String, state {_LC},"
                f" verdict {_LC}, reason {_LC}, succeeded Bool, failure_reason {_LC},"
                " duration_s Nullable(Float64), wait_s Nullable(Float64), limit_hit Bool"
            ),
            "tenant, event_time, event_id",
        ),
        # MemoryOperation.
        TableSchema(
            Table.MEMORY_OPERATIONS,
            _c(f"{_EVENT}, kind {_LC}, namespace {_LC}, memories UInt32, execution String, turn String"),
            "tenant, event_time, event_id",
        ),
        # ActionBlocked (kind "blocked") and ActionResolved (kind "resolved"). wait_s: from
        # the action's creation to this change, set when it leaves PENDING.
        TableSchema(
            Table.BLOCKED_ACTIONS,
            _c(
                f"{_EVENT}, kind {_LC}, action String, state {_LC}, previous_state {_LC},"
                f" relation {_LC}, object String, persona {_LC}, wait_s Nullable(Float64), expired Bool"
            ),
            "tenant, event_time, event_id",
        ),
        # AudioQualityMeasured: NULL where not measured.
        TableSchema(
            Table.AUDIO_QUALITY,
            _c(
                f"{_EVENT}, voice_stream String, turn String, persona {_LC}, recognizer {_LC}, voice {_LC},"
                " word_error_rate Nullable(Float64), mean_opinion_score Nullable(Float64),"
                " recognition_latency_s Nullable(Float64), response_latency_s Nullable(Float64),"
                " synthesis_latency_s Nullable(Float64)"
            ),
            "tenant, event_time, event_id",
        ),
        # ModelProfileScored: one row per model scored.
        TableSchema(
            Table.MODEL_SCORES,
            _c(
                f"{_EVENT}, role {_LC}, model {_LC}, score Float64, quality Float64, reliability Float64,"
                f" latency_s Nullable(Float64), cost_per_million Float64, currency {_LC},"
                " sample_count UInt64, recommended Bool, applied Bool"
            ),
            "tenant, event_time, event_id, model",
        ),
        # Records that are not events (also sent to the dead-letter topic).
        TableSchema(
            Table.DEAD_LETTERS,
            _c(f"reason {_LC}, detail String, key String, value String"),
            "topic, partition, offset",
        ),
    )
}


def _create(schema: TableSchema) -> str:
    columns = ",\n  ".join(f"`{c.name}` {c.type}" for c in (*schema.columns, *POSITION_COLUMNS))
    partition = "toYYYYMM(published_at)" if schema.table is Table.DEAD_LETTERS else "toYYYYMM(event_time)"
    return (
        f"CREATE TABLE IF NOT EXISTS {schema.table.value} (\n  {columns},\n"
        "  `ingested_at` DateTime64(3, 'UTC') DEFAULT now64(3)\n)"
        f" ENGINE = MergeTree PARTITION BY {partition} ORDER BY ({schema.order_by})"
        # A killed process loses nothing acknowledged: ingestion commits Kafka offsets only
        # after the insert returns, so the part must be on disk by then.
        " SETTINGS fsync_after_insert = 1, fsync_part_directory = 1"
    )


# (version, statements). Append only: a deployed warehouse applies what it has not yet.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, tuple(_create(s) for s in SCHEMAS.values())),)
