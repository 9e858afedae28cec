"""What `zhgpt dpo` trains on: preference pairs encoded with the chat template, shaped for the shared loop.

Like ``zhgpt.training.chat_data`` (whose `ChatData` and `PaddedBatches` this reuses): the chat tokenizer
goes into the run folder, the pairs are read (the built-in set's own split, --val-data, or 5 % held out by
hash), and each answer is encoded after its context with a mask on the final answer only. A pair whose
chosen or rejected answer was cut away by the context is dropped and counted.

A micro-batch is ``2 * batch_size`` rows: the chosen conversations, then the rejected ones in the same
order, padded to one width, so one forward pass scores both sides of every pair.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from zhgpt.data.chat import Conversation, Message
from zhgpt.data.sft import SFTExamples, pad_batch
from zhgpt.errors import ZhgptError
from zhgpt.training.chat_data import BUILTIN, VAL_PERCENT, ChatData, ChatSplit, PaddedBatches, answer_chars


@dataclass
class PairSplit(ChatSplit):
    """``examples`` are the chosen conversations, ``rejected`` the rejected ones, row for row."""
    rejected: SFTExamples = field(default_factory=SFTExamples)

    @property
    def tokens(self) -> int:
        return self.examples.tokens + self.rejected.tokens


def _held_out(pair) -> bool:
    key = "\x00".join([m.content for m in pair.context] + [pair.chosen]).encode("utf-8")
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def read_split_pairs(data: list[str], val_data: str, skip_bad: bool):
    from zhgpt.data.chat_builtin import builtin_preferences
    from zhgpt.data.preference import PairReadStats, read_pairs

    stats = PairReadStats()
    out = {"train": [], "val": []}
    for name in (d for d in data if d in BUILTIN):
        out["train"] += builtin_preferences("train", BUILTIN[name])
        if not val_data:
            out["val"] += builtin_preferences("val", BUILTIN[name])
    for pair in read_pairs([d for d in data if d not in BUILTIN], skip_bad, stats):
        out["val" if not val_data and _held_out(pair) else "train"].append(pair)
    if val_data:
        out["val"] = read_pairs([val_data], skip_bad, stats)
    return out, stats


def encode_pairs(name: str, pairs, tok, block_size: int) -> PairSplit:
    from zhgpt.data.preference import encode_answer
    chosen, rejected, convs, chars = SFTExamples(), SFTExamples(), [], []
    for p in pairs:
        c_ids, c_mask, c_cut = encode_answer(tok, p.context, p.chosen, block_size + 1)
        r_ids, r_mask, r_cut = encode_answer(tok, p.context, p.rejected, block_size + 1)
        if not c_mask[1:].any() or not r_mask[1:].any():
            chosen.dropped["answer beyond the context"] += 1
            continue
        for ex, ids, mask, cut in ((chosen, c_ids, c_mask, c_cut), (rejected, r_ids, r_mask, r_cut)):
            ex.ids.append(ids)
            ex.mask.append(mask)
            ex.truncated += cut
        convs.append(Conversation(p.context + [Message("assistant", p.chosen)], p.source))
        chars.append(answer_chars(tok, c_ids, c_mask))
    return PairSplit(name, chosen, chars, convs, rejected)


def load_pair_data(cfg, block_size: int, run, dist) -> ChatData:
    """Preference pairs -> ChatData whose splits are PairSplits."""
    from zhgpt.training.chat_data import chat_data, write_tokenizer

    tok = write_tokenizer(cfg, run, dist)
    pairs, stats = read_split_pairs(list(cfg.data), cfg.val_data, cfg.skip_bad_lines)
    splits = {name: encode_pairs(name, pairs[name], tok, block_size) for name in ("train", "val")}
    encoded = {n: {"pairs": len(s.examples), "dropped": dict(s.examples.dropped),
                   "truncated": s.examples.truncated + s.rejected.truncated} for n, s in splits.items()}
    data = chat_data(cfg, run, dist, splits, {"pairs": stats.summary(), "encoded": encoded})
    if dist.master:
        skipped = Counter(stats.skipped)
        for s in splits.values():
            skipped.update(s.examples.dropped)
        print(f"dpo data: {len(splits['train'].examples):,} train / {len(splits['val'].examples):,} val pairs from "
              f"{data.path}" + (" | skipped " + ", ".join(f"{n:,} ({r})" for r, n in sorted(skipped.items()))
                                if skipped else ""))
    for name in ("train", "val"):
        if not splits[name].examples.ids:
            raise ZhgptError(f"no {name} preference pairs left (read {stats.read}); give more pairs or a longer context")
    return data


class PairBatches(PaddedBatches):
    """A step's micro-batches of pairs: (x, y) with the chosen rows first, then the rejected rows."""

    def __init__(self, split: PairSplit, pad_id: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world: int = 1):
        super().__init__(split, pad_id, batch_size, grad_accum, seed, rank, world)
        self.rej = split.rejected
        self.tokens_per_step *= 2

    def step_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for micro in range(self.grad_accum):
            yield pair_batch(self.ex, self.rej, self.rows(step, micro), self.pad_id)


def pair_batch(chosen: SFTExamples, rejected: SFTExamples, rows: list[int], pad_id: int):
    width = max(len(ex.ids[r]) - 1 for ex in (chosen, rejected) for r in rows)
    xc, yc = pad_batch(chosen, rows, pad_id, width)
    xr, yr = pad_batch(rejected, rows, pad_id, width)
    return torch.from_numpy(np.concatenate([xc, xr])), torch.from_numpy(np.concatenate([yc, yr]))

