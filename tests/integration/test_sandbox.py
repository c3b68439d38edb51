"""Escape probes against code_execution's bubblewrap sandbox, through the real svc_tools.

Each probe runs as an operator would run it (ExecuteTool, policy ALLOW) and must be
contained, end in a clear failure result, leave no process behind, and leave the service
serving. Nothing is ever aimed at an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from skm.tools.v1 import execution_pb2, tool_service_pb2
from skm_runtime.server import RuntimeSettings
from skm_stack import RunningStack
from svc_policy.__main__ import build as build_policy
from tests.support.runtime import Served, serving
from tests.support.tools import (
    Failure,
    Run,
    Tenant,
    ToolsServer,
    host_commands,
    new_tenant,
    policy_settings,
    processes_of_uids,
    read_until,
    sandbox_uids,
    serving_tools,
    tools_settings,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def policy(stack: RunningStack) -> AsyncIterator[Served]:
    async with serving(await build_policy(policy_settings(stack), RuntimeSettings()), record_spans=False) as served:
        yield served


@pytest.fixture(scope="module")
async def tools(stack: RunningStack, policy: Served) -> AsyncIterator[ToolsServer]:
    async with serving_tools(tools_settings(stack, policy.target, slot_group=4)) as served:
        yield served


@pytest.fixture
async def tenant(policy: Served, tools: ToolsServer) -> AsyncIterator[Tenant]:
    async for t in new_tenant(policy, tools.target):
        yield t
    # Every probe: nothing of it still runs, and the service still serves.
    assert processes_of_uids(sandbox_uids(tools.settings)) == []


async def still_serving(t: Tenant) -> None:
    run = await t.run(t.request("print('alive')"))
    assert run.payload()["stdout"] == "alive\n"


@pytest.fixture
def host_secrets() -> Iterator[tuple[str, list[Path]]]:
    """A secret in files on the host, under /root and in the repository."""
    secret = f"secret-{uuid.uuid4().hex}"
    paths = [Path.home() / f".skm-probe-{uuid.uuid4().hex[:8]}", REPO / ".cache" / f"skm-probe-{uuid.uuid4().hex[:8]}"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret)
    try:
        yield secret, paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def _failure(run: Run) -> tuple[int, str]:
    run.check_order()
    return run.failure()


async def test_the_network_is_empty_even_on_loopback(tenant: Tenant, stack: RunningStack) -> None:
    port = urlsplit(stack.postgres_dsn).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the host's Postgres does listen there
    code = f"""
import socket
print(sorted(name for _, name in socket.if_nameindex()))
socket.create_connection(("127.0.0.1", {port}), timeout=2)
print("CONNECTED")
"""
    run = await tenant.run(tenant.request(code))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "ConnectionRefusedError" in message
    assert run.output() == b"['lo']\n"
    shell = await tenant.run(tenant.request(f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED", "terminal"))
    reason, message = _failure(shell)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "Connection refused" in message
    assert b"CONNECTED" not in shell.output()
    await still_serving(tenant)


async def test_host_files_cannot_be_read(tenant: Tenant, host_secrets: tuple[str, list[Path]]) -> None:
    secret, paths = host_secrets
    targets = [*map(str, paths), "/root", str(REPO / "pyproject.toml"), "/etc/shadow", "/proc/1/root/root"]
    code = f"""
import os
for path in {targets!r}:
    try:
        print("READ", path, open(path).read() if os.path.isfile(path) else os.listdir(path))
    except OSError as error:
        print("refused", path, type(error).__name__)
print(open("/etc/passwd").read(), end="")
raise SystemExit("no host file could be read")
"""
    run = await tenant.run(tenant.request(code))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "no host file could be read" in message
    output = run.output().decode()
    assert secret not in output
    assert "READ" not in output
    # The sandbox's own /etc/passwd names only its user, none of the host's.
    assert output.endswith("sandbox:x:1000:1000::/work:/bin/bash\n")
    assert "root:" not in output
    await still_serving(tenant)


async def test_nothing_outside_the_work_dir_can_be_written(tenant: Tenant) -> None:
    name = f"skm-probe-{uuid.uuid4().hex[:8]}"
    outside = ["/", "/usr", "/etc", "/sandbox", "/root", str(REPO), "/var/tmp", "/dev"]
    code = f"""
import os
refused = 0
for folder in {outside!r}:
    try:
        open(os.path.join(folder, {name!r}), "w").write("x")
        print("WROTE", folder)
    except OSError as error:
        refused += 1
        print("refused", folder, type(error).__name__)
open("/work/{name}", "w").write("mine")  # the work dir
open("/tmp/{name}", "w").write("mine")  # private scratch, gone with the run
raise SystemExit(f"{{refused}} writes outside the work dir were refused")
"""
    run = await tenant.run(tenant.request(code))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert f"{len(outside)} writes outside the work dir were refused" in message
    assert b"WROTE" not in run.output()
    for folder in [*outside, "/tmp", "/work"]:
        assert not (Path(folder) / name).exists(), folder
    # A new run gets a fresh, empty work dir: nothing of the last one is left.
    again = await tenant.run(tenant.request(f"import os\nprint(os.listdir('/work'), os.path.exists('/tmp/{name}'))"))
    assert again.payload()["stdout"] == "[] False\n"
    await still_serving(tenant)


async def test_a_fork_bomb_is_contained(tenant: Tenant, tools: ToolsServer) -> None:
    started = time.monotonic()
    # The classic bomb, and a run that stays alive while it grows.
    run = await tenant.run(tenant.request(":(){ :|:& };:; sleep 10", "terminal", timeout=3))
    assert _failure(run)[0] == Failure.FAILURE_REASON_TIMEOUT
    assert b"Resource temporarily unavailable" in run.output(execution_pb2.OutputChunk.STREAM_STDERR)
    assert time.monotonic() - started < 10
    assert processes_of_uids(sandbox_uids(tools.settings)) == []
    forks = await tenant.run(
        tenant.request("import os\nwhile True:\n    if os.fork() == 0:\n        import time; time.sleep(30)", timeout=5)
    )
    reason, message = _failure(forks)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "BlockingIOError" in message  # the process limit stopped it
    await still_serving(tenant)


async def test_a_memory_bomb_is_contained(tenant: Tenant) -> None:
    started = time.monotonic()
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))"
    run = await tenant.run(tenant.request(code, timeout=10))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "MemoryError" in message
    assert time.monotonic() - started < 5
    # A tmpfs is memory too: the work dir is capped as well.
    fill = "for i in $(seq 1 20); do head -c 8M /dev/zero > /work/f$i || exit 9; done"
    run = await tenant.run(tenant.request(fill, "terminal", timeout=10))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "No space left on device" in message
    await still_serving(tenant)


async def test_an_infinite_loop_meets_the_timeout_or_the_cpu_limit(tenant: Tenant) -> None:
    started = time.monotonic()
    run = await tenant.run(tenant.request("while True: pass", timeout=1))
    assert _failure(run)[0] == Failure.FAILURE_REASON_TIMEOUT
    assert time.monotonic() - started < 4
    # Given more time than CPU seconds (3 in these tests), the CPU limit stops it.
    run = await tenant.run(tenant.request("while True: pass", timeout=20))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_RESOURCE_LIMIT
    assert "CPU time" in message
    assert time.monotonic() - started < 10
    big = await tenant.run(tenant.request("head -c 100M /dev/zero > /work/big", "terminal"))
    reason, message = _failure(big)
    assert reason == Failure.FAILURE_REASON_RESOURCE_LIMIT
    assert "file size" in message
    await still_serving(tenant)


async def test_gigabytes_of_output_are_cut_at_the_cap(tenant: Tenant, tools: ToolsServer) -> None:
    started = time.monotonic()
    code = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(4096):\n    sys.stdout.write(block)"
    run = await tenant.run(tenant.request(code, timeout=60))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_OUTPUT_LIMIT
    assert str(tools.settings.sandbox_output_bytes) in message
    assert len(run.output()) <= tools.settings.sandbox_output_bytes
    assert all(len(r.output.data) <= 16 * 1024 for r in run.replies if r.WhichOneof("update") == "output")
    assert time.monotonic() - started < 5
    shell = await tenant.run(tenant.request("yes", "terminal", timeout=60))
    assert _failure(shell)[0] == Failure.FAILURE_REASON_OUTPUT_LIMIT
    await still_serving(tenant)


async def test_no_process_outlives_its_run(tenant: Tenant, tools: ToolsServer) -> None:
    tag = 4200 + uuid.uuid4().int % 700
    code = (
        f"sleep {tag}.1 & disown; nohup sleep {tag}.2 >/dev/null 2>&1 & setsid sleep {tag}.3 & "
        f"(sleep {tag}.4 &); python3 -c 'import os, time\nif os.fork() == 0: os.setsid(); time.sleep({tag})' & "
        "echo started"
    )
    run = await tenant.run(tenant.request(code, "terminal"))
    assert run.payload()["stdout"] == "started\n"
    await asyncio.sleep(0.2)
    assert [c for c in host_commands() if f"sleep {tag}" in c or f"time.sleep({tag})" in c] == []
    assert processes_of_uids(sandbox_uids(tools.settings)) == []
    await still_serving(tenant)


async def test_another_runs_work_dir_is_out_of_reach(tenant: Tenant, tools: ToolsServer) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    holder = tenant.stub.ExecuteTool(
        tenant.request(
            f"import time\nopen('/work/{secret[:14]}.txt', 'w').write({secret!r})\nprint('ready', flush=True)\n"
            "time.sleep(60)",
            timeout=90,
        ),
        metadata=tenant.olga,
        timeout=60,
    )
    holding = (await holder.read()).accepted.execution
    await read_until(holder, "output")
    # It runs on the host as an unprivileged uid of its own, not as root.
    running = processes_of_uids(sandbox_uids(tools.settings))
    assert any("/sandbox/main.py" in command for _, command in running)
    code = f"""
import glob, os
found = []
for pattern in ["/work/*", "/tmp/*", "/proc/*/root/work/*", "/proc/*/cwd/*", "/*/{secret[:14]}.txt"]:
    found += glob.glob(pattern)
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("found", found)
print(open("/work/{secret[:14]}.txt").read())
"""
    run = await tenant.run(tenant.request(code))
    reason, message = _failure(run)
    assert reason == Failure.FAILURE_REASON_TOOL_ERROR
    assert "FileNotFoundError" in message
    output = run.output().decode()
    assert secret not in output
    assert "found []" in output
    # Only its own processes are visible: its shell (PID 1) and Python.
    assert "pids [1, 2]" in output
    await tenant.stub.CancelExecution(
        tool_service_pb2.CancelExecutionRequest(name=holding), timeout=10, metadata=tenant.olga
    )
    holder.cancel()
    await still_serving(tenant)


async def test_the_code_runs_without_privileges_and_under_limits(tenant: Tenant) -> None:
    code = (
        "id\ngrep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status\nhostname\n"
        "ulimit -t -u -v -f\nunshare --user true 2>/dev/null || echo 'no user namespaces'"
    )
    run = await tenant.run(tenant.request(code, "terminal"))
    lines = run.payload()["stdout"].splitlines()
    assert lines[0] == "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)"
    assert lines[1:4] == ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1"]
    assert lines[4] == "sandbox"
    limits = [line.split()[-1] for line in lines[5:9]]
    assert limits == ["3", "32", str(512 * 1024), str(16 * 1024)]  # s, processes, KiB, KiB
    assert lines[9] == "no user namespaces"
    await still_serving(tenant)
