"""The model's reply format (Agent Zero's JSON tool call) and how replies are read.

Every reply of the agent loop is one JSON object::

    {"thoughts": ["..."], "tool_name": "code_execution", "tool_args": {"runtime": "python", "code": "..."}}

Where the engine supports structured output, the reply is decoded under a JSON schema
built from the tools on offer (so even a weak model writes a well-formed call); elsewhere
the reply is parsed tolerantly: text around the object is ignored, and an object cut off
by the token limit is closed where it stopped.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from svc_conversation.model import ToolSpec

RESPONSE_TOOL = "response"
SUBORDINATE_TOOL = "call_subordinate"


@dataclass(frozen=True, slots=True)
class ToolCall:
    tool_name: str
    tool_args: dict[str, Any]
    thoughts: tuple[str, ...] = ()


# The longest string a decoding schema lets a reply hold. llama.cpp turns a maxLength of n
# into n nested grammar rules: about 2,000 crashed its server (SIGSEGV) and 4,000 is refused
# ("exceeds sane defaults"), so no schema it is sent may ask for more, whatever the token
# budget or a tool's own schema says.
MAX_DECODED_STRING = 800


def _cap_strings(schema: Any, cap: int) -> Any:
    """A copy of ``schema`` whose strings are at most ``cap`` characters (for decoding only)."""
    if isinstance(schema, dict):
        out = {key: _cap_strings(value, cap) for key, value in schema.items() if key != "$schema"}
        if out.get("type") == "string" and "enum" not in out and "const" not in out:
            out["maxLength"] = min(int(out.get("maxLength", cap)), cap)
        return out
    if isinstance(schema, list):
        return [_cap_strings(item, cap) for item in schema]
    return schema


def decoding_schema(tools: Sequence[ToolSpec], *, string_cap: int) -> dict[str, Any]:
    """The JSON schema a reply must follow when the model may call any of ``tools``; no
    string in it may be longer than ``string_cap`` (nor MAX_DECODED_STRING)."""
    string_cap = max(1, min(string_cap, MAX_DECODED_STRING))
    branches = []
    for tool in tools:
        args = _cap_strings(copy.deepcopy(tool.arguments_schema) or {"type": "object"}, string_cap)
        branches.append(
            {
                "type": "object",
                "properties": {
                    "thoughts": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": max(8, min(string_cap // 4, 200))},
                        "maxItems": 2,
                    },
                    "tool_name": {"const": tool.id},
                    "tool_args": args,
                },
                "required": ["thoughts", "tool_name", "tool_args"],
                "additionalProperties": False,
            }
        )
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _kind(schema: Mapping[str, Any]) -> str:
    """A property's type as the instructions show it: its values, or its JSON type."""
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"[{_kind(schema.get('items') or {})}, ...]"
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def _arguments(schema: Mapping[str, Any]) -> list[str]:
    """A tool's arguments, one line each: name, type, optional or not, what it is for."""
    required = set(schema.get("required", ()))
    lines = []
    for name, prop in (schema.get("properties") or {}).items():
        optional = "" if name in required else ", optional"
        about = f": {prop['description']}" if prop.get("description") else ""
        lines.append(f'  - "{name}" ({_kind(prop)}{optional}){about}')
    return lines


# Worked examples, shown when their tools are offered: small models copy a shape they have
# seen far more reliably than they follow a description of it (measured with `make eval`).
_EXAMPLES = (
    (
        (RESPONSE_TOOL,),
        "User: What is the largest planet of the solar system?\n"
        '{"thoughts": ["I know this."], "tool_name": "response", '
        '"tool_args": {"text": "Jupiter is the largest planet of the solar system."}}',
    ),
    (
        ("code_execution", RESPONSE_TOOL),
        "User: Compute 15 squared with Python.\n"
        '{"thoughts": ["I run it."], "tool_name": "code_execution", '
        '"tool_args": {"runtime": "python", "code": "print(15 ** 2)"}}\n'
        'User: Result of code_execution: {"exit_code": 0, "stdout": "225\\n", "stderr": ""}\n'
        '{"thoughts": ["It printed 225."], "tool_name": "response", "tool_args": {"text": "15 squared is 225."}}',
    ),
)


def format_instructions(tools: Iterable[ToolSpec]) -> str:
    """What the system prompt says about tools and the reply format.

    Each tool is shown by its description and a line per argument (the decoding schema, not
    this text, enforces the exact shape), the response tool first, then worked examples for
    the tools offered: a full JSON schema per tool cost the 0.5B model a third of its
    prompt and it still chose worse."""
    offered = sorted(tools, key=lambda tool: tool.id != RESPONSE_TOOL)
    ids = {tool.id for tool in offered}
    lines = [
        "Always answer with exactly one JSON object and nothing else:",
        '{"thoughts": ["your reasoning, briefly"], "tool_name": "<tool>", "tool_args": {...}}',
        f'Use the "{RESPONSE_TOOL}" tool to give your final answer; it ends your turn. Answer '
        f'questions you can answer yourself with "{RESPONSE_TOOL}" at once; use another tool only '
        "when the task needs it.",
        "",
        "Available tools:",
    ]
    for tool in offered:
        lines.append(f"## {tool.id}\n{tool.description}")
        arguments = _arguments(tool.arguments_schema)
        if arguments:
            lines.append("Arguments:")
            lines.extend(arguments)
    examples = [text for needs, text in _EXAMPLES if set(needs) <= ids]
    if examples:
        lines.append("\nExamples:")
        for text in examples:
            lines.append(text + "\n")
    return "\n".join(lines).rstrip()


def _scan(text: str) -> tuple[list[str], bool, bool, list[int], int | None]:
    """Open brackets, string state, separator positions and where the first object ends."""
    stack: list[str] = []
    in_string = False
    escaped = False
    commas: list[int] = []
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if stack:
                stack.pop()
            if not stack:
                return stack, False, False, commas, index + 1
        elif char == ",":
            commas.append(index)
    return stack, in_string, escaped, commas, None


def _closed(text: str) -> str:
    stack, in_string, escaped, _, end = _scan(text)
    if end is not None:
        return text[:end]
    out = text[:-1] if escaped else text
    if in_string:
        out += '"'
    out = out.rstrip()
    if out.endswith(":"):
        out += " null"
    return out.rstrip(",") + "".join(reversed(stack))


def _repaired(text: str) -> Any:
    """The JSON value of ``text`` (an object, maybe cut off): closed where it stopped, and cut
    back one element at a time until it parses."""
    candidate = text
    for _ in range(64):
        try:
            return json.loads(_closed(candidate))
        except ValueError:
            commas = _scan(candidate)[3]
            if not commas:
                raise
            candidate = candidate[: commas[-1]]
    raise ValueError("unrepairable")


def parse_reply(text: str) -> ToolCall | None:
    """The tool call in a model reply, or None when there is none to be found."""
    start = text.find("{")
    if start < 0:
        return None
    candidate = text[start:]
    value: Any = None
    try:
        value = json.loads(candidate)
    except ValueError:
        try:
            value = _repaired(candidate)
        except ValueError:
            return None
    if not isinstance(value, Mapping):
        return None
    name = value.get("tool_name") or value.get("tool")
    args = value.get("tool_args") or value.get("args") or {}
    if not isinstance(name, str) or not name or not isinstance(args, Mapping):
        return None
    thoughts = value.get("thoughts") or ()
    if isinstance(thoughts, str):
        thoughts = (thoughts,)
    return ToolCall(name, dict(args), tuple(str(t) for t in thoughts if isinstance(t, str | int | float)))


def reply_json(call: ToolCall) -> str:
    """The reply as it goes back into the model's context."""
    return json.dumps(
        {"thoughts": list(call.thoughts), "tool_name": call.tool_name, "tool_args": call.tool_args},
        ensure_ascii=False,
    )
