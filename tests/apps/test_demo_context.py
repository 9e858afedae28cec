"""`zhgpt demo --rope-scaling yarn --rope-factor F` / `--context N`: the demo's model and the checkpoints its
compare tab loads run with the options every other command takes (no gradio needed for this part)."""
import torch

from zhgpt.apps.demo import DemoConfig, EngineCache


def test_demo_loads_its_checkpoints_with_the_rope_options(pd_dataset, tmp_path):
    from zhgpt.config import load_json
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.model.hf import export_hf
    torch.manual_seed(0)
    cfg = ModelConfig(arch="llama", bias=False, vocab_size=load_json(pd_dataset / "meta.json")["vocab_size"],
                      n_layer=1, n_head=2, n_embd=32, block_size=32)
    folder = export_hf(GPT(cfg).eval(), pd_dataset / "tokenizer", tmp_path / "hf")
    yarn = EngineCache(DemoConfig(model=str(folder), device="cpu", rope_scaling="yarn", rope_factor=4.0)).get(folder)
    assert yarn.block_size == 128 and yarn.model.cfg.rope_scaling == "yarn"
    plain = EngineCache(DemoConfig(model=str(folder), device="cpu", context=64)).get(folder)
    assert plain.block_size == 64 and plain.model.cfg.rope_scaling == "none"
