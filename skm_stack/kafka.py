"""Apache Kafka (KRaft, one node that is broker and controller) from the Maven jars.

The storage dir is formatted once with a fresh cluster id (``kafka.tools.StorageTool
format``); every start renders ``deploy/kafka/server.properties`` with the ports and runs
``kafka.Kafka`` on the JVM with a modest heap, logging through ``deploy/kafka/log4j.properties``
to stdout (the stack's log file).
"""

from __future__ import annotations

import base64
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template

from aiokafka.admin import AIOKafkaAdminClient

from skm_stack.health import StartError, run_coroutine_sync, wait_healthy
from skm_stack.install import Report, Toolchain
from skm_stack.paths import deploy_dir
from skm_stack.process import ServerProcess, tail_file

_HEAP = ["-Xms128m", "-Xmx512m"]


@dataclass
class KafkaServer:
    """A running broker; ``bootstrap`` is what services get as ``SKM_KAFKA_BOOTSTRAP``."""

    process: ServerProcess
    port: int
    controller_port: int
    cluster_id: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def new_cluster_id() -> str:
    """A cluster id in Kafka's own format: 16 random bytes, URL-safe base64, unpadded."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that read like a command-line flag
            return text


def _java_argv(toolchain: Toolchain, log4j: Path, main: str, *args: str) -> list[str]:
    return [
        str(toolchain.java),
        *_HEAP,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        # Bind plain IPv4 sockets (the listeners are 127.0.0.1 only anyway).
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j.configuration={log4j.as_uri()}",
        "-cp",
        f"{toolchain.kafka_libs}/*",
        main,
        *args,
    ]


def _read_cluster_id(data_dir: Path) -> str | None:
    meta = data_dir / "meta.properties"
    if not meta.is_file():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def _format_storage(toolchain: Toolchain, state_dir: Path, config: Path, log4j: Path) -> None:
    log_path = state_dir / "logs" / "kafka-format.log"
    argv = _java_argv(toolchain, log4j, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(config))
    with open(log_path, "wb") as log:
        result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=180)
    if result.returncode != 0:
        raise StartError("kafka", f"StorageTool format failed with status {result.returncode}", tail_file(log_path))


async def _describe_cluster(bootstrap: str) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster: dict[str, object] = await admin.describe_cluster()
        return cluster
    finally:
        await admin.close()


def probe_broker(bootstrap: str) -> None:
    """Raise unless the broker answers metadata that lists itself and a controller."""
    host, _, port = bootstrap.rpartition(":")
    # A plain connect first: aiokafka logs an ERROR line for every refused bootstrap.
    socket.create_connection((host, int(port)), timeout=2.0).close()
    cluster = run_coroutine_sync(lambda: _describe_cluster(bootstrap))
    if not cluster.get("brokers") or cluster.get("controller_id", -1) == -1:
        raise RuntimeError(f"broker not registered yet: {cluster}")


def start_kafka(
    toolchain: Toolchain,
    state_dir: Path,
    port: int,
    controller_port: int,
    *,
    report: Report,
    timeout: float = 120.0,
) -> KafkaServer:
    """Format storage on first use, start the broker, wait until metadata lists it."""
    root = state_dir / "kafka"
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    template = Template((deploy_dir() / "kafka" / "server.properties").read_text())
    config = root / "server.properties"
    config.write_text(template.substitute(port=port, controller_port=controller_port, data_dir=data))
    log4j = root / "log4j.properties"
    log4j.write_text((deploy_dir() / "kafka" / "log4j.properties").read_text())
    if _read_cluster_id(data) is None:
        report(f"formatting Kafka KRaft storage in {data}...")
        _format_storage(toolchain, state_dir, config, log4j)
    cluster_id = _read_cluster_id(data)
    if cluster_id is None:
        raise StartError(
            "kafka", "storage format wrote no cluster.id", tail_file(state_dir / "logs" / "kafka-format.log")
        )
    process = ServerProcess(
        "kafka",
        _java_argv(toolchain, log4j, "kafka.Kafka", str(config)),
        state_dir=state_dir,
        cwd=root,
        stop_timeout=45.0,  # a controlled shutdown flushes and closes every partition
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_healthy(process, lambda: probe_broker(bootstrap), timeout=timeout, what="broker in cluster metadata")
    except BaseException:
        process.stop()
        raise
    return KafkaServer(process, port, controller_port, cluster_id)
