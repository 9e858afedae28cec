"""Run health checks: one-line warnings, each saying what to do, from the records the loop writes.

`HealthWatcher` is the `zhgpt.training.watch.Watcher` whose ``check`` reads every metrics.jsonl record (train
rows: ``loss``, ``lr``, ``tokens_seen``, ``elapsed_s``; evaluation rows: ``val_loss``) and warns about

    initial loss              the step-0 validation loss far from ln(vocab), the loss of a uniform guess
    loss spike                a logged train loss far above its running median
    diverging                 the running median of the train loss rising well above its best
    overfitting               val loss rising while train loss falls, or val far above train at the same step
    few tokens per parameter  the run will see too few tokens per parameter to learn much in its budget
    many epochs               the run will pass over a small corpus too many times
    plateau                   val loss flat for a third of the run while the learning rate is still high

Each kind fires once per run (a loss spike at most once every SPIKE_COOLDOWN_STEPS), and a resumed run does
not repeat what RUN/warnings.jsonl already holds. Every message starts with its kind and a colon.

The chat stages (SFT, DPO) fine-tune a trained model on answers, and DPO's loss is not a language-model loss:
they skip the checks that assume a fresh model, a corpus of raw text or a per-token loss (`RunFacts`). The
logic is in `HealthChecks`, which knows nothing of the trainer: the tests feed it made-up records.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import deque
from dataclasses import dataclass

from zhgpt.training.step import Limits
from zhgpt.training.watch import Watcher

# ---- thresholds (losses are nats per token, as in metrics.jsonl)
# A fresh GPT-2-style init (weights N(0, 0.02)) gives near-uniform logits: measured 9.75 on cpu-tiny against
# ln(16384) = 9.70, and nanoGPT's GPT-2 small starts near 11.0 against ln(50257) = 10.82. 0.5 nats is several
# times those offsets: the model is 1.6x more (or less) sure than a uniform guess before it has seen any data.
INIT_TOLERANCE = 0.5
# The running level of the train loss: the median of the last 20 logged steps (200 steps at the default
# --log-every 10), robust to the spike it is compared with.
SPIKE_WINDOW = 20
SPIKE_MIN_ROWS = 10       # no level before 10 logged steps
# A spike is a logged loss above the level by the largest of: 0.5 nats; 10 % of the level (batch-to-batch noise
# of cpu-tiny's 2,048-token steps is ~0.1 nats at a loss of 6); 6 robust standard deviations of the window
# (small SFT batches of short answers are far noisier than pre-training's).
SPIKE_NATS, SPIKE_REL, SPIKE_SIGMAS = 0.5, 0.10, 6.0
SPIKE_COOLDOWN_STEPS = 1000   # at most one spike warning per 1,000 steps (~one per default 10-minute run)
# Diverging: the running median of the train loss 0.3 nats (or 5 %) above its lowest value. Noise moves the
# median of 20 steps by a few hundredths; only a sustained rise moves it that far.
DIVERGE_NATS, DIVERGE_REL = 0.3, 0.05
# Overfitting by the gap: val loss 0.7 nats/token above the train loss of the steps just before the
# evaluation (e^0.7 = 2: held-out text is half as likely per token as text the model has trained on). In a run
# that does not overfit the two stay within ~0.1 (the train loss is on batches it has mostly not seen before);
# seed 004's 红楼梦 run ended at train 0.13, val 7.19.
OVERFIT_GAP = 0.7
OVERFIT_TRAIN_ROWS = 10   # the train loss at an evaluation: the mean of the last 10 logged steps
# Overfitting by the trend: val 2 % above its best while the train loss is 2 % below where it was then. On the
# fixed validation windows val only moves with the weights; in the default run it falls at every evaluation.
RISE_REL = 0.02
OVERFIT_CONFIRM = 2       # evaluations in a row that must show it: one noisy evaluation is not enough
# Below 0.02 training tokens per parameter a smaller model learns more in the same time: cpu-tiny, measured the
# best choice for 100-second and 10-minute CPU budgets, sees 0.04 and 0.25 tokens per parameter in them, and the
# 17M cpu-tiny-wide, at 0.05 in 10 minutes, ended behind it (bench/RESULTS.md). Chinchilla's optimum is ~20.
MIN_TOKENS_PER_PARAM = 0.02
# Past ~16 epochs repeated text adds next to nothing (Muennighoff et al. 2023, "Scaling data-constrained
# language models": the value of a repeated token decays with ~15 epochs) and the model memorises instead.
MAX_EPOCHS = 16
# Plateau: over the last third of the steps run so far (at least 3 evaluations: the default run's last third
# holds 3) val improved by under 0.25 % while the learning rate is still over half its peak. The default run
# gains 3-4 % over any last third (bench/RESULTS.md, cpu-tiny 600 s curve); a loss falling as a power law of the
# steps (exponent 0.3) still gains ~0.7 % at 40k steps; a run stuck at a too-high learning rate gains nothing.
PLATEAU_SPAN, PLATEAU_EVALS, PLATEAU_GAIN, PLATEAU_LR = 1 / 3, 3, 0.0025, 0.5

KINDS = ("initial loss", "loss spike", "diverging", "overfitting", "few tokens per parameter", "many epochs",
         "plateau")


@dataclass
class RunFacts:
    """What the checks need to know about a run besides its records."""
    stage: str = "train"          # train, sft or dpo
    fresh: bool = True            # a new model (no --init-from)
    vocab_size: int = 0
    n_params: int = 0
    train_tokens: int = 0         # tokens of the training split (pre-training; 0 = unknown)
    peak_lr: float = 0.0
    limits: Limits | None = None
    val_data: bool = False        # --val-data: the validation text may be another kind of text

    @property
    def lm_loss(self) -> bool:
        """The loss is next-token cross-entropy (DPO's is a preference loss of ln 2 at the start)."""
        return self.stage != "dpo"


def facts_of(tr) -> RunFacts:
    split = getattr(tr.ds, "splits", {}).get("train") if tr.stage.name == "train" else None
    return RunFacts(stage=tr.stage.name, fresh=not tr.cfg.init_from, vocab_size=tr.mcfg.vocab_size,
                    n_params=num_params(tr.raw_model), train_tokens=int(getattr(split, "tokens", 0) or 0),
                    peak_lr=tr.cfg.lr, limits=tr.limits, val_data=bool(tr.cfg.val_data))


def num_params(model) -> int:
    count = getattr(model, "num_params", None)    # a LoRA-wrapped model may not have it (its checks skip it)
    return int(count()) if callable(count) else 0


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


class HealthChecks:
    """Fed every record in order (`feed`); returns the warnings each record raises."""

    def __init__(self, facts: RunFacts, fired: dict | None = None):
        self.facts = facts
        self.fired: dict[str, int] = dict(fired or {})    # kind -> step it last fired at
        self.window: deque = deque(maxlen=SPIKE_WINDOW)  # recent train losses
        self.best_level: float | None = None
        self.recent: deque = deque(maxlen=OVERFIT_TRAIN_ROWS)
        self.first_train: dict | None = None
        self.last_train: dict | None = None
        self.evals: list[dict] = []                      # {step, val, train} of evaluations after step 0
        self.overfit_streak = 0
        self.budget_checked = False

    def feed(self, rec: dict) -> list[str]:
        found: list[tuple[str, int, str]] = []
        if _finite(rec.get("loss")) is not None:
            found += self._train_row(rec)
        if _finite(rec.get("val_loss")) is not None:
            found += self._eval_row(rec)
        return [msg for kind, step, msg in found if self._fire(kind, step)]

    def _fire(self, kind: str, step: int) -> bool:
        last = self.fired.get(kind)
        cooldown = SPIKE_COOLDOWN_STEPS if kind == "loss spike" else math.inf
        if last is not None and step - last < cooldown:
            return False
        self.fired[kind] = step
        return True

    # ---------------------------------------------------------------- train rows: spikes, divergence
    def _train_row(self, rec: dict) -> list:
        step, loss = rec["step"], float(rec["loss"])
        self.first_train = self.first_train or rec
        self.last_train = rec
        self.recent.append(loss)
        out = []
        if len(self.window) >= SPIKE_MIN_ROWS:
            level = statistics.median(self.window)
            spread = 1.4826 * statistics.median(abs(x - level) for x in self.window)   # MAD -> std
            if loss - level > max(SPIKE_NATS, SPIKE_REL * level, SPIKE_SIGMAS * spread):
                out.append(("loss spike", step, (
                    f"loss spike: train loss {loss:.3f} at step {step}, against {level:.3f} over the last "
                    f"{len(self.window)} logged steps; if it recurs lower --lr, lengthen --warmup-steps or keep "
                    "--grad-clip at 1.0, and look for odd documents in the data (long runs of one character, "
                    "binary junk)")))
        self.window.append(loss)
        if len(self.window) == SPIKE_WINDOW:
            level = statistics.median(self.window)
            self.best_level = level if self.best_level is None else min(self.best_level, level)
            if level - self.best_level > max(DIVERGE_NATS, DIVERGE_REL * self.best_level):
                out.append(("diverging", step, (
                    f"diverging: the train loss has risen to {level:.3f} (median of the last {SPIKE_WINDOW} "
                    f"logged steps) from {self.best_level:.3f}; the learning rate is too high for this model: "
                    f"stop, and train again with half the --lr (now {rec.get('lr', self.facts.peak_lr):.2e}) "
                    "or a longer --warmup-steps")))
        return out

    # ---------------------------------------------------------------- evaluation rows
    def _eval_row(self, rec: dict) -> list:
        step, val = rec["step"], float(rec["val_loss"])
        out = []
        if step == 0:
            out += self._initial(val)
        else:
            train = sum(self.recent) / len(self.recent) if self.recent else None
            self.evals.append({"step": step, "val": val, "train": train})
            out += self._overfitting(step, val, train)
            out += self._plateau(step)
        if not self.budget_checked:
            out += self._budget(rec)
        return out

    def _initial(self, val: float) -> list:
        f = self.facts
        if f.stage != "train" or not f.fresh or f.vocab_size < 2:
            return []
        expected = math.log(f.vocab_size)
        if abs(val - expected) <= INIT_TOLERANCE:
            return []
        why = ("above it: the initial weights are too large (a changed init or weight scale) or the loss is "
               "summed rather than averaged" if val > expected else
               "below it: an untrained model cannot beat a uniform guess, so the model is not fresh or the "
               "validation text is degenerate (one repeated token, mostly end-of-text)")
        return [("initial loss", 0, (
            f"initial loss: the step-0 validation loss is {val:.3f}, expected ln(vocab {f.vocab_size:,}) = "
            f"{expected:.3f} (within {INIT_TOLERANCE}) for a fresh model; it is {why}; check the model's "
            "vocab_size against the tokenizer's and the data before training on"))]

    def _overfitting(self, step: int, val: float, train: float | None) -> list:
        f = self.facts
        if not f.lm_loss or train is None:
            return []
        gap = val - train
        earlier = [e for e in self.evals[:-1] if e["train"] is not None]
        best = min(earlier, key=lambda e: e["val"]) if earlier else None
        rising = (best is not None and val > best["val"] * (1 + RISE_REL) and train < best["train"] * (1 - RISE_REL))
        self.overfit_streak = self.overfit_streak + 1 if (gap > OVERFIT_GAP or rising) else 0
        if self.overfit_streak < OVERFIT_CONFIRM:
            return []
        trend = (f"; val has risen from its best {best['val']:.3f} at step {best['step']} while train kept falling"
                 if rising else "")
        # A gap alone could also be other text in --val-data; val rising while train falls cannot.
        shift = " (or the --val-data text differs from the training text)" if f.val_data and not rising else ""
        fix = ("more data, fewer steps (the best checkpoint is kept in RUN/checkpoints/best), --dropout 0.1-0.2, "
               "or a smaller model (--preset / --n-layer / --n-embd)" if f.stage == "train" else
               "more conversations, fewer --epochs or --max-steps (the best checkpoint is kept), or --lora")
        return [("overfitting", step, (
            f"overfitting: at step {step} val loss {val:.3f} vs train loss {train:.3f} (gap {gap:.2f} nats/token"
            f"{trend}): the model is memorising its training text{shift}; use {fix}"))]

    def _plateau(self, step: int) -> list:
        if "overfitting" in self.fired or self.last_train is None or not self.facts.peak_lr:
            return []
        lr = _finite(self.last_train.get("lr")) or 0.0
        since = [e for e in self.evals if e["step"] > step * (1 - PLATEAU_SPAN)]
        before = [e for e in self.evals if e["step"] <= step * (1 - PLATEAU_SPAN)]
        if len(since) < PLATEAU_EVALS or not before or lr < PLATEAU_LR * self.facts.peak_lr:
            return []
        old, new = min(e["val"] for e in before), min(e["val"] for e in since)
        if old - new >= PLATEAU_GAIN * abs(old):
            return []
        return [("plateau", step, (
            f"plateau: val loss has not improved since step {since[0]['step']} ({old:.3f} -> {new:.3f}) while the "
            f"learning rate is still {lr:.2e}, {lr / self.facts.peak_lr:.0%} of its peak; a lower --lr (half), or a "
            "schedule that decays sooner (--schedule wsd --decay-frac 0.3), gets the loss down; training on at "
            "this rate will not"))]

    # ---------------------------------------------------------------- the run's length against the model and data
    def _budget(self, rec: dict) -> list:
        """Tokens per parameter and epochs, once: at the step-0 evaluation when the run is limited by steps or
        tokens, else (a time budget) at the first later evaluation, from the speed measured so far."""
        f, lim = self.facts, self.facts.limits
        if f.stage != "train" or lim is None:
            self.budget_checked = True
            return []
        planned = [x for x in (lim.max_steps * lim.tokens_per_step, lim.max_tokens) if x]
        if lim.budget_s:
            first, last = self.first_train, self.last_train
            if rec["step"] == 0 or first is None or last is first or last["elapsed_s"] <= first["elapsed_s"]:
                return []    # no speed measured yet: the first log line includes start-up and the step-0 evaluation
            rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])
            planned.append(last["tokens_seen"] + rate * max(lim.budget_s - last["elapsed_s"], 0.0))
        self.budget_checked = True
        if not planned:
            return []
        tokens, out = min(planned), []
        how = "at the speed so far" if lim.budget_s and tokens == planned[-1] else "by its limits"
        if f.fresh and f.n_params and tokens / f.n_params < MIN_TOKENS_PER_PARAM:
            out.append(("few tokens per parameter", rec["step"], (
                f"few tokens per parameter: this run will see ~{tokens / 1e6:.2f}M tokens {how}, "
                f"{tokens / f.n_params:.3f} per parameter of its {f.n_params / 1e6:.1f}M (cpu-tiny sees ~0.25 in "
                f"its 10 minutes; under {MIN_TOKENS_PER_PARAM} a smaller model learns more in the same time): use a "
                "smaller model (--preset cpu-tiny, or fewer --n-layer / --n-embd) or a longer --time-budget")))
        if f.train_tokens and tokens / f.train_tokens > MAX_EPOCHS:
            out.append(("many epochs", rec["step"], (
                f"many epochs: this run will pass over its {f.train_tokens:,} training tokens ~"
                f"{tokens / f.train_tokens:.0f} times {how} (past ~{MAX_EPOCHS} a repeat adds almost nothing and "
                "the model memorises the text): add more text, or train fewer steps / a shorter --time-budget")))
        return out


class HealthWatcher(Watcher):
    """The health checks as a watcher of the training loop (rank 0 calls ``check`` on every record)."""
    name = "health"

    def __init__(self):
        self.checks: HealthChecks | None = None

    def start(self, tr) -> None:
        self.checks = HealthChecks(facts_of(tr), fired_before(tr.run.warnings))

    def check(self, tr, rec: dict) -> list[str]:
        if self.checks is None:
            self.start(tr)
        return self.checks.feed(rec)


def fired_before(path) -> dict[str, int]:
    """kind -> last step, of the warnings a resumed run already gave (RUN/warnings.jsonl, kept up to its
    checkpoint), so that they are not given again."""
    fired: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return fired
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = str(rec.get("message", "")).split(":", 1)[0] if isinstance(rec, dict) else ""
        if kind in KINDS and isinstance(rec.get("step"), int):
            fired[kind] = max(fired.get(kind, rec["step"]), rec["step"])
    return fired
