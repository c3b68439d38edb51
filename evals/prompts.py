"""The requests each kind of item sends: the agent loop's own prompt pieces where it has them.

- exact: a short system message asking for the answer alone, then the question; plain text.
- json_schema: a system message giving the schema, then the prompt; decoded under the schema
  (constrained decoding, as the platform asks for structured output), unconstrained when the
  model lacks STRUCTURED_OUTPUT (the client then leaves the schema out).
- tool_choice and injection: exactly what svc_conversation's agent loop sends on a turn's
  first PRIMARY call, or a later one when the item has exchanges: the persona's system prompt
  with ``format_instructions`` of the tools it is offered, the user's message, each earlier
  call as the model wrote it and its result as ``Result of <tool>: <json>``; decoded under
  ``decoding_schema`` of those tools with the loop's string cap.

The tools are svc_tools' catalogue (what ListTools returns, ordered by id), offered as the
loop offers them: the persona's allowed tools, and ``response`` always.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from evals.capsules import Capsule
from skm_runtime.values import ModelRole
from svc_conversation.adapters.openai import ChatRequest
from svc_conversation.model import ToolSpec
from svc_conversation.toolcall import RESPONSE_TOOL, ToolCall, decoding_schema, format_instructions, reply_json
from svc_profiles.model import BuiltInPersona, Defaults
from svc_tools.catalogue import TOOLS
from svc_tools.model import Tool

EXACT_SYSTEM = "Answer with the answer alone: one word, name or number. No sentence, no explanation, no punctuation."
JSON_SYSTEM = "Reply with one JSON object and nothing else. It must validate against this JSON schema:\n"
# When the defaults give the PRIMARY role no output limit (0: the engine's default).
FALLBACK_MAX_TOKENS = 512


@dataclass(frozen=True, slots=True)
class Budgets:
    """Output tokens per kind of request."""

    answer: int = 32  # exact
    json: int = 256  # json_schema
    agent: int = FALLBACK_MAX_TOKENS  # tool_choice, injection: the PRIMARY role's max_output_tokens


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """The persona and tools a tool_choice or injection item is asked under."""

    persona_id: str
    system_prompt: str
    tools: tuple[ToolSpec, ...]

    @property
    def system(self) -> str:
        """The system message, as the agent loop builds it."""
        return self.system_prompt.strip() + "\n\n" + format_instructions(self.tools)

    @property
    def by_id(self) -> dict[str, ToolSpec]:
        return {tool.id: tool for tool in self.tools}


def spec_of(tool: Tool) -> ToolSpec:
    return ToolSpec(id=tool.id, description=tool.description, arguments_schema=dict(tool.arguments_schema))


def agent_setup(defaults: Defaults, persona_id: str = "default", catalogue: Sequence[Tool] = TOOLS) -> AgentSetup:
    """The built-in persona ``persona_id`` with the tools the loop would offer it."""
    persona = _persona(defaults, persona_id)
    ordered = sorted(catalogue, key=lambda tool: tool.id)
    offered = [spec_of(tool) for tool in ordered if tool.id in persona.tool_ids or tool.id == RESPONSE_TOOL]
    return AgentSetup(persona.persona_id, persona.system_prompt, tuple(offered))


def _persona(defaults: Defaults, persona_id: str) -> BuiltInPersona:
    for persona in defaults.personas:
        if persona.persona_id == persona_id:
            return persona
    known = ", ".join(p.persona_id for p in defaults.personas) or "none"
    raise LookupError(f"the defaults have no persona {persona_id!r} (they have: {known})")


def primary_max_tokens(defaults: Defaults) -> int:
    """The PRIMARY role's output limit of the deployment defaults (the mode-less entry)."""
    for default in defaults.role_defaults:
        if default.role is ModelRole.PRIMARY and default.mode is None and default.max_output_tokens:
            return default.max_output_tokens
    return FALLBACK_MAX_TOKENS


def agent_string_cap(max_tokens: int) -> int:
    """The longest string a tool call may hold under ``max_tokens``: the same rule as
    svc_conversation.loop's PRIMARY call (half the budget, at least 32)."""
    return max(32, min(max_tokens // 2, 4000)) if max_tokens else 4000


def agent_messages(capsule: Capsule, setup: AgentSetup) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": setup.system}, {"role": "user", "content": capsule.prompt}]
    for exchange in capsule.exchanges:
        call = ToolCall(exchange.tool_name, dict(exchange.tool_args), exchange.thoughts)
        result = json.dumps(exchange.result, ensure_ascii=False)
        messages.append({"role": "assistant", "content": reply_json(call)})
        messages.append({"role": "user", "content": f"Result of {exchange.tool_name}: {result}"})
    return messages


def request_for(capsule: Capsule, setup: AgentSetup, budgets: Budgets, temperature: float) -> ChatRequest:
    """The chat request that asks ``capsule`` (see the module docstring)."""
    if capsule.kind == "exact":
        messages = [{"role": "system", "content": EXACT_SYSTEM}, {"role": "user", "content": capsule.prompt}]
        return ChatRequest(messages=messages, temperature=temperature, max_tokens=budgets.answer)
    if capsule.kind == "json_schema":
        system = JSON_SYSTEM + json.dumps(capsule.schema, ensure_ascii=False)
        return ChatRequest(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": capsule.prompt}],
            temperature=temperature,
            max_tokens=budgets.json,
            json_schema=capsule.schema,
            schema_name="reply",
        )
    return ChatRequest(
        messages=agent_messages(capsule, setup),
        temperature=temperature,
        max_tokens=budgets.agent,
        json_schema=decoding_schema(setup.tools, string_cap=agent_string_cap(budgets.agent)),
        schema_name="tool_call",
    )
