"""The embedded LLM engine through its real HTTP server: the OpenAI API on tiny UNTRAINED models.

Every test starts the stack's ``llm`` server (llama-cpp-python on 127.0.0.1) and talks to it
as a service would, with httpx. The models' words are random: the tests check the protocol
and the format (streaming chunks, schema-constrained JSON, tool calls), never the meaning.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # jsonschema ships no type information
import pytest

from skm_stack import RunningStack, read_manifest
from skm_stack.process import ProcessRecord
from skm_stack.tinyllm import TINY_MODELS, ensure_tiny_models
from tests.conftest import StackFactory

TIER0, TIER1 = (model.name for model in TINY_MODELS)

TOOL_CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tool_name": {"enum": ["code_execution", "response"]},
        "tool_args": {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 40}},
            "required": ["text"],
        },
    },
    "required": ["tool_name", "tool_args"],
}
MESSAGES = [
    {"role": "system", "content": "Answer with one JSON tool call."},
    {"role": "user", "content": "Say hello to the operator."},
]


@pytest.fixture
def llm(stack_factory: StackFactory) -> RunningStack:
    return stack_factory(components=("llm",))


def _chat(stack: RunningStack, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{stack.llm_url}/chat/completions", json={"messages": MESSAGES, **body}, timeout=60)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _stream(stack: RunningStack, **body: Any) -> Iterator[dict[str, Any]]:
    request = {"messages": MESSAGES, "stream": True, **body}
    with httpx.stream("POST", f"{stack.llm_url}/chat/completions", json=request, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            yield json.loads(data)
    raise AssertionError("the stream ended without [DONE]")


def test_models_lists_both_tiers_and_the_stack_records_the_server(llm: RunningStack) -> None:
    response = httpx.get(f"{llm.llm_url}/models", timeout=10)
    response.raise_for_status()
    assert [entry["id"] for entry in response.json()["data"]] == [TIER0, TIER1]

    assert llm.llm_url.startswith("http://127.0.0.1:")
    assert llm.llm_url.endswith("/v1")
    env = llm.service_env()
    assert env["SKM_LLM_URL"] == llm.llm_url
    assert env["SKM_LLM_MODELS"] == f"{TIER0},{TIER1}"
    manifest = read_manifest(llm.state_dir)
    assert manifest is not None
    assert manifest["urls"]["llm"] == llm.llm_url
    (record,) = [ProcessRecord.from_json(p) for p in manifest["processes"] if p["name"] == "llm"]
    assert record.is_ours()


def test_streaming_chat_completion_sends_token_chunks_then_a_finish_reason(llm: RunningStack) -> None:
    chunks = list(_stream(llm, model=TIER0, max_tokens=100, seed=7))

    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(pieces) >= 50
    assert all(isinstance(piece, str) for piece in pieces)
    assert "".join(pieces).strip()
    assert {c["model"] for c in chunks} == {TIER0}
    # An untrained model rarely picks <|im_end|>: it runs to max_tokens.
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


RESPONSE_FORMATS = [
    # llama-cpp-python's own shape
    {"type": "json_object", "schema": TOOL_CALL_SCHEMA},
    # OpenAI's and vLLM's shape, which skm_stack.llm_engine hands on as the one above
    {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": TOOL_CALL_SCHEMA}},
]


def test_schema_constrained_output_is_valid_json_within_max_length(llm: RunningStack) -> None:
    for model in (TIER0, TIER1):
        for response_format in RESPONSE_FORMATS:
            lengths = []
            for seed in range(6):
                reply = _chat(
                    llm, model=model, max_tokens=300, seed=seed, temperature=1.0, response_format=response_format
                )
                choice = reply["choices"][0]
                assert choice["finish_reason"] == "stop", choice
                # Strict json.loads: a raw control character inside a string would fail here.
                call = json.loads(choice["message"]["content"])
                jsonschema.validate(call, TOOL_CALL_SCHEMA)
                lengths.append(len(call["tool_args"]["text"]))
            assert max(lengths) <= 40


def test_max_length_is_what_bounds_the_strings(llm: RunningStack) -> None:
    """Without maxLength the same requests write longer strings: the bound comes from the grammar."""
    unbounded = json.loads(json.dumps(TOOL_CALL_SCHEMA))
    del unbounded["properties"]["tool_args"]["properties"]["text"]["maxLength"]
    lengths = []
    for seed in range(6):
        reply = _chat(
            llm,
            model=TIER0,
            max_tokens=400,
            seed=seed,
            temperature=1.0,
            response_format={"type": "json_object", "schema": unbounded},
        )
        content = reply["choices"][0]["message"]["content"]
        if reply["choices"][0]["finish_reason"] == "stop":
            lengths.append(len(json.loads(content)["tool_args"]["text"]))
        else:
            lengths.append(len(content))  # cut off by max_tokens inside the string
    assert max(lengths) > 40


def test_named_tool_choice_returns_a_tool_call_matching_the_parameters(llm: RunningStack) -> None:
    tools = [{"type": "function", "function": {"name": "respond", "parameters": TOOL_CALL_SCHEMA}}]
    reply = _chat(
        llm,
        model=TIER1,
        max_tokens=300,
        seed=3,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "respond"}},
    )
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "respond"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL_CALL_SCHEMA)


def test_embeddings_are_one_mean_pooled_vector_per_input(llm: RunningStack) -> None:
    for model, width in ((TIER0, TINY_MODELS[0].n_embd), (TIER1, TINY_MODELS[1].n_embd)):
        response = httpx.post(
            f"{llm.llm_url}/embeddings", json={"model": model, "input": ["hello world", "goodbye"]}, timeout=60
        )
        assert response.status_code == 200, response.text
        vectors = [item["embedding"] for item in response.json()["data"]]
        assert len(vectors) == 2
        assert all(len(v) == width for v in vectors)
        assert vectors[0] != vectors[1]


def test_a_local_gguf_file_serves_as_tier_zero(
    stack_factory: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Any GGUF does; a copy of the tiny model under another name stands in for a real one.
    local = tmp_path / "local-instruct.gguf"
    shutil.copyfile(ensure_tiny_models()[TIER0], local)
    monkeypatch.setenv("SKM_STACK_LLM_MODEL", str(local))
    stack = stack_factory(components=("llm",))

    assert stack.llm is not None
    assert [(m.alias, m.untrained) for m in stack.llm.models] == [("local-instruct", False), (TIER1, True)]
    listed = httpx.get(f"{stack.llm_url}/models", timeout=10).json()["data"]
    assert [entry["id"] for entry in listed] == ["local-instruct", TIER1]
    reply = _chat(stack, model="local-instruct", max_tokens=8)
    assert reply["model"] == "local-instruct"
    assert reply["usage"]["completion_tokens"] > 0
