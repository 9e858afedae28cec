"""What `zhgpt sft` trains on: conversations encoded with the chat template, shaped for the shared loop.

`load_chat_data` reads the conversation files (or the built-in set), writes the chat tokenizer (the
model's tokenizer plus ``<|im_start|>`` / ``<|im_end|>`` and the Jinja template) into the run folder and
encodes the train and validation conversations with their loss masks. `ChatData` answers what the set-up,
checkpoints and export ask of a pre-training dataset (tokenizer folder and hash, eot id, vocabulary size,
splits), so the run folder, checkpoints and ``RUN/final`` are those of any run.

`PaddedBatches` yields a step's micro-batches: a fixed permutation per epoch (seeded, so a resumed run sees
the same batches), one conversation per row, padded to the longest row of the micro-batch. `evaluate_chat`
scores the held-out answers: loss and bits per character on the assistant tokens only, the same numbers
the training loss is made of.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zhgpt.core.device import autocast_ctx
from zhgpt.data.chat import ChatReadStats, Conversation
from zhgpt.data.sft import IGNORE, SFTExamples, encode_conversations, pad_batch
from zhgpt.errors import ZhgptError

LN2 = math.log(2)
BUILTIN = {"builtin": ("sentiment", "continuation"), "builtin:sentiment": ("sentiment",),
           "builtin:continuation": ("continuation",)}
GROUP = 50               # micro-batches whose rows are sorted by length together (HF Trainer's megabatch)
VAL_PERCENT = 5          # held out of user files (by a hash of the conversation) when no --val-data is given


@dataclass
class ChatSplit:
    """Encoded conversations of one split. ``chars`` counts the characters of the answers that carry loss
    (what bits per character divide by); ``convs`` are the split's conversations as read."""
    name: str
    examples: SFTExamples
    answer_chars: list[int]
    convs: list[Conversation] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.examples.tokens

    @property
    def chars(self) -> int:
        return int(sum(self.answer_chars))

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.examples.targets, 1)


@dataclass
class ChatData:
    path: str                  # what --data named, for the record
    tokenizer_dir: Path        # the chat tokenizer, in the run folder
    tokenizer: object          # tokenizers.Tokenizer with the chat tokens
    eot_id: int
    chat_ids: list[int]        # ids of <|im_start|>, <|im_end|>
    n_base_tokens: int         # the model's tokenizer before the chat tokens were added
    splits: dict[str, ChatSplit]
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def tokenizer_hash(self) -> str:
        from zhgpt.data.tokenizer import tokenizer_hash
        return tokenizer_hash(self.tokenizer_dir)

    def split(self, name: str) -> ChatSplit:
        if not self.splits[name].examples.ids:
            raise ZhgptError(f"no {name} conversations left to {'train' if name == 'train' else 'validate'} on "
                             f"({describe(self)}); give more conversations or a longer context")
        return self.splits[name]


def _held_out(conv: Conversation) -> bool:
    key = "\x00".join(m.content for m in conv.messages).encode("utf-8")
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def read_split_conversations(data: list[str], val_data: str, skip_bad: bool) -> tuple[dict, ChatReadStats]:
    """{"train": [...], "val": [...]} conversations: the built-in set's own split, --val-data as the whole
    validation split, or VAL_PERCENT of the files held out by hash (stable whatever the order)."""
    from zhgpt.data.chat import read_conversations
    from zhgpt.data.chat_builtin import builtin_sft

    stats = ChatReadStats()
    out: dict[str, list[Conversation]] = {"train": [], "val": []}
    files = [d for d in data if d not in BUILTIN]
    for name in (d for d in data if d in BUILTIN):
        out["train"] += builtin_sft("train", BUILTIN[name])
        if not val_data:
            out["val"] += builtin_sft("val", BUILTIN[name])
    for path in files:
        if not Path(path).is_file():
            raise ZhgptError(f"--data {path}: no such file (give JSONL/JSON conversation files, or builtin)")
    for conv in read_conversations(files, skip_bad=skip_bad, stats=stats):
        out["val" if not val_data and _held_out(conv) else "train"].append(conv)
    if val_data:
        if not Path(val_data).is_file():
            raise ZhgptError(f"--val-data {val_data}: no such file")
        out["val"] = list(read_conversations([val_data], skip_bad=skip_bad, stats=stats))
    return out, stats


def answer_chars(tok, ids: np.ndarray, mask: np.ndarray) -> int:
    """Characters of the tokens that carry loss (what bits per character divides by)."""
    return len(tok.decode(ids[1:][mask[1:]].tolist(), skip_special_tokens=True))


def encode_split(name: str, convs: list[Conversation], tok, block_size: int) -> ChatSplit:
    ex = encode_conversations(convs, tok, block_size)
    return ChatSplit(name, ex, [answer_chars(tok, ids, mask) for ids, mask in zip(ex.ids, ex.mask)], convs)


def chat_data(cfg, run, dist, splits: dict, record: dict) -> ChatData:
    """ChatData around encoded ``splits``. The chat tokenizer (the model's, plus the chat tokens and the
    template) was written to RUN/tokenizer by `write_tokenizer`; ``record`` goes into config.json's data
    section: what was read, skipped, cut and dropped, and why."""
    from zhgpt.data.chat_template import CHAT_TOKENS
    from zhgpt.data.tokenizer import EOT, load_tokenizer

    tok_dir = run.root / "tokenizer"
    tok = load_tokenizer(tok_dir)
    eot = tok.token_to_id(EOT)
    meta = {"tokenizer_kind": "chat", "sources": list(cfg.data), "record": record}
    return ChatData(",".join(cfg.data), tok_dir, tok, 0 if eot is None else eot,
                    [tok.token_to_id(t) for t in CHAT_TOKENS], load_tokenizer(cfg.tokenizer).get_vocab_size(),
                    splits, meta)


def write_tokenizer(cfg, run, dist):
    """RUN/tokenizer: the model's tokenizer (cfg.tokenizer) with the chat tokens and template; rank 0
    writes it, the others wait. Returns it loaded."""
    from zhgpt.data.chat_template import write_chat_tokenizer
    from zhgpt.data.tokenizer import load_tokenizer
    if dist.master:
        run.root.mkdir(parents=True, exist_ok=True)
        write_chat_tokenizer(cfg.tokenizer, run.root / "tokenizer")
    dist.barrier()
    return load_tokenizer(run.root / "tokenizer")


def load_chat_data(cfg, block_size: int, run, dist) -> ChatData:
    """Conversations -> ChatData (train and val splits encoded for ``block_size``)."""
    tok = write_tokenizer(cfg, run, dist)
    convs, stats = read_split_conversations(list(cfg.data), cfg.val_data, cfg.skip_bad_lines)
    splits = {name: encode_split(name, convs[name], tok, block_size) for name in ("train", "val")}
    data = chat_data(cfg, run, dist, splits, {"conversations": stats.summary(),
                                              "encoded": {name: s.examples.summary() for name, s in splits.items()}})
    if dist.master:
        print(describe(data))
    return data


def describe(data: ChatData) -> str:
    tr, va = data.splits["train"].examples, data.splits["val"].examples
    parts = [f"sft data: {len(tr):,} train / {len(va):,} val conversations ({tr.targets:,} answer tokens of "
             f"{tr.tokens:,}) from {data.path}"]
    read = data.meta["record"]["conversations"]
    if read["formats"]:
        parts.append("formats " + ", ".join(f"{Path(f).name}: {fmt}" for f, fmt in read["formats"].items()))
    skipped = dict(read["skipped"])
    for s in (tr, va):
        for reason, n in s.dropped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    if skipped:
        parts.append("skipped " + ", ".join(f"{n:,} ({reason})" for reason, n in sorted(skipped.items())))
    if tr.truncated or va.truncated:
        parts.append(f"cut to the context: {tr.truncated + va.truncated:,}")
    return " | ".join(parts)


# ------------------------------------------------------------------------- batches and evaluation

class PaddedBatches:
    """A step's micro-batches of padded conversations: ``batch_size`` rows per micro-batch and rank."""

    def __init__(self, split: ChatSplit, pad_id: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.ex, self.pad_id = split.examples, pad_id
        self.batch_size, self.grad_accum, self.seed, self.rank, self.world = batch_size, grad_accum, seed, rank, world
        self.rows_per_step = batch_size * grad_accum * world
        mean_len = self.ex.tokens / max(len(self.ex), 1)
        # Rows vary in length: the mean conversation stands in for a row in tokens/step (logs, --max-tokens).
        self.tokens_per_step = max(1, round(self.rows_per_step * mean_len))
        self._perm: dict[int, np.ndarray] = {}

    def steps_per_epoch(self) -> int:
        return max(1, len(self.ex) // self.rows_per_step)

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's order: a seeded permutation, sorted by length within groups of GROUP micro-batches
        so that the rows of a micro-batch have similar lengths (little padding), as Hugging Face's
        ``group_by_length`` does."""
        if epoch not in self._perm:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.ex))
            group = self.batch_size * GROUP
            lengths = np.array([len(a) for a in self.ex.ids])
            parts = [chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(perm, range(group, len(perm), group))]
            self._perm = {epoch: np.concatenate(parts)}
        return self._perm[epoch]

    def rows(self, step: int, micro: int) -> list[int]:
        n = len(self.ex)
        start = step * self.rows_per_step + (micro * self.world + self.rank) * self.batch_size
        return [int(self._order(i // n)[i % n]) for i in range(start, start + self.batch_size)]

    def step_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for micro in range(self.grad_accum):
            x, y = pad_batch(self.ex, self.rows(step, micro), self.pad_id)
            yield torch.from_numpy(x), torch.from_numpy(y)


class PackedBatches(PaddedBatches):
    """Several conversations per row, up to ``block_size`` inputs: (x, y, segments) micro-batches whose
    segment ids keep attention and positions inside each conversation (``GPT.forward``), so a packed
    conversation is computed exactly as if alone. Each epoch's permutation is packed in order, a new row
    started when the next conversation does not fit."""

    def __init__(self, split: ChatSplit, pad_id: int, block_size: int, batch_size: int, grad_accum: int,
                 seed: int, rank: int = 0, world: int = 1):
        super().__init__(split, pad_id, batch_size, grad_accum, seed, rank, world)
        self.block_size, self._packed = block_size, {}
        self.tokens_per_step = max(1, round(self.rows_per_step * self.ex.tokens / len(self._rows(0))))

    def steps_per_epoch(self) -> int:
        return max(1, len(self._rows(0)) // self.rows_per_step)

    def _rows(self, epoch: int) -> list[list[int]]:
        """The epoch's rows, each a list of conversation indices."""
        if epoch not in self._packed:
            rows, row, used = [], [], 0
            for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.ex)):
                n = len(self.ex.ids[i])
                if row and used + n > self.block_size + 1:
                    rows.append(row)
                    row, used = [], 0
                row.append(int(i))
                used += n
            self._packed = {epoch: rows + [row]}
        return self._packed[epoch]

    def packed_rows(self, step: int, micro: int) -> list[list[int]]:
        n = len(self._rows(0))      # later epochs pack to about as many rows; wrap within each epoch
        start = step * self.rows_per_step + (micro * self.world + self.rank) * self.batch_size
        out = []
        for i in range(start, start + self.batch_size):
            rows = self._rows(i // n)
            out.append(rows[(i % n) % len(rows)])
        return out

    def step_batches(self, step: int):
        for micro in range(self.grad_accum):
            yield tuple(torch.from_numpy(a) for a in pack_batch(self.ex, self.packed_rows(step, micro), self.pad_id))


def pack_batch(ex: SFTExamples, rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, segments) int64 arrays for rows of packed conversations, right-padded (segment -1)."""
    width = max(sum(len(ex.ids[c]) for c in row) for row in rows) - 1
    x = np.full((len(rows), width), pad_id, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE, dtype=np.int64)
    seg = np.full((len(rows), width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        ids = np.concatenate([ex.ids[c] for c in row])
        mask = np.concatenate([ex.mask[c] for c in row])
        sid = np.concatenate([np.full(len(ex.ids[c]), k) for k, c in enumerate(row)])
        n = len(ids) - 1
        x[r, :n], seg[r, :n] = ids[:-1], sid[:-1]
        y[r, :n] = np.where(mask[1:], ids[1:], IGNORE)
    return x, y, seg


@torch.no_grad()
def evaluate_chat(model, split: ChatSplit, pad_id: int, device: str, amp_dtype, batch_size: int = 16,
                  max_examples: int = 0) -> dict:
    """Loss, perplexity and bits per character on the answers of held-out conversations."""
    ex = split.examples
    n = min(len(ex), max_examples) if max_examples else len(ex)
    order = sorted(range(n), key=lambda r: len(ex.ids[r]))    # similar lengths together: less padding
    was_training = model.training
    model.eval()
    nats = 0.0
    for i in range(0, n, batch_size):
        x, y = (torch.from_numpy(a).to(device) for a in pad_batch(ex, order[i:i + batch_size], pad_id))
        with autocast_ctx(device, amp_dtype):
            _, loss = model(x, y, reduction="sum")
        nats += float(loss)
    if was_training:
        model.train()
    targets = sum(int(ex.mask[r][1:].sum()) for r in range(n))
    chars = sum(split.answer_chars[:n])
    loss = nats / max(targets, 1)
    return {"val_loss": loss, "val_bpc": nats / max(chars, 1) / LN2, "val_ppl": math.exp(min(loss, 50.0)),
            "val_tokens": targets, "val_chars": chars}
