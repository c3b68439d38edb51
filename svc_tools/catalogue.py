"""The tool catalogue the model sees: what each tool does, its arguments and its risk.

One catalogue for every tenant, ordered by id. Descriptions are written for the model;
argument schemas are JSON Schema draft 2020-12 and are enforced before policy is asked.
Conversation-side tools (`response`, `call_subordinate`) are listed so that the model sees
one catalogue; svc_conversation runs them, and ExecuteTool refuses them.
"""

from __future__ import annotations

from svc_tools.model import ExecutionSide, RiskLevel, Tool

# Longest code accepted by code_execution, in characters (the request cap is 256 KiB).
MAX_CODE_CHARS = 200_000

CODE_EXECUTION = Tool(
    id="code_execution",
    description=(
        'Run code in an isolated sandbox and get its output. `runtime` is "python" (Python 3 '
        'source, run as a script) or "terminal" (a bash script). The sandbox has no network, a '
        "read-only system, and an empty, private, writable work dir (the current directory, "
        "also $HOME) that is deleted when the run ends: nothing persists between calls. Limits: "
        "a wall-clock timeout (30 s unless the caller sets one), CPU time, memory, number of "
        "processes, file size and total output; exceeding one fails the call. Output is "
        "streamed as it is produced. Result on exit status 0: "
        '{"exit_code": 0, "stdout": "...", "stderr": "..."} (each stream truncated to its end). '
        "A non-zero exit status fails the call; the failure message quotes the end of stderr."
    ),
    arguments_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "runtime": {
                "type": "string",
                "enum": ["python", "terminal"],
                "description": "python: Python 3 source; terminal: a bash script.",
            },
            "code": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CODE_CHARS,
                "description": "The program to run.",
            },
        },
        "required": ["runtime", "code"],
        "additionalProperties": False,
    },
    risk_level=RiskLevel.HIGH,
    side=ExecutionSide.TOOL_SERVICE,
    default_timeout_seconds=30.0,
)

RESPONSE = Tool(
    id="response",
    description=(
        "Give your final answer to the user and end your turn. Use it exactly once per turn, "
        "after any other tools you need."
    ),
    arguments_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The answer, in Markdown."}},
        "required": ["text"],
        "additionalProperties": False,
    },
    risk_level=RiskLevel.LOW,
    side=ExecutionSide.CONVERSATION,
)

CALL_SUBORDINATE = Tool(
    id="call_subordinate",
    description=(
        "Delegate a subtask to a subordinate agent and get its answer. Describe the task, its "
        "context and the expected result in `message`. Set `reset` to true to start a new "
        "subordinate instead of continuing the conversation with the current one."
    ),
    arguments_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "message": {"type": "string", "minLength": 1, "description": "The task for the subordinate."},
            "reset": {"type": "boolean", "default": False, "description": "Start a new subordinate."},
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    risk_level=RiskLevel.MEDIUM,
    side=ExecutionSide.CONVERSATION,
)

TOOLS: tuple[Tool, ...] = tuple(sorted((CODE_EXECUTION, RESPONSE, CALL_SUBORDINATE), key=lambda tool: tool.id))
BY_ID = {tool.id: tool for tool in TOOLS}
