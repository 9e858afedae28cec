"""The Hugging Face folders zhgpt exports carry what vLLM's loaders read: the architecture class it maps
to a model, the shape fields under both their GPT-2 and Llama names, RoPE and dtype in the spellings
transformers 4 and 5 use, end tokens, tokenizer files and, for chat models, the chat template. vLLM
itself cannot run here (it needs a GPU build), so this checks the folder, not vLLM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zhgpt.data.tokenizer import save_tokenizer, train_tokenizer
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.hf import export_hf, load_hf_folder

# vLLM's registry names for the three classes zhgpt exports, and the config fields its model code reads
VLLM_ARCHS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
FIELDS = {
    "gpt2": ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size", "layer_norm_epsilon", "activation_function"),
    "llama": ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "max_position_embeddings", "rms_norm_eps", "rope_theta", "head_dim", "vocab_size", "hidden_act"),
}


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    from conftest import pd_lines
    d = tmp_path_factory.mktemp("vllm-tok") / "char"
    save_tokenizer(train_tokenizer(pd_lines("train", 300), "char", 600, show_progress=False), d, "char")
    return d


@pytest.mark.parametrize("arch,kw,mtype", [("gpt2", {}, "gpt2"), ("llama", dict(n_kv_head=2), "llama"),
                                           ("llama", dict(qk_norm=True, bias=False), "qwen3")])
def test_exported_folder_has_what_vllm_reads(tokdir, tmp_path, arch, kw, mtype):
    m = GPT(ModelConfig(arch=arch, vocab_size=640, block_size=64, n_layer=1, n_head=4, n_embd=64, **kw))
    out = export_hf(m, tokdir, tmp_path / "hf", dtype=torch.bfloat16)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [VLLM_ARCHS[mtype]] and cfg["model_type"] == mtype
    for f in FIELDS["gpt2" if arch == "gpt2" else "llama"]:
        assert cfg.get(f) is not None, f
    assert cfg["torch_dtype"] == "bfloat16" and cfg["eos_token_id"] == 0 and cfg["tie_word_embeddings"] is True
    if arch == "llama":
        assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == m.cfg.rope_theta
        assert cfg["max_position_embeddings"] == 64 and cfg["head_dim"] * cfg["num_attention_heads"] == 64
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 0 and "temperature" in gen
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (out / "tokenizer.json").is_file() and tcfg["model_max_length"] == 64 and tcfg["eos_token"]
    # the legacy spellings do not confuse transformers 5 or zhgpt when the folder is read back
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(out).vocab_size == 640
    back, _ = load_hf_folder(out)
    assert back.cfg.rope_theta == m.cfg.rope_theta


def test_chat_model_folder_has_template_and_end_tokens(sft_run):
    final = Path(sft_run) / "final"
    tcfg = json.loads((final / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tcfg["chat_template"]
    gen = json.loads((final / "generation_config.json").read_text())
    assert isinstance(gen["eos_token_id"], list) and len(gen["eos_token_id"]) == 2
