"""Validation loss, perplexity and bits per character on a prepared split (run at every evaluation).

Per-token loss cannot compare a character vocabulary with a 32k BPE (one BPE token covers ~1.5
Chinese characters), so the number that compares runs is **bits per character**: the total
negative log-likelihood of a text in nats, divided by its number of characters and by ln 2.
`zhgpt eval` (``zhgpt.inference.evaluate``) scores arbitrary text with the same arithmetic.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from zhgpt.core.device import autocast_ctx
from zhgpt.data.shards import Split
from zhgpt.training.loader import eval_windows

LN2 = math.log(2)


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
