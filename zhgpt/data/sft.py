"""Conversations -> the arrays SFT trains on: token ids, and targets that are -1 wherever no loss is taken.

Each conversation is cleaned like pre-training text (NFKC etc., so "１９９７" reads as the base model saw
"1997"), rendered with the chat template and encoded with its loss mask (``chat_template.encode``).
A conversation longer than the context is cut at the end and counted; one whose answers were cut away
entirely is dropped and counted: nothing is lost without a number in the summary.

``pad_batch`` lays encoded conversations out one per row, padded: row i is (x, y) with
``y[t] = ids[t + 1]`` where that token is an assistant target, else -1 (ignored by the loss). No torch
here: the training stage turns the arrays into tensors.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from zhgpt.data.chat import Conversation, Message
from zhgpt.data.chat_template import encode
from zhgpt.data.clean import normalize

IGNORE = -1


@dataclass
class SFTExamples:
    """Encoded conversations (ids and loss masks as int32 / bool arrays), with what happened to the rest."""
    ids: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    truncated: int = 0                                  # cut to the context, still trained on
    dropped: Counter = field(default_factory=Counter)   # reason -> conversations not trained on

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        return int(sum(len(a) for a in self.ids))

    @property
    def targets(self) -> int:
        return int(sum(int(m.sum()) for m in self.mask))

    def summary(self) -> dict:
        return {"conversations": len(self), "tokens": self.tokens, "targets": self.targets,
                "truncated": self.truncated, "dropped": dict(self.dropped)}


def clean_messages(messages: list[Message]) -> list[Message]:
    return [Message(m.role, normalize(m.content)) for m in messages]


def encode_conversations(convs, tok, block_size: int) -> SFTExamples:
    """Encode for a model with ``block_size`` positions: at most block_size + 1 tokens per conversation
    (the inputs and the targets shifted by one)."""
    out = SFTExamples()
    for conv in convs:
        msgs = clean_messages(conv.messages if isinstance(conv, Conversation) else conv)
        enc = encode(tok, msgs, max_tokens=block_size + 1)
        if not any(enc.mask[1:]):
            out.dropped["answer beyond the context" if enc.truncated else "no answer tokens"] += 1
            continue
        out.truncated += enc.truncated
        out.ids.append(np.asarray(enc.ids, dtype=np.int32))
        out.mask.append(np.asarray(enc.mask, dtype=bool))
    return out


def pad_batch(ex: SFTExamples, rows: list[int], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 arrays of shape (len(rows), width): one conversation per row, right-padded with
    ``pad_id`` (its targets -1). ``width`` defaults to the longest row, so short batches stay short."""
    width = width or max(len(ex.ids[r]) - 1 for r in rows)
    x = np.full((len(rows), width), pad_id, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for i, r in enumerate(rows):
        ids, mask = ex.ids[r], ex.mask[r]
        n = min(len(ids) - 1, width)
        x[i, :n] = ids[:n]
        y[i, :n] = np.where(mask[1:n + 1], ids[1:n + 1], IGNORE)
    return x, y
