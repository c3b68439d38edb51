"""Tool arguments checked against their tool's JSON schema before policy is asked.

Violations name the rule that failed and where, never the offending value: jsonschema's
own messages quote it, and tool arguments may be huge or personal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # jsonschema ships no type information

from skm_runtime.errors import FieldViolation
from svc_tools.errors import ArgumentsInvalid, ArgumentsTooLarge
from svc_tools.model import Tool

MAX_ARGUMENTS_BYTES = 256 * 1024
# At most this many violations are reported at once.
MAX_VIOLATIONS = 20


class ArgumentSchemas:
    """The compiled argument schema of every tool of a catalogue."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        self._validators = {tool.id: jsonschema.Draft202012Validator(tool.arguments_schema) for tool in tools}

    def check(self, tool: Tool, arguments_json: str) -> None:
        """Raise ArgumentsTooLarge or ArgumentsInvalid unless `arguments_json` is a JSON
        object that `tool`'s schema accepts."""
        size = len(arguments_json.encode())
        if size > MAX_ARGUMENTS_BYTES:
            raise ArgumentsTooLarge(
                f"arguments are larger than {MAX_ARGUMENTS_BYTES} bytes",
                metadata={"limit_bytes": str(MAX_ARGUMENTS_BYTES), "size_bytes": str(size)},
            )
        try:
            arguments = json.loads(arguments_json)
        except ValueError:
            raise ArgumentsInvalid(
                "arguments_json is not JSON",
                violations=[FieldViolation("arguments_json", "not valid JSON")],
                metadata={"tool": tool.id},
            ) from None
        if not isinstance(arguments, dict):
            raise ArgumentsInvalid(
                "arguments_json must be a JSON object",
                violations=[FieldViolation("arguments_json", "not a JSON object")],
                metadata={"tool": tool.id},
            )
        errors = sorted(self._validators[tool.id].iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            violations = [
                FieldViolation(_argument_path(error.absolute_path), _schema_problem(error))
                for error in errors[:MAX_VIOLATIONS]
            ]
            raise ArgumentsInvalid(
                f"arguments do not match the schema of {tool.id}: {violations[0].description}",
                violations=violations,
                metadata={"tool": tool.id},
            )


def _argument_path(path: Sequence[object]) -> str:
    field = "arguments_json"
    for part in path:
        field += f"[{part}]" if isinstance(part, int) else f".{part}"
    return field


def _schema_problem(error: Any) -> str:
    keyword = str(error.validator)
    if keyword == "required":
        missing = [name for name in error.validator_value if name not in (error.instance or {})]
        return f"missing required property: {', '.join(missing)}"
    if keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(name for name in (error.instance or {}) if name not in allowed)
        return f"unknown properties: {', '.join(extra)[:200]}"
    if keyword == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}"
    if keyword == "type":
        return f"must be of type {error.validator_value}"
    if keyword in ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems"):
        return f"violates {keyword} {error.validator_value}"
    return f"violates {keyword}"
