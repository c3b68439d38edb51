"""The tiny UNTRAINED test models: deterministic builds, honest metadata, a tokenizer for any text."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import sentencepiece as spm

from skm_stack import tinyllm


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tinyllm.build(tmp_path_factory.mktemp("tinyllm"))


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_the_build_is_the_same_bytes_every_time(built: dict[str, Path], tmp_path: Path) -> None:
    again = tinyllm.build(tmp_path)
    assert list(again) == [model.name for model in tinyllm.TINY_MODELS]
    for name, path in built.items():
        assert again[name].read_bytes() == path.read_bytes(), name
    tokenizer = tinyllm.TOKENIZER_FILE
    assert (tmp_path / tokenizer).read_bytes() == (built[tinyllm.TINY_MODELS[0].name].parent / tokenizer).read_bytes()


def test_models_say_they_are_untrained_and_are_small(built: dict[str, Path]) -> None:
    for model in tinyllm.TINY_MODELS:
        path = built[model.name]
        assert path.stat().st_size < 4 * 1024 * 1024
        reader = gguf.GGUFReader(path)
        assert _field(reader, "general.name") == model.name
        assert "untrained" in model.name
        assert "UNTRAINED" in str(_field(reader, "general.description"))
        assert _field(reader, "general.architecture") == "llama"
        assert _field(reader, "llama.block_count") == model.n_layer
        assert _field(reader, "llama.embedding_length") == model.n_embd
        assert _field(reader, "tokenizer.chat_template") == tinyllm.CHATML_TEMPLATE


def test_chat_tokens_are_control_tokens_and_end_a_turn(built: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(built[tinyllm.TINY_MODELS[0].name])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert isinstance(tokens, list)
    assert isinstance(types, list)
    assert 1000 <= len(tokens) <= 4096
    for special in (tinyllm.IM_START, tinyllm.IM_END, "<s>"):
        assert types[tokens.index(special)] == gguf.TokenType.CONTROL
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokens.index("<s>")
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokens.index(tinyllm.IM_END)
    assert sum(1 for kind in types if kind == gguf.TokenType.BYTE) == 256


@pytest.mark.parametrize(
    "text",
    ['{"tool_name": "response", "tool_args": {"text": "ok"}}', "naïve café, 世界 🙂\n\ttabs\\slash", "\x01\x7f"],
)
def test_the_tokenizer_encodes_any_text_without_unknowns(built: dict[str, Path], text: str) -> None:
    folder = built[tinyllm.TINY_MODELS[0].name].parent
    processor = spm.SentencePieceProcessor(model_proto=(folder / tinyllm.TOKENIZER_FILE).read_bytes())
    ids = processor.encode(text)
    assert tinyllm.UNK_ID not in ids
    assert processor.decode(ids) == text


def test_the_cache_key_follows_the_seed_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = tinyllm.build_key()
    assert tinyllm.build_key() == key
    changed = tmp_path / "corpus.txt"
    changed.write_text(tinyllm.seed_text_path().read_text() + "One more sentence.\n")
    monkeypatch.setattr(tinyllm, "seed_text_path", lambda: changed)
    assert tinyllm.build_key() != key


def test_the_corpus_is_deterministic_and_a_few_hundred_kilobytes() -> None:
    seed = tinyllm.seed_text_path().read_text()
    corpus = tinyllm.generate_corpus(seed)
    assert corpus == tinyllm.generate_corpus(seed)
    assert 100_000 < sum(len(line) for line in corpus) < 2_000_000
