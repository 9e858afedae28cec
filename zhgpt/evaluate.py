"""Perplexity and bits per character.

Per-token loss cannot compare a character vocabulary with a 32k BPE (one BPE token covers ~1.5
Chinese characters), so the number that compares runs is **bits per character**: the total
negative log-likelihood of a text in nats, divided by its number of characters and by ln 2.

- ``evaluate_split``: on a prepared validation split (used during training).
- ``zhgpt eval --model M FILE...``: on any text, read through the same sources/cleaning as the data
  stage, each document scored with a sliding window so long documents keep context.
"""
from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from zhgpt.config import add_args, format_config, from_args, opt, text_table
from zhgpt.errors import ZhgptError
from zhgpt.loader import eval_windows
from zhgpt.shards import Split

LN2 = math.log(2)


def autocast_ctx(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


@torch.no_grad()
def sum_nats(model, windows, device: str, amp_dtype=torch.float32, batch_size: int = 16) -> float:
    """Sum of next-token negative log-likelihoods over (x, y) windows (equal lengths batched together)."""
    was_training = model.training
    model.eval()
    total = 0.0
    # Group by length so the short tail windows don't force padding.
    by_len: dict[int, list] = {}
    for x, y in windows:
        by_len.setdefault(len(x), []).append((x, y))
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            x = torch.from_numpy(np.stack([c[0] for c in chunk])).to(device)
            y = torch.from_numpy(np.stack([c[1] for c in chunk])).to(device)
            with autocast_ctx(device, amp_dtype):
                _, loss = model(x, y, reduction="sum")
            total += float(loss)
    if was_training:
        model.train()
    return total


def metrics_from_nats(nats: float, tokens: int, chars: int) -> dict:
    loss = nats / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpc": nats / max(chars, 1) / LN2, "val_tokens": tokens, "val_chars": chars}


def evaluate_split(model, split: Split, block_size: int, device: str, amp_dtype=torch.float32,
                   batch_size: int = 16, max_tokens: int | None = None, rank: int = 0, world_size: int = 1,
                   reduce=None) -> dict:
    """Loss, perplexity and BPC on a validation split. With ``max_tokens`` only a prefix is scored and the
    character count is scaled by the split's chars/token (stated in the result as ``val_partial``)."""
    windows, n_pred = eval_windows(split, block_size, max_tokens, rank, world_size)
    nats = sum_nats(model, windows, device, amp_dtype, batch_size)
    if reduce is not None:          # DDP: add up every rank's share
        nats = reduce(nats)
    full = n_pred >= split.tokens - len(split.arrays)
    chars = split.chars if full else split.chars * n_pred / max(split.tokens, 1)
    out = metrics_from_nats(nats, n_pred, int(round(chars)))
    out["val_partial"] = not full
    return out


# ------------------------------------------------------------------------ zhgpt eval

@dataclass
class EvalConfig:
    files: list[str] = opt(help="text sources to score (files, folders, globs, builtin:...)", positional=True)
    model: str = opt("", "run folder, checkpoint folder or exported Hugging Face folder")
    stride: int = opt(0, "sliding-window step in tokens for documents longer than the context "
                         "(0 = half the context: every scored token sees at least half a context of history)")
    batch_size: int = opt(8, "windows per forward pass")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    encoding: str = opt("auto", "text encoding of the files (auto = detect per file)")
    field: str = opt("text", "field to read from jsonl/json/csv/parquet")
    doc_sep: str = opt("line", "txt files: one document per line (line) or per blank-line block (blank)",
                       choices=("line", "blank"))
    max_chars: int = opt(0, "score at most this many characters per file (0 = all)")

    def __post_init__(self):
        if not self.model:
            raise ZhgptError("zhgpt eval needs --model (a run folder, checkpoint or exported model folder)")
        if not self.files:
            raise ZhgptError("zhgpt eval needs at least one text file to score")


def score_document(model, ids: list[int], block_size: int, stride: int, device: str) -> tuple[float, int]:
    """(nats, predicted tokens) of one document, sliding a full context window by ``stride`` tokens and
    scoring only the tokens each window adds (the Hugging Face perplexity recipe)."""
    nats, n = 0.0, 0
    prev_end = 1                      # the first token has no prediction
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + block_size + 1, len(ids))
        x = torch.tensor([ids[begin:end - 1]], device=device)
        y = torch.tensor([ids[begin + 1:end]], device=device)
        new = end - prev_end           # targets at positions prev_end..end-1 are new
        y[:, : y.size(1) - new] = -1
        _, loss = model(x, y, reduction="sum")
        nats += float(loss)
        n += new
        prev_end = end
        if end == len(ids):
            break
    return nats, n


@torch.no_grad()
def main(cfg: EvalConfig) -> list[dict]:
    from zhgpt.checkpoint import load_for_inference
    from zhgpt.clean import normalize
    from zhgpt.sources import ReadOptions, iter_documents

    device = resolve_device(cfg.device)
    model, tok, info = load_for_inference(cfg.model, device)
    block = model.cfg.block_size
    stride = cfg.stride or max(1, block // 2)
    eot = info.get("eot_id", 0)
    results = []
    for spec in cfg.files:
        opts = ReadOptions(encoding=cfg.encoding, field=cfg.field, doc_sep=cfg.doc_sep)
        nats, tokens, chars, docs = 0.0, 0, 0, 0
        for doc in iter_documents([spec], opts):
            text = normalize(doc.text)
            if not text:
                continue
            if cfg.max_chars and chars >= cfg.max_chars:
                break
            # Each document starts after an end-of-text token, as in training, and ends with one
            # (which stands for the newline counted in its characters).
            ids = [eot] + tok.encode(text, add_special_tokens=False).ids + [eot]
            d_nats, d_n = score_document(model, ids, block, stride, device)
            nats, tokens, chars, docs = nats + d_nats, tokens + d_n, chars + len(text) + 1, docs + 1
        if docs == 0:
            raise ZhgptError(f"{spec}: no text to score")
        m = metrics_from_nats(nats, tokens, chars)
        results.append({"file": spec, "docs": docs, "chars": chars, "tokens": tokens,
                        "loss": m["val_loss"], "ppl": m["val_ppl"], "bpc": m["val_bpc"]})
    print(format_table(results))
    return results


def format_table(rows: list[dict]) -> str:
    head = ("file", "docs", "chars", "tokens", "chars/token", "loss", "ppl", "bits/char")
    body = [(r["file"], str(r["docs"]), str(r["chars"]), str(r["tokens"]), f"{r['chars'] / max(r['tokens'], 1):.2f}",
             f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['bpc']:.4f}") for r in rows]
    return text_table([head, *body])


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZhgptError(f"--device {name} asked for but no CUDA GPU is available; use --device cpu")
    return name


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, EvalConfig)


def run_cli(args) -> None:
    cfg = from_args(EvalConfig, args)
    print(format_config(cfg))
    main(cfg)
