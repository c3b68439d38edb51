"""Model-written code runs where the platform runs it: code_execution's bubblewrap sandbox.

The ``stdout`` predicate of a tool_choice item runs the code a model wrote, so it runs
under svc_tools' own sandbox (no network, read-only system, limits, an unprivileged uid of
its own), never on the host as it is.
"""

from __future__ import annotations

import os

from evals.checks import CodeRun
from svc_tools.adapters.bubblewrap import BubblewrapSandbox, SandboxLimits, SandboxPrograms
from svc_tools.model import Runtime, SandboxJob

# A uid range no other user of the sandbox on this machine takes (svc_tools: 420,000; the
# test suite: 470,000 up to about 534,000; bench: 495,000), one slot per process.
_UID_BASE = 560_000 + (os.getpid() % 1000) * 4
_TIMEOUT_SECONDS = 10.0


class SandboxCodeRunner:
    """A CodeRunner on the code_execution sandbox; checks on first use that it works here."""

    def __init__(self, timeout_seconds: float = _TIMEOUT_SECONDS) -> None:
        self._sandbox = BubblewrapSandbox(
            SandboxLimits(cpu_seconds=int(timeout_seconds)),
            programs=SandboxPrograms(),
            uid_base=_UID_BASE,
            slots=1,
        )
        self._timeout = timeout_seconds
        self._checked = False

    async def run_python(self, code: str) -> CodeRun:
        if not self._checked:
            # Raises OSError, naming the cause, when bubblewrap cannot run on this host.
            await self._sandbox.self_test()
            self._checked = True
        outcome = await self._sandbox.run(SandboxJob(Runtime.PYTHON, code, self._timeout), lambda _stream, _data: None)
        return CodeRun(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout_tail.decode("utf-8", "replace"),
            stderr=outcome.stderr_tail.decode("utf-8", "replace"),
            end=outcome.end.value,
        )
