"""What a training stage plugs into the shared setup and loop, and pre-training's answers.

Every stage (pre-training, SFT, DPO) runs the same ``setup`` -> ``loop.train``: run folder, checkpoints,
exact resume, time budget, logging, report. They differ in five things, which a `Stage` supplies:

    load_data(cfg, model_fields, run, dist, ...)  the data: tokenizer, eot id, train / val splits
    adapt_model(model, data, cfg)                the model before its first step (new token rows, LoRA)
    batches(data, mcfg, cfg, dist)               where a step's micro-batches come from
    limits(cfg, batches, n_params)               when the run ends
    loss_fn(model, batch)                        the loss of one micro-batch
    evaluate(tr) / sampler(cfg, model, data)     the metrics and samples of every evaluation
    watchers(cfg, data)                          what else every evaluation measures, and the health checks
    final_model(model) / export(tr, model)       what RUN/final holds at the end

This base class is pre-training: token shards, (x, y) windows, next-token loss on every position, bits per
character on the validation split, prompts continued as plain text.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhgpt.errors import ZhgptError
from zhgpt.training.config import DEFAULT_PROMPTS, TrainConfig
from zhgpt.training.genstats import GenStatsWatcher
from zhgpt.training.health import HealthWatcher
from zhgpt.training.layout import cache_root
from zhgpt.training.probes import ProbeWatcher
from zhgpt.training.step import lm_loss
from zhgpt.training.surprise import SurpriseWatcher


@dataclass
class Sampler:
    """The samples written at every evaluation: fixed prompts, settings and seed, comparable across steps.
    ``format`` turns a prompt into the model's input (the chat template for a chat model)."""
    prompts: list[str]
    engine: object              # zhgpt.model.engine.Engine on the raw model
    params: object              # zhgpt.model.engine.SamplingParams
    format: Callable[[str], str] = field(default=lambda prompt: prompt)


class Stage:
    """Pre-training; SFT and DPO subclass it (``zhgpt.training.sft``, ``zhgpt.training.dpo``)."""
    name = "train"

    def defaults(self, explicit: dict) -> dict:
        """Training defaults of the stage, between the preset's and the flags given (``explicit``)."""
        return {}

    def loss_fn(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return lm_loss(model, batch)

    def load_data(self, cfg: TrainConfig, model_fields: dict, run, dist, tokenizer_asked: bool):
        return load_data(cfg, dist, tokenizer_asked)

    def adapt_model(self, model, data, cfg: TrainConfig):
        return model

    def batches(self, data, mcfg, cfg: TrainConfig, dist):
        from zhgpt.training.loader import TrainBatches
        return TrainBatches(data.split("train"), mcfg.block_size, cfg.batch_size, cfg.grad_accum, cfg.seed,
                            dist.rank, dist.world)

    def limits(self, cfg: TrainConfig, batches, n_params: int):
        """When the run ends; with no limit given, ~20 tokens per parameter (Chinchilla's compute optimum)."""
        from zhgpt.training.step import Limits
        from zhgpt.config import parse_duration
        max_steps, max_tokens = cfg.max_steps, cfg.max_tokens
        budget_s = parse_duration(cfg.time_budget)
        if cfg.max_epochs:
            by_epochs = math.ceil(cfg.max_epochs * batches.steps_per_epoch())
            max_steps = min(max_steps, by_epochs) if max_steps else by_epochs
        if not (max_steps or budget_s or max_tokens):
            max_tokens = 20 * n_params
        return Limits(max_steps, max_tokens, budget_s, batches.tokens_per_step)

    def evaluate(self, tr) -> dict:
        """Validation loss / bits per char (every rank scores its share of the windows)."""
        from zhgpt.training.evaluation import evaluate_split
        rank, world = tr.dist.eval_shards
        return evaluate_split(tr.raw_model, tr.val_split, tr.mcfg.block_size, tr.device, tr.amp_dtype,
                              batch_size=tr.cfg.batch_size, max_tokens=tr.cfg.eval_tokens or None, rank=rank,
                              world_size=world, reduce=tr.dist.sum if world > 1 else None)

    def sampler(self, cfg: TrainConfig, model, data) -> Sampler:
        return make_sampler(cfg, model, data, load_prompts(cfg.sample_prompts))

    def watchers(self, cfg: TrainConfig, data) -> list:
        """The ``zhgpt.training.watch`` watchers of this stage: measurements beside the validation loss at
        every evaluation, and health checks on every record (run in this order)."""
        return [ProbeWatcher(cfg.probes),   # probe_acc(_<group>): minimal pairs / cloze items of Chinese
                GenStatsWatcher(),          # distinct_2, repeat_4, cjk_ratio, copy_rate of the samples
                SurpriseWatcher(),          # per-character bits of one validation paragraph
                HealthWatcher()]            # one-line warnings: initial loss, spikes, overfitting, ...

    def final_model(self, model):
        """The plain GPT that RUN/final is exported from."""
        return model

    def export(self, tr, model) -> None:
        from zhgpt.model.hf import export_hf
        export_hf(model, tr.ds.tokenizer_dir, tr.run.final)

    def try_it(self, run_dir) -> str:
        """The command the end of the run suggests."""
        return f"zhgpt generate --model {run_dir} --prompt 人工智能是"


# ------------------------------------------------------------------------- pre-training data

def load_data(cfg: TrainConfig, dist, tokenizer_asked: bool):
    """The run's TokenDataset: rank 0 prepares it, the others wait and then open the cached result."""
    if dist.master:
        ds = prepare_data(cfg, False, tokenizer_asked)
    dist.barrier()
    if not dist.master:
        ds = prepare_data(cfg, True, tokenizer_asked)
    return ds


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


def load_prompts(path: str, default: list[str] | None = None, flag: str = "--sample-prompts") -> list[str]:
    """One prompt per line of ``path``, or ``default`` (the built-in prompts) when no file is given."""
    if not path:
        return list(default or DEFAULT_PROMPTS)
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ZhgptError(f"{flag} {path}: cannot read ({e.strerror})")
    except UnicodeDecodeError:
        raise ZhgptError(f"{flag} {path}: not UTF-8 text; save it as UTF-8")
    if not prompts:
        raise ZhgptError(f"{flag} {path}: the file has no prompts (one per line)")
    return prompts


def make_sampler(cfg: TrainConfig, model, ds, prompts: list[str], fmt: Callable[[str], str] | None = None,
                 min_new_tokens: int | None = None) -> Sampler:
    from zhgpt.data.tokenizer import load_tokenizer
    from zhgpt.model.engine import Engine, SamplingParams

    engine = Engine(model, load_tokenizer(ds.tokenizer_dir), eot_id=ds.eot_id)
    # Fixed settings and seed so outputs are comparable across steps. Small models end documents after a
    # token or two (short reviews are common in the data): ask for at least half the sample length.
    min_new = cfg.sample_tokens // 2 if min_new_tokens is None else min_new_tokens
    params = SamplingParams(max_new_tokens=cfg.sample_tokens, min_new_tokens=min_new,
                            temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=cfg.seed)
    return Sampler(prompts, engine, params, **({"format": fmt} if fmt else {}))
