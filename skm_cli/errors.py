"""Failures `skm` reports in one line, without a traceback."""

from __future__ import annotations


class CliError(Exception):
    """A usage problem (exit status 2): a missing token, an argument that cannot work."""


class CallFailed(Exception):
    """A call that failed with no gRPC status to report (exit status 1)."""


class OutputClosed(Exception):
    """Standard output was closed by its reader (e.g. `skm chat --json | head`)."""
