"""The token surprise map: how many bits each character of one fixed validation paragraph costs the model,
at every evaluation (``RUN/surprise.jsonl``; ``zhgpt.report.surprise`` draws it as a heat map).

The paragraph is chosen once, at start, the same way on every run of the same data: the first validation
document of 60-150 characters that fits the context (else the first one of at least 60, cut to the
context). Scoring it is one forward pass of at most ``block_size`` tokens per evaluation: ~1 ms for
cpu-tiny, next to the seconds the validation loss takes.

**From tokens to characters.** The model gives one loss per *token*, and a token spells a variable number
of characters: ~1.8 for the cpu-tiny unigram, 1 for the char tokenizer, and a byte-level token can spell
a *part* of a character (one of the 3 UTF-8 bytes of 中). The rule used here: each token's nats are split
equally among the characters it touches, fully or in part, and a character's surprise is the sum of the
shares it receives, in bits. So a character tokenizer gives each character its token's bits; a two-character
token 中国 gives 中 and 国 half each; a character spelled by three byte tokens gets all three; a token that
ends one character and starts the next gives each half. The shares add up to the paragraph's total, so the
mean over its characters is the paragraph's bits per character, the number val BPC averages over the split.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from zhgpt.core.device import autocast_ctx
from zhgpt.training.watch import Watcher

LN2 = math.log(2)
PARAGRAPH_CHARS = (60, 150)   # long enough to show words and punctuation, short enough to read in one row
SCAN_DOCS = 2000              # documents looked at for the paragraph: the pick stays a ~10 ms affair
SCAN_TOKENS = 1_000_000


def token_char_spans(decode: Callable[[list[int]], str], ids: list[int], text: str) -> list[tuple[int, int]]:
    """For each token of ``ids`` (which decode to ``text``), the [start, end) range of characters it touches.

    Found by decoding every prefix (n decodes of n <= block_size tokens, once per run): the characters a
    prefix spells completely are its common prefix with ``text``; a prefix that decodes to more than that
    ends inside a character (a partial UTF-8 sequence decodes to U+FFFD), which its last token touches too.
    """
    spans: list[tuple[int, int]] = []
    done = 0                       # characters completed by the tokens so far
    for k in range(1, len(ids) + 1):
        prefix = decode(ids[:k])
        common = 0
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        common = max(common, done)
        partial = len(prefix) > common and common < len(text)
        end = common + 1 if partial else common
        start = min(done, end)
        if end <= start:           # a token spelling nothing (a special token): its cost goes to the next character
            start, end = min(done, len(text) - 1), min(done, len(text) - 1) + 1
        spans.append((start, end))
        done = common
    return spans


def char_bits(nats: list[float], spans: list[tuple[int, int]], n_chars: int) -> list[float]:
    """Bits per character: each token's nats split equally among the characters it touches (see above)."""
    bits = [0.0] * n_chars
    for n, (a, b) in zip(nats, spans):
        share = n / LN2 / (b - a)
        for i in range(a, b):
            bits[i] += share
    return bits


def documents(split, eot_id: int, max_docs: int = SCAN_DOCS, max_tokens: int = SCAN_TOKENS) -> Iterator[list[int]]:
    """The first documents of a token split (each ends at an end-of-text token), as lists of ids."""
    seen = docs = 0
    for arr in split.arrays:
        chunk = np.asarray(arr[:max(0, max_tokens - seen)], dtype=np.int64)
        seen += len(chunk)
        bounds = np.flatnonzero(chunk == eot_id)
        prev = 0
        for b in bounds:
            if b > prev:
                yield chunk[prev:b].tolist()
                docs += 1
                if docs >= max_docs:
                    return
            prev = b + 1
        if seen >= max_tokens:
            return


def pick_paragraph(docs: Iterator[list[int]], decode: Callable[[list[int]], str],
                   max_tokens: int) -> tuple[list[int], str] | None:
    """(ids, text) of the first document of PARAGRAPH_CHARS characters within ``max_tokens`` tokens; else the
    first of at least the minimum, cut to ``max_tokens`` tokens and to whole characters; else None."""
    lo, hi = PARAGRAPH_CHARS
    fallback = None
    for ids in docs:
        text = decode(ids)
        if lo <= len(text) <= hi and len(ids) <= max_tokens:
            return ids, text
        if fallback is None and len(text) >= lo:
            cut = ids[:max_tokens]
            while cut and (decode(cut).endswith("\ufffd") or len(decode(cut)) > hi):
                cut = cut[:-1]     # never end on half a character (byte tokens), nor past the length
            if len(cut) >= 2:
                fallback = (cut, decode(cut))
    return fallback


class SurpriseWatcher(Watcher):
    """Scores the paragraph at every evaluation; rank 0 appends {step, text, bits} to RUN/surprise.jsonl and
    the eval row gets ``surprise_bits``, the paragraph's mean bits per character."""
    name = "surprise"

    def __init__(self):
        self.ids: list[int] = []
        self.text = ""
        self.spans: list[tuple[int, int]] = []

    def start(self, tr) -> None:
        split = tr.val_split
        if getattr(split, "arrays", None) is None:
            return              # not a token split (SFT/DPO conversations): no paragraph to score
        tok = tr.sampler.engine.tokenizer
        decode = lambda ids: tok.decode(ids, skip_special_tokens=False)
        # +1: the end-of-text token that precedes the paragraph is its context, as in the training windows
        picked = pick_paragraph(documents(split, tr.ds.eot_id), decode, tr.mcfg.block_size - 1)
        if picked is None:
            return
        self.ids, self.text = picked
        self.spans = token_char_spans(decode, self.ids, self.text)

    @torch.no_grad()
    def score(self, model, eot_id: int, device: str, amp_dtype) -> list[float]:
        """The paragraph's per-token nats, each token predicted from the ones before it."""
        was_training = model.training
        model.eval()
        seq = torch.tensor([[eot_id] + self.ids], dtype=torch.long, device=device)
        with autocast_ctx(device, amp_dtype):
            _, loss = model(seq[:, :-1], seq[:, 1:], reduction="none")
        if was_training:
            model.train()
        return loss.float().reshape(-1).tolist()

    def at_eval(self, tr, step: int, samples) -> dict:
        if not self.ids:
            return {}
        nats = self.score(tr.raw_model, tr.ds.eot_id, tr.device, tr.amp_dtype)
        bits = char_bits(nats, self.spans, len(self.text))
        if tr.dist.master:
            rec = {"step": step, "text": self.text, "bits": [round(b, 3) for b in bits]}
            with open(tr.run.surprise, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return {"surprise_bits": round(sum(bits) / len(bits), 4)}
