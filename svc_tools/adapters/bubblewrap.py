"""The Sandbox port on bubblewrap (`bwrap`), rlimits (`prlimit`) and an unprivileged uid
(`setpriv`): how code_execution runs untrusted code on a host without containers.

Each run gets, in this order of wrapping:

- `prlimit`: RLIMIT_CPU (soft; hard one second later), RLIMIT_AS, RLIMIT_NPROC,
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, inherited by every process of the run;
- `setpriv` (when svc_tools runs as root): a uid and gid of its own from a pool
  (`uid_base` + slot), no supplementary groups, no capabilities (inheritable, ambient and
  bounding sets cleared), no_new_privs. RLIMIT_NPROC counts processes per uid, so one
  run's fork bomb cannot starve another, and after the run every process of that uid is
  killed, wherever it hid;
- `bwrap` as that user: new user (nested ones disabled), network (empty: loopback only),
  PID, IPC, UTS and cgroup namespaces; a new session (no terminal to push input into);
  killed with its parent; the code runs as PID 1 of its namespace, so every process it
  starts dies when it exits. The filesystem is a read-only root holding read-only binds of
  /usr (with /bin, /lib*, /sbin as on the host) and a few /etc files, a generated
  /etc/passwd and /etc/group, a fresh /proc and minimal /dev, size-capped tmpfs mounts on
  /work (the work dir, cwd and $HOME), /tmp and /dev/shm, and the code itself read-only
  at /sandbox. Nothing of the host's /root, /home, /var, /tmp, /run or the repository is
  visible; everything a run writes lives in its own tmpfs mounts and is gone with it.

The wall-clock timeout, the output cap (stdout and stderr together) and cancellation kill
the whole process group at once; the PID namespace dies with its first process, and a
final sweep kills anything still running under the run's uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from svc_tools.model import Runtime, SandboxEnd, SandboxJob, SandboxOutcome, Stream
from svc_tools.ports import OutputSink

log = logging.getLogger("skm.tools.sandbox")

# Inside the sandbox the code runs as this user, whatever its uid on the host.
SANDBOX_UID = 1000
SANDBOX_USER = "sandbox"
_READ_BYTES = 64 * 1024
# /etc files the system's programs read; none says anything about the host's users.
_ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Exit statuses bwrap reports for a child killed by a signal (128 + the signal).
_SIGNAL_BASE = 128
_LIMIT_SIGNALS = {signal.SIGXCPU: "CPU time", signal.SIGXFSZ: "file size"}


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """What one run may use. Sizes in bytes, times in seconds."""

    cpu_seconds: int = 30
    memory_bytes: int = 512 * 1024 * 1024
    max_processes: int = 32
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 256
    work_bytes: int = 64 * 1024 * 1024
    tmp_bytes: int = 16 * 1024 * 1024
    # stdout and stderr together; a run that writes more is stopped.
    output_bytes: int = 1024 * 1024
    # How much of the end of each stream the result keeps.
    tail_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class SandboxPrograms:
    bwrap: str = "/usr/bin/bwrap"
    prlimit: str = "/usr/bin/prlimit"
    setpriv: str = "/usr/bin/setpriv"
    python: str = "/usr/bin/python3"
    shell: str = "/bin/bash"


class BubblewrapSandbox:
    """Runs code_execution jobs in bubblewrap, `slots` at a time (the rest wait)."""

    def __init__(
        self,
        limits: SandboxLimits,
        *,
        programs: SandboxPrograms | None = None,
        uid_base: int = 420_000,
        slots: int = 4,
    ) -> None:
        self._limits = limits
        self._programs = programs or SandboxPrograms()
        # Switching to an unprivileged uid needs root; otherwise runs keep svc_tools's uid.
        self._switch_uid = os.geteuid() == 0
        uids = [uid_base + slot for slot in range(slots)] if self._switch_uid else [os.geteuid()]
        self._uids = tuple(uids)
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for uid in self._uids if self._switch_uid else [os.geteuid()] * slots:
            self._free.put_nowait(uid)

    @property
    def uids(self) -> tuple[int, ...]:
        """The host uids runs use (one per slot when svc_tools runs as root)."""
        return self._uids

    async def self_test(self) -> None:
        """Run a trivial job; raise OSError when the sandbox cannot work on this host."""
        if self._switch_uid:
            for uid in self._uids:
                _kill_uid(uid)
        chunks: list[bytes] = []
        outcome = await self.run(
            SandboxJob(Runtime.TERMINAL, "echo ok", 10.0), lambda _stream, data: chunks.append(data)
        )
        if outcome.end is not SandboxEnd.EXITED or outcome.exit_code != 0 or b"".join(chunks).strip() != b"ok":
            detail = outcome.stderr_tail.decode(errors="replace").strip()[-500:]
            raise OSError(f"the bubblewrap sandbox does not work on this host: {detail or outcome.end.value}")

    async def run(self, job: SandboxJob, sink: OutputSink) -> SandboxOutcome:
        uid = await self._free.get()
        try:
            return await self._run(job, sink, uid)
        finally:
            self._free.put_nowait(uid)

    async def _run(self, job: SandboxJob, sink: OutputSink, uid: int) -> SandboxOutcome:
        limits = self._limits
        code_fd = _memfd("skm-code", job.code.encode())
        passwd_fd = _memfd("skm-passwd", f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}::/work:/bin/bash\n".encode())
        group_fd = _memfd("skm-group", f"{SANDBOX_USER}:x:{SANDBOX_UID}:\n".encode())
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(job, uid, code_fd, passwd_fd, group_fd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(code_fd, passwd_fd, group_fd),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
            )
        finally:
            for fd in (code_fd, passwd_fd, group_fd):
                os.close(fd)
        output = _Output(limits.output_bytes, limits.tail_bytes, sink)
        assert process.stdout is not None  # a pipe
        assert process.stderr is not None  # a pipe
        readers = [
            asyncio.create_task(output.read(process.stdout, Stream.STDOUT)),
            asyncio.create_task(output.read(process.stderr, Stream.STDERR)),
        ]
        exited = asyncio.create_task(process.wait())
        over = asyncio.create_task(output.over_limit.wait())
        end = SandboxEnd.EXITED
        try:
            done, _ = await asyncio.wait(
                {exited, over}, timeout=job.timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if over in done:
                end = SandboxEnd.OUTPUT_LIMIT
            elif exited not in done:
                end = SandboxEnd.TIMEOUT
        except BaseException:
            # Cancelled: stop everything at once, then let the cancellation go on.
            over.cancel()
            await self._stop(process, exited, uid)
            for reader in readers:
                reader.cancel()
            raise
        # Whatever ended it, nothing of the run survives it.
        over.cancel()
        await self._stop(process, exited, uid)
        code = await exited
        # Every writer is dead, so the pipes reach their end; a little grace for the reads.
        _, pending = await asyncio.wait(readers, timeout=2.0)
        for reader in pending:
            reader.cancel()
        detail = f"{limits.output_bytes} bytes" if end is SandboxEnd.OUTPUT_LIMIT else ""
        if end is SandboxEnd.EXITED and code > _SIGNAL_BASE:
            end, detail = _signalled(code - _SIGNAL_BASE)
        return SandboxOutcome(end, code, bytes(output.tails[Stream.STDOUT]), bytes(output.tails[Stream.STDERR]), detail)

    async def _stop(self, process: asyncio.subprocess.Process, exited: asyncio.Task[int], uid: int) -> None:
        """Kill every process of the run, at once.

        The code's first process (bwrap's child, PID 1 of the run's PID namespace) goes
        first: the kernel then kills everything in the namespace, and bwrap, left with
        nothing to watch, reaps it and exits (killing bwrap first would leave that process
        as a zombie for the host's init). Then whatever still runs under the run's uid, and
        bwrap's process group if it lingers.
        """
        for pid in _children_of(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._switch_uid:
            _kill_uid(uid, spare=process.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), 2.0)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._switch_uid:
            _kill_uid(uid)

    def _argv(self, job: SandboxJob, uid: int, code_fd: int, passwd_fd: int, group_fd: int) -> list[str]:
        limits, programs = self._limits, self._programs
        argv = [
            programs.prlimit,
            f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
            f"--as={limits.memory_bytes}",
            f"--nproc={limits.max_processes}",
            f"--fsize={limits.max_file_bytes}",
            f"--nofile={limits.max_open_files}",
            "--core=0",
            "--",
        ]
        if self._switch_uid:
            argv += [
                programs.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        argv += [programs.bwrap, *_namespaces(), *_filesystem(limits), *_environment()]
        argv += ["--ro-bind-data", str(passwd_fd), "/etc/passwd", "--ro-bind-data", str(group_fd), "/etc/group"]
        if job.runtime is Runtime.PYTHON:
            script, command = "/sandbox/main.py", [programs.python, "/sandbox/main.py"]
        else:
            script, command = "/sandbox/main.sh", [programs.shell, "--noprofile", "--norc", "/sandbox/main.sh"]
        argv += ["--ro-bind-data", str(code_fd), script, "--remount-ro", "/"]
        # PID 1 is a shell that runs the code as its child and passes its status on: the
        # code gets ordinary signal semantics (a PID 1 ignores the CPU limit's SIGXCPU and
        # any signal it has no handler for), and its orphans are reaped.
        argv += ["--", programs.shell, "--noprofile", "--norc", "-c", '"$@"; exit $?', "skm-sandbox", *command]
        return argv


def _namespaces() -> list[str]:
    return [
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--disable-userns",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        # The code itself is PID 1 of its namespace: when it exits, the kernel kills every
        # process it left, and bwrap waits for it directly. (With bwrap's own reaper as
        # PID 1, that reaper outlives bwrap's wait and is left as a zombie for the host's
        # init, which in a container is often a process that never reaps.)
        "--as-pid-1",
        "--cap-drop",
        "ALL",
    ]


def _filesystem(limits: SandboxLimits) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL:
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    for etc in _ETC_FILES:
        args += ["--ro-bind-try", etc, etc]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm"]
    args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    args += ["--size", str(limits.work_bytes), "--tmpfs", "/work"]
    args += ["--remount-ro", "/dev", "--chdir", "/work"]
    return args


def _environment() -> list[str]:
    variables = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/work",
        "TMPDIR": "/tmp",
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        # The work dir is where the code's own modules are; output goes out as it comes.
        "PYTHONPATH": "/work",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    args = ["--clearenv"]
    for name, value in variables.items():
        args += ["--setenv", name, value]
    return args


def _signalled(number: int) -> tuple[SandboxEnd, str]:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return SandboxEnd.EXITED, ""  # an exit status above 128 that is no signal
    if sig in _LIMIT_SIGNALS:
        return SandboxEnd.RESOURCE_LIMIT, _LIMIT_SIGNALS[sig]
    return SandboxEnd.SIGNALLED, sig.name


def _memfd(name: str, data: bytes) -> int:
    """An anonymous file holding `data`, for bwrap to copy into the sandbox."""
    fd = os.memfd_create(name, 0)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _stat_of(pid: str) -> tuple[str, int] | None:
    """(state, parent pid) of a process, from /proc/PID/stat; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat_of(entry.name)
            if stat is not None and stat[1] == parent:
                children.append(int(entry.name))
    return children


def _processes_of(uid: int) -> Iterator[int]:
    """Live (not zombie) processes whose real uid is `uid`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"State:") and line.split()[1] == b"Z":
                        break  # dead already; its parent reaps it
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            yield int(entry.name)
                        break
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile


def _kill_uid(uid: int, *, spare: int = 0) -> None:
    """Kill every live process whose real uid is `uid` (a run's own uid) but `spare`."""
    for _ in range(50):
        found = [pid for pid in _processes_of(uid) if pid != spare]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    log.error("processes of a sandbox uid survived killing", extra={"fields": {"uid": uid}})


class _Output:
    """Reads both pipes, forwards bytes up to the cap, keeps the tail of each stream."""

    def __init__(self, cap: int, tail: int, sink: OutputSink) -> None:
        self._left = cap
        self._tail = tail
        self._sink = sink
        self.tails = {Stream.STDOUT: bytearray(), Stream.STDERR: bytearray()}
        self.over_limit = asyncio.Event()

    async def read(self, pipe: asyncio.StreamReader, stream: Stream) -> None:
        while data := await pipe.read(_READ_BYTES):
            if self.over_limit.is_set():
                continue  # discarded: the run is being stopped
            if len(data) > self._left:
                data = data[: self._left]
                self.over_limit.set()
            self._left -= len(data)
            if not data:
                continue
            tail = self.tails[stream]
            tail += data
            if len(tail) > self._tail:
                del tail[: len(tail) - self._tail]
            self._sink(stream, data)
