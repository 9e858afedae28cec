"""One optimizer step, the learning-rate schedule and the limits of a run.

`train_step` is the only place the model is trained: the pre-training loop, the benches and the SFT / DPO
stages to come all call it. What changes between them is *what a batch is* and *what the loss is*:

    batches = TrainBatches(...)            # anything with step_batches(step) -> the micro-batches of a step
    loss, grad_norm = train_step(model, optimizer, scaler, batches.step_batches(step), lm_loss, ...)

``loss_fn(model, batch) -> scalar loss`` runs under autocast; the default, `lm_loss`, is next-token
cross-entropy on an ``(x, y)`` pair, ``model(x, y)[1]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from zhgpt.core.device import autocast_ctx
from zhgpt.errors import ZhgptError
from zhgpt.training.config import TrainConfig
from zhgpt.training.distributed import Dist
from zhgpt.training.optim import Optimizers

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


class BatchSource(Protocol):
    """Where a step's micro-batches come from (`zhgpt.training.loader.TrainBatches` for pre-training)."""

    def step_batches(self, step: int) -> Iterator[Any]: ...


class NonFiniteLoss(ZhgptError):
    """The loss of a step was NaN or infinite; the optimizer has not been stepped."""

    def __init__(self, loss: float):
        super().__init__(f"loss became {loss}")
        self.loss = loss


def lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of a GPT on an (inputs, targets) pair."""
    x, y = batch
    return model(x, y)[1]


def to_device(batch, device: str):
    """A batch (a tensor, or a tuple / list / dict of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def train_step(model: torch.nn.Module, optimizer: Optimizers, scaler: torch.amp.GradScaler, batches: Iterable,
               loss_fn: LossFn = lm_loss, *, device: str, amp_dtype: torch.dtype, dist: Dist, grad_accum: int,
               grad_clip: float) -> tuple[float, torch.Tensor]:
    """One optimizer step over the ``grad_accum`` micro-batches of ``batches``: forward under autocast,
    backward through the GradScaler with the gradient all-reduce only on the last micro-batch, a stop on a
    non-finite loss (before the weights move), clipping, the step. Returns (mean loss over all ranks,
    gradient norm before clipping). The caller sets the learning rate (`set_lr`)."""
    loss_sum = 0.0
    for micro, batch in enumerate(batches):
        batch = to_device(batch, device)
        sync = micro == grad_accum - 1
        with dist.grad_sync(model, sync):
            with autocast_ctx(device, amp_dtype):
                loss = loss_fn(model, batch)
            loss = loss / grad_accum
            scaler.scale(loss).backward()
        loss_sum += loss.detach().float().item()
    if dist.enabled:
        loss_sum = dist.sum(loss_sum) / dist.world
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(loss_sum)
    optimizer.unscale_(scaler)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    if hasattr(grad_norm, "full_tensor"):    # FSDP: a sharded DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step(scaler)
    scaler.update()
    optimizer.zero_grad()
    return loss_sum, grad_norm


# ------------------------------------------------------------------------- schedule and limits

def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Learning rate for ``step``; ``progress`` in [0, 1] is how far the run is towards its limit
    (steps, tokens or wall time, whichever is nearest), so a time-budgeted run still anneals."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_frac
        if progress < start:
            return cfg.lr
        return lo + (cfg.lr - lo) * max(0.0, 1.0 - (progress - start) / max(cfg.decay_frac, 1e-9))
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: Optimizers, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


@dataclass(frozen=True)
class Limits:
    """When a run ends: the first of its step, token and wall-time limits reached (0 = no such limit)."""
    max_steps: int
    max_tokens: int
    budget_s: float | None
    tokens_per_step: int

    def progress(self, step: int, elapsed: float) -> float:
        fr = [0.0]
        if self.max_steps:
            fr.append(step / self.max_steps)
        if self.max_tokens:
            fr.append(step * self.tokens_per_step / self.max_tokens)
        if self.budget_s:
            fr.append(elapsed / self.budget_s)
        return max(fr)

    def finished(self, step: int, elapsed: float) -> bool:
        return self.progress(step, elapsed) >= 1.0
