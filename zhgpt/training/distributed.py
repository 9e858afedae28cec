"""Data-parallel training on torch.distributed: DDP by default, FSDP2 (``fully_shard``) with --fsdp.

A single process is "rank 0 of 1" and every method is a cheap no-op for it, so the training loop has
no `if distributed:` branches beyond asking this object. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK;
the backend is NCCL on GPUs and gloo on CPU (so all of it is tested on a laptop).

FSDP shards parameters, gradients and optimizer state across ranks; any forward pass is then a
collective, so under FSDP *every* rank runs evaluation and sample generation (rank 0 writes them),
and checkpoints gather a full state dict on all ranks before rank 0 writes it.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch

class Dist:
    def __init__(self, device: str, fsdp: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.fsdp = fsdp and self.enabled
        self.device = device
        if self.enabled:
            import torch.distributed as dist
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if device.startswith("cuda"):
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.device)
            # A timeout so that a dead rank ends the job with an error instead of a hang.
            timeout = datetime.timedelta(seconds=int(os.environ.get("ZHGPT_DIST_TIMEOUT", "300")))
            dist.init_process_group(backend=backend, timeout=timeout)

    @property
    def master(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives
    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.startswith("cuda") else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()

    # ---------------------------------------------------------------- model wrapping
    def shard(self, model: torch.nn.Module) -> None:
        """FSDP2: shard each block, then the root (embeddings, final norm, tied head), in place.
        Must run before the optimizer is created: the parameters become sharded DTensors."""
        if not self.fsdp:
            return
        from torch.distributed.fsdp import fully_shard
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP for the training forward/backward (FSDP models are already sharded in place)."""
        if not self.enabled or self.fsdp:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[self.local_rank] if self.device.startswith("cuda") else None)

    def grad_sync(self, model: torch.nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps (DDP no_sync / FSDP2 requires_gradient_sync)."""
        if not self.enabled or sync:
            if self.fsdp:
                model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return model.no_sync()

    @property
    def eval_shards(self) -> tuple[int, int]:
        """(rank, world) for splitting evaluation windows; FSDP ranks each run every window in lockstep."""
        return (0, 1) if self.fsdp or not self.enabled else (self.rank, self.world)

    @property
    def all_ranks_forward(self) -> bool:
        """Whether every rank must take part in sample generation (FSDP forward passes are collective)."""
        return self.fsdp

    # ---------------------------------------------------------------- state
    # Optimizer state is always saved keyed by parameter names (torch.distributed.checkpoint's format),
    # which loads into a plain, DDP or FSDP model alike: a run can resume with another layout.
    def full_state(self, model: torch.nn.Module, optimizer) -> tuple[dict | None, dict | None]:
        """(model state, optimizer state) as full CPU tensors on rank 0, (None, None) elsewhere.
        Collective under FSDP: every rank must call it."""
        if not self.fsdp and not self.master:
            return None, None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                              get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        # ``optimizer``: a zhgpt.training.optim.Optimizers set; DCP merges its parts into one by-name state dict
        osd = get_optimizer_state_dict(model, optimizer.parts, options=opts) if optimizer is not None else None
        return (msd, osd) if self.master else (None, None)

    @staticmethod
    def load_optimizer(model: torch.nn.Module, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer.parts, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
