"""Batches from token shards.

Training batches are *stateless*: the windows of step ``s`` are drawn from a generator seeded with
``(seed, s)``, so resuming at step ``s`` needs no loader state and gives exactly the batches an
uninterrupted run would have seen. The global batch of a step is ``grad_accum * world_size * batch_size``
windows; micro-step ``m`` of rank ``r`` takes rows ``(m*world + r)*B ... +B``. A single process with
``grad_accum * world_size`` accumulation steps therefore sees the same windows as a DDP job.
Each rank reads only its own rows from the memory-mapped shards.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from zhgpt.errors import ZhgptError
from zhgpt.data.shards import Split


class TrainBatches:
    def __init__(self, split: Split, block_size: int, batch_size: int, grad_accum: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.arrays = [a for a in split.arrays if len(a) > block_size + 1]
        if not self.arrays:
            raise ZhgptError(f"training split has {split.tokens} tokens, fewer than one window of "
                             f"block_size+1={block_size + 1}; use more text or a smaller --block-size")
        self.T, self.B, self.accum = block_size, batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world_size
        # Valid window starts per shard, and their cumulative sum to map a global draw to (shard, offset).
        self.starts = np.array([len(a) - block_size - 1 for a in self.arrays], dtype=np.int64)
        self.cum = np.cumsum(self.starts)

    @property
    def tokens_per_step(self) -> int:
        return self.B * self.T * self.accum * self.world

    def steps_per_epoch(self) -> float:
        """Optimizer steps that draw as many tokens as the training split holds (windows are drawn at random,
        so an epoch is a count of tokens, not a pass that sees each one once)."""
        return sum(len(a) for a in self.arrays) / self.tokens_per_step

    def offsets(self, step: int) -> np.ndarray:
        """(global_rows,) window starts in the virtual concatenation of shards, for this step."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        return rng.integers(0, int(self.cum[-1]), size=self.B * self.accum * self.world, dtype=np.int64)

    def micro_batch(self, step: int, micro: int, offsets: np.ndarray | None = None):
        """(x, y) int64 tensors of shape (B, T) for micro-step ``micro`` of this rank."""
        offsets = self.offsets(step) if offsets is None else offsets
        row0 = (micro * self.world + self.rank) * self.B
        x = np.empty((self.B, self.T + 1), dtype=np.int64)
        for i, g in enumerate(offsets[row0:row0 + self.B]):
            shard = int(np.searchsorted(self.cum, g, side="right"))
            off = int(g - (self.cum[shard - 1] if shard else 0))
            x[i] = self.arrays[shard][off:off + self.T + 1]
        t = torch.from_numpy(x)
        return t[:, :-1], t[:, 1:]

    def step_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offsets = self.offsets(step)
        for m in range(self.accum):
            yield self.micro_batch(step, m, offsets)


def eval_windows(split: Split, block_size: int, max_tokens: int | None = None, rank: int = 0, world_size: int = 1):
    """Non-overlapping windows over the whole split (every token after the first of each shard is
    predicted once). Returns a list of (x, y) int64 arrays of length <= block_size, and the number of
    predicted tokens. Short tail windows are kept so no validation text is skipped."""
    windows = []
    budget = max_tokens if max_tokens else None
    for arr in split.arrays:
        n = len(arr)
        for start in range(0, n - 1, block_size):
            end = min(start + block_size + 1, n)
            if budget is not None and budget <= 0:
                break
            chunk = np.asarray(arr[start:end], dtype=np.int64)
            if budget is not None and len(chunk) - 1 > budget:
                chunk = chunk[:budget + 1]
            windows.append(chunk)
            if budget is not None:
                budget -= len(chunk) - 1
    mine = windows[rank::world_size]
    return [(w[:-1], w[1:]) for w in mine], sum(len(w) - 1 for w in windows)
