"""YaRN for a trained short-context llama model: `zhgpt eval` / `generate` with --rope-scaling yarn at 4x the
trained context, continued training at the longer context with --init-from, and the exported rope_scaling."""
import json

import pytest
import torch

from conftest import TINY_TRAIN
from zhgpt.errors import ZhgptError

SHORT = dict(arch="llama", bias=False, n_layer=2, n_head=4, n_embd=64, block_size=32)


@pytest.fixture(scope="module")
def short_run(pd_dataset, tmp_path_factory):
    from zhgpt.training.train import TrainConfig, main
    out = tmp_path_factory.mktemp("yarn") / "short"
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(out), max_steps=30, preset="cpu-tiny",
                      **{**TINY_TRAIN, "eval_every": 30, "export": False})
    return main(cfg, model_overrides=SHORT)


@pytest.mark.slow
def test_yarn_at_inference_and_continued_training(short_run, pd_dataset, pd_text, tmp_path):
    from zhgpt.inference.evaluate import EvalConfig, main as eval_main
    from zhgpt.inference.loading import ModelOptions
    from zhgpt.model.hf import load_hf_folder
    from zhgpt.training.train import TrainConfig, main as train_main
    _, val = pd_text
    loaded = ModelOptions(model=str(short_run), rope_scaling="yarn", rope_factor=4).load()
    assert loaded.model.cfg.block_size == 128 and loaded.model.cfg.original_context == 32
    ids = torch.tensor([loaded.tokenizer.encode(val.read_text()[:400]).ids[:120]])
    with torch.no_grad():
        logits, _ = loaded.model(ids)                       # 120 positions: past the trained 32
    assert torch.isfinite(logits).all()
    with pytest.raises(ZhgptError, match="must be > 1"):
        ModelOptions(model=str(short_run), rope_scaling="yarn", rope_factor=1).load()
    with pytest.raises(ZhgptError, match="needs --rope-scaling yarn"):
        ModelOptions(model=str(short_run), rope_factor=2).load()
    res = eval_main(EvalConfig(model=str(short_run), files=[str(val)], rope_scaling="yarn", rope_factor=4,
                               max_chars=3000))
    assert 0 < res["files"][0]["bpc"] < 20

    # Continued training at 4x the context: --init-from the short run with --rope-scaling yarn --rope-factor 4.
    out = tmp_path / "long"
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(out), init_from=str(short_run), max_steps=4,
                      preset="cpu-tiny", **{**TINY_TRAIN, "eval_every": 4, "batch_size": 2})
    train_main(cfg, model_overrides={"rope_scaling": "yarn", "rope_factor": 4.0})
    model_cfg = json.loads((out / "config.json").read_text())["model"]
    assert (model_cfg["block_size"], model_cfg["rope_scaling"], model_cfg["rope_original_context"]) == (128, "yarn", 32)
    hf = json.loads((out / "final" / "config.json").read_text())
    assert hf["rope_scaling"]["rope_type"] == "yarn" and hf["rope_scaling"]["factor"] == 4.0
    assert hf["rope_scaling"]["original_max_position_embeddings"] == 32 and hf["max_position_embeddings"] == 128
    back, _ = load_hf_folder(out / "final")
    assert back.cfg.rope_scaling == "yarn" and back.cfg.block_size == 128
