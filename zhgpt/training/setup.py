"""Setting a training run up, in the order it happens: the run folder (and the checkpoint a --resume starts
from), the fine-tuning source of --init-from, the data, the model, the optimizers, the resumed state, and
the record of the run (config.json, run.json, the banner, the metric logger).

`setup` does all of it and returns the `Trainer` that the loop's phases (``zhgpt.training.loop``) share.
What differs between stages (the data, the batches, the loss, the evaluation, the export) comes from a
``zhgpt.training.stage.Stage``: pre-training by default, SFT and DPO with their own.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from zhgpt.config import print_config, save_json
from zhgpt.core.device import dtype_name, hardware_info, resolve_dtype
from zhgpt.core.files import atomic_write_text
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.vocab import pad_vocab
from zhgpt.training.config import TrainConfig
from zhgpt.training.distributed import Dist
from zhgpt.training.logger import Logger
from zhgpt.training.optim import Optimizers, build_optimizers
from zhgpt.training.layout import RunFolder, artifact_root
from zhgpt.training.stage import Sampler, Stage
from zhgpt.training.watch import start_all
from zhgpt.training.step import BatchSource, Limits, LossFn


@dataclass
class Trainer:
    """What the phases of a run share. ``state`` is what a checkpoint saves and a resume restores:
    step, tokens_seen, elapsed_s, best_val (and saved_step, the last step checkpointed)."""
    cfg: TrainConfig
    mcfg: ModelConfig
    dist: Dist
    run: RunFolder
    ds: object                  # zhgpt.data.shards.TokenDataset: tokenizer, eot id, validation split
    val_split: object
    model: torch.nn.Module      # what the step runs: DDP-wrapped and/or compiled
    raw_model: GPT              # the module itself (sharded in place under FSDP): evaluation, samples, saving
    optimizer: Optimizers
    scaler: torch.amp.GradScaler
    batches: BatchSource
    limits: Limits
    state: dict
    logger: Logger
    sampler: Sampler
    full_config: dict
    run_info: dict
    amp_dtype: torch.dtype
    stage: Stage
    loss_fn: LossFn                # the stage's loss (a field, so a test or bench can swap it)
    flops_per_token: float = 0.0   # training FLOPs per token (GPT.flops_per_token), for MFU
    peak_flops: float = 0.0        # one process's peak FLOP/s in the run's precision (rank 0; 0 = unknown)
    watchers: list = dataclasses.field(default_factory=list)   # zhgpt.training.watch: what it learned, health

    @property
    def device(self) -> str:
        return self.dist.device


def setup(cfg: TrainConfig, model_fields: dict, preset: str, dist: Dist, tokenizer_asked: bool,
          stage: Stage | None = None) -> Trainer:
    """Everything before the first step, in order (the order of torch RNG use is part of reproducibility)."""
    from zhgpt.training.logger import make_logger

    stage = stage or Stage()
    device = dist.device
    amp_dtype = resolve_dtype(cfg.dtype, device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True   # TF32 matmuls: ~3x faster on Ampere+, loss unchanged
        torch.backends.cudnn.allow_tf32 = True
    run, ckpt = open_run_folder(cfg, quiet=not dist.master)
    cfg, model_fields, init_model, tokenizer_asked = fine_tuning_source(cfg, model_fields, tokenizer_asked,
                                                                        ckpt is not None, dist.master)
    ds = stage.load_data(cfg, model_fields, run, dist, tokenizer_asked)
    mcfg, raw_model = build_model(cfg, model_fields, ds, init_model, ckpt, device, quiet=not dist.master,
                                  adapt=lambda m: stage.adapt_model(m, ds, cfg))
    del init_model
    if cfg.export and mcfg.moe_experts:
        from zhgpt.model.hf import hf_model_type
        hf_model_type(mcfg)    # a MoE that no transformers class can hold: say so before training, not after
    n_params = (raw_model.num_params(), raw_model.num_params(non_embedding=True))   # counted before sharding
    flops_per_token = raw_model.flops_per_token()
    dist.shard(raw_model)   # FSDP: parameters become shards before the optimizer sees them
    optimizer = build_optimizers(raw_model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                 device.split(":")[0], sharded=dist.fsdp)
    state = resume_state(raw_model, optimizer, ckpt, dist)
    model = dist.wrap(raw_model)       # DDP wrapper for the training step
    if cfg.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    if ckpt is not None:
        cfg = keep_global_batch(cfg, run, dist)

    train_split, val_split = ds.split("train"), ds.split("val")
    batches = stage.batches(ds, mcfg, cfg, dist)
    limits = stage.limits(cfg, batches, n_params[0])
    full_config, run_info = record_run(cfg, mcfg, preset, ds, train_split, val_split, n_params, dist, amp_dtype,
                                       batches.tokens_per_step, run)
    peak = 0.0
    if dist.master:
        from zhgpt.training.layout import cache_root
        from zhgpt.training.mfu import peak_flops
        peak, source = peak_flops(device, amp_dtype, cache_root())
        print(f"peak: {peak / 1e12:.2f} TFLOP/s per process in {dtype_name(amp_dtype)} ({source}); "
              f"{flops_per_token / 1e6:.1f} MFLOP per token for MFU")
    if dist.master and ckpt is not None:
        print(f"resuming from {ckpt} (step {state['step']})")
    logger = make_logger(cfg.log, run.root, full_config, enabled=dist.master)
    if dist.master and ckpt is not None:
        # The killed run may have logged steps after its last checkpoint; those steps will be redone.
        for p in (run.metrics, run.samples, run.warnings, run.surprise):
            truncate_jsonl(p, state["step"])
    tr = Trainer(cfg=cfg, mcfg=mcfg, dist=dist, run=run, ds=ds, val_split=val_split, model=model,
                 raw_model=raw_model, optimizer=optimizer, scaler=scaler, batches=batches, limits=limits,
                 state=state, logger=logger, sampler=stage.sampler(cfg, raw_model, ds),
                 full_config=full_config, run_info=run_info, amp_dtype=amp_dtype, stage=stage,
                 loss_fn=stage.loss_fn, flops_per_token=flops_per_token, peak_flops=peak,
                 watchers=stage.watchers(cfg, ds))
    start_all(tr)
    return tr


# ------------------------------------------------------------------------- run folder and fine-tuning source

def open_run_folder(cfg: TrainConfig, quiet: bool) -> tuple[RunFolder, Path | None]:
    """The run folder, and on --resume its newest intact checkpoint. A new run never writes into an old one."""
    from zhgpt.training.checkpoint import latest_good

    root = Path(cfg.out) if cfg.out else artifact_root() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run = RunFolder(root.resolve())
    if not cfg.resume:
        if run.checkpoints():
            raise ZhgptError(f"{run.root} already holds a run; continue it with --resume {run.root} "
                             "or pick another --out")
        return run, None
    ckpt = latest_good(run.root, quiet=quiet)
    if ckpt is None:
        raise ZhgptError(f"--resume {run.root}: no intact checkpoint to resume from")
    return run, ckpt


def fine_tuning_source(cfg: TrainConfig, model_fields: dict, tokenizer_asked: bool, resuming: bool,
                       master: bool) -> tuple[TrainConfig, dict, GPT | None, bool]:
    """--init-from: its tokenizer for the data, and (unless resuming) its weights and shape.
    Returns (config, model fields, the loaded model or None, whether the tokenizer was the user's choice)."""
    if not cfg.init_from:
        return cfg, model_fields, None, tokenizer_asked
    from zhgpt.training.checkpoint import TOKENIZER
    from zhgpt.training.runs import load_for_inference, resolve_model_path
    kind, src = resolve_model_path(cfg.init_from)
    if kind == "int8":
        raise ZhgptError(f"--init-from {src}: an int8-quantised model cannot be trained; start from the "
                         "fp32 run or Hugging Face folder it was exported from")
    tok_dir = src if kind == "hf" else src / TOKENIZER
    if (Path(cfg.data[0]) / "meta.json").is_file() and len(cfg.data) == 1:
        from zhgpt.data.shards import TokenDataset
        from zhgpt.data.tokenizer import tokenizer_hash
        if TokenDataset(cfg.data[0]).tokenizer_hash != tokenizer_hash(tok_dir):
            raise ZhgptError(f"{cfg.data[0]} was tokenised with a different tokenizer than --init-from {src}; "
                             f"re-tokenise it with the model's: zhgpt data prepare SOURCES --tokenizer {tok_dir} "
                             "--out DIR (or pass the text sources to --data directly)")
    cfg = dataclasses.replace(cfg, tokenizer=str(tok_dir))
    if resuming:    # the checkpoint holds the weights; the saved config the shape
        return cfg, model_fields, None, False
    init_model, _, init_info = load_for_inference(src)
    if model_fields.get("rope_scaling") == "yarn":
        # Continued training at a longer context: --rope-scaling yarn --rope-factor F (no preset sets these)
        # makes the context F times the one the model was trained at.
        init_model.extend_context(model_fields.get("rope_factor", 1.0))
    if master:
        print(f"fine-tuning from {src} ({init_info.get('kind')}, {init_model.num_params() / 1e6:.2f}M parameters)"
              + (f", YaRN context {init_model.cfg.block_size}" if init_model.cfg.rope_scaling == "yarn" else ""))
    return cfg, dataclasses.asdict(init_model.cfg), init_model, False


# ------------------------------------------------------------------------- model, optimizers, resume

def liger_fused_loss(dev_type: str, quiet: bool):
    """Liger's fused linear + cross-entropy (Triton, CUDA only), or None with a note why not."""
    why = None
    if dev_type != "cuda":
        why = "needs a CUDA GPU"
    else:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            why = "needs liger-kernel (pip install liger-kernel)"
    if why:
        if not quiet:
            print(f"zhgpt: note: --liger {why}; using the standard output layer and cross-entropy", flush=True)
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=-1)


def build_model(cfg: TrainConfig, model_fields: dict, ds, init_model: GPT | None, ckpt: Path | None, device: str,
                quiet: bool, adapt=None) -> tuple[ModelConfig, GPT]:
    """The GPT on ``device``: seeded init, then the fine-tuning source's weights, the stage's ``adapt``
    (e.g. rows for new tokens, LoRA), then the checkpoint's weights. The embedding size follows the
    tokenizer (a preset's vocab_size only describes its default); a fine-tuned model keeps its own."""
    from zhgpt.training.checkpoint import WEIGHTS, load_weights

    if cfg.init_from:
        mcfg = ModelConfig(**model_fields)
    else:
        mcfg = ModelConfig(**{**model_fields, "vocab_size": pad_vocab(ds.vocab_size)})
    torch.manual_seed(cfg.seed)
    model = GPT(mcfg)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    if adapt is not None:
        model = adapt(model)
    mcfg = model.cfg
    if mcfg.vocab_size < ds.vocab_size:
        raise ZhgptError(f"--init-from model has {mcfg.vocab_size} embeddings but the data's tokenizer "
                         f"{ds.vocab_size} tokens; the dataset was not tokenised with the model's tokenizer")
    model.grad_checkpointing = cfg.grad_checkpointing
    if cfg.liger:
        model.fused_loss = liger_fused_loss(device.split(":")[0], quiet)
    if ckpt is not None:
        load_weights(model, ckpt / WEIGHTS)
    return mcfg, model.to(device)


def resume_state(model: torch.nn.Module, optimizer: Optimizers, ckpt: Path | None, dist: Dist) -> dict:
    """The train state to start from: zeros, or the checkpoint's (with its optimizer state and RNG states)."""
    from zhgpt.training.checkpoint import load_training_state, restore_rng

    state = {"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "best_val": None}
    if ckpt is not None:
        saved = load_training_state(ckpt)
        dist.load_optimizer(model, optimizer, saved["optimizer"])
        state.update(saved["train_state"])
        state["saved_step"] = state["step"]     # the loop need not write the checkpoint it resumed from again
        restore_rng(saved["rng"])
    return state


def keep_global_batch(cfg: TrainConfig, run: RunFolder, dist: Dist) -> TrainConfig:
    """Resuming with another process count: scale --grad-accum so the global batch (and so the
    optimisation) stays the same, or warn when it cannot."""
    saved_world = int(run.read_info().get("world_size", 1))
    if saved_world == dist.world:
        return cfg
    total = cfg.grad_accum * saved_world
    if total % dist.world == 0:
        cfg = dataclasses.replace(cfg, grad_accum=total // dist.world)
        if dist.master:
            print(f"resuming a {saved_world}-process run with {dist.world}: --grad-accum {cfg.grad_accum} "
                  "keeps the same tokens per step")
    elif dist.master:
        print(f"zhgpt: warning: the run used {saved_world} processes; {dist.world} cannot keep its global batch "
              "exactly (tokens per step change)", file=sys.stderr)
    return cfg


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records a killed run wrote after the checkpoint at ``step`` (they are redone)."""
    if not path.is_file():
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue      # a line cut short by the kill
            # Training records at <= step were done before the checkpoint; the eval at `step` is redone.
            if rec.get("step", 0) < step or (rec.get("step") == step and "loss" in rec):
                keep.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(keep))


# ------------------------------------------------------------------------- limits, record, samples

def record_run(cfg: TrainConfig, mcfg: ModelConfig, preset: str, ds, train_split, val_split,
               n_params: tuple[int, int], dist: Dist, amp_dtype: torch.dtype, tokens_per_step: int,
               run: RunFolder) -> tuple[dict, dict]:
    """config.json and run.json (rank 0 writes them), and the banner. ``n_params``: (all, non-embedding).
    Returns (full config, run info)."""
    n_params, n_params_non_emb = n_params
    data_info = {"path": str(ds.path), "vocab_size": ds.vocab_size, "tokenizer_kind": ds.meta.get("tokenizer_kind"),
                 "train_tokens": train_split.tokens, "train_chars": train_split.chars,
                 "val_tokens": val_split.tokens, "val_chars": val_split.chars,
                 "chars_per_token": round(train_split.chars_per_token, 4), "sources": ds.meta.get("sources"),
                 **ds.meta.get("record", {})}
    full_config = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(mcfg), "data": data_info}
    hw = hardware_info(dist.device)
    dtype = dtype_name(amp_dtype)
    run_info = {"status": "running", "preset": preset, "params": n_params,
                "params_non_embedding": n_params_non_emb, "hardware": hw,
                "world_size": dist.world, "tokens_per_step": tokens_per_step, "dtype": dtype}
    active = ""
    if mcfg.moe_experts:     # MoE: what one token uses (top-k of the experts); FLOPs and MFU count these
        from zhgpt.model.presets import count_params
        run_info["params_active"] = count_params(mcfg, active=True)
        active = f" ({run_info['params_active'] / 1e6:.2f}M active per token)"
    if dist.master:
        run.root.mkdir(parents=True, exist_ok=True)
        save_json(run.config, full_config)
        save_json(run.info, run_info)
        print_config(cfg, mcfg, titles=("train", "model"))
        print(f"run folder: {run.root}")
        print(f"data: {ds.path} | tokenizer {data_info['tokenizer_kind']} vocab {ds.vocab_size} | train "
              f"{train_split.tokens:,} tokens ({train_split.chars_per_token:.2f} chars/token) | val {val_split.tokens:,} tokens")
        print(f"model: {preset} {mcfg.arch} {n_params / 1e6:.2f}M parameters{active} | device {dist.device} "
              f"{hw.get('gpu', hw['cpu'])} | {dtype} | {tokens_per_step:,} tokens/step"
              + (f" | world {dist.world}" if dist.enabled else ""))
    return full_config, run_info
