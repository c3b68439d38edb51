"""The LLM engine's own process: llama-cpp-python's OpenAI-compatible server, two fixes applied.

``python -m skm_stack.llm_engine --config_file FILE`` takes the same config file as
``python -m llama_cpp.server`` (skm_stack.llm writes it) and serves the same app, with:

1. JSON strings in schema grammars exclude raw control characters. llama-cpp-python 0.3.36
   builds ``response_format`` schemas and named ``tool_choice`` parameters into a grammar
   whose string characters are ``[^"\\]``, so a model may emit a raw U+0000..U+001F inside
   a string, which is not JSON (``json.loads`` rejects it). The fixed rule is the one its
   plain JSON grammar already uses.
2. ``response_format={"type": "json_schema", "json_schema": {"schema": ...}}`` (the shape of
   OpenAI and vLLM) is accepted and handed on as llama-cpp-python's own
   ``{"type": "json_object", "schema": ...}``, so services send one request shape to either.

Nothing else differs; the config file alone decides host, port and models (the ``HOST``,
``PORT`` and ``CONFIG_FILE`` variables that ``llama_cpp.server`` would also read are ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What a JSON string may hold: any character but '"', '\' and the control characters, or an escape.
JSON_STRING_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
# The rule as llama-cpp-python 0.3.36 ships it: fixed only while it still starts like this.
_UNFIXED_CHAR_PREFIX = '[^"\\\\] |'


def fix_string_grammar() -> bool:
    """Make schema grammars' strings exclude control characters; True if the rule was changed."""
    from llama_cpp import llama_grammar

    rule = llama_grammar.PRIMITIVE_RULES["char"]
    if not rule.content.startswith(_UNFIXED_CHAR_PREFIX):
        return False
    llama_grammar.PRIMITIVE_RULES["char"] = llama_grammar.BuiltinRule(JSON_STRING_CHAR, rule.deps)
    return True


def rewrite_response_format(body: bytes) -> bytes:
    """A chat completion request with a ``json_schema`` response format, in llama-cpp-python's shape.

    Any other body (including one that is not JSON: the server reports that) comes back as is.
    """
    try:
        request = json.loads(body)
    except ValueError:
        return body
    response_format = request.get("response_format") if isinstance(request, dict) else None
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return body
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    request["response_format"] = {"type": "json_object", **({"schema": schema} if schema is not None else {})}
    return json.dumps(request).encode()


class JsonSchemaResponseFormat:
    """ASGI middleware: applies :func:`rewrite_response_format` to chat completion requests."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away before its request was complete: nothing to serve.
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = rewrite_response_format(b"".join(chunks))
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, the server only listens for the client going away.
            message: dict[str, Any] = await receive()
            return message

        await self.app({**scope, "headers": headers}, replay, send)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skm_stack.llm_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", type=Path, required=True, help="llama-cpp-python's multi-model config (JSON)")
    args = parser.parse_args(argv)

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

    # create_app() would prefer a config file named in the environment to the one given here.
    os.environ.pop("CONFIG_FILE", None)
    if not fix_string_grammar():
        print("llm_engine: llama-cpp-python's JSON string rule changed; left as it is", file=sys.stderr)
    config = ConfigFileSettings.model_validate_json(args.config_file.read_bytes())
    server = ServerSettings.model_validate(config)
    app = create_app(server_settings=server, model_settings=config.models)
    uvicorn.run(JsonSchemaResponseFormat(app), host=server.host, port=server.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
