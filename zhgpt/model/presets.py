"""Model presets: named shapes, from a laptop-sized model to GPT-2 XL.

``cpu-tiny`` is the shape `--preset auto` (the default) trains on a CPU for budgets under an hour:
chosen by measurement on 2 cores (see bench/RESULTS.md) to learn the most Chinese in a 10-minute budget.
The GPT-2 family shapes use a 32k Chinese vocabulary instead of GPT-2's 50,257 English-centric one, so
their parameter counts are a little below the English GPT-2 numbers; `zhgpt presets` prints the real counts.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from zhgpt.config import add_args, from_args, opt, text_table
from zhgpt.core import fmt
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import ModelConfig

# name -> (model fields, training defaults that go with the size, one-line description)
PRESETS: dict[str, tuple[dict, dict, str]] = {
    # Chosen by bench/bench_quality.py on pd1998 (2 CPU cores, 2026-11-25; runs and numbers in bench/RESULTS.md).
    # Screening at 100 s, val bits/char: the reference char/AdamW recipe 8.42; BPE 4k 8.44, 8k 7.92, 16k 7.57
    # (more characters per token buy more text per step than the bigger softmax costs); unigram 16k beat BPE
    # 16k (7.34 vs 7.52 under bf16); Muon on the block matrices beat AdamW (7.57 vs 7.92 at bpe 8k); ctx 128
    # beat 256 (more, cheaper steps); lr 6e-3 beat 3e-3 with Muon. Together: 7.06. bf16 autocast comes from
    # --dtype auto on CPUs that have native bf16.
    "cpu-tiny": (dict(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=16384),
                 dict(tokenizer="unigram", vocab_size=16384, batch_size=16, grad_accum=1, optimizer="muon", lr=6e-3,
                      warmup_steps=20, time_budget="10m", eval_every=100),
                 "laptop default: learns Chinese words and punctuation in ~10 minutes on 2 CPU cores"),
    "tiny": (dict(n_layer=6, n_head=10, n_embd=640, block_size=1024),
             dict(batch_size=16, grad_accum=8, lr=1e-3), "GPT-2 tiny, ~50M parameters"),
    "mini": (dict(n_layer=8, n_head=8, n_embd=512, block_size=1024),
             dict(batch_size=16, grad_accum=8, lr=1e-3), "the gpt2-chinese-mini shape (8 layers, 512 hidden)"),
    "small": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
              dict(batch_size=16, grad_accum=8, lr=6e-4), "GPT-2 small (124M with GPT-2's vocabulary)"),
    "medium": (dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
               dict(batch_size=8, grad_accum=16, lr=3e-4), "GPT-2 medium (345M)"),
    "large": (dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
              dict(batch_size=4, grad_accum=32, lr=2.5e-4), "GPT-2 large (774M)"),
    "xl": (dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
           dict(batch_size=2, grad_accum=64, lr=2e-4), "GPT-2 XL (1.5B)"),
}
DEFAULT_GPU_PRESET = "small"


def get_preset(name: str) -> tuple[dict, dict]:
    if name not in PRESETS:
        raise ZhgptError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)} (see `zhgpt presets`)")
    model, train, _ = PRESETS[name]
    return dict(model), dict(train)


def model_config(name: str, **overrides) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ZhgptError(f"unknown model field(s) {', '.join(bad)}; valid fields: {', '.join(sorted(fields))}")
    model, _ = get_preset(name)
    model.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**model)


def count_params(cfg: ModelConfig, active: bool = False) -> int:
    """Parameters of a config without building it (exact for both architectures). ``active``: those one
    token uses -- with MoE the router, the shared expert and top_k of the E experts."""
    C, V, L, hd = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.head_dim
    b = 1 if cfg.bias else 0
    norm = C * (1 + b) if cfg.arch == "gpt2" else C
    qkv_out = (cfg.n_head + 2 * cfg.kv_heads) * hd
    attn = C * qkv_out + b * qkv_out + C * C + b * C
    hidden = cfg.mlp_hidden
    fc_out = hidden * (2 if cfg.arch == "llama" else 1)
    mlp = C * fc_out + b * fc_out + hidden * C + b * C
    if cfg.moe_experts:
        used = cfg.moe_top_k if active else cfg.moe_experts
        mlp = used * mlp + cfg.moe_experts * C + ((mlp + C) if cfg.moe_shared_expert else 0)
    qk = 2 * hd if cfg.qk_norm else 0
    per_layer = attn + mlp + 2 * norm + qk
    emb = V * C + (cfg.block_size * C if cfg.arch == "gpt2" else 0)
    head = 0 if cfg.tie_embeddings else V * C
    return emb + L * per_layer + norm + head


def preset_table(vocab_size: int | None = None, arch: str = "gpt2", moe: dict | None = None) -> str:
    """The presets with their parameter counts; ``moe`` (moe_experts, moe_top_k, ...) adds the count of
    parameters active per token beside the total."""
    head = ("preset", "layers", "heads", "hidden", "ctx", "vocab", "params")
    rows = [head + (("active/token",) if moe else ()) + ("description",)]
    for name, (model, _, desc) in PRESETS.items():
        cfg = model_config(name, arch=arch, **({"vocab_size": vocab_size} if vocab_size else {}),
                           **({"bias": False, "tie_embeddings": True} if arch == "llama" else {}), **(moe or {}))
        active = (fmt.params(count_params(cfg, active=True)),) if moe else ()
        rows.append((name, str(cfg.n_layer), str(cfg.n_head), str(cfg.n_embd), str(cfg.block_size),
                     str(cfg.vocab_size), fmt.params(count_params(cfg))) + active + (desc,))
    return text_table(rows)


@dataclass
class PresetsConfig:
    """`zhgpt presets`: the table of presets, counted for a vocabulary and an architecture."""
    vocab_size: int | None = opt(None, "count parameters with this vocabulary size")
    arch: str = opt("gpt2", "architecture to count for", choices=("gpt2", "llama"))
    moe_experts: int = opt(0, "count as a mixture of experts with this many experts per layer (needs --arch llama)")
    moe_top_k: int = opt(2, "experts per token (the active parameters count these)")
    moe_shared_expert: bool = opt(False, "with a shared expert")

    def __post_init__(self):
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ZhgptError(f"--vocab-size must be positive, got {self.vocab_size}")
        if self.moe_experts:
            ModelConfig(arch=self.arch, **self.moe())   # validates: llama only, 1 <= top-k <= experts

    def moe(self) -> dict | None:
        if not self.moe_experts:
            return None
        return dict(moe_experts=self.moe_experts, moe_top_k=self.moe_top_k, moe_shared_expert=self.moe_shared_expert)


def main(cfg: PresetsConfig) -> str:
    table = preset_table(cfg.vocab_size, cfg.arch, cfg.moe())
    print(table)
    return table


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, PresetsConfig)


def run_cli(args) -> None:
    main(from_args(PresetsConfig, args))
