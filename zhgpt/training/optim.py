"""Optimizers for training: AdamW, or Muon for the matrices inside the blocks plus AdamW for the rest.

Muon (Keller Jordan, 2024) orthogonalises the momentum of each weight matrix with a few Newton-Schulz
iterations before the update; it gives the largest single gains in the public GPT-2 speedruns and, on
2 CPU cores, the lowest bits/char per second of the recipes we tried (bench/RESULTS.md). It is only
defined for 2-D matrices, so embeddings, biases, norms and an untied output layer stay on AdamW, as its
authors advise. We use PyTorch's own `torch.optim.Muon` with ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's
scaling: the update's RMS matches AdamW's), so one `--lr` and `--weight-decay` serve both optimizers.
torch runs the Newton-Schulz iterations in bf16; where bf16 matmuls are emulated (CPUs without
avx512_bf16/AMX, GPUs before Ampere) `Muon` below runs them in fp32 instead, the same update otherwise.

Both are plain torch optimizers held in an `Optimizers` set; checkpoints save them together in
torch.distributed.checkpoint's by-parameter-name format (it takes several optimizers), so a run's
optimizer state loads with any process count.
"""
from __future__ import annotations

import math

import torch

from zhgpt.core.device import cpu_has_native_bf16
from zhgpt.errors import ZhgptError

OPTIMIZERS = ("adamw", "muon", "adamw8bit")


class Optimizers:
    """One or more torch optimizers stepped as one (the loop sets lr on ``param_groups``)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts for g in o.param_groups]

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for o in self.parts:
            scaler.step(o)

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        for o in self.parts:
            scaler.unscale_(o)

    def zero_grad(self) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=True)


def param_groups(model: torch.nn.Module, weight_decay: float, muon: bool) -> tuple[list[dict], list[dict]]:
    """(Muon groups, AdamW groups). AdamW decays matrices only: biases, norms and embeddings are not decayed
    (decaying the embeddings of rare Chinese characters pulls them to zero between their rare updates)."""
    matrices, decay, no_decay, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))      # tied weights appear once
        # `no_decay`: set on weights that must not decay (LoRA: embeddings of which only some rows train)
        is_embedding = name.startswith(("transformer.wte", "transformer.wpe")) or getattr(p, "no_decay", False)
        if muon and p.dim() == 2 and name.startswith("transformer.h."):
            matrices.append(p)
        elif p.dim() >= 2 and not is_embedding:
            decay.append(p)
        else:
            no_decay.append(p)
    adam = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]
    return ([{"params": matrices, "weight_decay": weight_decay}] if matrices else []), adam


def build_optimizers(model: torch.nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                     device_type: str, sharded: bool = False, muon_momentum: float = 0.95) -> Optimizers:
    if name not in OPTIMIZERS:
        raise ZhgptError(f"--optimizer {name}: choose one of {', '.join(OPTIMIZERS)}")
    if name == "muon" and sharded:
        raise ZhgptError("--optimizer muon orthogonalises whole matrices, which FSDP shards across processes; "
                         "train with DDP (drop --fsdp) or use --optimizer adamw")
    muon_groups, adam_groups = param_groups(model, weight_decay, muon=name == "muon")
    parts: list[torch.optim.Optimizer] = []
    if muon_groups:
        parts.append(Muon(muon_groups, lr=lr, momentum=muon_momentum, nesterov=True,
                          adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype(device_type)))
    adamw8bit = _bnb_adamw8bit() if name == "adamw8bit" and device_type == "cuda" else None
    if name == "adamw8bit" and adamw8bit is None:
        why = "needs a CUDA GPU" if device_type != "cuda" else "needs bitsandbytes (pip install bitsandbytes)"
        print(f"zhgpt: note: --optimizer adamw8bit {why}; using AdamW with fp32 state", flush=True)
    if adamw8bit is not None:
        # m and v in 8 bits with block-wise scales: 2 bytes of state per parameter instead of 8
        parts.append(adamw8bit(adam_groups, lr=lr, betas=betas))
    else:
        # fused AdamW: one kernel for all tensors on CUDA; on CPU it measured no faster (bench_train.py)
        parts.append(torch.optim.AdamW(adam_groups, lr=lr, betas=betas, fused=device_type == "cuda"))
    return Optimizers(parts)


def ns_dtype(device_type: str) -> torch.dtype:
    """bf16 where its matmuls are native, else fp32. Emulated bf16 is what makes torch's Muon slow: on a 2-core
    AVX2-only EPYC a bf16 matmul ran at 0.9 GFLOP/s against 102 in fp32, and training fell from ~4k to 0.2k
    tokens/s (bench/RESULTS.md)."""
    if device_type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float32   # Ampere+
    return torch.bfloat16


def newton_schulz(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch.optim._muon._zeropower_via_newtonschulz (torch 2.13) in ``dtype`` instead of bf16: the same quintic
    iteration on the wide orientation of the matrix, normalised to spectral norm <= 1 first."""
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)      # out of place: for fp32 ``x`` may be the caller's tensor itself
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz dtype as a choice (torch hard-codes bf16). Same state, same
    checkpoints; with ``ns_dtype=torch.bfloat16`` it is torch's own step."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kw):
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
            for p, grad, buf in zip(params, grads, bufs):    # torch's _single_tensor_muon, NS in ns_dtype
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * adjust_ratio(group["adjust_lr_fn"], p.shape))
        return loss


def adjust_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim._muon._adjust_lr's factor: Keller Jordan's sqrt(max(1, A/B)) or Moonshot's 0.2*sqrt(max(A, B))."""
    a, b = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, a / b))
    return 0.2 * math.sqrt(max(a, b)) if adjust_lr_fn == "match_rms_adamw" else 1.0


def _bnb_adamw8bit():
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return bnb.optim.AdamW8bit
