"""The OpenAI-compatible embeddings adapter against a scripted endpoint (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from svc_tools.adapters.openai_embeddings import OpenAiEmbedder
from svc_tools.errors import EmbeddingUnavailable

Handler = Callable[[httpx.Request], httpx.Response]


def embedder(handler: Handler, dimensions: int = 3) -> OpenAiEmbedder:
    return OpenAiEmbedder(
        "http://embeddings.invalid/v1",
        model="BAAI/bge-large-en-v1.5",
        dimensions=dimensions,
        api_key="k3y",
        transport=httpx.MockTransport(handler),
    )


def vectors_reply(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    # Answer out of order: the adapter must sort by index.
    data = [{"object": "embedding", "index": i, "embedding": [float(i), 1.0, 2.0]} for i in range(len(body["input"]))]
    return httpx.Response(200, json={"object": "list", "data": list(reversed(data)), "model": body["model"]})


async def test_texts_are_sent_in_batches_and_vectors_come_back_in_order() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return vectors_reply(request)

    port = embedder(handler)
    texts = [f"text {i}" for i in range(70)]
    vectors = await port.embed(texts)
    await port.close()
    assert [v[0] for v in vectors] == [float(i) for i in range(64)] + [float(i) for i in range(6)]
    assert [len(json.loads(r.content)["input"]) for r in seen] == [64, 6]
    first = seen[0]
    assert first.url == "http://embeddings.invalid/v1/embeddings"
    assert first.headers["authorization"] == "Bearer k3y"
    assert json.loads(first.content)["model"] == "BAAI/bge-large-en-v1.5"
    assert (port.model, port.dimensions) == ("BAAI/bge-large-en-v1.5", 3)


@pytest.mark.parametrize(
    "handler",
    [
        lambda request: httpx.Response(503, json={"error": "loading"}),
        lambda request: httpx.Response(200, content=b"not json"),
        lambda request: httpx.Response(200, json={"data": [{"index": 0}]}),
        lambda request: httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 2.0]}]}),
        lambda request: httpx.Response(200, json={"data": []}),
    ],
    ids=["status", "not-json", "no-embedding", "wrong-size", "too-few"],
)
async def test_any_bad_answer_is_embedding_unavailable(handler: Handler) -> None:
    port = embedder(handler)
    with pytest.raises(EmbeddingUnavailable):
        await port.embed(["one"])
    await port.close()


async def test_an_unreachable_endpoint_is_embedding_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    port = embedder(refuse)
    with pytest.raises(EmbeddingUnavailable) as raised:
        await port.embed(["one"])
    assert raised.value.metadata == {"error": "ConnectError"}
    await port.close()
