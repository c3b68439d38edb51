"""Keeping a prompt within a model's context window, by estimate (no engine tokenizer asked)."""

from __future__ import annotations

from collections.abc import Sequence


def estimated_tokens(messages: Sequence[dict[str, str]], bytes_per_token: float) -> float:
    return sum(len(m["content"].encode()) for m in messages) / bytes_per_token


def fit_messages(messages: list[dict[str, str]], limit_bytes: int) -> list[dict[str, str]]:
    """``messages`` within ``limit_bytes`` of content: the longest ones (never the system
    prompt) lose their middle, marked, until the whole fits."""
    out = [dict(m) for m in messages]
    for _ in range(len(out)):
        total = sum(len(m["content"].encode()) for m in out)
        if total <= limit_bytes or len(out) < 2:
            break
        index = max(range(1, len(out)), key=lambda i: len(out[i]["content"]))
        text = out[index]["content"].encode()
        keep = max(len(text) - (total - limit_bytes) - 64, 256)
        if keep >= len(text):
            break
        head = text[: keep // 2].decode(errors="ignore")
        tail = text[len(text) - keep // 2 :].decode(errors="ignore")
        out[index]["content"] = f"{head}\n[... {len(text) - keep} bytes left out to fit the context ...]\n{tail}"
    return out
