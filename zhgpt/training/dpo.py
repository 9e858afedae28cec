"""`zhgpt dpo`: direct preference optimisation of a chat model (Rafailov et al., 2023).

    zhgpt dpo --init-from runs/chat                          # built-in pairs: real text over loops
    zhgpt dpo --init-from runs/chat --data pairs.jsonl --beta 0.1

The SFT stage with another loss. For each pair, with log p the summed log-probability of an answer given its
context (the answer tokens only) under the model being trained (the policy) and under a frozen copy of the
starting model (the reference):

    loss = -log sigmoid(beta * [(log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))])

so the policy raises the chosen answer relative to the rejected one, measured against where it started,
and beta keeps it from drifting far. The reference runs beside the policy (one forward pass without
gradients per step) rather than being precomputed: a resumed run reloads it from --init-from.

Every evaluation scores held-out pairs:
- ``val_pref_acc``: share of pairs where the model gives the chosen answer the higher log-probability (the
  same measure for the starting model, at step 0, and the trained one);
- ``val_reward_acc`` / ``val_margin``: DPO's implicit reward, beta * (log p - log p_ref): how often the
  chosen answer's is higher, and the mean gap (both 0 at step 0, where policy = reference);
- ``val_loss`` (the DPO loss), and bits per character of the chosen answers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zhgpt.config import opt
from zhgpt.core.device import autocast_ctx
from zhgpt.errors import ZhgptError
from zhgpt.training.chat_data import LN2
from zhgpt.training.sft import SFTConfig, SFTStage

# DPO moves a model that already answers: a third of SFT's rate (measured on the built-in pairs, bench/RESULTS.md:
# a tenth barely moved the 7M CPU model in 200 steps, the full rate broke its answers; the DPO paper and TRL use
# 5e-7..5e-6 for 7B models).
DPO_LR_SCALE = 1 / 3


@dataclass
class DPOConfig(SFTConfig):
    data: list[str] = opt(help="preference pair files, JSONL or JSON ({prompt|messages, chosen, rejected}), or the "
                               "built-in pairs: builtin:continuation (real news text chosen over a loop on its first "
                               "words), builtin:sentiment (right label over wrong), builtin (both)",
                          factory=lambda: ["builtin:continuation"])
    val_data: str = opt("", "preference pairs used as the validation split (default: 5 % of --data held out by "
                            "hash; the built-in set has its own held-out split)")
    init_from: str = opt("", "the model to improve (required), usually a `zhgpt sft` run; a frozen copy of it is the "
                             "reference")
    lr: float = opt(3e-4, "peak learning rate: a third of zhgpt sft's for the same model and optimizer unless given")
    beta: float = opt(0.1, "DPO beta: the strength of the pull back to the reference (larger = stay closer)")
    rpo_alpha: float = opt(1.0, "weight of the chosen answers' mean token NLL added to the DPO loss (RPO, Pang et al. "
                                "2024; TRL's rpo_alpha; 0 = plain DPO): keeps DPO from lowering the chosen answers' own "
                                "probability (measured: plain DPO stopped the 7M model's loops by making it answer "
                                "in 2-3 characters)")
    eval_pairs: int = opt(256, "held-out pairs scored at every evaluation (0 = all)")

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ZhgptError(f"--beta must be positive, got {self.beta}")


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's target tokens (those not -1): shape (rows,)."""
    _, nll = model(x, y, reduction="none")             # (N,) per scored position, row-major
    rows = (y != -1).nonzero()[:, 0]
    return -torch.zeros(x.shape[0], device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)


def dpo_terms(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss, per-pair reward margin) from the (2B,) log-probs: chosen rows first, then rejected."""
    b = policy.shape[0] // 2
    margin = beta * ((policy[:b] - ref[:b]) - (policy[b:] - ref[b:]))
    return -F.logsigmoid(margin), margin


class DPOStage(SFTStage):
    name = "dpo"

    def __init__(self):
        self.ref = None

    def defaults(self, explicit: dict) -> dict:
        own = super().defaults(explicit)
        return {**own, "lr": own["lr"] * DPO_LR_SCALE}

    def load_data(self, cfg: DPOConfig, model_fields: dict, run, dist, tokenizer_asked: bool):
        from zhgpt.training.pair_data import load_pair_data
        self.beta, self.rpo_alpha = cfg.beta, cfg.rpo_alpha
        return load_pair_data(cfg, model_fields["block_size"], run, dist)

    def adapt_model(self, model, data, cfg: DPOConfig):
        self.ref = self.reference(cfg, data)
        return super().adapt_model(model, data, cfg)

    def reference(self, cfg: DPOConfig, data):
        """The frozen starting model, loaded from --init-from (so a resumed run has the same one)."""
        from zhgpt.model.vocab import add_token_rows
        from zhgpt.training.runs import load_for_inference
        ref, _, _ = load_for_inference(cfg.init_from)
        new = [i for i in data.chat_ids if i >= data.n_base_tokens]
        if new:
            ref = add_token_rows(ref, new, data.n_base_tokens)
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref.eval()

    def batches(self, data, mcfg, cfg: DPOConfig, dist):
        from zhgpt.training.pair_data import PairBatches
        return PairBatches(data.split("train"), data.eot_id, cfg.batch_size, cfg.grad_accum, cfg.seed,
                           dist.rank, dist.world)

    def ref_logps(self, x, y) -> torch.Tensor:
        if next(self.ref.parameters()).device != x.device:
            self.ref.to(x.device)
        with torch.no_grad():
            return sequence_logps(self.ref, x, y)

    def loss_fn(self, model, batch) -> torch.Tensor:
        x, y = batch
        policy = sequence_logps(model, x, y)
        loss, _ = dpo_terms(policy, self.ref_logps(x, y), self.beta)
        if not self.rpo_alpha:
            return loss.mean()
        b = x.shape[0] // 2
        chosen_tokens = (y[:b] != -1).sum()
        return loss.mean() + self.rpo_alpha * (-policy[:b].sum() / chosen_tokens)

    @torch.no_grad()
    def evaluate(self, tr) -> dict:
        from zhgpt.training.pair_data import pair_batch
        split, model = tr.val_split, tr.raw_model
        n = min(len(split.examples), tr.cfg.eval_pairs) if tr.cfg.eval_pairs else len(split.examples)
        was_training = model.training
        model.eval()
        pol, ref = [], []
        for i in range(0, n, tr.cfg.batch_size):
            x, y = (t.to(tr.device) for t in pair_batch(split.examples, split.rejected,
                                                        list(range(i, min(i + tr.cfg.batch_size, n))), tr.ds.eot_id))
            with autocast_ctx(tr.device, tr.amp_dtype):
                p, r = sequence_logps(model, x, y).float(), self.ref_logps(x, y).float()
            b = x.shape[0] // 2
            pol.append(p.view(2, b))
            ref.append(r.view(2, b))
        if was_training:
            model.train()
        pol, ref = torch.cat(pol, 1), torch.cat(ref, 1)             # (2, n): chosen, rejected
        loss, margin = dpo_terms(pol.flatten(), ref.flatten(), tr.cfg.beta)
        chosen_nats = -float(pol[0].sum())
        chars = sum(split.answer_chars[:n])
        targets = sum(int(split.examples.mask[r][1:].sum()) for r in range(n))
        m = {"val_loss": float(loss.mean()), "val_bpc": chosen_nats / max(chars, 1) / LN2,
             "val_ppl": math.exp(min(chosen_nats / max(targets, 1), 50.0)),
             "val_pref_acc": float((pol[0] > pol[1]).float().mean()),
             "val_reward_acc": float((margin > 0).float().mean()), "val_margin": float(margin.mean()),
             "val_pairs": n}
        if tr.cfg.eval_answers:
            from zhgpt.training.sft import answer_accuracy
            acc, k = answer_accuracy(tr.sampler.engine, split.convs, tr.cfg.eval_answers)
            if k:
                m["val_answer_acc"] = acc
        return m


# ------------------------------------------------------------------------- CLI

def configure_parser(p) -> None:
    from zhgpt.config import add_args
    from zhgpt.training.sft import SKIP_FLAGS
    add_args(p, DPOConfig, defaults_none=True, skip=SKIP_FLAGS)


def run_cli(args, on_finish=None) -> None:
    from zhgpt.training.sft import run_stage_cli
    run_stage_cli(DPOConfig, DPOStage(), args, on_finish, "usually a `zhgpt sft` run folder (it is also the "
                  "frozen reference), or a checkpoint or Hugging Face folder")
