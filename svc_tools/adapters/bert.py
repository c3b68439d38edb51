"""A sentence-transformers BERT encoder (all-MiniLM-L6-v2 by default) run with numpy: no torch.

The model folder is a sentence-transformers export: `config.json` (the BERT shape),
`model.safetensors` (the weights), `tokenizer.json`, `sentence_bert_config.json` (the longest
input in word pieces), `1_Pooling/config.json` (how token vectors become one vector) and
`modules.json` (whether a Normalize module follows). The forward pass is BERT's, exactly:
embeddings (word + position + token type 0) and LayerNorm, then per layer multi-head
self-attention with the padding masked out, residual and LayerNorm, a GELU (erf) feed
forward, residual and LayerNorm; then the pooling the folder names (mean over real tokens,
or the [CLS] vector), then L2 normalisation when the model has it.

Checked against published figures of all-MiniLM-L6-v2 (tests/unit/test_embed_bert.py):
sbert.net's similarity examples and fastembed's reference vector agree to 1e-4.

Encoding runs in worker threads (numpy's matrix products release the GIL), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from svc_tools.errors import EmbeddingUnavailable

Array = npt.NDArray[np.float32]

# Texts encoded together; sorted by length first so that a batch pads little.
_BATCH = 32
# Abramowitz & Stegun 7.1.26: erf within 1.5e-7, enough for float32 activations.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
_INV_SQRT2 = np.float32(1 / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: Array  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_bias: Array
    attention_out: Array
    attention_out_bias: Array
    attention_norm: tuple[Array, Array]
    intermediate: Array
    intermediate_bias: Array
    output: Array
    output_bias: Array
    output_norm: tuple[Array, Array]


class BertEmbedder:
    """The Embedder port on a local sentence-transformers BERT model folder."""

    def __init__(self, folder: Path, *, model: str, threads: int = 1) -> None:
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"not a BERT model with GELU activations: {folder.name}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        self._model = model
        self._hidden = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._eps = np.float32(config.get("layer_norm_eps", 1e-12))
        self._max_tokens = min(_max_seq_length(folder), int(config["max_position_embeddings"]))
        self._pooling = _pooling_of(folder)
        self._normalize = _has_normalize(folder)

        weights = load_file(str(folder / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""

        def w(name: str) -> Array:
            return np.ascontiguousarray(weights[prefix + name], dtype=np.float32)

        def linear(name: str) -> Array:
            # Stored as (out, in); kept as (in, out) so that x @ W needs no transpose per call.
            return np.ascontiguousarray(w(f"{name}.weight").T)

        self._word = w("embeddings.word_embeddings.weight")
        self._position = w("embeddings.position_embeddings.weight")
        self._token_type = w("embeddings.token_type_embeddings.weight")[0]
        self._embedding_norm = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self._layers = []
        for index in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{index}."
            self._layers.append(
                _Layer(
                    qkv=np.ascontiguousarray(
                        np.concatenate(
                            [linear(p + f"attention.self.{part}") for part in ("query", "key", "value")], axis=1
                        )
                    ),
                    qkv_bias=np.concatenate(
                        [w(p + f"attention.self.{part}.bias") for part in ("query", "key", "value")]
                    ),
                    attention_out=linear(p + "attention.output.dense"),
                    attention_out_bias=w(p + "attention.output.dense.bias"),
                    attention_norm=(
                        w(p + "attention.output.LayerNorm.weight"),
                        w(p + "attention.output.LayerNorm.bias"),
                    ),
                    intermediate=linear(p + "intermediate.dense"),
                    intermediate_bias=w(p + "intermediate.dense.bias"),
                    output=linear(p + "output.dense"),
                    output_bias=w(p + "output.dense.bias"),
                    output_norm=(w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")),
                )
            )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # sentence-transformers pads to the longest text of a batch and truncates at the
        # model's max_seq_length, whatever tokenizer.json says.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self._max_tokens)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bert")

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._hidden

    @property
    def max_tokens(self) -> int:
        """Word pieces per text the model reads; the rest of a longer text is ignored."""
        return self._max_tokens

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self.encode, list(texts))
        except RuntimeError as exc:  # the executor was shut down: the service is stopping
            raise EmbeddingUnavailable("the embedding model is not available") from exc
        rows: list[list[float]] = vectors.tolist()
        return rows

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def encode(self, texts: Sequence[str]) -> Array:
        """Unit vectors (or pooled vectors, for a model without Normalize), one row per
        text, in order. Blocking: call it off the event loop."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result = np.empty((len(texts), self._hidden), dtype=np.float32)
        for start in range(0, len(order), _BATCH):
            chosen = order[start : start + _BATCH]
            result[chosen] = self._encode_batch([texts[i] for i in chosen])
        return result

    def _encode_batch(self, texts: list[str]) -> Array:
        encodings = self._tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        count = len(encodings)
        ids = np.zeros((count, length), dtype=np.int64)
        mask = np.zeros((count, length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        x = self._word[ids] + self._position[:length] + self._token_type
        x = _layer_norm(x.reshape(count * length, self._hidden), *self._embedding_norm, self._eps)
        # Padding positions get a large negative score: softmax gives them no weight.
        padding = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            x = self._layer(x, layer, count, length, padding)
        tokens = x.reshape(count, length, self._hidden)
        if self._pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = (tokens * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self._normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32, copy=False)

    def _layer(self, x: Array, layer: _Layer, count: int, length: int, padding: Array) -> Array:
        hidden, heads = self._hidden, self._heads
        size = hidden // heads
        qkv = x @ layer.qkv + layer.qkv_bias
        # (count, length, 3, heads, size) -> three (count, heads, length, size)
        qkv = qkv.reshape(count, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        scores = query @ key.transpose(0, 1, 3, 2) * np.float32(1 / math.sqrt(size)) + padding
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(count * length, hidden)
        x = _layer_norm(
            x + (context @ layer.attention_out + layer.attention_out_bias), *layer.attention_norm, self._eps
        )
        inner = _gelu(x @ layer.intermediate + layer.intermediate_bias)
        return _layer_norm(x + (inner @ layer.output + layer.output_bias), *layer.output_norm, self._eps)


def _layer_norm(x: Array, gain: Array, bias: Array, eps: np.float32) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    result: Array = centred / np.sqrt(variance + eps) * gain + bias
    return result


def _gelu(x: Array) -> Array:
    """BERT's GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26."""
    z = x * _INV_SQRT2
    a = np.abs(z)
    t = 1.0 / (1.0 + _ERF_P * a)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a1 * t + a2) * t + a3) * t + a4) * t + a5) * t
    erf = 1.0 - poly * np.exp(-a * a)
    np.copysign(erf, z, out=erf)
    result: Array = 0.5 * x * (1.0 + erf)
    return result


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _max_seq_length(folder: Path) -> int:
    config = _read_json(folder / "sentence_bert_config.json") or {}
    return int(config.get("max_seq_length", 512))


def _pooling_of(folder: Path) -> str:
    modules = _read_json(folder / "modules.json") or []
    path = next((m["path"] for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
    config = _read_json(folder / path / "config.json") or {"pooling_mode_mean_tokens": True}
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError("only mean or [CLS] pooling is supported")


def _has_normalize(folder: Path) -> bool:
    modules = _read_json(folder / "modules.json") or []
    return any(m.get("type", "").endswith(".Normalize") for m in modules)
