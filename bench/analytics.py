"""svc_analytics measured: ingestion from Kafka into ClickHouse, and QueryMetrics on 10 million
generated rows, one run.

Ingestion, on a stack of Kafka alone and one svc_analytics process (the stack's environment;
its warehouse embedded, chdb, in a fresh folder; batches as deployed: 10,000 records or 1 s):
  drain   --events ModelCallCompleted events (default 300,000; realistic values, 8 tenants,
          keyed by session as the outbox relays publish them) are produced into "audit" (3
          partitions) before the service starts, by a process of their own (aiokafka, acks=all,
          idempotent, as the relays). Then the service starts and drains them. Sustained
          events/s: the events written after its first batch over the time from that batch to
          the last (the events table's `ingested_at`); from its start: all of them over the
          time from the process's spawn to the last.
  lag     then, the service running, a producer process offers 5,000 and then 20,000 events/s
          for --lag-seconds each (default 20; values made before its clock starts). An event's
          lag: `ingested_at` (when its row was inserted, so queryable) less `published_at` (the
          Kafka record's timestamp, set by the producer as it sends): produce -> queryable.
          p50, p99 and max per offered rate. The service kept up when the phase's last event
          was queryable within the lag goal (2 s) of the producer's last send.
  CPU     the service's CPU (every thread, /proc schedstat) per event over each phase, split by
          thread: the event loop (Kafka reads, decoding protobuf, the ingestion), the other
          Python threads (the warehouse writer: clickhouse-connect's insert) and the native
          threads (ClickHouse's own, gRPC's few); the broker's too (it shares the cores).
Every figure is read from the warehouse after the service stopped (chdb: one process per data
folder), by a short-lived process through the service's own adapter; while it runs, the
committed offsets of its consumer group (skm-analytics, committed once a batch is durable)
tell when it is done.

QueryMetrics, on --rows (default 10,000,000) GENERATED model-call rows: an INSERT ... SELECT
FROM numbers(N), in a short-lived process, into a chdb folder whose tables the service's own
migrations made. One tenant; event_time uniform over the 30 days before the current hour;
4 models, 80 % PRIMARY calls, 2 % failed, TTFT log-normal around 0.4 s; and a turn (started +
completed rows) per 4 model calls. Each table is inserted as one block: one part a month, as
after the background merges, so that none runs while the queries are measured (the
generating process peaks near 7 GB at 10 million rows). svc_analytics then starts on that
folder (ingesting an empty topic) and is called over gRPC on its own port with a principal
signed with the mesh key (as services call each other: no admission, no policy check):
TIME_TO_FIRST_TOKEN P99, MODEL_COST SUM by MODEL and TURNS COUNT over the 30 days in 1-hour
buckets (720 a series), each --queries times (default 30) after 3 warm-up calls, in turn.
With 30 calls, p99 is the slowest. Where svc_analytics does not serve QueryMetrics
(UNIMPLEMENTED), the same three questions are asked as SQL through the service's warehouse
adapter (ClickHouseWarehouse.query) in a process of its own, and the output says so.

Everything shares this machine's cores: Kafka (a JVM), the producer, the service, the bench.
No figure is asserted; each is printed next to its goal.

Usage: python -m bench analytics [--events N] [--rows N] [--lag-seconds S]
       python -m bench.analytics [--events N] [--rows N] [--lag-seconds S] [--queries N]
(`produce`, `generate`, `read` and `sql` are the roles of its child processes.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.measure import bench_services, process_tree
from skm.analytics.v1 import analytics_service_pb2 as pb
from skm.analytics.v1 import analytics_service_pb2_grpc, metrics_pb2
from skm.events.v1 import event_pb2
from skm.type.v1 import model_pb2, principal_pb2
from skm_runtime.outbox import closed, ensure_topics
from skm_runtime.principal import configure_mesh_key, principal_message, principal_metadata
from skm_stack import EPHEMERAL_PORTS, RunningStack, Stack
from svc_analytics.adapters.clickhouse import ClickHouseWarehouse
from svc_analytics.adapters.schema import POSITION_COLUMNS, SCHEMAS
from svc_analytics.model import Table
from svc_analytics.settings import PLATFORM_TOPICS, AnalyticsSettings

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "audit"
IDLE_TOPIC = "bench.analytics.idle"  # what the service ingests while its queries are measured
DEPLOYED = AnalyticsSettings()  # the service's defaults, which the bench keeps
GROUP = DEPLOYED.consumer_group
RATES = (5_000, 20_000)
TENANTS = 8
SESSIONS_PER_TENANT = 250
THROUGHPUT_GOAL = 20_000.0  # events/s
LAG_GOAL_S = 2.0
QUERY_GOAL_MS = 300.0
DAYS = 30
BUCKET_S = 3600
WARM_UP = 3
QUERY_TENANT = "tenants/bench"
MODELS = (  # name, cost per million input and output tokens (USD)
    ("models/qwen2.5-7b-instruct", 0.15, 0.60),
    ("models/llama-3.1-8b-instruct", 0.18, 0.72),
    ("models/mistral-small-24b", 0.40, 1.60),
    ("models/phi-3.5-mini", 0.05, 0.20),
)
_DONE_TIMEOUT_S = 900.0
SENDING = b"sending"  # what a producer prints as its clock starts (its values made)


# -- the producer (a process of its own) --------------------------------------------------


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _model_calls(count: int, label: str, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """`count` ModelCallCompleted events as svc_conversation's audit adapter writes them, with
    their keys (the session's name), over TENANTS tenants named "tenants/<label>-<i>"."""
    tenants = [f"tenants/{label}-{i}" for i in range(TENANTS)]
    sessions = [[f"{t}/sessions/{_uuid(rng)}" for _ in range(SESSIONS_PER_TENANT)] for t in tenants]
    now = time.time()
    out = []
    for i in range(count):
        t = i % TENANTS
        tenant, session = tenants[t], rng.choice(sessions[t])
        model, per_in, per_out = rng.choice(MODELS)
        event = event_pb2.Event(
            event_id=_uuid(rng),
            tenant=tenant,
            session=session,
            trace_id=f"{rng.getrandbits(128):032x}",
            source="conversation",
            principal=principal_pb2.Principal(
                tenant=tenant, user=f"{tenant}/users/u{rng.randrange(50)}", roles=[principal_pb2.ROLE_MEMBER]
            ),
        )
        event.event_time.FromNanoseconds(int((now - rng.random()) * 1e9))
        call = event.model_call_completed
        call.turn = f"{session}/turns/{rng.randrange(1, 40)}"
        call.persona = f"{tenant}/personas/assistant"
        usage = call.usage
        usage.model = model
        usage.role = model_pb2.MODEL_ROLE_PRIMARY if rng.random() < 0.8 else model_pb2.MODEL_ROLE_PRE_SLM
        usage.tier = 0 if rng.random() < 0.95 else 1
        usage.input_tokens = rng.randrange(200, 6000)
        usage.output_tokens = rng.randrange(10, 900)
        ttft = rng.lognormvariate(-0.9, 0.6)
        speed = rng.uniform(20.0, 90.0)
        usage.time_to_first_token.FromNanoseconds(int(ttft * 1e9))
        usage.duration.FromNanoseconds(int((ttft + usage.output_tokens / speed) * 1e9))
        usage.tokens_per_second = speed
        cost = (usage.input_tokens * per_in + usage.output_tokens * per_out) / 1e6
        usage.cost.currency_code = "USD"
        usage.cost.nanos = int(cost * 1e9)
        if rng.random() < 0.02:
            call.failure_reason = "TIMEOUT"
        out.append((session.encode(), event.SerializeToString()))
    return out


async def _produce(bootstrap: str, count: int, rate: float, label: str) -> dict[str, float]:
    """Sends `count` events into TOPIC, at `rate` a second (0: as fast as it can)."""
    records = _model_calls(count, label, random.Random(label))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        print(SENDING.decode(), flush=True)
        started, cpu = time.time(), time.process_time()
        sent = 0
        while sent < count:
            due = count if not rate else min(count, int((time.time() - started) * rate) + 1)
            for key, value in records[sent:due]:
                pending.append(await producer.send(TOPIC, value=value, key=key))
            sent = max(sent, due)
            if len(pending) >= 20_000:
                await asyncio.gather(*pending[:10_000])
                del pending[:10_000]
            if rate:
                await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
        last = time.time()
    finally:
        await closed(producer.stop())
    return {
        "sent": count,
        "started": started,
        "last": last,
        "rate": count / (last - started),
        "cpu_s": time.process_time() - cpu,
        "bytes": sum(len(v) for _, v in records) / count,
    }


# -- the generated warehouse (a process of its own) ---------------------------------------

_MODEL_CALL_COLUMNS = {
    "event_id": "toString(generateUUIDv4(number))",
    "tenant": "{tenant:String}",
    "event_time": "fromUnixTimestamp64Micro(toInt64({start_us:Int64} + rand64(1) % {span_us:UInt64}), 'UTC')",
    "session": "concat({tenant:String}, '/sessions/', lower(hex(sipHash64(intDiv(number, 40)))))",
    "source": "'conversation'",
    "turn": "concat({tenant:String}, '/sessions/', lower(hex(sipHash64(intDiv(number, 40)))), '/turns/',"
    " toString(intDiv(number % 40, 4) + 1))",
    "persona": "concat({tenant:String}, '/personas/', ['assistant', 'support', 'coder'][1 + rand(2) % 3])",
    "model": "{models:Array(String)}[1 + rand(3) % {model_count:UInt32}]",
    "role": "if(rand(4) % 10 < 8, 'PRIMARY', 'PRE_SLM')",
    "tier": "if(rand(5) % 20 = 0, 1, 0)",
    "input_tokens": "200 + rand(6) % 5800",
    "output_tokens": "10 + rand(7) % 890",
    "input_tokens_estimated": "rand(8) % 3 = 0",
    "ttft_s": "randLogNormal(-0.9, 0.6)",
    "duration_s": "ttft_s + output_tokens / tokens_per_second",
    "tokens_per_second": "20 + rand(9) % 70",
    "cost": "(input_tokens * 0.15 + output_tokens * 0.6) / 1e6",
    "currency": "'USD'",
    "failure_reason": "if(rand(10) % 50 = 0, 'TIMEOUT', '')",
    "failed": "failure_reason != ''",
    "interrupted": "rand(11) % 100 = 0",
}
_TURN_COLUMNS = {
    "event_id": "toString(generateUUIDv4(number))",
    "tenant": "{tenant:String}",
    "event_time": "fromUnixTimestamp64Micro(toInt64({start_us:Int64} + rand64(1) % {span_us:UInt64}), 'UTC')",
    "session": "concat({tenant:String}, '/sessions/', lower(hex(sipHash64(intDiv(number, 20)))))",
    "kind": "if(number % 2 = 0, 'started', 'completed')",
    "turn": "concat(session, '/turns/', toString(intDiv(number % 20, 2) + 1))",
    "persona": "concat({tenant:String}, '/personas/assistant')",
    "mode": "'DEVELOPER'",
    "state": "if(kind = 'started', 'RUNNING', if(rand(2) % 25 = 0, 'REFUSED', 'COMPLETED'))",
    "duration_s": "if(kind = 'started', NULL, 0.5 + randExponential(0.3))",
    "failure_reason": "''",
    "refused": "state = 'REFUSED'",
    "refusal_reason": "if(refused, 'POLICY', '')",
    "iterations": "1 + rand(3) % 3",
    "rerun": "false",
    "model_calls": "if(kind = 'started', 0, 4)",
}
_POSITION_VALUES = {
    "topic": "'audit'",
    "partition": "number % 3",
    "offset": "number",
    "published_at": "event_time",
}


def _insert(table: Table, expressions: Mapping[str, str], rows: int) -> str:
    """INSERT of `rows` generated rows into `table`, every column of adapters.schema given
    (a column the schema gained and this bench does not know fails here, not silently)."""
    names = (*SCHEMAS[table].names, *(c.name for c in POSITION_COLUMNS))
    values = {**expressions, **_POSITION_VALUES}
    missing = [n for n in names if n not in values]
    if missing:
        raise RuntimeError(f"the bench generates no value for {table.value} columns {missing}")
    select = ", ".join(f"{values[n]} AS {n}" for n in names)
    # One block, so one part per month: a warehouse whose background merges are done, not
    # one that merges while its queries are measured.
    return (
        f"INSERT INTO {table.value} ({', '.join(names)}) SELECT {select} FROM numbers({rows})"
        f" SETTINGS min_insert_block_size_rows = {rows + 1}, min_insert_block_size_bytes = 0"
    )


def _range() -> tuple[datetime, datetime]:
    """The 30 days before the current hour."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(days=DAYS), end


async def _migrate(folder: str) -> None:
    """The service's tables, made by its own migrations."""
    warehouse = await ClickHouseWarehouse.open(f"chdb://{folder}")
    await warehouse.close()


def _generate(folder: str, rows: int) -> dict[str, float]:
    """The service's tables, then `rows` model calls and rows // 2 turn rows (a turn, started
    and completed, per 4 model calls)."""
    asyncio.run(_migrate(folder))
    client = clickhouse_connect.get_client(dsn=f"chdb://{Path(folder).resolve()}")
    start, end = _range()
    parameters = {
        "tenant": QUERY_TENANT,
        "start_us": int(start.timestamp() * 1e6),
        "span_us": int((end - start).total_seconds() * 1e6),
        "models": [m for m, _, _ in MODELS],
        "model_count": len(MODELS),
    }
    began = time.perf_counter()
    client.command(_insert(Table.MODEL_CALLS, _MODEL_CALL_COLUMNS, rows), parameters=parameters)
    client.command(_insert(Table.TURNS, _TURN_COLUMNS, rows // 2), parameters=parameters)
    seconds = time.perf_counter() - began
    counts = {
        table: int(client.query(f"SELECT count() FROM {table}").result_rows[0][0]) for table in ("model_calls", "turns")
    }
    return {"seconds": seconds, "model_calls": counts["model_calls"], "turns": counts["turns"]}


# -- reading the warehouse after a run (a process of its own) -----------------------------

_LAG_SQL = """
SELECT splitByChar('-', splitByChar('/', tenant)[2])[1] AS label, count(), uniqExact(event_id),
  quantileExact(0.5)(lag_ms), quantileExact(0.99)(lag_ms), max(lag_ms),
  toUnixTimestamp64Milli(min(published_at)), toUnixTimestamp64Milli(max(published_at)),
  toUnixTimestamp64Milli(min(ingested_at)), toUnixTimestamp64Milli(max(ingested_at)), uniqExact(ingested_at)
FROM (SELECT tenant, event_id, published_at, ingested_at,
        toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(published_at) AS lag_ms FROM events)
GROUP BY label
"""
# _LAG_SQL's columns after the label; "inserts": distinct insert times, i.e. batches.
_LAG_COLUMNS = (
    "rows",
    "ids",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "published_first",
    "published_last",
    "ingested_first",
    "ingested_last",
    "inserts",
)
_FIRST_BATCH_SQL = """
SELECT count() FROM events WHERE tenant LIKE 'tenants/backlog-%'
  AND ingested_at = (SELECT min(ingested_at) FROM events WHERE tenant LIKE 'tenants/backlog-%')
"""


async def _read(folder: str) -> dict[str, Any]:
    warehouse = await ClickHouseWarehouse.open(f"chdb://{folder}")
    try:
        labels = {}
        for row in await warehouse.query(_LAG_SQL):
            label, *numbers = row
            labels[str(label)] = dict(zip(_LAG_COLUMNS, (float(n) for n in numbers), strict=True))
        first_batch = int((await warehouse.query(_FIRST_BATCH_SQL))[0][0])
        model_calls = int((await warehouse.query("SELECT count() FROM model_calls"))[0][0])
    finally:
        await warehouse.close()
    return {"labels": labels, "first_batch": first_batch, "model_calls": model_calls}


# -- the three questions as SQL (while svc_analytics does not serve QueryMetrics) ----------

_BUCKET = "intDiv(toUnixTimestamp64Milli(event_time) - {start_ms:Int64}, {width_ms:Int64})"
_WHERE = (
    "tenant = {tenant:String} AND event_time >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')"
    " AND event_time < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')"
)
_SQL = {
    "ttft_p99": f"SELECT {_BUCKET} AS b, quantileExact(0.99)(ttft_s), count() FROM model_calls"
    f" WHERE {_WHERE} AND role = 'PRIMARY' AND ttft_s IS NOT NULL GROUP BY b ORDER BY b",
    "cost_by_model": f"SELECT model, currency, {_BUCKET} AS b, sum(cost), count() FROM model_calls"
    f" WHERE {_WHERE} AND currency != '' GROUP BY model, currency, b ORDER BY model, currency, b",
    "turns_count": f"SELECT {_BUCKET} AS b, count(), count() FROM turns WHERE {_WHERE} AND kind = 'started'"
    " GROUP BY b ORDER BY b",
}


async def _sql(folder: str, calls: int) -> dict[str, Any]:
    start, end = _range()
    parameters = {
        "tenant": QUERY_TENANT,
        "start_ms": int(start.timestamp() * 1000),
        "end_ms": int(end.timestamp() * 1000),
        "width_ms": BUCKET_S * 1000,
    }
    warehouse = await ClickHouseWarehouse.open(f"chdb://{folder}")
    times: dict[str, list[float]] = {name: [] for name in _SQL}
    samples: dict[str, int] = {}
    try:
        for index in range(WARM_UP + calls):
            for name, sql in _SQL.items():
                began = time.perf_counter()
                rows = await warehouse.query(sql, parameters)
                if index >= WARM_UP:
                    times[name].append(time.perf_counter() - began)
                samples[name] = sum(int(r[-1]) for r in rows)
    finally:
        await warehouse.close()
    return {"times": times, "samples": samples}


# -- the parent: child processes ----------------------------------------------------------


async def _child(*args: str, on_sending: Callable[[], None] | None = None) -> dict[str, Any]:
    """Runs `python -m bench.analytics <args>` and returns the JSON it prints last;
    `on_sending` is called when it prints SENDING (a producer whose clock starts)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.analytics", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None  # piped above
    last = b""
    while line := await proc.stdout.readline():
        if line.strip() == SENDING and on_sending is not None:
            on_sending()
        last = line
    if await proc.wait():
        raise RuntimeError(f"`python -m bench.analytics {' '.join(args)}` failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(last)
    return result


async def _committed(admin: AIOKafkaAdminClient) -> int:
    """Records of TOPIC that the service's group has committed (written to the warehouse)."""
    offsets = await admin.list_consumer_group_offsets(GROUP)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC and meta.offset > 0)


async def _until_committed(admin: AIOKafkaAdminClient, total: int, what: str) -> float:
    """Waits until the group has committed `total` records of TOPIC; the time.time() then."""
    deadline = time.monotonic() + _DONE_TIMEOUT_S
    said = time.monotonic()
    while True:
        done = await _committed(admin)
        if done >= total:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {done} of {total} events written after {_DONE_TIMEOUT_S:.0f} s")
        if time.monotonic() - said > 10:
            print(f"  {what}: {done:,} of {total:,} events written ...", file=sys.stderr, flush=True)
            said = time.monotonic()
        await asyncio.sleep(0.1)


# -- CPU, by kind of thread ---------------------------------------------------------------


def _comm(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/comm") as f:
        return f.read().strip()


def _thread_cpu(root: int) -> dict[str, float]:
    """CPU seconds the threads of `root` (and of the processes below it) have run, by kind:
    "event loop" (each process's main thread), "Python threads" (threads that kept the
    process's name: thread pools, the warehouse writer) and "native threads" (threads that
    named themselves: ClickHouse's, and gRPC's few)."""
    out: dict[str, float] = {}
    for pid in process_tree(root):
        try:
            main = _comm(pid, pid)
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    seconds = int(f.read().split()[0]) / 1e9
                name = _comm(pid, tid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended while listed
            kind = "event loop" if tid == pid else "Python threads" if name == main else "native threads"
            out[kind] = out.get(kind, 0.0) + seconds
    return out


def _spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {kind: seconds - before.get(kind, 0.0) for kind, seconds in after.items()}


@dataclass(frozen=True)
class _Phase:
    """CPU seconds (by kind of thread) of the service and of Kafka, over `events` and `seconds`."""

    events: int
    seconds: float
    service: Mapping[str, float]
    kafka: float


class _Meter:
    def __init__(self, service: int, kafka: int) -> None:
        self._service, self._kafka = service, kafka

    def read(self) -> tuple[dict[str, float], float, float]:
        kafka = sum(_thread_cpu(self._kafka).values())
        return _thread_cpu(self._service), kafka, time.perf_counter()

    def since(self, before: tuple[dict[str, float], float, float], events: int) -> _Phase:
        service, kafka, now = self.read()
        return _Phase(events, now - before[2], _spent(before[0], service), kafka - before[1])


# -- the ingestion run --------------------------------------------------------------------


@dataclass(frozen=True)
class _Ingestion:
    backlog: dict[str, float]
    offered: dict[int, dict[str, float]]
    spawned: float
    warehouse: dict[str, Any]
    phases: dict[str, _Phase]


async def _ingestion(stack: RunningStack, events: int, lag_seconds: float) -> _Ingestion:
    bootstrap = stack.kafka_bootstrap
    if stack.kafka is None:
        raise RuntimeError("the stack runs no Kafka")
    await ensure_topics(bootstrap, (*PLATFORM_TOPICS, DEPLOYED.dead_letter_topic, IDLE_TOPIC))
    print(f"producing a backlog of {events:,} events ...", file=sys.stderr, flush=True)
    backlog = await _child("produce", bootstrap, str(events), "0", "backlog")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    phases: dict[str, _Phase] = {}
    offered: dict[int, dict[str, float]] = {}
    try:
        spawned = time.time()
        stack.start_services(bench_services({}, ("analytics",)))
        service = stack.services["analytics"]
        meter = _Meter(service.process.pid, stack.kafka.process.pid)
        try:
            before, done = meter.read(), await _committed(admin)
            await _until_committed(admin, events, "drain")
            phases["drain"] = meter.since(before, events - done)
            total = events
            # Each phase from its producer's first send: not while it makes its values.
            readings: list[tuple[dict[str, float], float, float]] = []
            for rate in RATES:
                count = int(rate * lag_seconds)
                print(f"offering {rate:,} events/s for {lag_seconds:.0f} s ...", file=sys.stderr, flush=True)
                offered[rate] = await _child(
                    "produce",
                    bootstrap,
                    str(count),
                    str(rate),
                    f"rate{rate}",
                    on_sending=lambda: readings.append(meter.read()),
                )
                before = readings[-1]
                total += count
                await _until_committed(admin, total, f"{rate:,}/s")
                phases[f"rate{rate}"] = meter.since(before, count)
        finally:
            service.stop()
    finally:
        await closed(admin.close())
    # The service's warehouse is where the stack puts every service's (service_env).
    folder = stack.service_env()["SKM_ANALYTICS_WAREHOUSE_URL"].removeprefix("chdb://")
    warehouse = await _child("read", folder)
    return _Ingestion(backlog, offered, spawned, warehouse, phases)


# -- the query run ------------------------------------------------------------------------


def _requests() -> dict[str, tuple[str, pb.QueryMetricsRequest]]:
    start, end = _range()

    def request(metric: int, aggregation: int, group_by: Sequence[int] = ()) -> pb.QueryMetricsRequest:
        message = pb.QueryMetricsRequest(
            parent=QUERY_TENANT,
            queries=[pb.MetricQuery(metric=metric, aggregation=aggregation)],  # type: ignore[arg-type]  # enum values
            group_by=group_by,  # type: ignore[arg-type]  # enum values
        )
        message.start_time.FromDatetime(start)
        message.end_time.FromDatetime(end)
        message.bucket_width.FromSeconds(BUCKET_S)
        return message

    return {
        "ttft_p99": (
            "TIME_TO_FIRST_TOKEN P99",
            request(metrics_pb2.METRIC_TIME_TO_FIRST_TOKEN, metrics_pb2.AGGREGATION_P99),
        ),
        "cost_by_model": (
            "MODEL_COST SUM by MODEL",
            request(metrics_pb2.METRIC_MODEL_COST, metrics_pb2.AGGREGATION_SUM, [metrics_pb2.DIMENSION_MODEL]),
        ),
        "turns_count": ("TURNS COUNT", request(metrics_pb2.METRIC_TURNS, metrics_pb2.AGGREGATION_COUNT)),
    }


@dataclass(frozen=True)
class _Queries:
    generated: dict[str, float]
    through: str  # "grpc" or "sql"
    times: dict[str, list[float]]
    samples: dict[str, int]
    series: dict[str, tuple[int, int]]  # series, points of one answer


async def _grpc_queries(addr: str, calls: int, mesh_key: Path) -> _Queries | None:
    """QueryMetrics over gRPC; None when the service does not serve it yet."""
    configure_mesh_key(mesh_key)
    metadata = principal_metadata(principal_message(QUERY_TENANT, f"{QUERY_TENANT}/users/operator", ("operator",)))
    requests = _requests()
    times: dict[str, list[float]] = {name: [] for name in requests}
    samples: dict[str, int] = {}
    series: dict[str, tuple[int, int]] = {}
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        for index in range(WARM_UP + calls):
            for name, (_, request) in requests.items():
                began = time.perf_counter()
                try:
                    reply = await stub.QueryMetrics(request, metadata=metadata, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return None
                    raise
                if index >= WARM_UP:
                    times[name].append(time.perf_counter() - began)
                samples[name] = sum(p.sample_count for s in reply.series for p in s.points)
                series[name] = (len(reply.series), sum(len(s.points) for s in reply.series))
    return _Queries({}, "grpc", times, samples, series)


async def _queries(stack: RunningStack, rows: int, calls: int) -> _Queries:
    folder = str(stack.state_dir / "analytics" / "chdb-generated")
    print(f"generating {rows:,} model-call rows ...", file=sys.stderr, flush=True)
    generated = await _child("generate", folder, str(rows))
    env = {"SKM_ANALYTICS_WAREHOUSE_URL": f"chdb://{folder}", "SKM_ANALYTICS_TOPICS": IDLE_TOPIC}
    stack.start_services(bench_services({"analytics": env}, ("analytics",)))
    service = stack.services["analytics"]
    try:
        print(f"QueryMetrics, {WARM_UP} + {calls} calls each ...", file=sys.stderr, flush=True)
        answered = await _grpc_queries(service.addr, calls, stack.mesh_key_file)
    finally:
        service.stop()
    if answered is not None:
        return _Queries(generated, "grpc", answered.times, answered.samples, answered.series)
    print("QueryMetrics is UNIMPLEMENTED: the same questions as SQL ...", file=sys.stderr, flush=True)
    asked = await _child("sql", folder, str(calls))
    return _Queries(generated, "sql", asked["times"], asked["samples"], {})


# -- the report ---------------------------------------------------------------------------


def _ms(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def _us(phase: _Phase, seconds: float) -> float:
    return seconds / phase.events * 1e6 if phase.events else float("nan")


def _report(ingestion: _Ingestion, queries: _Queries, events: int, lag_seconds: float, calls: int) -> None:
    labels = ingestion.warehouse["labels"]
    backlog = labels["backlog"]
    first = ingestion.warehouse["first_batch"]
    span = (backlog["ingested_last"] - backlog["ingested_first"]) / 1e3
    # One batch (a small --events) has no span to measure a rate over.
    sustained = f"{(backlog['rows'] - first) / span:,.0f}/s" if span > 0 else "n/a (1 batch)"
    took = backlog["ingested_last"] / 1e3 - ingestion.spawned
    from_start = backlog["rows"] / took
    produced = events + sum(int(o["sent"]) for o in ingestion.offered.values())
    stored = sum(int(v["rows"]) for v in labels.values())
    ids = sum(int(v["ids"]) for v in labels.values())

    print(
        f"\ningestion: one svc_analytics process, chdb embedded, batches of {DEPLOYED.batch_records:,} records or"
        f" {DEPLOYED.batch_seconds:g} s (reads of {DEPLOYED.poll_records:,}); Kafka 1 broker,"
        f" topic {TOPIC!r}, 3 partitions"
    )
    b = ingestion.backlog
    print(
        f"  backlog: {events:,} ModelCallCompleted events of {b['bytes']:.0f} B, {TENANTS} tenants, keyed by session;"
        f" produced at {b['rate']:,.0f}/s before the service started"
    )
    print(
        f"  drained: {backlog['rows']:,.0f} events in {backlog['inserts']:.0f} batches;"
        f" sustained {sustained} (after the first batch, of {first:,});"
        f" {from_start:,.0f} events/s from the process's spawn ({took:.1f} s)"
    )
    print(
        f"  exactly once: {stored:,} event rows, {ids:,} distinct ids, {produced:,} produced;"
        f" {ingestion.warehouse['model_calls']:,} model_calls rows"
    )
    print(f"\n  lag, produce -> queryable (ingested_at - published_at), {lag_seconds:.0f} s per offered rate")
    print(f"  {'offered':>10} {'achieved':>10} {'batches':>8} {'p50':>9} {'p99':>9} {'max':>9}   kept up")
    for rate in RATES:
        o, v = ingestion.offered[rate], labels[f"rate{rate}"]
        tail = (v["ingested_last"] - o["last"] * 1e3) / 1e3
        kept = "yes" if tail <= LAG_GOAL_S else "no"
        print(
            f"  {rate:>8,}/s {o['rate']:>8,.0f}/s {v['inserts']:>8.0f} {v['p50_ms'] / 1e3:>7.3f} s"
            f" {v['p99_ms'] / 1e3:>7.3f} s {v['max_ms'] / 1e3:>7.3f} s   {kept} (the last event queryable"
            f" {tail:.2f} s after the producer's last acknowledged send)"
        )

    print("\n  CPU per event (us), by thread; Kafka's broker beside it")
    kinds = ("event loop", "Python threads", "native threads")
    print(f"  {'phase':<22}" + "".join(f"{k:>20}" for k in kinds) + f"{'service':>10}{'cores':>7}{'Kafka':>8}")
    for name, phase in ingestion.phases.items():
        total = sum(phase.service.values())
        label = "backlog drain" if name == "drain" else f"offered {name.removeprefix('rate')}/s"
        print(
            f"  {label:<22}"
            + "".join(f"{_us(phase, phase.service.get(k, 0.0)):>20.1f}" for k in kinds)
            + f"{_us(phase, total):>10.1f}{total / phase.seconds:>7.2f}{_us(phase, phase.kafka):>8.1f}"
        )
    print("  (cores: the service's CPU seconds per second of the phase; this machine has", os.cpu_count(), "cores)")

    rows = int(queries.generated["model_calls"])
    how = (
        "QueryMetrics over gRPC, svc_analytics's port, mesh-signed principal"
        if queries.through == "grpc"
        else "NOT QueryMetrics (UNIMPLEMENTED in svc_analytics): the same questions as SQL through"
        " ClickHouseWarehouse.query, in a process of its own"
    )
    print(
        f"\nqueries on {rows:,} GENERATED model-call rows and {int(queries.generated['turns']):,} turn rows"
        f" (generated in {queries.generated['seconds']:.1f} s), one tenant, {DAYS} days, {BUCKET_S} s buckets;"
        f" {how}; {calls} calls each after {WARM_UP} warm-up, in turn"
    )
    print(
        f"  {'query':<26}{'p50':>10}{'p99':>10}   samples in the answer"
        + ("   series, points" if queries.series else "")
    )
    requests = _requests()
    for name, (label, _) in requests.items():
        times = queries.times[name]
        extra = f"   {queries.series[name][0]}, {queries.series[name][1]}" if name in queries.series else ""
        print(
            f"  {label:<26}{_ms(times, 0.5):>7.1f} ms{_ms(times, 0.99):>7.1f} ms   {queries.samples[name]:>12,}{extra}"
        )

    ttft = queries.times["ttft_p99"]
    print(f"\ngoals ({os.cpu_count()}-core machine; Kafka, the producer, the service and the bench share it)")
    lines = [
        ("ingestion, sustained events/s (backlog drain)", sustained, f">= {THROUGHPUT_GOAL:,.0f}/s"),
        *(
            (
                f"lag p99 at {rate:,}/s offered ({ingestion.offered[rate]['rate']:,.0f}/s achieved)",
                f"{labels[f'rate{rate}']['p99_ms'] / 1e3:.2f} s",
                f"<= {LAG_GOAL_S:.0f} s",
            )
            for rate in RATES
        ),
        (
            f"QueryMetrics TTFT P99, 1 h x {DAYS} d, {rows / 1e6:g}M rows, p99"
            + ("" if queries.through == "grpc" else " (SQL stand-in)"),
            f"{_ms(ttft, 0.99):.0f} ms",
            f"<= {QUERY_GOAL_MS:.0f} ms at 10M rows",
        ),
        (
            "service CPU per event (backlog drain)",
            f"{_us(ingestion.phases['drain'], sum(ingestion.phases['drain'].service.values())):.0f} us",
            "",
        ),
    ]
    for label, value, goal in lines:
        print(f"  {label:<58}{value:>12}   {goal}".rstrip())


def main(events: int = 300_000, rows: int = 10_000_000, lag_seconds: float = 20.0, queries: int = 30) -> None:
    """`python -m bench`'s entry: starts Kafka, measures, prints, stops it."""
    print("\n== svc_analytics: Kafka -> ClickHouse ingestion, and QueryMetrics ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="skm-bench-analytics-") as state:
        stack = Stack(state_dir=Path(state), components=("kafka",), ports=EPHEMERAL_PORTS, durable=False).start()
        try:
            ingestion = asyncio.run(_ingestion(stack, events, lag_seconds))
            answered = asyncio.run(_queries(stack, rows, queries))
        finally:
            stack.stop()
    _report(ingestion, answered, events, lag_seconds, queries)


def _role(argv: Sequence[str]) -> dict[str, Any]:
    """The roles of the bench's child processes."""
    role, *args = argv
    if role == "produce":
        bootstrap, count, rate, label = args
        return asyncio.run(_produce(bootstrap, int(count), float(rate), label))
    if role == "generate":
        folder, rows = args
        return _generate(folder, int(rows))
    if role == "read":
        return asyncio.run(_read(args[0]))
    if role == "sql":
        folder, calls = args
        return asyncio.run(_sql(folder, int(calls)))
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("produce", "generate", "read", "sql"):
        print(json.dumps(_role(sys.argv[1:])), flush=True)
        raise SystemExit(0)
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="backlog events (default 300000)")
    parser.add_argument("--rows", type=int, default=10_000_000, help="generated model-call rows (default 10000000)")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="seconds per offered rate (default 20)")
    parser.add_argument("--queries", type=int, default=30, help="QueryMetrics calls per query (default 30)")
    cli = parser.parse_args()
    main(cli.events, cli.rows, cli.lag_seconds, cli.queries)
