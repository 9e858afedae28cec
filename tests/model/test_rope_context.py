"""`GPT.set_context`: running a model at a context other than the one it was trained at, positions as they
are -- plain RoPE extrapolation for llama (the baseline YaRN is measured against), only shorter for GPT-2."""
import dataclasses

import pytest
import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.hf import hf_config, load_hf_folder, to_hf_state_dict


def tiny(**kw):
    base = dict(arch="llama", bias=False, vocab_size=320, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


def test_plain_extrapolation_is_the_same_model_built_at_the_longer_context():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 320, (2, 128))
    with torch.no_grad():
        short, _ = model(x[:, :32])
        with pytest.raises(ValueError, match="exceeds the context of 32"):
            model(x)
        model.set_context(128)
        assert model.cfg.block_size == 128 and model.cfg.rope_scaling == "none"
        assert model.transformer.h[0].attn.cfg.block_size == 128 and model.rope_cos.shape[0] == 128
        long, _ = model(x)
        # Causal: the first 32 positions are the trained model's, bit for bit (the same angles there).
        assert torch.equal(long[:, :32], short)
        # The rest is what a model built at 128 with these weights computes: no rescaling of any kind.
        built = GPT(dataclasses.replace(model.cfg, block_size=128)).eval()
        built.load_state_dict(model.state_dict())
        assert torch.equal(built(x)[0], long)
        # ... and the engine's KV-cached decoding runs past 32 too.
        cache = model.make_kv_cache(2)
        assert cache.max_len == 128
        model(x[:, :100], kv_cache=cache)
        step, _ = model(x[:, 100:101], kv_cache=cache)
    assert (step[:, 0] - long[:, 100]).abs().max() < 1e-4


def test_a_yarn_model_keeps_its_frequencies_at_another_context():
    torch.manual_seed(0)
    model = GPT(tiny(block_size=128, rope_scaling="yarn", rope_factor=4.0)).eval()   # trained at 32, run at 128
    cos = model.rope_cos.clone()
    model.set_context(64)
    # original_context was block_size / factor: pinned, else it would silently become 16.
    assert (model.cfg.block_size, model.cfg.original_context, model.cfg.rope_factor) == (64, 32, 4.0)
    assert torch.equal(model.rope_cos, cos[:64])
    model.set_context(512)                                  # past YaRN's own context: extrapolated from it
    assert torch.allclose(model.rope_cos[:128], cos, atol=1e-6) and model.rope_cos.shape[0] == 512


def test_gpt2_cannot_run_past_its_learned_positions_but_can_run_shorter(tmp_path):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = GPT(tiny(arch="gpt2", bias=True, n_kv_head=0, tie_embeddings=True)).eval()
    with pytest.raises(ZhgptError, match="learned 32 position embeddings and has none past them") as e:
        model.set_context(128)
    assert "\n" not in str(e.value) and "--arch llama" in str(e.value)
    assert model.cfg.block_size == 32                       # untouched by the refusal
    x = torch.randint(0, 320, (1, 16))
    with torch.no_grad():
        before, _ = model(x)
        model.set_context(16)
        after, _ = model(x)
    assert torch.equal(before, after) and model.transformer.wpe.weight.shape[0] == 16
    # The shortened model still exports: n_positions and the position table agree.
    _, sd = to_hf_state_dict(model)
    hf = AutoModelForCausalLM.from_config(hf_config(model.cfg))
    hf.load_state_dict(sd, strict=False)
    assert hf.config.n_positions == 16
    assert (hf.eval()(x).logits - after).abs().max() < 1e-4


def test_extrapolated_llama_matches_transformers_past_the_trained_context(tmp_path):
    """Exported at the longer context (max_position_embeddings, no rope_scaling), transformers computes the same
    extrapolated logits: the baseline is the plain RoPE any llama runtime would run."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = GPT(tiny()).eval().set_context(128)
    _, sd = to_hf_state_dict(model)
    hc = hf_config(model.cfg)
    assert hc.max_position_embeddings == 128
    assert (getattr(hc, "rope_parameters", None) or {}).get("rope_type", "default") == "default"
    hf = AutoModelForCausalLM.from_config(hc)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected
    hf.save_pretrained(tmp_path)
    x = torch.randint(0, 320, (2, 128))
    with torch.no_grad():
        ours = model(x)[0]
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(x).logits
        assert (ours - theirs).abs().max().item() < 1e-4
        back, _ = load_hf_folder(tmp_path)
    assert back.cfg.block_size == 128
