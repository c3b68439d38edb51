"""`python -m evals --record`: each model's run as one BenchmarkRun, recorded in svc_profiles
with RecordBenchmark (the scoring job's quality term), over a channel signed as a caller of
the mesh (the process needs the mesh key, SKM_MESH_KEY_FILE).

One run per (model, capsule set): the suite is "{capsule_set}-{version}", the role PRIMARY
(the capsules ask what the agent loop's PRIMARY model answers), attempts the items asked,
successes those judged correct, failures the calls that failed (errors, timeouts), latency
the median call duration, and the tokens summed. The request id is derived from the model,
the capsule file's digest and the run's start, so a retried record writes the run once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from evals.capsules import CapsuleSet
from evals.runner import ModelResult
from skm.profiles.v1 import model_score_pb2, model_service_pb2, model_service_pb2_grpc
from skm.type.v1 import model_pb2
from skm_runtime.principal import MESH_KEY_FILE_VAR, MeshKeyInvalid, configure_mesh_key, use_caller_name
from skm_runtime.server import signed_channel
from skm_stack.devkeys import mesh_key_file
from skm_stack.paths import default_state_dir

_NAMESPACE = uuid.UUID("2b9e4c71-0d43-4f3e-8f0a-7c55c2f0e6a4")
_CALL_SECONDS = 30.0


def use_mesh_key() -> str:
    """Sign calls with $SKM_MESH_KEY_FILE, else the local stack's key; "" or the problem."""
    key = Path(os.environ.get(MESH_KEY_FILE_VAR) or mesh_key_file(default_state_dir()))
    try:
        configure_mesh_key(key)
    except MeshKeyInvalid as error:
        return f"--record: {error} (set {MESH_KEY_FILE_VAR}; `make run` makes one)"
    use_caller_name("skm-evals")
    return ""


def suite_of(capsules: CapsuleSet) -> str:
    return f"{capsules.name}-{capsules.version}"


def benchmark_run_of(result: ModelResult, capsules: CapsuleSet) -> model_score_pb2.BenchmarkRun:
    """The model's run as RecordBenchmark takes it."""
    passed, attempts = result.passed()
    latency = duration_pb2.Duration()
    latency.FromNanoseconds(round((result.median_duration() or 0.0) * 1e9))
    end = timestamp_pb2.Timestamp()
    end.FromDatetime(datetime.fromtimestamp(result.ended or result.started, UTC))
    return model_score_pb2.BenchmarkRun(
        model=result.model.name,
        role=model_pb2.MODEL_ROLE_PRIMARY,
        suite=suite_of(capsules),
        attempts=attempts,
        successes=passed,
        failures=sum(1 for item in result.items if item.failure or item.error),
        latency=latency,
        input_tokens=sum(item.input_tokens for item in result.items),
        output_tokens=sum(item.output_tokens for item in result.items),
        end_time=end,
    )


def request_id_of(result: ModelResult, capsules: CapsuleSet) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{result.model.name}|{capsules.sha256}|{result.started!r}"))


async def record_benchmarks(
    profiles_addr: str, results: Sequence[ModelResult], capsules: CapsuleSet, say: Callable[[str], None]
) -> list[str]:
    """Record each model's run that asked at least one item; the problems, one per model
    that could not be recorded."""
    problems: list[str] = []
    async with signed_channel(profiles_addr) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for result in results:
            if not result.items:
                continue
            run = benchmark_run_of(result, capsules)
            try:
                await stub.RecordBenchmark(
                    model_service_pb2.RecordBenchmarkRequest(
                        request_id=request_id_of(result, capsules), benchmark_run=run
                    ),
                    timeout=_CALL_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                problems.append(f"{result.model.name}: RecordBenchmark failed: {error.code().name}: {error.details()}")
                say(f"ERROR {problems[-1]}")
                continue
            say(f"recorded {run.suite} for {result.model.name}: {run.successes}/{run.attempts} correct")
    return problems
