"""Structured JSON logs, one object per line on stderr.

Message text is for operators and must never hold personal data (transcripts, prompts, tool
arguments, audio). Such values go in the `personal` extra field::

    log.info("turn received", extra={"fields": {"session": name},
                                     "personal": {"text": text}})

`personal` is dropped (replaced by the list of its keys) unless SKM_LOG_PERSONAL_DATA=true,
which is meant only for a developer's own machine. Each line carries the active trace and
span ids, so logs join traces.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON object with time, level, logger, message and context."""

    def __init__(self, service: str, *, include_personal: bool) -> None:
        super().__init__()
        self._service = service
        self._include_personal = include_personal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        personal = getattr(record, "personal", None)
        if isinstance(personal, dict):
            entry["personal"] = personal if self._include_personal else {"redacted": sorted(personal)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, *, level: str = "INFO", include_personal: bool = False) -> None:
    """Route the root logger to stderr as JSON lines; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, include_personal=include_personal))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
