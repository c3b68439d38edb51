"""The LLM engine's request shim and grammar fix, and how the stack picks the models it serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skm_stack import llm, llm_engine
from skm_stack.health import StartError
from skm_stack.tinyllm import TINY_MODELS

SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 5}}, "required": ["text"]}


def test_json_schema_response_format_becomes_llama_cpps_json_object() -> None:
    body = {"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}
    rewritten = json.loads(llm_engine.rewrite_response_format(json.dumps(body).encode()))
    assert rewritten == {"model": "m", "response_format": {"type": "json_object", "schema": SCHEMA}}


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "response_format": {"type": "json_object", "schema": {}}}',
        b'{"model": "m"}',
        b"not json",
        b"[1, 2]",
    ],
)
def test_other_bodies_pass_unchanged(body: bytes) -> None:
    assert llm_engine.rewrite_response_format(body) == body


def test_schema_grammars_keep_control_characters_out_of_strings() -> None:
    from llama_cpp import llama_grammar

    before = llama_grammar.PRIMITIVE_RULES["char"]
    try:
        llm_engine.fix_string_grammar()
        grammar = llama_grammar.json_schema_to_gbnf(json.dumps(SCHEMA))
        assert llm_engine.JSON_STRING_CHAR in grammar
        assert llm_engine.fix_string_grammar() is False  # already fixed: left alone
    finally:
        llama_grammar.PRIMITIVE_RULES["char"] = before


def test_the_tiny_models_serve_by_default_in_tier_order() -> None:
    models = llm.served_models(report=lambda _line: None, env={})
    assert [m.alias for m in models] == [m.name for m in TINY_MODELS]
    assert all(m.untrained and m.path.is_file() for m in models)


def test_a_local_model_file_takes_tier_zero(tmp_path: Path) -> None:
    local = tmp_path / "small-instruct-q4.gguf"
    local.write_bytes(b"GGUF")
    models = llm.served_models(report=lambda _line: None, env={"SKM_STACK_LLM_MODEL": str(local)})
    assert [(m.alias, m.untrained) for m in models] == [("small-instruct-q4", False), (TINY_MODELS[1].name, True)]
    config = llm.server_config(models, 1234, env={})
    entries = config["models"]
    assert isinstance(entries, list)
    assert [e["model_alias"] for e in entries] == ["small-instruct-q4", TINY_MODELS[1].name]
    assert [e["embedding"] for e in entries] == [False, True]
    assert config["host"] == "127.0.0.1"
    assert config["port"] == 1234
    assert config["interrupt_requests"] is False


def test_a_missing_local_model_file_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(StartError, match="SKM_STACK_LLM_MODEL"):
        llm.served_models(report=lambda _line: None, env={"SKM_STACK_LLM_MODEL": str(tmp_path / "nope.gguf")})


def test_an_unreachable_hub_falls_back_to_the_tiny_model_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    lines: list[str] = []
    models = llm.served_models(report=lines.append, env={"SKM_STACK_LLM_FETCH": "someone/some-GGUF:model.gguf"})
    assert [m.alias for m in models] == [m.name for m in TINY_MODELS]
    assert any(line.startswith("!!!") and "someone/some-GGUF" in line for line in lines)
