"""`zhgpt dpo` on the tiny SFT run: pairs in both published layouts, the loss, the held-out metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow     # each test needs the tiny pre-trained run and its SFT run

@pytest.fixture(scope="session")
def pair_files(tmp_path_factory):
    """Built-in sentiment pairs (short reviews) as TRL "standard" JSONL (strings) for training and
    "conversational" JSONL (message lists) for validation."""
    from zhgpt.data.chat_builtin import builtin_preferences
    d = tmp_path_factory.mktemp("pairs")
    pick = lambda split, n: [p for p in builtin_preferences(split, ("sentiment",)) if len(p.context[0].content) <= 40][:n]
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for p in pick("train", 300):
            f.write(json.dumps({"prompt": p.context[0].content, "chosen": p.chosen, "rejected": p.rejected},
                               ensure_ascii=False) + "\n")
    with open(d / "val.jsonl", "w", encoding="utf-8") as f:
        for p in pick("val", 40):
            f.write(json.dumps({"prompt": [{"role": "user", "content": p.context[0].content}],
                                "chosen": [{"role": "assistant", "content": p.chosen}],
                                "rejected": [{"role": "assistant", "content": p.rejected}]}, ensure_ascii=False) + "\n")
    return d / "train.jsonl", d / "val.jsonl"


@pytest.fixture(scope="session")
def dpo_run(sft_run, pair_files, tmp_path_factory):
    from zhgpt.pipeline.dpo import dpo
    from zhgpt.training.dpo import DPOConfig
    out = tmp_path_factory.mktemp("runs") / "dpo"
    cfg = DPOConfig(init_from=str(sft_run), data=[str(pair_files[0])], val_data=str(pair_files[1]), out=str(out),
                    max_steps=20, lr=1e-3, beta=0.1, batch_size=8, warmup_steps=2, eval_every=10, log_every=1,
                    sample_tokens=6, log=["none"], report=False, seed=1, eval_answers=0)
    return Path(dpo(cfg))


def test_sequence_logps_sums_the_answer_tokens_only():
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.training.dpo import sequence_logps
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 50, (2, 8))
    y = torch.randint(0, 50, (2, 8))
    y[0, :5] = -1
    y[1, :2] = -1
    logp = torch.log_softmax(model(x)[0].float(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    want = (logp * (y != -1)).sum(1)
    assert torch.allclose(sequence_logps(model, x, y), want, atol=1e-5)


def test_dpo_raises_the_chosen_answers_against_the_reference(dpo_run):
    evals = [json.loads(line) for line in open(dpo_run / "metrics.jsonl", encoding="utf-8") if "val_margin" in line]
    assert [e["step"] for e in evals] == [0, 10, 20]
    first, last = evals[0], evals[-1]
    # at step 0 the policy is the reference: every implicit reward is 0, the loss log 2
    assert first["val_margin"] == 0 and first["val_reward_acc"] == 0
    assert first["val_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert last["val_margin"] > 0 and last["val_loss"] < first["val_loss"] and last["val_reward_acc"] > 0.5
    assert last["val_pref_acc"] >= first["val_pref_acc"]
    data = json.loads((dpo_run / "config.json").read_text())["data"]
    assert data["pairs"]["kept"] == 340 and data["encoded"]["val"]["pairs"] <= 40
    assert (dpo_run / "final" / "config.json").is_file()


def test_dpo_pair_errors_name_file_and_line(sft_run, pair_files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pair_files[0].read_text(encoding="utf-8").splitlines()[0] + "\n"
                   + json.dumps({"prompt": "你好", "chosen": "你好"}, ensure_ascii=False) + "\n", encoding="utf-8")
    proc = run_cli("dpo", "--init-from", sft_run, "--data", bad, "--out", tmp_path / "r", "--max-steps", "1")
    assert proc.returncode != 0 and f"{bad}:2: missing rejected" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("dpo", "--init-from", sft_run, "--data", bad, "--skip-bad-lines", "--val-data", pair_files[1],
                   "--out", tmp_path / "r2", "--max-steps", "1", "--eval-every", "1", "--no-report", "--log", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 1 (missing field)" in proc.stdout
