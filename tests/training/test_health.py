"""Health checks: made-up record sequences for each warning (and for a healthy run, which must get none), then
end to end: a run on 150 paragraphs overfits and is told so in its output and report; the shared tiny run is not."""
from __future__ import annotations

import json
import math
import random

import pytest

from conftest import TINY_TRAIN, pd_lines
from zhgpt.training.health import (INIT_TOLERANCE, KINDS, SPIKE_COOLDOWN_STEPS, HealthChecks, RunFacts,
                                   fired_before)
from zhgpt.training.step import Limits

# The default CPU run, as bench/RESULTS.md measured it: cpu-tiny (7.39M parameters, unigram 16k), 2,048 tokens per
# step, ~900 steps in its 10-minute budget, the built-in corpus's 1.81M training tokens.
DEFAULT = RunFacts(stage="train", fresh=True, vocab_size=16384, n_params=7_390_000, train_tokens=1_810_905,
                   peak_lr=6e-3, limits=Limits(0, 0, 600.0, 2048))


def cosine_lr(step: int, steps: int = 900, peak: float = 6e-3, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))


def records(train, val, steps=900, log_every=10, eval_every=100, s_per_step=0.6, tokens_per_step=2048, lr=cosine_lr,
            seed=0):
    """metrics.jsonl records in the loop's order: the evaluation at step 0, then per logged step its train row
    and, at evaluations, the evaluation row. ``train(step)``/``val(step)`` give the losses (train gets noise)."""
    rng = random.Random(seed)
    out = [{"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "val_loss": val(0)}]
    for step in range(log_every, steps + 1, log_every):
        common = {"step": step, "tokens_seen": step * tokens_per_step, "elapsed_s": round(step * s_per_step, 2)}
        out.append({**common, "loss": train(step) + rng.gauss(0, 0.1), "lr": lr(step)})
        if step % eval_every == 0:
            out.append({**common, "val_loss": val(step)})
    return out


def feed(checks: HealthChecks, recs) -> list[tuple[int, str]]:
    return [(r["step"], msg) for r in recs for msg in checks.feed(r)]


def kinds(found) -> list[str]:
    return [msg.split(":", 1)[0] for _, msg in found]


def healthy(step):   # ln(16384) + 0.05 at step 0, a power law down to ~7.0 at step 900 (BPC ~6, as measured)
    return 6.8 + 2.95 * (1 + step / 20) ** -0.7


def test_the_default_run_gets_no_warnings():
    assert feed(HealthChecks(DEFAULT), records(healthy, lambda s: healthy(s) + 0.03)) == []


def test_overfitting_warns_once_with_the_fixes():
    # seed 004's 红楼梦 run: train falls to 0.13 while val, after a best of ~4.5, climbs to 7.19
    train = lambda s: 0.13 + 7.8 * math.exp(-s / 400)
    val = lambda s: 4.5 + 2.69 * (s - 600) / 2400 if s > 600 else 4.5 + 3.4 * math.exp(-s / 150)
    found = feed(HealthChecks(RunFacts(stage="train", vocab_size=4000, peak_lr=1e-3)),
                 records(train, val, steps=3000, eval_every=200, lr=lambda s: 1e-3, s_per_step=0.1))
    assert kinds(found) == ["overfitting"]
    step, msg = found[0]
    assert step == 600      # train 2.1 against val 4.6 at the second evaluation with a gap over 0.7 nats
    for fix in ("more data", "fewer steps", "--dropout", "smaller model"):
        assert fix in msg


def test_val_rising_while_train_falls_is_overfitting_even_with_a_small_gap():
    train = lambda s: 3.0 - s / 1000                              # 3.0 -> 2.1
    val = lambda s: 3.05 - s / 1000 if s <= 400 else 2.65 + (s - 400) / 2000
    found = feed(HealthChecks(RunFacts(stage="train", peak_lr=1e-3)),
                 records(train, val, lr=lambda s: 1e-4, eval_every=100))
    assert kinds(found) == ["overfitting"] and "risen from its best" in found[0][1]
    assert found[0][0] == 700     # two evaluations in a row (600, 700) after the val minimum (400) rose 2 %


def test_one_bad_evaluation_is_not_overfitting():
    val = lambda s: healthy(s) + (1.5 if s == 500 else 0.03)
    assert feed(HealthChecks(DEFAULT), records(healthy, val)) == []


def test_a_gap_from_other_validation_text_says_so():
    facts = RunFacts(stage="train", peak_lr=1e-3, val_data=True)
    found = feed(HealthChecks(facts), records(healthy, lambda s: healthy(s) + 1.2, lr=lambda s: 1e-4))
    assert kinds(found) == ["overfitting"] and "--val-data" in found[0][1]


@pytest.mark.parametrize("val0, warns", [(9.75, False), (math.log(16384) + INIT_TOLERANCE + 0.2, True),
                                         (math.log(16384) - INIT_TOLERANCE - 0.2, True)])
def test_initial_loss_against_ln_vocab(val0, warns):
    found = HealthChecks(DEFAULT).feed({"step": 0, "val_loss": val0})
    assert bool(found) == warns
    if warns:
        assert found[0].startswith("initial loss:") and "9.704" in found[0]
        assert ("above it" if val0 > 9.7 else "below it") in found[0]


@pytest.mark.parametrize("facts", [RunFacts(stage="train", fresh=False, vocab_size=16384),
                                   RunFacts(stage="sft", fresh=False, vocab_size=16384)])
def test_a_fine_tuned_model_is_not_expected_to_start_at_ln_vocab(facts):
    assert HealthChecks(facts).feed({"step": 0, "val_loss": 3.0}) == []


def test_a_spike_warns_and_then_cools_down():
    flat = [{"step": s, "loss": 5.0 + 0.05 * math.sin(s), "lr": 1e-3} for s in range(10, 3000, 10)]
    spikes = {300: 7.0, 400: 7.5, 1400: 7.2}      # the second is inside the cool-down, the third after it
    recs = [{**r, "loss": spikes.get(r["step"], r["loss"])} for r in flat]
    found = feed(HealthChecks(RunFacts(peak_lr=1e-3)), recs)
    assert kinds(found) == ["loss spike", "loss spike"]
    assert [s for s, _ in found] == [300, 1400] and 1400 - 300 >= SPIKE_COOLDOWN_STEPS
    assert "7.000 at step 300" in found[0][1] and "--lr" in found[0][1]


def test_divergence_is_a_sustained_rise():
    loss = lambda s: 4.0 if s < 1000 else 4.0 + (s - 1000) / 1000    # flat, then +1 nat per 1,000 steps
    recs = [{"step": s, "loss": loss(s), "lr": 1e-2} for s in range(10, 2500, 10)]
    found = feed(HealthChecks(RunFacts(peak_lr=1e-2)), recs)
    assert kinds(found) == ["diverging"] and "half the --lr" in found[0][1]
    assert 1300 <= found[0][0] <= 1700


def test_too_few_tokens_per_parameter_and_too_many_epochs_by_the_limits():
    # GPT-2 small on a CPU for 300 steps of 2,048 tokens: 0.6M tokens for 110M parameters, over 20k tokens of text
    facts = RunFacts(stage="train", n_params=110_000_000, train_tokens=20_000, limits=Limits(300, 0, None, 2048))
    found = HealthChecks(facts).feed({"step": 0, "val_loss": 1.0})
    assert [m.split(":")[0] for m in found] == ["few tokens per parameter", "many epochs"]
    assert "0.006 per parameter" in found[0] and "~31 times" in found[1]


def test_a_time_budget_is_judged_from_the_measured_speed():
    facts = RunFacts(stage="train", n_params=110_000_000, limits=Limits(0, 0, 600.0, 2048))
    checks = HealthChecks(facts)
    assert checks.feed({"step": 0, "val_loss": 10.9}) == []            # no speed yet
    checks.feed({"step": 10, "tokens_seen": 20480, "elapsed_s": 30.0, "loss": 9.0, "lr": 1e-3})
    checks.feed({"step": 20, "tokens_seen": 40960, "elapsed_s": 40.0, "loss": 8.5, "lr": 1e-3})
    found = checks.feed({"step": 20, "tokens_seen": 40960, "elapsed_s": 40.0, "val_loss": 8.6})
    # 2,048 tokens/s measured between the log lines: ~1.19M tokens by 600 s
    assert len(found) == 1 and "~1.19M tokens at the speed so far" in found[0]


def test_sft_and_dpo_skip_the_pretraining_checks():
    few = dict(n_params=110_000_000, train_tokens=1000, limits=Limits(3000, 0, None, 2048))
    for stage in ("sft", "dpo"):
        assert HealthChecks(RunFacts(stage=stage, fresh=False, **few)).feed({"step": 0, "val_loss": 0.69}) == []
    # DPO's loss is not per token: a gap between its train and val loss is not overfitting
    dpo = HealthChecks(RunFacts(stage="dpo", fresh=False, peak_lr=1e-5))
    recs = records(lambda s: 0.05, lambda s: 0.9, steps=300, eval_every=50, lr=lambda s: 1e-6)
    assert "overfitting" not in kinds(feed(dpo, recs))
    # SFT's is (answer tokens): it does get the overfitting warning, with the SFT fixes
    sft = HealthChecks(RunFacts(stage="sft", fresh=False, peak_lr=1e-5))
    found = feed(sft, records(lambda s: 0.3, lambda s: 1.5, steps=300, eval_every=50, lr=lambda s: 1e-6))
    assert kinds(found) == ["overfitting"] and "--epochs" in found[0][1]


def test_plateau_at_a_high_learning_rate():
    val = lambda s: max(5.0, 9.75 - s / 40)             # stuck at 5.0 from step 190
    constant = dict(lr=lambda s: 6e-3, eval_every=50)
    found = feed(HealthChecks(RunFacts(peak_lr=6e-3)), records(lambda s: val(s) - 0.02, val, **constant))
    assert kinds(found) == ["plateau"] and "--schedule wsd" in found[0][1]
    # the same curve with the learning rate already annealed is just the end of a run
    low = dict(lr=lambda s: 1e-3, eval_every=50)
    assert feed(HealthChecks(RunFacts(peak_lr=6e-3)), records(lambda s: val(s) - 0.02, val, **low)) == []


def test_a_resumed_run_does_not_repeat_its_warnings(tmp_path):
    path = tmp_path / "warnings.jsonl"
    path.write_text(json.dumps({"step": 0, "message": "many epochs: ..."}) + "\n{broken\n", encoding="utf-8")
    fired = fired_before(path)
    assert fired == {"many epochs": 0} and set(fired) <= set(KINDS)
    facts = RunFacts(stage="train", train_tokens=1000, limits=Limits(300, 0, None, 2048))
    assert HealthChecks(facts, fired).feed({"step": 0, "val_loss": 1.0}) == []
    assert fired_before(tmp_path / "missing.jsonl") == {}


# ------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_an_overfitting_run_is_told_so_in_its_output_and_report(tmp_path, zhgpt_home, capsys):
    """The issue's run: 150 paragraphs (16k characters), char tokenizer, shortened: a 2-layer model with cpu-tiny's
    Muon at 6e-3 memorises them: val is lowest at step 75 (5 epochs) and rises while train keeps falling."""
    from zhgpt.pipeline import train
    from zhgpt.training.train import TrainConfig
    (tmp_path / "train.txt").write_text("\n".join(pd_lines("train", 150)) + "\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("\n".join(pd_lines("val", 100)) + "\n", encoding="utf-8")
    cfg = TrainConfig(data=[str(tmp_path / "train.txt")], val_data=str(tmp_path / "val.txt"), tokenizer="char",
                      out=str(tmp_path / "run"), max_steps=150, preset="cpu-tiny",
                      **{**TINY_TRAIN, "batch_size": 16, "optimizer": "muon", "lr": 6e-3, "warmup_steps": 20,
                         "eval_every": 25, "log_every": 5, "report": True, "export": False})
    run = train(cfg, model_overrides=dict(n_layer=2, n_head=4, n_embd=128, block_size=64))
    out = capsys.readouterr().out
    assert "warning: overfitting:" in out
    warnings = [json.loads(line) for line in (run / "warnings.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "overfitting" in kinds([(w["step"], w["message"]) for w in warnings])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [m for m in metrics if "val_loss" in m and m["step"] > 0]
    assert evals[-1]["val_loss"] > min(e["val_loss"] for e in evals) + 0.2   # it really did overfit
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Health" in report and "overfitting: at step" in report
    assert "overfitting: at step" in (run / "report.html").read_text(encoding="utf-8")


def test_a_normal_run_gets_no_warnings(trained_run):
    """The shared tiny run (3,000 paragraphs, 60 steps): no warning printed, none kept, and the report says so."""
    assert not (trained_run / "warnings.jsonl").exists()
    report = (trained_run / "report.md").read_text(encoding="utf-8")
    assert "## Health" in report and "No warnings." in report


@pytest.mark.slow
def test_a_normal_sft_run_gets_no_warnings(sft_run):
    """The shared SFT run inherits the checks (Stage.watchers) and skips the pre-training ones: none fire."""
    assert not (sft_run / "warnings.jsonl").exists()
