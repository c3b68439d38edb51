"""JSON log lines: one object each, personal data kept out unless explicitly allowed."""

from __future__ import annotations

import json
import logging

from skm_runtime.logs import JsonFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": "turn received", "levelname": "INFO", "name": "svc"})
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_context_fields() -> None:
    line = JsonFormatter("conversation", include_personal=False).format(
        _record(fields={"session": "tenants/t1/sessions/s1"})
    )
    entry = json.loads(line)
    assert entry["message"] == "turn received"
    assert entry["service"] == "conversation"
    assert entry["session"] == "tenants/t1/sessions/s1"
    assert entry["time"].endswith("Z")


def test_personal_data_is_redacted_by_default() -> None:
    record = _record(personal={"text": "my card is 4111 1111 1111 1111"})
    line = JsonFormatter("conversation", include_personal=False).format(record)
    assert "4111" not in line
    assert json.loads(line)["personal"] == {"redacted": ["text"]}


def test_personal_data_only_when_allowed() -> None:
    record = _record(personal={"text": "hello"})
    line = JsonFormatter("conversation", include_personal=True).format(record)
    assert json.loads(line)["personal"] == {"text": "hello"}
