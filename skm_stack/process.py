"""Child processes of the stack: spawn with a log and a PID file, stop exactly what started.

Each server runs in its own session (so its process group id equals its PID and a Ctrl-C
in the terminal reaches only the supervisor, which stops servers in order). Stopping
signals that group only, waits, and escalates to SIGKILL after a bound. A recorded PID is
trusted only together with the process start time read from ``/proc``, so a recycled PID
is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def _live_group_members(pgid: int) -> list[int]:
    """PIDs of the non-zombie processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class ProcessRecord:
    """What ``stack.json`` keeps about one server process, enough to stop it later."""

    name: str
    pid: int
    start_ticks: int
    log: str
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "log": self.log,
            "stop_signal": signal.Signals(self.stop_signal).name,
            "stop_timeout": self.stop_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            log=str(data["log"]),
            stop_signal=int(signal.Signals[str(data.get("stop_signal", "SIGTERM"))]),
            stop_timeout=float(data.get("stop_timeout", 20.0)),
        )

    def stop(self, popen: subprocess.Popen[bytes] | None = None) -> bool:
        """Stop this process group with its own signal and bound; True if it was killed."""
        return stop_group(self, stop_signal=self.stop_signal, timeout=self.stop_timeout, popen=popen)

    def is_ours(self) -> bool:
        """True while the process group we started still has live members.

        The group id is the leader's PID; Linux never hands out a PID that is still some
        group's id, so live members of that group are ours even after the leader died.
        If the leader is alive, its start time must match the recorded one.
        """
        ticks = process_start_ticks(self.pid)
        if ticks is not None and ticks != self.start_ticks:
            # The PID was recycled, so our group (same id) is gone; the new owner of this
            # PID may lead a group of its own, which must not be touched.
            return False
        return bool(_live_group_members(self.pid))


def stop_group(
    record: ProcessRecord,
    *,
    stop_signal: int = signal.SIGTERM,
    timeout: float = 20.0,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Signal the process group of ``record``, wait up to ``timeout``, then SIGKILL it.

    Returns True when it had to escalate to SIGKILL. Does nothing if the group is gone or
    the recorded PID now belongs to another process.
    """
    if not record.is_ours():
        if popen is not None:
            popen.poll()
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, stop_signal)
    if _wait_group_gone(record.pid, timeout, popen):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)
    _wait_group_gone(record.pid, 10.0, popen)
    return True


def _wait_group_gone(pgid: int, timeout: float, popen: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            popen.poll()  # reap our own child so it does not linger as a zombie
        if not _live_group_members(pgid):
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=1.0)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class ServerProcess:
    """One running server: its Popen, log file and PID file, and how to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        state_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 20.0,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.log_path = state_dir / "logs" / f"{name}.log"
        self.pid_path = state_dir / "pids" / f"{name}.pid"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            # The command line only: secrets travel in the environment or in files.
            log.write(f"---- {stamp} skm-stack starts {name}: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        ticks = process_start_ticks(self.popen.pid)
        self.record = ProcessRecord(
            name, self.popen.pid, ticks or 0, str(self.log_path), int(stop_signal), stop_timeout
        )
        self.pid_path.write_text(f"{self.popen.pid}\n")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        """None while running, else the exit status (negative: killed by that signal)."""
        return self.popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        return tail_file(self.log_path, lines)

    def stop(self) -> None:
        """End the whole process group, then forget the PID file."""
        killed = self.record.stop(self.popen)
        if killed:
            with open(self.log_path, "ab") as log:
                note = f"---- skm-stack: {self.name} still ran after {self.stop_timeout:.0f}s; killed\n"
                log.write(note.encode())
        self.pid_path.unlink(missing_ok=True)


def tail_file(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note when it does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
