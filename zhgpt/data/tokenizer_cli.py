"""`zhgpt tokenizer train|stats`: train a tokenizer on text sources, or measure one on text.

    zhgpt tokenizer train corpus/ --out tok/ --kind bpe --vocab-size 32000
    zhgpt tokenizer stats --tokenizer tok/ val.txt

``train`` reads documents through ``zhgpt.data.sources`` and cleans them like ``zhgpt data prepare``
(NFKC, short-document filter, dedup), then trains on the first ``--sample-chars`` characters; reading
stops there, so a huge corpus costs no more than the sample. (``zhgpt data prepare`` trains on a
uniform sample of its training split instead, and leaves the validation documents out.)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from zhgpt.data.clean import Cleaner, CleanOptions
from zhgpt.config import add_args, from_args, narrow, opt, print_config
from zhgpt.errors import ZhgptError
from zhgpt.data.sources import ReadOptions, iter_documents
from zhgpt.data.tokenizer import (KINDS, default_sample_chars, load_tokenizer, save_tokenizer, stats,
                             tokenizer_kind, train_tokenizer)


@dataclass(kw_only=True)
class TokenizerTrainConfig(ReadOptions, CleanOptions):
    """`zhgpt tokenizer train`: its own fields below; how documents are read and cleaned is inherited from
    ReadOptions and CleanOptions, the same flags as `zhgpt data prepare`."""
    sources: list[str] = opt(help="text sources: files, folders, globs, builtin, builtin:people-daily, "
                                  "builtin:reviews", positional=True)
    out: str = opt("", "tokenizer folder to write (required)")
    kind: str = opt("bpe", "bpe = byte-level BPE, unigram = SentencePiece-style unigram with byte "
                           "fallback, char = one token per character with byte fallback", choices=list(KINDS))
    vocab_size: int | None = opt(None, "vocabulary size (default: 32000 for bpe and unigram, at most 8000 for char)")
    sample_chars: int | None = opt(None, "train on the first this many characters (default: 10M bpe, "
                                         "4M unigram, 20M char)")
    model_max_length: int = opt(1024, "model_max_length written to tokenizer_config.json")
    quiet: bool = opt(False, "print nothing but errors")

    def __post_init__(self):
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources:
            raise ZhgptError("no sources given; name files, folders, globs or builtin")
        if not self.out:
            raise ZhgptError("--out is required: the folder to write the tokenizer to, e.g. --out tok/")
        if self.kind not in KINDS:
            raise ZhgptError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.vocab_size is not None and self.vocab_size < 300:
            raise ZhgptError(f"--vocab-size {self.vocab_size} is too small; use at least 300")
        if self.sample_chars is not None and self.sample_chars < 1:
            raise ZhgptError(f"--sample-chars {self.sample_chars} must be at least 1")
        ReadOptions.__post_init__(self)
        CleanOptions.__post_init__(self)

    def read_options(self) -> ReadOptions:
        return narrow(self, ReadOptions)

    def clean_options(self) -> CleanOptions:
        return narrow(self, CleanOptions)


@dataclass(kw_only=True)
class TokenizerStatsConfig(ReadOptions):
    """`zhgpt tokenizer stats`: its own fields below; how documents are read is inherited from ReadOptions."""
    files: list[str] = opt(help="text to measure on: files, folders, globs or builtin", positional=True)
    tokenizer: str = opt("", "tokenizer folder, tokenizer.json, dataset or Hugging Face model folder (required)")
    max_chars: int = opt(0, "measure on at most this many characters (0 = all)")
    top: int = opt(20, "how many of the longest tokens to show")
    nfkc: bool = opt(True, "clean the text as `zhgpt data prepare` does (NFKC etc.) before measuring")

    def __post_init__(self):
        if isinstance(self.files, str):
            self.files = [self.files]
        if not self.files:
            raise ZhgptError("no files given to measure the tokenizer on")
        if not self.tokenizer:
            raise ZhgptError("--tokenizer is required: a folder made by `zhgpt tokenizer train` (or a "
                             "dataset / Hugging Face model folder)")
        if self.max_chars < 0 or self.top < 0:
            raise ZhgptError("--max-chars and --top must be 0 or more")
        ReadOptions.__post_init__(self)


def _clean_docs(specs, read: ReadOptions, clean: CleanOptions, max_chars: int = 0) -> Iterator[str]:
    """Cleaned documents, stopping once ``max_chars`` characters have been yielded (0 = no limit)."""
    cleaner = Cleaner(clean)
    n = 0
    for d in iter_documents(specs, read):
        t = cleaner.clean(d.text)
        if t is None:
            continue
        yield t
        n += len(t)
        if max_chars and n >= max_chars:
            return


def train_main(cfg: TokenizerTrainConfig) -> Path:
    t0 = time.perf_counter()
    sample_chars = cfg.sample_chars or default_sample_chars(cfg.kind)
    docs = _clean_docs(cfg.sources, cfg.read_options(), cfg.clean_options(), sample_chars)
    tok = train_tokenizer(docs, cfg.kind, cfg.vocab_size, sample_chars=sample_chars,
                          show_progress=not cfg.quiet and sys.stderr.isatty())
    out = save_tokenizer(tok, cfg.out, cfg.kind, cfg.model_max_length)
    if not cfg.quiet:
        print(f"{out}: {cfg.kind} tokenizer, vocabulary {tok.get_vocab_size():,}, "
              f"trained in {time.perf_counter() - t0:.1f}s")
    return out


def format_stats(s: dict, name: str = "", kind: str = "") -> str:
    longest = "  ".join(repr(t) for t in s["longest_tokens"])
    return "\n".join([
        f"tokenizer    {name} ({kind}), vocabulary {s['vocab_size']:,}",
        f"text         {s['docs']:,} documents, {s['chars']:,} characters",
        f"tokens       {s['tokens']:,}: {s['chars_per_token']:.3f} chars/token",
        f"fallback     {s['fallback_tokens']:,} byte tokens ({100 * s['fallback_rate']:.3f} % of tokens) "
        "for characters missing from the vocabulary",
        f"unknown      {s['unknown_tokens']:,} ({100 * s['unknown_rate']:.3f} %)",
        f"longest {len(s['longest_tokens'])} tokens: {longest}",
    ])


def stats_main(cfg: TokenizerStatsConfig) -> dict:
    tok = load_tokenizer(cfg.tokenizer)
    clean = CleanOptions(min_chars=0, nfkc=cfg.nfkc, dedup=False)
    s = stats(tok, _clean_docs(cfg.files, narrow(cfg, ReadOptions), clean, cfg.max_chars), top=cfg.top)
    if s["docs"] == 0:
        raise ZhgptError(f"{cfg.files[0]}: no text to measure the tokenizer on")
    print(format_stats(s, cfg.tokenizer, tokenizer_kind(cfg.tokenizer)))
    return s


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    tp = sub.add_parser("train", help="train a bpe / unigram / char tokenizer on text sources",
                        description="Train a tokenizer and save it as a folder that tokenizers and "
                                    "transformers.AutoTokenizer load.")
    add_args(tp, TokenizerTrainConfig)
    sp = sub.add_parser("stats", help="chars/token, fallback rate and longest tokens of a tokenizer on text",
                        description="Measure a tokenizer on text files.")
    add_args(sp, TokenizerStatsConfig)
    p.set_defaults(_tokenizer_parser=p)


def run_cli(args) -> None:
    cmd = getattr(args, "tokenizer_command", None)
    if cmd == "train":
        cfg = from_args(TokenizerTrainConfig, args)
        if not cfg.quiet:
            print_config(cfg)
        train_main(cfg)
    elif cmd == "stats":
        stats_main(from_args(TokenizerStatsConfig, args))
    else:
        args._tokenizer_parser.print_help()
