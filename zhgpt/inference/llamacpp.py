"""Run a zhgpt GGUF file in llama.cpp itself (through ``llama-cpp-python``, the ``[gguf]`` extra): token
ids, logits, greedy continuations and bits per character, for the checks that an export is faithful.
"""
from __future__ import annotations

import numpy as np

from zhgpt.errors import ZhgptError


def load(path, n_ctx: int = 0, vocab_only: bool = False, threads: int | None = None):
    """A ``llama_cpp.Llama`` for ``path`` with logits kept for every position."""
    try:
        import llama_cpp
    except ImportError:
        raise ZhgptError("checking a GGUF file in llama.cpp needs the gguf extra: pip install 'zhgpt[gguf]'") from None
    # n_ctx 0 = the model's context; a vocabulary-only file has none, so it gets a nominal one
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx or (512 if vocab_only else 0), logits_all=True, vocab_only=vocab_only,
                           n_threads=threads, verbose=False)


def tokenize(llm, text: str) -> list[int]:
    """llama.cpp's ids for ``text``, special tokens parsed, no BOS (as zhgpt's tokenizer does)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def logits(llm, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of one forward pass from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, ids: list[int], n: int) -> list[int]:
    """``n`` tokens by argmax after ``ids`` (no sampler, so no penalties or temperature get in the way)."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    return out


def windows(ids: list[int], window: int):
    """Chunks of ``window + 1`` tokens sharing one token with the next: inputs ``chunk[:-1]``, targets
    ``chunk[1:]``, so every token after the first is scored exactly once."""
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start: start + window + 1]
        if len(chunk) >= 2:
            yield chunk


def nats(llm, ids: list[int], window: int) -> tuple[float, int]:
    """(total next-token nats, tokens scored) over ``windows(ids, window)``; bits/char = nats / chars / ln 2."""
    total, count = 0.0, 0
    for chunk in windows(ids, window):
        lg = logits(llm, chunk[:-1]).astype(np.float64)
        lg -= lg.max(axis=1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return total, count
