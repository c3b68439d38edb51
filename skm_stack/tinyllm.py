"""Tiny UNTRAINED Llama models in GGUF, built here from nothing but code and a little text.

No model hub is reachable from the machines this project is developed on, so the embedded
LLM engine (skm_stack.llm) serves test models that the project builds itself:

- a SentencePiece BPE tokenizer (about 2k pieces) trained on a corpus generated
  deterministically from ``deploy/llm/corpus.txt``, with byte fallback so that every UTF-8
  string (JSON punctuation, code, any language) is encodable, and the ChatML control tokens
  ``<|im_start|>`` / ``<|im_end|>``;
- Llama-architecture weights drawn from a seeded normal distribution: the models run through
  llama.cpp exactly as a real model does, but what they say is random and MEANINGLESS.

Everything is seeded, so a build is the same bytes every time. Outputs are cached under
``.cache/models/tinyllm-<key>/``, where the key hashes this file, the seed text and the
versions of the libraries that write them: reruns are instant and a change rebuilds.

``python -m skm_stack.tinyllm [--out DIR]`` builds into DIR (or fills the cache) and prints
where the files are.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import io
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm

from skm_stack.paths import cache_dir, deploy_dir

UNTRAINED_NOTE = (
    "UNTRAINED: random weights built by skm_stack.tinyllm for tests; its answers are meaningless "
    "(only the format, e.g. grammar-constrained JSON, is real)"
)
CONTEXT_LENGTH = 8192
VOCAB_SIZE = 2048
TOKENIZER_FILE = "tokenizer.model"

# Token ids fixed by the tokenizer training below.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML, as every ChatML model writes it: each message framed by the two control tokens,
# then the opening of the assistant's turn when a reply is wanted.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_SEED = 20240517
_CORPUS_MARKOV_SENTENCES = 6000
_CORPUS_JSON_LINES = 2500


@dataclass(frozen=True)
class TinyModel:
    """One model tier: its alias (also the GGUF's general.name), shape and weight seed."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.name}.gguf"


# In tier order: the conversation service's primary (tier 0) and its larger sibling (tier 1).
TINY_MODELS: tuple[TinyModel, ...] = (
    TinyModel("skm-tiny-untrained", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=192, seed=1),
    TinyModel("skm-tiny-untrained-large", n_layer=4, n_embd=128, n_head=4, n_head_kv=2, n_ff=384, seed=2),
)


# -- corpus ----------------------------------------------------------------------------


def seed_text_path() -> Path:
    return deploy_dir() / "llm" / "corpus.txt"


def _seed_sentences(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def generate_corpus(seed_text: str) -> list[str]:
    """The tokenizer's training text: the seed sentences, recombined ones and JSON tool calls.

    Recombination is a first-order Markov chain over the seed's words, so the pieces the
    tokenizer learns are English words and their parts; the JSON lines teach it the
    punctuation of tool calls. Deterministic for a given seed text.
    """
    rng = random.Random(_CORPUS_SEED)
    sentences = _seed_sentences(seed_text)
    lines = list(sentences) * 3

    successors: dict[str, list[str]] = {}
    starts: list[str] = []
    for sentence in sentences:
        words = sentence.split()
        starts.append(words[0])
        for current, following in zip(["<s>", *words], [*words, "</s>"], strict=True):
            successors.setdefault(current, []).append(following)
    for _ in range(_CORPUS_MARKOV_SENTENCES):
        word, words = rng.choice(starts), []
        while word != "</s>" and len(words) < 30:
            words.append(word)
            word = rng.choice(successors[word])
        lines.append(" ".join(words))

    fragments = [re.sub(r"[\"\\]", "", s)[: rng.randint(8, 60)].strip() for s in sentences]
    programs = ["print(1 + 2)", "print(sum(range(10)))", "x = [i * i for i in range(5)]\nprint(x)", "import math"]
    for _ in range(_CORPUS_JSON_LINES):
        if rng.random() < 0.7:
            text = rng.choice(fragments)
            lines.append(f'{{"tool_name": "response", "tool_args": {{"text": "{text}"}}}}')
        else:
            code = rng.choice(programs).replace("\n", "\\n")
            lines.append(f'{{"tool_name": "code_execution", "tool_args": {{"text": "{code}"}}}}')
    rng.shuffle(lines)
    return lines


# -- tokenizer -------------------------------------------------------------------------


def train_tokenizer(corpus: Sequence[str]) -> bytes:
    """A SentencePiece BPE model (serialized) in the layout llama.cpp's SPM tokenizer expects."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        # Not a hard limit: a small corpus may offer fewer merges; the result stays deterministic.
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        control_symbols=[IM_START, IM_END],
        # One thread and no sampling of the input: the same pieces on every run.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer as GGUF stores it: pieces, their scores and llama.cpp token types."""

    pieces: list[str]
    scores: list[float]
    types: list[int]

    def id_of(self, piece: str) -> int:
        return self.pieces.index(piece)


def vocabulary(tokenizer_model: bytes) -> Vocabulary:
    processor = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    pieces, scores, types = [], [], []
    for token_id in range(processor.get_piece_size()):
        pieces.append(processor.id_to_piece(token_id))
        scores.append(float(processor.get_score(token_id)))
        if processor.is_unknown(token_id):
            kind = gguf.TokenType.UNKNOWN
        elif processor.is_control(token_id):
            kind = gguf.TokenType.CONTROL
        elif processor.is_byte(token_id):
            kind = gguf.TokenType.BYTE
        elif processor.is_unused(token_id):
            kind = gguf.TokenType.UNUSED
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return Vocabulary(pieces, scores, types)


# -- weights ---------------------------------------------------------------------------


def _tensor_name(kind: gguf.MODEL_TENSOR, block: int | None = None) -> str:
    template = gguf.TENSOR_NAMES[kind]
    return (template.format(bid=block) if block is not None else template) + ".weight"


def _random_weights(model: TinyModel, n_vocab: int) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of a Llama model, as (GGUF name, array shaped [out, in]); seeded."""
    rng = np.random.default_rng(model.seed)
    head_dim = model.n_embd // model.n_head
    n_embd_kv = head_dim * model.n_head_kv

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(model.n_embd, dtype=np.float32)

    t = gguf.MODEL_TENSOR
    yield _tensor_name(t.TOKEN_EMBD), matrix(n_vocab, model.n_embd)
    for block in range(model.n_layer):
        yield _tensor_name(t.ATTN_NORM, block), norm()
        yield _tensor_name(t.ATTN_Q, block), matrix(model.n_embd, model.n_embd)
        yield _tensor_name(t.ATTN_K, block), matrix(n_embd_kv, model.n_embd)
        yield _tensor_name(t.ATTN_V, block), matrix(n_embd_kv, model.n_embd)
        yield _tensor_name(t.ATTN_OUT, block), matrix(model.n_embd, model.n_embd)
        yield _tensor_name(t.FFN_NORM, block), norm()
        yield _tensor_name(t.FFN_GATE, block), matrix(model.n_ff, model.n_embd)
        yield _tensor_name(t.FFN_UP, block), matrix(model.n_ff, model.n_embd)
        yield _tensor_name(t.FFN_DOWN, block), matrix(model.n_embd, model.n_ff)
    yield _tensor_name(t.OUTPUT_NORM), norm()
    yield _tensor_name(t.OUTPUT), matrix(n_vocab, model.n_embd)


def write_gguf(model: TinyModel, vocab: Vocabulary, path: Path) -> None:
    """Write one tiny model: Llama hyperparameters, the tokenizer, ChatML, random weights."""
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(model.name)
    writer.add_description(f"{model.name}: {UNTRAINED_NOTE}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(model.n_embd)
    writer.add_block_count(model.n_layer)
    writer.add_feed_forward_length(model.n_ff)
    writer.add_head_count(model.n_head)
    writer.add_head_count_kv(model.n_head_kv)
    writer.add_rope_dimension_count(model.n_embd // model.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    # For /v1/embeddings (a context with embeddings on): one mean-pooled vector per input.
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_vocab_size(len(vocab.pieces))

    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.pieces)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(BOS_ID)
    # A chat turn ends with <|im_end|>: it is the end-of-generation token, as in ChatML models.
    writer.add_eos_token_id(vocab.id_of(IM_END))
    writer.add_eot_token_id(vocab.id_of(IM_END))
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, tensor in _random_weights(model, len(vocab.pieces)):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- building and caching ----------------------------------------------------------------


def build(out: Path, models: Sequence[TinyModel] = TINY_MODELS) -> dict[str, Path]:
    """Build the tokenizer and every model into ``out``; return alias -> GGUF path."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_model = train_tokenizer(generate_corpus(seed_text_path().read_text(encoding="utf-8")))
    (out / TOKENIZER_FILE).write_bytes(tokenizer_model)
    vocab = vocabulary(tokenizer_model)
    paths = {}
    for model in models:
        path = out / model.file_name
        write_gguf(model, vocab, path)
        paths[model.name] = path
    return paths


def build_key() -> str:
    """Hash of everything a build depends on: this code, the seed text, the writers' versions."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(seed_text_path().read_bytes())
    for package in ("gguf", "sentencepiece", "numpy"):
        digest.update(f"{package}=={importlib.metadata.version(package)}\n".encode())
    return digest.hexdigest()[:16]


def models_dir() -> Path:
    return cache_dir() / "models"


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "tinyllm.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny_models(report: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The tiny models from the cache, built first when missing; alias -> GGUF path, in tier order.

    ``report`` gets one line when a build happens. Concurrent callers wait
    on a lock file; a build goes to a side folder that is renamed into place when complete.
    """
    root = models_dir()
    target = root / f"tinyllm-{build_key()}"
    paths = {model.name: target / model.file_name for model in TINY_MODELS}
    if all(path.is_file() for path in paths.values()):
        return paths
    with _build_lock(root):
        if all(path.is_file() for path in paths.values()):
            return paths
        if report is not None:
            report(f"building the tiny UNTRAINED test models into {target}...")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return paths


def describe(paths: Mapping[str, Path]) -> str:
    return "\n".join(f"{name}\t{path}\t{path.stat().st_size} bytes" for name, path in paths.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skm_stack.tinyllm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="build into this folder (default: the cache under .cache/models)")
    args = parser.parse_args(argv)
    paths = build(args.out) if args.out else ensure_tiny_models()
    print(describe(paths))
    print(f"NOTE: {UNTRAINED_NOTE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
