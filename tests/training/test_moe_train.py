"""Training a mixture-of-experts model: the MoE losses and per-expert token shares in metrics.jsonl, total and
active parameters in run.json, FLOPs for MFU from the active ones, the experts plot in the report, the
transformers export, and the early refusal of a shape no transformers class holds."""
import json

import pytest
import torch

from conftest import TINY, TINY_TRAIN
from zhgpt.errors import ZhgptError

MOE = dict(arch="llama", bias=False, moe_experts=4, moe_top_k=2)


@pytest.mark.slow
def test_moe_run_logs_router_stats_params_and_exports(pd_dataset, tmp_path):
    from zhgpt.pipeline import train
    from zhgpt.training.runs import load_for_inference
    from zhgpt.training.train import TrainConfig
    out = tmp_path / "moe"
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(out), max_steps=12, preset="cpu-tiny",
                      **{**TINY_TRAIN, "eval_every": 6, "log_every": 3, "report": True})
    train(cfg, model_overrides={**TINY, **MOE})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in rows if "loss" in r]
    assert len(trains) == 4
    for r in trains:
        assert 0.9 < r["aux_loss"] < 4 and r["z_loss"] > 0
        assert len(r["expert_frac"]) == 2 and all(len(f) == 4 and abs(sum(f) - 1) < 1e-3 for f in r["expert_frac"])
    assert not any("aux_loss" in r for r in rows if "val_loss" in r)
    info = json.loads((out / "run.json").read_text())
    assert info["params_active"] < info["params"]
    model, _, _ = load_for_inference(out)
    assert info["params"] == model.num_params() and info["params_active"] == model.num_params(active=True)
    dense_flops = 6 * (model.num_params(non_embedding=True) + model.cfg.vocab_size * model.cfg.n_embd)
    assert model.flops_per_token() < dense_flops                 # MFU counts the active experts only
    assert (out / "experts.png").stat().st_size > 1000
    assert "## Experts" in (out / "report.md").read_text()
    hf_cfg = json.loads((out / "final" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["MixtralForCausalLM"] and hf_cfg["num_local_experts"] == 4
    back, _, _ = load_for_inference(out / "final")
    x = torch.randint(0, model.cfg.vocab_size, (1, 32))
    with torch.no_grad():
        assert (back(x)[0] - model(x)[0]).abs().max() < 1e-4


def test_moe_shape_without_a_transformers_class_is_refused_before_training(pd_dataset, tmp_path):
    from zhgpt.training.train import TrainConfig, main
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "x"), max_steps=2, preset="cpu-tiny", **TINY_TRAIN)
    with pytest.raises(ZhgptError, match="--no-bias to export them"):
        main(cfg, model_overrides={**TINY, **MOE, "bias": True})
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_estimate_memory_counts_all_experts_and_flops_the_active_ones():
    import dataclasses
    from zhgpt.model.gpt import ModelConfig
    from zhgpt.model.presets import count_params
    from zhgpt.training.estimate import estimate
    dense = ModelConfig(arch="llama", bias=False, vocab_size=4096, n_layer=4, n_head=4, n_embd=256, block_size=128)
    moe = dataclasses.replace(dense, moe_experts=8, moe_top_k=1)
    d, m = estimate(dense, 8, 128), estimate(moe, 8, 128)
    assert m.params == count_params(moe) > 3 * d.params
    assert m.optimizer == 8 * count_params(moe)             # AdamW state for every expert
    assert m.weights > 3 * d.weights
    # One expert per token: the same FLOPs as dense, plus the router's E*C per layer.
    assert m.flops_per_token - d.flops_per_token == 6 * 4 * 8 * 256
