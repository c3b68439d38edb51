"""The Embedder port on an OpenAI-compatible `/v1/embeddings` endpoint (vLLM, llama.cpp's
server, text-embeddings-inference, a hosted provider), e.g. BGE-large with 1024 dimensions.

One kept-alive httpx client; texts go in batches, each answer must hold one vector per
text of the configured size. Anything else (connection failure, a status other than 200,
a malformed body, a wrong vector size) is EmbeddingUnavailable: the caller stores nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from svc_tools.errors import EmbeddingUnavailable

# Texts per request; servers limit the batch (vLLM's default max_num_seqs is 256).
_BATCH = 64


class OpenAiEmbedder:
    """Embeddings from `{base_url}/embeddings`; `base_url` ends with `/v1`."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        dimensions: int,
        api_key: str = "",
        timeout_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_seconds, transport=transport
        )
        self._model = model
        self._dimensions = dimensions

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), _BATCH):
            vectors.extend(await self._batch(list(texts[start : start + _BATCH])))
        return vectors

    async def close(self) -> None:
        await self._client.aclose()

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        try:
            reply = await self._client.post(
                "/embeddings", json={"model": self._model, "input": texts, "encoding_format": "float"}
            )
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(
                "the embedding model cannot be reached", metadata={"error": type(exc).__name__}
            ) from exc
        if reply.status_code != 200:
            raise EmbeddingUnavailable(
                "the embedding model answered with an error", metadata={"status": str(reply.status_code)}
            )
        try:
            body: Any = reply.json()
            data = sorted(body["data"], key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingUnavailable("the embedding model's answer is not an embeddings list") from exc
        if len(vectors) != len(texts) or any(len(v) != self._dimensions for v in vectors):
            raise EmbeddingUnavailable(
                "the embedding model's answer does not match the configured vector size",
                metadata={"expected_dimensions": str(self._dimensions)},
            )
        return vectors
