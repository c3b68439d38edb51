"""The tool catalogue the model sees: what each tool does, its arguments and its risk.

One catalogue for every tenant, ordered by id. Descriptions are written for the model;
argument schemas are JSON Schema draft 2020-12 and are enforced before policy is asked.
Conversation-side tools (`response`, `call_subordinate`) are listed so that the model sees
one catalogue; svc_conversation runs them, and ExecuteTool refuses them. The memory tools'
and knowledge_query's default score thresholds depend on the embedding model, so the
composition root builds the catalogue from settings (`catalogue_of`); TOOLS has the
defaults for all-MiniLM-L6-v2.
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

# -- memory and knowledge (Agent Zero's memory tools, over per-tenant namespaces) ------------

# Agent Zero's memory areas; "main" is each user's own, the others are shared in the tenant.
DEFAULT_AREAS = ("main", "fragments", "solutions")
AREA_PATTERN = "^[a-z][a-z0-9-]{0,62}$"
KNOWLEDGE_BASE_PATTERN = "^[a-z0-9-]{1,63}$"
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_MEMORY_CHARS = 10_000
MAX_QUERY_CHARS = 2_000
MAX_RECALL = 100
MAX_IDS = 100
MAX_AREAS = 16
# Scores are cosine similarities of the embedding model's vectors (-1..1). The defaults
# suit all-MiniLM-L6-v2 (measured on bench/data/paraphrases.json: paraphrases mostly
# 0.3-0.8, unrelated sentences below 0.3); deployments with another model set their own
# (ToolsSettings).
LOAD_THRESHOLD = 0.3
FORGET_THRESHOLD = 0.6
KNOWLEDGE_THRESHOLD = 0.3
DEFAULT_KNOWLEDGE_BASE = "default"

_SCORES = "Scores are cosine similarities between -1 and 1: the closer to 1, the closer in meaning. "


def _area(description: str) -> dict[str, object]:
    return {"type": "string", "pattern": AREA_PATTERN, "description": description}


def _areas(verb: str) -> dict[str, object]:
    return {
        "type": "array",
        "items": _area("A memory area."),
        "minItems": 1,
        "maxItems": MAX_AREAS,
        "uniqueItems": True,
        "default": list(DEFAULT_AREAS),
        "description": f"The areas to {verb}; default main, fragments and solutions.",
    }


def _threshold(default: float) -> dict[str, object]:
    return {
        "type": "number",
        "minimum": -1,
        "maximum": 1,
        "default": default,
        "description": f"Lowest score that counts as a match (default {default:g}).",
    }


def _query(description: str) -> dict[str, object]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS, "description": description}


def memory_tools(
    load_threshold: float = LOAD_THRESHOLD, forget_threshold: float = FORGET_THRESHOLD
) -> tuple[Tool, ...]:
    """memory_save, memory_load, memory_delete and memory_forget, with these default thresholds."""
    areas = (
        'Memory areas: "main" is private to the user you act for; "fragments", "solutions" '
        "and any other area are shared with the whole tenant (writing to a shared area may "
        "wait for an operator's approval). "
    )
    save = Tool(
        id="memory_save",
        description=(
            "Save a piece of text to long-term memory, to be recalled later by meaning with "
            "memory_load. Save facts, decisions, user preferences and working solutions, one "
            f"self-contained statement per call. {areas}Result: "
            '{"id": "<memory id>", "area": "<area>"}.'
        ),
        arguments_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_MEMORY_CHARS,
                    "description": "What to remember. Recall matches on roughly its first 1000 characters.",
                },
                "area": {**_area("Where to save it (default main)."), "default": "main"},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        risk_level=RiskLevel.MEDIUM,
        side=ExecutionSide.TOOL_SERVICE,
    )
    load = Tool(
        id="memory_load",
        description=(
            "Recall memories whose meaning is close to a query (a question or a description "
            f"of what you need), best first. {_SCORES}{areas}Result: "
            '{"memories": [{"id": "...", "area": "...", "text": "...", "score": 0.42, '
            '"saved": "<RFC 3339 time>"}]}, empty when nothing reaches the threshold.'
        ),
        arguments_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "query": _query("What to look for."),
                "threshold": _threshold(load_threshold),
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_RECALL,
                    "default": 10,
                    "description": "Most memories to return (default 10).",
                },
                "areas": _areas("search"),
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        risk_level=RiskLevel.LOW,
        side=ExecutionSide.TOOL_SERVICE,
    )
    delete = Tool(
        id="memory_delete",
        description=(
            "Delete memories by their ids (from memory_save or memory_load). All or nothing: "
            "when an id does not name a memory, nothing is deleted and the call fails. "
            'Result: {"deleted": ["<id>", ...]}.'
        ),
        arguments_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "ids": {
                    "type": "array",
                    "items": {"type": "string", "pattern": UUID_PATTERN},
                    "minItems": 1,
                    "maxItems": MAX_IDS,
                    "uniqueItems": True,
                    "description": "Ids of the memories to delete.",
                },
            },
            "required": ["ids"],
            "additionalProperties": False,
        },
        risk_level=RiskLevel.MEDIUM,
        side=ExecutionSide.TOOL_SERVICE,
    )
    forget = Tool(
        id="memory_forget",
        description=(
            "Delete every memory whose meaning is close to a query, e.g. facts that turned "
            f"out wrong. {_SCORES}The default threshold is high so that only close matches "
            "go; check with memory_load first when unsure. Forgetting in a shared area (every "
            "area but main) may wait for an operator's approval: name only the areas you mean. "
            'Result: {"deleted": ["<id>", ...]}.'
        ),
        arguments_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "query": _query("What to forget."),
                "threshold": _threshold(forget_threshold),
                "areas": _areas("forget from"),
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        risk_level=RiskLevel.MEDIUM,
        side=ExecutionSide.TOOL_SERVICE,
    )
    return (save, load, delete, forget)


def knowledge_query_tool(threshold: float = KNOWLEDGE_THRESHOLD) -> Tool:
    """knowledge_query, with this default threshold."""
    return Tool(
        id="knowledge_query",
        description=(
            "Search the documents of the tenant's knowledge base for passages that answer a "
            f"question, best first. {_SCORES}Quote the passages you use with their title. "
            'Result: {"passages": [{"document": "<name>", "title": "...", "chunk": 0, '
            '"text": "...", "score": 0.51}]}, empty when nothing reaches the threshold.'
        ),
        arguments_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "query": _query("The question."),
                "knowledge_base": {
                    "type": "string",
                    "pattern": KNOWLEDGE_BASE_PATTERN,
                    "default": DEFAULT_KNOWLEDGE_BASE,
                    "description": f'The knowledge base to search (default "{DEFAULT_KNOWLEDGE_BASE}").',
                },
                "threshold": _threshold(threshold),
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 50,
                    "default": 5,
                    "description": "Most passages to return (default 5).",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        risk_level=RiskLevel.LOW,
        side=ExecutionSide.TOOL_SERVICE,
    )


def catalogue_of(
    *,
    load_threshold: float = LOAD_THRESHOLD,
    forget_threshold: float = FORGET_THRESHOLD,
    knowledge_threshold: float = KNOWLEDGE_THRESHOLD,
) -> tuple[Tool, ...]:
    """Every tool, ordered by id, with these default thresholds."""
    tools = (
        CODE_EXECUTION,
        RESPONSE,
        CALL_SUBORDINATE,
        *memory_tools(load_threshold, forget_threshold),
        knowledge_query_tool(knowledge_threshold),
    )
    return tuple(sorted(tools, key=lambda tool: tool.id))


TOOLS = catalogue_of()
BY_ID = {tool.id: tool for tool in TOOLS}
