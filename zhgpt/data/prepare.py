"""`zhgpt data prepare SOURCES... --out DIR`: sources -> clean -> split -> tokenizer -> token shards.

Streamed end to end: the corpus is never held in memory. The passes:

1. (only when a tokenizer is trained) read + clean every document, keep its (hash, chars) in two
   flat arrays to fix the validation split, and keep a bounded, uniform sample of the training
   documents (at most ``--sample-chars``) to train the tokenizer on. With ``--near-dup`` this pass
   also decides which documents are near-duplicates (``zhgpt.data.neardup``); pass 2 replays that.
2. read + clean again and tokenise in batches with ``encode_batch`` (Rust, parallel, GIL released,
   so the next batch is read and cleaned while the previous one is encoded). Every document's ids
   plus ``<|endoftext|>`` go to one temporary token stream; per document we keep hash, chars,
   tokens and repeats.
3. split: validation = the documents whose hash is below a threshold (``zhgpt.data.clean``), train =
   the rest, each repeated per its source weight. The stream is copied into
   ``{train,val}_NNNNN.bin`` shards chunk by chunk (memory-mapped), then deleted.

Everything is written into a temporary folder beside ``--out`` and renamed into place at the end, so
an interrupted run never leaves a folder that looks complete. A second run with the same inputs
(paths, sizes, modification times) and the same output-changing settings finds ``meta.json`` with the
same ``cache_key`` and stops ("up to date") unless ``--force``.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import heapq
import json
import os
import shutil
import sys
import time
from array import array
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from zhgpt.data import shards
from zhgpt.data.clean import Cleaner, CleanOptions, repeats, val_threshold
from zhgpt.config import add_args, from_args, narrow, opt, print_config
from zhgpt.core.files import new_temp_dir, replace_dir
from zhgpt.errors import ZhgptError
from zhgpt.data.neardup import NearDupIndex, mix64
from zhgpt.data.ngram_index import BloomBuilder
from zhgpt.data.sources import ReadOptions, ReadStats, expand_sources, iter_documents
from zhgpt.data.tokenizer import (KINDS, default_sample_chars, default_vocab_size, eot_id, load_tokenizer,
                             save_tokenizer, tokenizer_hash, tokenizer_kind, train_tokenizer)

# Bump when a change here changes the bytes written for the same inputs (invalidates caches).
# 2: the copy index (train_ngrams8.bloom), so that cached datasets gain one.
PREPARE_VERSION = 2
# Characters per encode_batch call: ~0.75 MB of CJK text, ~2.5k short documents; big enough that the
# Rust thread pool has work for every core, small enough that reading + cleaning the next batch (Python,
# this thread) overlaps the encoding of most of the corpus (builtin, 2 idle cores, best of 4 rounds:
# 100k chars a batch 6.1 MB/s, 250k 6.4, 500k 6.3, 1M 6.1; the first batches are smaller, see below).
BATCH_CHARS = 250_000
# Documents per chunk when the token stream is split into shards (bounded memory at any size).
SPLIT_CHUNK_TOKENS = 16_000_000
STREAM = ".stream"         # temporary token stream inside the temp folder
PROGRESS_EVERY_S = 10.0    # plain progress lines (stderr not a TTY)
_MASK64 = (1 << 64) - 1

# Settings that change the output: they (and the inputs' path/size/mtime) make up the cache key.
_KEY_FIELDS = ("sources", "tokenizer", "vocab_size", "sample_chars", "val_fraction", "min_val_docs",
               "min_val_chars", "val_source", "min_chars", "encoding", "errors", "doc_sep", "field",
               "skip_bad_lines", "t2s", "max_doc_chars", "nfkc", "dedup", "shard_tokens", "model_max_length",
               "copy_index")
# Added to the key only with --near-dup, so that datasets prepared without it keep their cache key.
_NEAR_DUP_KEY_FIELDS = ("near_dup", "near_dup_threshold", "near_dup_ngram")
# Raw characters of documents cleaned together with --near-dup: its hashing is vectorised over a
# batch (~50 bytes of temporaries a character: ~13 MB). Without it batching buys nothing, and small
# batches let the first documents reach the encoder sooner.
CLEAN_BATCH_CHARS = 256_000
CLEAN_BATCH_CHARS_EXACT = 16_000


@dataclass(kw_only=True)
class DataConfig(ReadOptions, CleanOptions):
    """`zhgpt data prepare` settings: its own fields below plus how to read (ReadOptions) and clean
    (CleanOptions) the documents, whose fields and checks are inherited, not repeated."""
    sources: list[str] = opt(help="text sources: files, folders, globs, builtin, builtin:people-daily, "
                                  "builtin:reviews; PATH@WEIGHT repeats a source (wiki.jsonl@2, crawl/@0.5)",
                             positional=True)
    out: str = opt("", "dataset folder to write (required)")
    tokenizer: str = opt("bpe", "bpe, unigram or char to train one on the training split, or the path of "
                                "a tokenizer folder / tokenizer.json / Hugging Face model folder to use as is")
    vocab_size: int | None = opt(None, "vocabulary size of a trained tokenizer (default: 32000 for bpe and "
                                       "unigram, at most 8000 for char)")
    sample_chars: int | None = opt(None, "characters of training text the tokenizer is trained on (default: "
                                         "10M bpe, 4M unigram, 20M char: about a minute or less on 2 cores)")
    model_max_length: int = opt(1024, "model_max_length written to tokenizer_config.json")
    val_fraction: float = opt(0.005, "share of documents (picked by hash) in the validation split")
    min_val_docs: int = opt(300, "the validation split gets at least this many documents ...")
    min_val_chars: int = opt(50_000, "... or this many characters, whichever is reached first (never more "
                                     "than half the corpus)")
    val_source: str | None = opt(None, "a source used as the whole validation split instead (e.g. a fixed "
                                       "benchmark text); the sources then all go to train")
    workers: int = opt(0, "tokenizer threads (0 = all cores)")
    shard_tokens: int = opt(shards.DEFAULT_SHARD_TOKENS, "tokens per shard file")
    copy_index: bool = opt(True, "build the copy index: a Bloom filter of the training text's 8-character "
                                 "spans (~1.25 bytes per character), which training uses to measure how much "
                                 "of the generated text is copied (copy_rate)")
    force: bool = opt(False, "rebuild even if the folder is up to date")
    quiet: bool = opt(False, "print nothing but errors")

    def __post_init__(self):
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        self.sources = [str(s) for s in (self.sources or [])]
        if not self.sources:
            raise ZhgptError("no sources given; name files, folders, globs or builtin "
                             "(e.g. zhgpt data prepare builtin --out data/builtin)")
        if not self.out:
            raise ZhgptError("--out is required: the dataset folder to write, e.g. --out data/mycorpus")
        self.tokenizer = str(self.tokenizer or "bpe")
        if self.tokenizer not in KINDS and not Path(self.tokenizer).expanduser().exists():
            raise ZhgptError(f"--tokenizer {self.tokenizer}: neither {', '.join(KINDS)} nor an existing "
                             "tokenizer folder or tokenizer.json")
        if self.vocab_size is not None and self.vocab_size < 300:
            raise ZhgptError(f"--vocab-size {self.vocab_size} is too small: the vocabulary holds "
                             "<|endoftext|> and 256 byte tokens before any text; use at least 300")
        if self.sample_chars is not None and self.sample_chars < 1:
            raise ZhgptError(f"--sample-chars {self.sample_chars} must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ZhgptError(f"--val-fraction {self.val_fraction} must be at least 0 and below 1 (e.g. 0.005)")
        for name in ("min_val_docs", "min_val_chars", "workers"):
            if getattr(self, name) < 0:
                raise ZhgptError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("shard_tokens", "model_max_length"):
            if getattr(self, name) < 1:
                raise ZhgptError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        self.val_source = self.val_source or None
        ReadOptions.__post_init__(self)     # validates encoding, errors, doc_sep, field, max_doc_chars
        CleanOptions.__post_init__(self)

    def read_options(self) -> ReadOptions:
        return narrow(self, ReadOptions)

    def clean_options(self) -> CleanOptions:
        return narrow(self, CleanOptions)

    @property
    def trains_tokenizer(self) -> bool:
        return self.tokenizer in KINDS


# ----------------------------------------------------------------------------------------------
# progress

class Progress:
    """Bytes read: a tqdm bar with MB/s when stderr is a TTY, plain lines every 10 s otherwise."""

    def __init__(self, desc: str, total_bytes: int, quiet: bool):
        self.desc, self.total, self.quiet = desc, max(total_bytes, 1), quiet
        self.done, self.t0, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                            dynamic_ncols=True, leave=False)

    def update(self, done: int) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(max(0, min(done, self.total) - self.bar.n))
            return
        self.done = done
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            print(f"{self.desc}: {done / 1e6:,.1f} / {self.total / 1e6:,.1f} MB "
                  f"({100 * done / self.total:.0f} %), {rate / 1e6:.1f} MB/s, ETA {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(cfg: DataConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# reading

def _batches(docs, max_chars: int):
    """Lists of consecutive documents of about ``max_chars`` characters (at least one each)."""
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _RecordedNearDups:
    """--near-dup decisions made in the first pass and replayed in the second pass over the same
    documents, which then skips the MinHash work (~0.5 s of the ~1 s it adds on the builtin corpus)."""

    def __init__(self, cfg: DataConfig):
        self._index = NearDupIndex(cfg.near_dup_threshold, cfg.near_dup_ngram)
        self._keep = array("B")      # one byte per document that survived exact dedup
        self._pos: int | None = None  # None while recording, the replay position after ``replay()``

    def replay(self) -> _RecordedNearDups:
        """Switch to replaying (the second pass); the index of the first pass is freed."""
        self._index, self._pos = None, 0
        return self

    def add_many(self, texts: list[str]) -> list[bool]:
        if self._pos is None:
            keep = self._index.add_many(texts)
            self._keep.extend(keep)
            return keep
        keep = self._keep[self._pos:self._pos + len(texts)]
        if len(keep) != len(texts):
            raise ZhgptError("the sources changed while they were being prepared (more documents in the "
                             "second pass than in the first); run zhgpt data prepare again")
        self._pos += len(texts)
        return [bool(k) for k in keep]


class _Reader:
    """Cleaned documents of the val source (first, so train copies -- and with --near-dup near
    copies -- of val text are dropped as duplicates) and then of the sources, with read statistics
    and the cleaner's counts. ``near``: the near-duplicate filter for the cleaner (see
    ``_RecordedNearDups``)."""

    def __init__(self, cfg: DataConfig, files, val_files, near=None):
        self.cfg, self.files, self.val_files = cfg, files, val_files
        self.stats, self.val_stats = ReadStats(), ReadStats()
        self.cleaner = Cleaner(cfg.clean_options(), near=near)
        self.counts = {"train": [0, 0], "val": [0, 0]}    # [kept, dropped] documents per origin
        self.dropped = {"train": Counter(), "val": Counter()}   # drop reasons per origin

    def bytes_read(self) -> int:
        return self.stats.bytes_read + self.val_stats.bytes_read

    def __iter__(self) -> Iterator[tuple[str, int, bool, float]]:
        """(cleaned text, doc_hash, from --val-source, source weight) per kept document."""
        opts = self.cfg.read_options()
        clean = self.cleaner.clean_many
        batch_chars = CLEAN_BATCH_CHARS if self.cfg.near_dup else CLEAN_BATCH_CHARS_EXACT
        for is_val, files, stats in ((True, self.val_files, self.val_stats), (False, self.files, self.stats)):
            if not files:
                continue
            origin = "val" if is_val else "train"
            counts, before = self.counts[origin], Counter(self.cleaner.dropped)
            for docs in _batches(iter_documents(files, opts, stats), batch_chars):
                for doc, r in zip(docs, clean([d.text for d in docs])):
                    if r is None:
                        counts[1] += 1
                        continue
                    counts[0] += 1
                    yield r[0], r[1], is_val, doc.weight
            self.dropped[origin] = Counter(self.cleaner.dropped) - before

    def check_usable(self) -> None:
        """"<file>: no usable text after cleaning (...)" when a side ended up empty."""
        for origin, files, stats in (("val", self.val_files, self.val_stats), ("train", self.files, self.stats)):
            if not files or self.counts[origin][0]:
                continue
            names = [f["path"] for f in stats.files] or [f.name for f in files]
            where = names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more files)"
            dropped = self.counts[origin][1]
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped[origin].items()) if n) or "none read"
            hint = ("check --field / --encoding / --doc-sep, or lower --min-chars"
                    if dropped else "the files hold no text documents")
            raise ZhgptError(f"{where}: no usable text after cleaning ({dropped} documents dropped: {reasons}); "
                             f"{hint}")

    def summary(self) -> dict:
        files = self.val_stats.files + self.stats.files
        return {
            "files": len(files),
            "bytes": sum(int(f["bytes"] or 0) for f in files),
            "encodings": sorted({f["encoding"] for f in files if f.get("encoding")}),
            "docs_read": sum(f["docs"] for f in files),
            "docs_kept": self.cleaner.kept,
            "dropped": dict(sorted((k, v) for k, v in self.cleaner.dropped.items() if v)),
            "duplicates": self.cleaner.duplicates,
            **({"near_duplicates": self.cleaner.near_duplicates} if self.cfg.near_dup else {}),
            "bad_lines": sum(f["bad_lines"] for f in files),
            "replaced_chars": sum(f["replaced_chars"] for f in files),
            "cut_docs": sum(f.get("cut_docs", 0) for f in files),
        }


# ----------------------------------------------------------------------------------------------
# the validation split

def _val_mask(hashes: np.ndarray, threshold: int) -> np.ndarray:
    if threshold >= 1 << 64:
        return np.ones(len(hashes), dtype=bool)
    return hashes < np.uint64(threshold)


def choose_val_threshold(hashes: np.ndarray, chars: np.ndarray, cfg: DataConfig) -> int:
    """Hash threshold of the validation split.

    ``val_fraction`` of the 64-bit hash space (so a document's split does not depend on the rest of
    the corpus), raised when that gives fewer than ``min_val_docs`` documents and fewer than
    ``min_val_chars`` characters -- to whichever of the two is reached first, but never beyond half of
    the documents. Raising it moves the documents with the next-smallest hashes into val, so the
    choice is still a pure function of the corpus.
    """
    base = val_threshold(cfg.val_fraction)
    n = len(hashes)
    if n == 0:
        return base
    k_base = int(_val_mask(hashes, base).sum())
    if cfg.min_val_docs == 0 or cfg.min_val_chars == 0:
        return base
    order = np.argsort(hashes, kind="stable")
    cum = np.cumsum(chars[order])
    k_chars = int(np.searchsorted(cum, cfg.min_val_chars)) + 1    # first prefix with enough characters
    k = min(cfg.min_val_docs, k_chars, n // 2)
    if k <= k_base:
        return base
    return int(hashes[order[k - 1]]) + 1


# ----------------------------------------------------------------------------------------------
# pass 1: the tokenizer's training sample

def _sample_key(h: int) -> int:
    """A second, independent-looking 64-bit value of the hash (splitmix64 of h ^ constant): the
    sample must not prefer low hashes, which are the validation documents."""
    return mix64((h ^ 0x5851F42D4C957F2D) & _MASK64)


def _sample_pass(cfg: DataConfig, files, val_files, sample_chars: int, near=None) -> tuple[list[str], int]:
    """Read + clean everything once: the val threshold and a uniform sample of train documents.

    The sample is a bottom-k by ``_sample_key`` under a character budget (a heap: the document with
    the largest key leaves when the budget is exceeded): uniform over documents whatever the order
    or number of sources, deterministic, and never more than ``sample_chars`` + one document in RAM.
    """
    reader = _Reader(cfg, files, val_files, near)
    hashes, chars = array("Q"), array("Q")
    heap: list[tuple[int, int, str]] = []     # (-key, hash, text)
    held = 0
    total = sum(f.size for f in files) + sum(f.size for f in val_files)
    prog = Progress("reading (tokenizer sample)", total, cfg.quiet)
    try:
        for i, (text, h, is_val, _) in enumerate(reader):
            if is_val:
                continue
            hashes.append(h)
            chars.append(len(text) + 1)
            heapq.heappush(heap, (-_sample_key(h), h, text))
            held += len(text)
            while held > sample_chars and len(heap) > 1:
                _, _, t = heapq.heappop(heap)
                held -= len(t)
            if i % 1000 == 0:
                prog.update(reader.bytes_read())
    finally:
        prog.close()
    reader.check_usable()
    h = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.zeros(0, np.uint64)
    c = np.frombuffer(chars, dtype=np.uint64).astype(np.int64) if len(chars) else np.zeros(0, np.int64)
    threshold = 0 if val_files else choose_val_threshold(h, c, cfg)
    sample = [t for k, hh, t in sorted(heap, reverse=True) if not (hh < threshold)]
    return sample, threshold


# ----------------------------------------------------------------------------------------------
# the copy index, fed by pass 2

class _CopyIndexFeed:
    """Sends the text of every training document to the copy index (``zhgpt.data.ngram_index``) during
    the tokenize pass, on a thread of its own (numpy releases the GIL; at most 2 batches in flight),
    so the corpus is never held: only the filter is.

    Which documents are train: not the val source, not left out by a source weight below 1 (0 repeats),
    and hash >= the val threshold. When a tokenizer is trained the threshold is known before this pass;
    otherwise ``choose_val_threshold`` fixes it after the pass, and may raise it above the val-fraction
    bound to the ``min_val_docs`` smallest hashes or the first ``min_val_chars`` characters of them. The
    documents that could still become val that way are held back (a heap by hash: at most
    ``min_val_docs`` documents and ``min_val_chars`` characters plus one document) and indexed in
    ``finish`` once the threshold is known; every other document goes to the index as it is read."""

    def __init__(self, cfg: DataConfig, threshold: int | None, expected: int):
        self.cfg, self.threshold, self.base = cfg, threshold, val_threshold(cfg.val_fraction)
        self.builder = BloomBuilder(expected)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zhgpt-copyindex")
        self.pending: deque = deque()
        self.batch: list[str] = []
        self.size = 0
        self.held: list[tuple[int, int, str | None]] = []    # (-hash, chars, text or None if never train)
        self.held_chars = 0
        self.busy_s = 0.0        # seconds the index thread worked (it overlaps reading and encoding)

    def add(self, text: str, h: int, is_val: bool, reps: int) -> None:
        if is_val:
            return
        if self.threshold is not None:
            if reps and h >= self.threshold:
                self._queue(text)
            return
        heapq.heappush(self.held, (-h, len(text) + 1, text if reps and h >= self.base else None))
        self.held_chars += len(text) + 1
        cfg = self.cfg
        # the largest held hash can no longer be val once min_val_docs smaller ones, or min_val_chars
        # characters of them, were seen
        while self.held and (len(self.held) > cfg.min_val_docs
                             or self.held_chars - self.held[0][1] >= cfg.min_val_chars):
            _, chars, t = heapq.heappop(self.held)
            self.held_chars -= chars
            if t is not None:
                self._queue(t)

    def _queue(self, text: str) -> None:
        self.batch.append(text)
        self.size += len(text)
        if self.size >= BATCH_CHARS:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.pending.append(self.pool.submit(self._work, self.batch))
            self.batch, self.size = [], 0
        while len(self.pending) > 2:
            self.pending.popleft().result()

    def _work(self, texts: list[str]) -> None:
        t = time.perf_counter()
        self.builder.add_texts(texts)
        self.busy_s += time.perf_counter() - t

    def finish(self, threshold: int, folder: Path) -> dict:
        """Index the held documents that are train under the final threshold; write the filter."""
        for negh, _, t in self.held:
            if t is not None and -negh >= threshold:
                self._queue(t)
        self.held = []
        self._submit()
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown()
        t = time.perf_counter()
        entry = self.builder.save(folder)
        self.busy_s += time.perf_counter() - t
        return {**entry, "nfkc": self.cfg.nfkc, "seconds": round(self.busy_s, 2)}

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown()


# ----------------------------------------------------------------------------------------------
# pass 2: tokenise into one stream

class _Tokenized:
    """Per-document arrays of the tokenize pass (one entry per kept document, in stream order)."""

    def __init__(self):
        self.hashes, self.chars, self.ntok = array("Q"), array("Q"), array("Q")
        self.reps, self.val = array("I"), array("B")
        self.text_bytes = 0

    def np(self, name, dtype):
        a = getattr(self, name)
        return np.frombuffer(a, dtype=dtype).copy() if len(a) else np.zeros(0, dtype)


def _encode(tok, texts: list[str], eot: int) -> tuple[np.ndarray, list[int]]:
    """ids of each text followed by EOT, flattened, and the per-document lengths (EOT included).
    Runs in the worker thread; encode_batch releases the GIL while Rust works."""
    fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch   # _fast: skips character offsets
    encs = fn(texts, add_special_tokens=False)
    flat: list[int] = []
    lens = []
    for e in encs:
        ids = e.ids
        flat += ids
        flat.append(eot)
        lens.append(len(ids) + 1)
    return np.array(flat, dtype=np.uint32), lens


def _tokenize_pass(cfg: DataConfig, reader: _Reader, tok, eot: int, dtype, tmp: Path, total_bytes: int,
                   feed: _CopyIndexFeed | None = None):
    doc = _Tokenized()
    stream = shards.ShardWriter(tmp, STREAM, dtype, shard_tokens=1 << 62)
    pending: deque = deque()
    prog = Progress("tokenizing", total_bytes, cfg.quiet)

    def drain(keep: int):
        while len(pending) > keep:
            flat, lens = pending.popleft().result()
            stream.write(flat)
            doc.ntok.extend(lens)

    batch: list[str] = []
    size = 0
    limit = BATCH_CHARS // 8     # small first batches: the encoder starts sooner, then full batches
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zhgpt-encode") as pool:
            for text, h, is_val, weight in reader:
                n = len(text)
                batch.append(text)
                size += n
                doc.hashes.append(h)
                doc.chars.append(n + 1)
                doc.val.append(is_val)
                doc.reps.append(1 if is_val or weight == 1.0 else repeats(h, weight))
                if feed is not None:
                    feed.add(text, h, is_val, doc.reps[-1])
                doc.text_bytes += len(text.encode("utf-8", "surrogatepass"))
                if size >= limit:
                    pending.append(pool.submit(_encode, tok, batch, eot))
                    batch, size, limit = [], 0, min(2 * limit, BATCH_CHARS)
                    drain(2)        # at most 2 batches in flight: one encoding, one waiting
                    prog.update(reader.bytes_read())
            if batch:
                pending.append(pool.submit(_encode, tok, batch, eot))
            drain(0)
    finally:
        for f in pending:
            f.cancel()
        stream.close()
        prog.close()
    return doc, stream


# ----------------------------------------------------------------------------------------------
# pass 3: split the stream into train / val shards

def _repeat_index(start: np.ndarray, length: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Token indices that copy document k (``length[k]`` tokens from ``start[k]``) ``reps[k]`` times
    in a row, for all k in order -- vectorised (no Python loop over documents)."""
    seg = np.repeat(np.arange(len(reps)), reps)          # one entry per copy
    seg_len = length[seg]
    out_start = np.cumsum(seg_len) - seg_len            # where each copy begins in the output
    total = int(seg_len.sum())
    return np.arange(total) - np.repeat(out_start - start[seg], seg_len)


def _split(cfg: DataConfig, doc: _Tokenized, stream: shards.ShardWriter, threshold: int, dtype, tmp: Path):
    hashes, ntok = doc.np("hashes", np.uint64), doc.np("ntok", np.uint64).astype(np.int64)
    chars, reps = doc.np("chars", np.uint64).astype(np.int64), doc.np("reps", np.uint32).astype(np.int64)
    is_val = doc.np("val", np.uint8).astype(bool)
    if not cfg.val_source:
        is_val |= _val_mask(hashes, threshold)
    reps = np.where(is_val, 0, reps)
    train = shards.ShardWriter(tmp, "train", dtype, cfg.shard_tokens)
    val = shards.ShardWriter(tmp, "val", dtype, cfg.shard_tokens)
    ends = np.cumsum(ntok)
    starts = ends - ntok
    path = tmp / stream.shards[0]["file"] if stream.shards else None
    # Plain reads, not a memmap: the pages of a mapped file count as this process's memory until it is
    # unmapped, so a memmap of a 10 GB corpus's stream would show as GBs of resident memory.
    data = open(path, "rb") if path is not None else None
    itemsize = np.dtype(dtype).itemsize
    try:
        i, n = 0, len(ntok)
        while i < n:
            # documents [i, j): about SPLIT_CHUNK_TOKENS tokens (at least one document)
            j = max(int(np.searchsorted(ends, starts[i] + SPLIT_CHUNK_TOKENS, side="right")), i + 1)
            data.seek(int(starts[i]) * itemsize)
            toks = np.fromfile(data, dtype=dtype, count=int(ends[j - 1] - starts[i]))
            v, r, nt = is_val[i:j], reps[i:j], ntok[i:j]
            if v.any():
                val.write(toks[np.repeat(v, nt)], n_chars=int(chars[i:j][v].sum()), n_docs=int(v.sum()))
            t_chars, t_docs = int((chars[i:j] * r).sum()), int(r.sum())
            if np.all(r[~v] == 1):
                train.write(toks[np.repeat(~v, nt)], n_chars=t_chars, n_docs=t_docs)
            elif t_docs:   # source weights: whole documents repeated (or left out), in order
                train.write(toks[_repeat_index(starts[i:j] - starts[i], nt, r)], n_chars=t_chars, n_docs=t_docs)
            i = j
    finally:
        train.close()
        val.close()
        if data is not None:
            data.close()
    if path is not None:
        path.unlink()
    return train, val


# ----------------------------------------------------------------------------------------------
# cache

def _inputs_fingerprint(files) -> list:
    out = []
    for f in files:
        try:
            st = os.stat(f.path)
            out.append([f.name, f.spec, f.weight, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f.name, f.spec, f.weight, None, None])
    return out


def cache_key(cfg: DataConfig, files, val_files, tok_hash: str | None) -> str:
    d = dataclasses.asdict(cfg)
    key = {
        "version": PREPARE_VERSION, "format": shards.FORMAT,
        "config": {k: d[k] for k in _KEY_FIELDS + (_NEAR_DUP_KEY_FIELDS if cfg.near_dup else ())},
        "inputs": _inputs_fingerprint(files), "val_inputs": _inputs_fingerprint(val_files),
        "tokenizer_hash": tok_hash,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(out: Path, key: str) -> bool:
    if not (out / shards.META).is_file():
        return False
    try:
        ds = shards.TokenDataset(out)     # checks every shard's size against meta.json
    except ZhgptError:
        return False
    tj = out / shards.TOKENIZER_DIR / "tokenizer.json"
    return (ds.meta.get("cache_key") == key and tj.is_file()
            and tokenizer_hash(tj) == ds.meta.get("tokenizer_hash"))


# ----------------------------------------------------------------------------------------------
# main

def _prepare_out(out: Path) -> Path:
    """Refuse to replace a folder that is not a dataset; create the temp folder beside ``out``
    (this is where a read-only or impossible --out fails, before any work)."""
    if out.exists() and not out.is_dir():
        raise ZhgptError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / shards.META).is_file():
        raise ZhgptError(f"{out}: folder exists, is not empty and is not a prepared dataset (no meta.json); "
                         "choose a new or empty folder for --out")
    try:
        tmp = new_temp_dir(out)
    except OSError as e:
        raise ZhgptError(f"{out}: cannot write the dataset folder here ({e.strerror or e}); "
                         "choose a writable --out") from None
    return tmp


def _copy_tokenizer(src, dst: Path, tok) -> None:
    """A given tokenizer goes into the dataset byte for byte (tokenizer_hash(src) == meta's)."""
    dst.mkdir(parents=True, exist_ok=True)
    p = Path(src).expanduser()
    tj = p if p.is_file() else (p / "tokenizer.json" if (p / "tokenizer.json").is_file()
                                else p / "tokenizer" / "tokenizer.json")
    folder = tj.parent
    if tj.is_file():
        shutil.copyfile(tj, dst / "tokenizer.json")
    else:
        (dst / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                 "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja"):
        if folder.is_dir() and (folder / name).is_file():
            shutil.copyfile(folder / name, dst / name)


def _set_threads(workers: int) -> dict:
    """encode_batch runs on the Rust (rayon) pool: RAYON_NUM_THREADS sizes it (read when the pool
    starts, i.e. on first use in this process); TOKENIZERS_PARALLELISM=false (set by test suites and
    after a fork) would make it sequential, so it is set here for the duration of the run."""
    old = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    n = workers or os.cpu_count() or 1
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    if workers or "RAYON_NUM_THREADS" not in os.environ:
        os.environ["RAYON_NUM_THREADS"] = str(n)
    return old


def _restore_env(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def main(cfg: DataConfig) -> Path:
    """Prepare the dataset folder ``cfg.out``; returns its path."""
    t_start = time.perf_counter()
    out = Path(cfg.out).expanduser().absolute()
    files = expand_sources(cfg.sources)                      # missing paths fail here, in a second
    val_files = expand_sources([cfg.val_source]) if cfg.val_source else []
    given_tok = None
    if not cfg.trains_tokenizer:
        given_tok = load_tokenizer(cfg.tokenizer)           # a bad tokenizer fails before any reading
    key = cache_key(cfg, files, val_files, tokenizer_hash(cfg.tokenizer) if given_tok else None)
    if not cfg.force and _up_to_date(out, key):
        _say(cfg, f"{out}: up to date (same inputs and settings; --force rebuilds it)")
        return out
    tmp = _prepare_out(out)
    old_env = _set_threads(cfg.workers)
    # The passes allocate millions of short-lived containers, and each full collection walks every
    # object already alive -- ~200k of them once torch is imported (as under `zhgpt train`), which
    # cost ~0.1 s per pass. Frozen objects are skipped; cycles made here are still collected. (Not
    # when the caller has frozen objects itself: unfreeze() would release theirs too.)
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        timing = {}
        # ---- tokenizer
        tok_dir = tmp / shards.TOKENIZER_DIR
        threshold = None
        near = None          # --near-dup decisions of the sample pass, replayed by the tokenize pass
        if cfg.trains_tokenizer:
            kind = cfg.tokenizer
            vocab = cfg.vocab_size or default_vocab_size(kind)
            sample_chars = cfg.sample_chars or default_sample_chars(kind)
            t = time.perf_counter()
            near = _RecordedNearDups(cfg) if cfg.near_dup else None
            sample, threshold = _sample_pass(cfg, files, val_files, sample_chars, near)
            timing["sample_pass_s"] = time.perf_counter() - t
            t = time.perf_counter()
            _say(cfg, f"training a {kind} tokenizer (vocabulary {vocab:,}) on {sum(map(len, sample)):,} "
                      f"characters of {len(sample):,} training documents ...")
            tok = train_tokenizer(sample, kind, vocab, sample_chars=sample_chars,
                                  show_progress=not cfg.quiet and sys.stderr.isatty())
            del sample
            timing["tokenizer_train_s"] = time.perf_counter() - t
            save_tokenizer(tok, tok_dir, kind, cfg.model_max_length)
        else:
            tok = given_tok
            kind = tokenizer_kind(cfg.tokenizer)
            _copy_tokenizer(cfg.tokenizer, tok_dir, tok)
        eot = eot_id(tok, tok_dir)
        vocab_size = tok.get_vocab_size()
        dtype = shards.dtype_for_vocab(vocab_size)
        # A literal "<|endoftext|>" inside a document is text, not a document boundary.
        tok.encode_special_tokens = True

        # ---- tokenize
        reader = _Reader(cfg, files, val_files, near.replay() if near else None)
        total = sum(f.size for f in files) + sum(f.size for f in val_files)
        t = time.perf_counter()
        # ~3 bytes per character of Chinese UTF-8: the filter's first size (it grows, then folds to fit)
        feed = _CopyIndexFeed(cfg, 0 if val_files else threshold, total // 3) if cfg.copy_index else None
        try:
            doc, stream = _tokenize_pass(cfg, reader, tok, eot, dtype, tmp, total, feed)
            timing["tokenize_s"] = time.perf_counter() - t
            reader.check_usable()
            if threshold is None:
                threshold = 0 if val_files else choose_val_threshold(
                    doc.np("hashes", np.uint64), doc.np("chars", np.uint64).astype(np.int64), cfg)
            copy_index = feed.finish(threshold, tmp) if feed is not None else None
        finally:
            if feed is not None:
                feed.close()
        if copy_index:
            timing["copy_index_s"] = copy_index["seconds"]

        # ---- split
        t = time.perf_counter()
        train, val = _split(cfg, doc, stream, threshold, dtype, tmp)
        timing["split_s"] = time.perf_counter() - t
        timing["total_s"] = time.perf_counter() - t_start

        splits = {"train": train.summary(), "val": val.summary()}
        summary = _summary(reader, doc, splits, timing, threshold, cfg, kind, vocab_size)
        if copy_index:
            summary["copy_index"] = {k: copy_index[k] for k in ("items", "bytes", "false_positive_rate")}
        meta = {
            "dtype": np.dtype(dtype).name, "vocab_size": vocab_size, "eot_id": eot,
            "tokenizer_hash": tokenizer_hash(tok_dir / "tokenizer.json"), "tokenizer_kind": kind,
            "splits": splits,
            "sources": [{**f, "split": "val"} for f in reader.val_stats.files]
                       + [{**f, "split": "train"} for f in reader.stats.files],
            "val_threshold": str(threshold),
            **({"copy_index": copy_index} if copy_index else {}),
            "config": dataclasses.asdict(cfg), "summary": summary, "cache_key": key,
        }
        shards.write_meta(tmp, meta)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if freeze:
            gc.unfreeze()
        _restore_env(old_env)
    _say(cfg, format_summary(summary, out))
    return out


def _summary(reader: _Reader, doc: _Tokenized, splits: dict, timing: dict, threshold: int,
             cfg: DataConfig, kind: str, vocab_size: int) -> dict:
    s = reader.summary()
    tokens = splits["train"]["tokens"] + splits["val"]["tokens"]
    chars = splits["train"]["chars"] + splits["val"]["chars"]
    text_mb = doc.text_bytes / 1e6
    s.update({
        "chars": int(np.sum(doc.np("chars", np.uint64))) if len(doc.chars) else 0,
        "text_mb": round(text_mb, 3),
        "train": {k: splits["train"][k] for k in ("docs", "chars", "tokens")},
        "val": {k: splits["val"][k] for k in ("docs", "chars", "tokens")},
        "chars_per_token": round(chars / tokens, 4) if tokens else 0.0,
        "val_from": cfg.val_source or f"hash < {threshold / 2 ** 64:.4%} of the hash space",
        "tokenizer": {"kind": kind, "vocab_size": vocab_size},
        "seconds": {k: round(v, 2) for k, v in timing.items()},
        # MB/s of cleaned UTF-8 text through the tokenize pass (read + clean + encode + write)
        "mb_per_s": round(text_mb / timing["tokenize_s"], 2) if timing.get("tokenize_s") else 0.0,
        "mb_per_s_total": round(text_mb / timing["total_s"], 2) if timing.get("total_s") else 0.0,
    })
    return s


def format_summary(s: dict, out: Path | str = "") -> str:
    dropped = ", ".join(f"{n:,} {r}" for r, n in s["dropped"].items()) or "none"
    tr, va = s["train"], s["val"]
    sec = s["seconds"]
    lines = [
        f"dataset {out}" if out else "dataset",
        f"  files      {s['files']} ({s['bytes'] / 1e6:,.1f} MB on disk), encodings: {', '.join(s['encodings']) or '-'}",
        f"  documents  {s['docs_read']:,} read, {s['docs_kept']:,} kept, dropped: {dropped}"
        + (f"; {s['bad_lines']:,} bad lines skipped" if s["bad_lines"] else "")
        + (f"; {s['replaced_chars']:,} undecodable bytes replaced" if s["replaced_chars"] else ""),
        f"  characters {s['chars']:,} ({s['text_mb']:,.1f} MB UTF-8 after cleaning)",
        f"  train      {tr['docs']:,} docs, {tr['chars']:,} chars, {tr['tokens']:,} tokens",
        f"  val        {va['docs']:,} docs, {va['chars']:,} chars, {va['tokens']:,} tokens ({s['val_from']})",
        f"  tokenizer  {s['tokenizer']['kind']}, vocabulary {s['tokenizer']['vocab_size']:,}, "
        f"{s['chars_per_token']:.3f} chars/token",
        f"  time       {sec.get('total_s', 0):.1f}s in all"
        + (f" (tokenizer sample pass {sec['sample_pass_s']:.1f}s, training {sec['tokenizer_train_s']:.1f}s)"
           if "tokenizer_train_s" in sec else "")
        + f"; tokenizing {sec.get('tokenize_s', 0):.1f}s = {s['mb_per_s']:.1f} MB/s",
    ]
    if s.get("copy_index"):
        ci = s["copy_index"]
        lines.append(f"  copy index {ci['items']:,} 8-character spans of the train text in {ci['bytes'] / 1e6:,.1f} MB, "
                     f"{100 * ci['false_positive_rate']:.2f} % false positives ({sec.get('copy_index_s', 0):.1f}s)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI: `zhgpt data prepare ...` (room for more `zhgpt data` subcommands)

def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    pp = sub.add_parser("prepare", help="sources -> clean -> split -> tokenizer -> token shards (cached)",
                        description="Read, clean, deduplicate and split text, train or load a tokenizer, and "
                                    "write token shards plus meta.json into --out.")
    add_args(pp, DataConfig)
    p.set_defaults(_data_parser=p)


def run_cli(args) -> None:
    if getattr(args, "data_command", None) != "prepare":
        args._data_parser.print_help()
        return
    cfg = from_args(DataConfig, args)
    if not cfg.quiet:
        print_config(cfg)
    main(cfg)
