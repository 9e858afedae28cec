"""Token shards on disk: the artifact between the data stage and training.

A dataset folder looks like::

    DIR/meta.json              format, dtype, vocab, token/char/doc counts per split, sources, config
    DIR/tokenizer/             tokenizer.json (+ tokenizer_config.json) used to make the shards
    DIR/train_00000.bin ...    flat little-endian uint16 (vocab <= 65535) or uint32 token ids
    DIR/val_00000.bin ...

Every document is followed by the end-of-text token, so a shard is one long token stream and
training windows may cross document boundaries (as in GPT-2). Character counts include one
character per document for that separator (the newline it replaces), which is what
bits-per-character divides by.

Shards are memory-mapped: opening a 10 GB dataset costs no RAM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zhgpt.config import load_json, save_json
from zhgpt.errors import ZhgptError

FORMAT = "zhgpt-shards/1"
META = "meta.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard: large enough for few files, small enough to copy


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page-cache use while every id fits (vocab <= 65,536)."""
    return np.dtype(np.uint16) if vocab_size <= 2 ** 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays for one split to numbered shard files of at most ``shard_tokens`` each."""

    def __init__(self, out_dir, split: str, dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        self.out_dir, self.split, self.dtype = Path(out_dir), split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.tokens = self.chars = self.docs = 0
        self._f = None
        self._in_shard = 0

    def _open_next(self):
        self.close()
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._f = open(self.out_dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._in_shard = 0

    def write(self, ids, n_chars: int = 0, n_docs: int = 0) -> None:
        """Write a 1-D array of token ids (already including end-of-text separators)."""
        arr = np.asarray(ids)
        if arr.size and int(arr.max()) > np.iinfo(self.dtype).max:
            raise ZhgptError(f"token id {int(arr.max())} does not fit the shards' dtype {self.dtype}; "
                             "re-run `zhgpt data prepare` with --force so the dtype is chosen from the vocabulary")
        arr = arr.astype(self.dtype, copy=False)
        self.chars += n_chars
        self.docs += n_docs
        pos = 0
        while pos < arr.size:
            if self._f is None or self._in_shard >= self.shard_tokens:
                self._open_next()
            take = min(arr.size - pos, self.shard_tokens - self._in_shard)
            self._f.write(arr[pos:pos + take].tobytes())
            self._in_shard += take
            self.shards[-1]["tokens"] += take
            self.tokens += take
            pos += take

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def summary(self) -> dict:
        return {"shards": self.shards, "tokens": self.tokens, "chars": self.chars, "docs": self.docs}


@dataclass
class Split:
    """One split of a dataset: memory-mapped shards plus its counts."""
    name: str
    arrays: list = field(default_factory=list)   # list[np.memmap], one per shard
    tokens: int = 0
    chars: int = 0
    docs: int = 0

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.tokens, 1)


class TokenDataset:
    """A prepared dataset folder opened read-only."""

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.is_file():
            raise ZhgptError(f"{self.path}: not a prepared dataset (no {META}); "
                             "create one with `zhgpt data prepare SOURCES --out DIR`")
        self.meta = load_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise ZhgptError(f"{meta_path}: unknown dataset format {self.meta.get('format')!r} "
                             f"(expected {FORMAT}); re-run `zhgpt data prepare --force`")
        self.dtype = np.dtype(self.meta["dtype"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.eot_id = int(self.meta["eot_id"])
        self.tokenizer_dir = self.path / TOKENIZER_DIR
        self.splits: dict[str, Split] = {}
        for name, info in self.meta["splits"].items():
            split = Split(name, tokens=int(info["tokens"]), chars=int(info["chars"]), docs=int(info.get("docs", 0)))
            for sh in info["shards"]:
                f = self.path / sh["file"]
                expected = int(sh["tokens"]) * self.dtype.itemsize
                if not f.is_file() or f.stat().st_size != expected:
                    got = f.stat().st_size if f.is_file() else "missing"
                    raise ZhgptError(f"{f}: shard is damaged (size {got}, expected {expected} bytes); "
                                     "re-run `zhgpt data prepare ... --force`")
                if sh["tokens"]:
                    split.arrays.append(np.memmap(f, dtype=self.dtype, mode="r"))
            self.splits[name] = split

    def split(self, name: str) -> Split:
        if name not in self.splits or self.splits[name].tokens == 0:
            raise ZhgptError(f"{self.path}: dataset has no {name!r} tokens; re-prepare it with a "
                             "larger corpus or --val-fraction / --val-source")
        return self.splits[name]

    @property
    def tokenizer_hash(self) -> str:
        return self.meta.get("tokenizer_hash", "")


def write_meta(out_dir, meta: dict) -> None:
    meta = {"format": FORMAT, **meta}
    save_json(Path(out_dir) / META, meta)


