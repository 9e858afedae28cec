"""Training settings: the `TrainConfig` flags and how they are merged with a preset or a resumed run.

Precedence: TrainConfig defaults < the preset's training defaults < flags given on the command line.
On --resume the run's saved config is the base and the flags given override it (the model shape cannot
change). --init-from takes the shape and tokenizer from the model and a gentler learning rate.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from zhgpt.config import load_json, opt, parse_duration
from zhgpt.errors import ZhgptError
from zhgpt.training.optim import OPTIMIZERS
from zhgpt.training.layout import RunFolder
from zhgpt.training.probes import check_probes_flag

DEFAULT_PROMPTS = ["中国的历史", "人工智能是", "今天天气", "教育的目的", "在科学研究中"]
FINETUNE_LR = 1e-4


@dataclass
class TrainConfig:
    # ---- data
    data: list[str] = opt(help="a prepared dataset folder, or text sources (files, folders, globs, "
                               "builtin, builtin:people-daily, builtin:reviews) prepared on the fly and cached",
                          factory=lambda: ["builtin"])
    val_data: str = opt("", "a source used as the whole validation split (e.g. a fixed benchmark text)")
    tokenizer: str = opt("", "bpe, unigram, char, or a tokenizer/HF folder (default: the preset's)")
    vocab_size: int = opt(0, "tokenizer vocabulary size when one is trained (0 = the preset's)")
    # ---- run
    out: str = opt("", "run folder (default: runs/<timestamp> under $ZHGPT_HOME or the current folder)")
    resume: str = opt("", "continue a run folder exactly where its last good checkpoint left off")
    preset: str = opt("", "model preset (auto, cpu-tiny, tiny, mini, small, medium, large, xl; default: auto): "
                          "auto chooses tokenizer, vocabulary, context and shape from the corpus, the budget and "
                          "the machine, each choice printed with its reason; flags still win")
    auto: dict = opt(help="what --preset auto saw and chose, and why (written to config.json)", factory=dict,
                     cli=False)
    init_from: str = opt("", "fine-tune: start from a local Hugging Face GPT-2/Llama folder or a zhgpt run/checkpoint, "
                             "keeping its tokenizer (the data is tokenised with it); default --lr becomes 1e-4")
    seed: int = opt(1337, "random seed (model init, batches, dropout, samples)")
    # ---- optimisation
    batch_size: int = opt(16, "sequences per micro-batch (per process)")
    grad_accum: int = opt(1, "micro-batches per optimizer step; tokens/step = batch*block*accum*world")
    lr: float = opt(6e-4, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = opt(100, "linear warm-up steps")
    schedule: str = opt("cosine", "learning-rate decay after warm-up", choices=("cosine", "wsd", "constant"))
    decay_frac: float = opt(0.2, "wsd: fraction of the run spent decaying at the end")
    optimizer: str = opt("adamw", "adamw; muon: Muon for the matrices inside the blocks (same --lr and "
                                  "--weight-decay, its update scaled to AdamW's RMS) and AdamW for the rest; "
                                  "adamw8bit: bitsandbytes 8-bit AdamW state (CUDA only, else AdamW)",
                         choices=OPTIMIZERS)
    weight_decay: float = opt(0.1, "decoupled weight decay on matrices (not on biases, norms, embeddings)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2 (0.95 rather than 0.999: steadier with large learning rates)")
    grad_clip: float = opt(1.0, "clip the global gradient norm (0 = off)")
    # ---- length of the run (the first limit reached ends it; the schedule anneals to that limit)
    max_steps: int = opt(0, "optimizer steps (0 = no step limit)")
    time_budget: str = opt("", "wall-time budget for training, e.g. 90s, 10m, 2h")
    max_tokens: int = opt(0, "training tokens (0 = no limit; default when nothing else is set: 20 per parameter)")
    max_epochs: float = opt(0.0, "passes over the training data, counted in its real tokens (0 = no limit)")
    # ---- evaluation, samples, checkpoints
    eval_every: int = opt(200, "evaluate (val loss, bits/char, samples) every N steps")
    eval_tokens: int = opt(500_000, "score at most this many validation tokens per evaluation (0 = all)")
    sample_prompts: str = opt("", "file with one prompt per line for the samples at every evaluation")
    sample_tokens: int = opt(48, "tokens generated per sample prompt")
    probes: str = opt("", "a JSONL file of your own probe items (format: zhgpt/training/probes.py), scored with the "
                          "built-in ones at every evaluation; 'none' turns the probes off")
    save_every: int = opt(0, "checkpoint every N steps (0 = at every evaluation)")
    save_every_minutes: float = opt(0.0, "also checkpoint when this many minutes have passed since the last such "
                                         "checkpoint (0 = off); SIGTERM / SIGUSR1 always checkpoint and stop")
    keep_last: int = opt(2, "checkpoints kept besides the best one")
    log_every: int = opt(10, "steps between log lines / metrics records")
    # `--logger` is the same flag: torchrun's parser rejects `--log` as an ambiguous prefix of its --log-dir.
    log: list[str] = opt(help="metric loggers: tensorboard, wandb, trackio, none (alias --logger, needed under torchrun)",
                         factory=lambda: ["tensorboard"], aliases=("--logger",))
    report: bool = opt(True, "write loss_curve.png, report.md and report.html at the end")
    export: bool = opt(True, "export the final model as a Hugging Face folder RUN/final")
    # ---- hardware
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt("auto", "compute precision: auto (bf16 on GPUs and on CPUs with native bf16 "
                             "(AVX512-BF16/AMX), else fp32 on CPU; fp16 on older GPUs), fp32, bf16, fp16",
                     choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the model (faster steps after a compile of ~1 minute)")
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    liger: bool = opt(False, "CUDA + liger-kernel: fused output layer and cross-entropy that never holds the "
                             "(tokens x vocab) logits (less memory, larger batches); ignored with a note elsewhere")
    fsdp: bool = opt(False, "under torchrun: shard the model with FSDP instead of DDP")

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        for name in ("batch_size", "grad_accum", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ZhgptError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "max_epochs", "warmup_steps", "save_every", "eval_tokens", "keep_last"):
            if getattr(self, name) < 0:
                raise ZhgptError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ZhgptError(f"--lr must be positive, got {self.lr}")
        if self.save_every_minutes < 0:
            raise ZhgptError(f"--save-every-minutes must be >= 0, got {self.save_every_minutes}")
        parse_duration(self.time_budget)   # validates
        check_probes_flag(self.probes)     # a bad probe file fails now, not after data preparation


def resolve_config(explicit: dict, model_overrides: dict, device: str, cls: type = TrainConfig,
                   stage_defaults: dict | None = None) -> tuple[TrainConfig, dict, str]:
    """Merge defaults, preset, a stage's defaults (e.g. SFT's) and explicit flags (or the resumed run's
    saved config) into a ``cls`` (TrainConfig or a stage's subclass of it)."""
    from zhgpt.model.presets import get_preset

    if explicit.get("resume"):
        run = Path(explicit["resume"])
        saved_path = RunFolder(run).config
        if not saved_path.is_file():
            raise ZhgptError(f"--resume {run}: not a zhgpt run folder (no config.json); pass the folder "
                             "that `zhgpt train` created, e.g. runs/20260101-120000")
        saved = load_json(saved_path)
        bad = sorted(k for k in model_overrides if saved["model"].get(k) != model_overrides[k])
        if bad:
            raise ZhgptError(f"--resume cannot change the model shape ({', '.join(bad)}); start a new run instead")
        base = dict(saved["train"])
        base.update({k: v for k, v in explicit.items()})
        base["out"] = str(run)
        return cls(**base), dict(saved["model"]), saved["train"].get("preset", "")
    preset = explicit.get("preset") or "auto"
    if preset == "auto" and not explicit.get("init_from"):
        model_fields, train_fields = _auto(explicit, model_overrides, device)
    else:
        model_fields, train_fields = get_preset("cpu-tiny" if preset == "auto" else preset)
    if explicit.get("init_from"):
        # Fine-tuning: the shape and tokenizer come from the model; a gentler default learning rate
        # keeps what it already knows (pre-training rates of 1e-3 wipe a small model out in a few steps).
        # AdamW: Muon fine-tuning of an AdamW-trained model did worse than AdamW in Moonshot's report.
        train_fields.update(lr=FINETUNE_LR, warmup_steps=20, tokenizer="", vocab_size=0, optimizer="adamw")
        preset = "init-from"
    if explicit.get("fsdp") and train_fields.get("optimizer") == "muon" and "optimizer" not in explicit:
        # Muon needs whole matrices, FSDP shards them: the preset's Muon gives way to AdamW at AdamW's rate.
        train_fields.update(optimizer="adamw", lr=train_fields["lr"] / 2)
        print(f"zhgpt: note: --fsdp: using AdamW (lr {train_fields['lr']:g}) instead of the {preset} preset's Muon",
              flush=True)
    merged = {**train_fields, **(stage_defaults or {}), **explicit, "preset": preset}
    model_fields.update(model_overrides)
    return cls(**merged), model_fields, preset


def _auto(explicit: dict, model_overrides: dict, device: str) -> tuple[dict, dict]:
    """--preset auto: the chosen model and training fields, its reasons printed (rank 0) and kept in ``auto``."""
    from zhgpt.training.auto import choose
    rec = choose(explicit, model_overrides, device)
    if os.environ.get("RANK", "0") == "0":
        for line in rec.lines(explicit, model_overrides):
            print(line, flush=True)
    return rec.model, {**rec.train, "auto": rec.record(explicit, model_overrides)}


def resolve_run_config(cfg: TrainConfig, explicit: dict | None, model_overrides: dict, device: str,
                       stage_defaults: dict | None = None) -> tuple[TrainConfig, dict, str]:
    """(config, model fields, preset) of a run. From the CLI, ``explicit`` holds the flags the user typed so
    the preset's defaults sit between the dataclass defaults and the flags; without it (tests, benches)
    ``cfg`` is taken as fully resolved and only the model shape comes from its preset."""
    if explicit is not None:
        return resolve_config(explicit, model_overrides, device, type(cfg), stage_defaults)
    from zhgpt.model.presets import get_preset
    preset = cfg.preset or "cpu-tiny"
    if preset == "auto":        # the shape, and the tokenizer cfg leaves unset, from the corpus; the rest as given
        from zhgpt.training.auto import choose
        given = {k: getattr(cfg, k) for k in ("data", "time_budget", "tokenizer", "vocab_size", "batch_size",
                                             "max_steps", "max_tokens", "max_epochs") if getattr(cfg, k)}
        rec = choose(given, model_overrides, device)
        unset = {k: rec.train[k] for k in ("tokenizer", "vocab_size") if k in rec.train and not getattr(cfg, k)}
        return (dataclasses.replace(cfg, auto=rec.record(given, model_overrides), **unset),
                {**rec.model, **model_overrides}, preset)
    model_fields = {**get_preset(preset)[0], **model_overrides}
    return dataclasses.replace(cfg, preset=preset), model_fields, preset
