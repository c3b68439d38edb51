"""Waiting for real health: a probe that talks to the server, retried until a deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from skm_stack.process import ServerProcess

T = TypeVar("T")


class StartError(RuntimeError):
    """A server did not become healthy; the message carries the tail of its log."""

    def __init__(self, name: str, reason: str, log_tail: str) -> None:
        super().__init__(f"{name} did not start: {reason}\n---- last lines of its log ----\n{log_tail}")
        self.name = name
        self.reason = reason
        self.log_tail = log_tail


def run_coroutine_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run an async probe to completion from synchronous code.

    It runs on a fresh event loop in a helper thread, so it works the same whether or not
    the caller already sits inside a running loop (pytest-asyncio, the CLI).
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        async def main() -> T:
            return await factory()

        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001  # re-raised in the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="skm-stack-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]  # always a BaseException, set above
    return outcome["value"]  # type: ignore[return-value]  # set by target() on success


def wait_healthy(
    process: ServerProcess,
    probe: Callable[[], object],
    *,
    timeout: float,
    what: str,
) -> float:
    """Call ``probe`` until it returns without raising; return the seconds it took.

    Fails fast with the log tail when the process exits, and after ``timeout`` otherwise.
    """
    started = time.monotonic()
    delay = 0.1
    last_error: BaseException | None = None
    while True:
        code = process.exit_code()
        if code is not None:
            raise StartError(process.name, f"exited with status {code} before {what}", process.log_tail())
        try:
            probe()
        except Exception as exc:  # noqa: BLE001  # any failure means "not yet"; the last one is reported
            last_error = exc
        else:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise StartError(
                process.name,
                f"no {what} after {timeout:.0f}s (last probe error: {last_error!r})",
                process.log_tail(),
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
