"""Mixture of experts and YaRN in the model file: routing, losses, KV cache and packing, parameter counts,
the transformers MoE classes and YaRN RoPE scaling (logits and greedy generation against transformers)."""
import dataclasses
import math

import pytest
import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.hf import _fuse_experts, hf_config, hf_model_type, load_hf_folder, to_hf_state_dict
from zhgpt.model.presets import count_params

MOE = {
    "mixtral": dict(moe_experts=4, moe_top_k=2),
    "qwen3_moe": dict(moe_experts=4, moe_top_k=2, qk_norm=True, moe_norm_topk=False),
    "qwen2_moe": dict(moe_experts=4, moe_top_k=1, moe_shared_expert=True),
}
HF_CLASS = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
            "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def tiny(**kw):
    base = dict(arch="llama", bias=False, vocab_size=320, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


def sharpen_router(model, std=1.0):
    """At init (std 0.02) the router's probabilities are all ~1/E; a spread-out router makes routing matter."""
    for block in model.transformer.h:
        torch.nn.init.normal_(block.mlp.router.weight, std=std)


def test_routing_sends_each_token_to_top_k_experts_and_logs_balance():
    torch.manual_seed(0)
    model = GPT(tiny(moe_experts=4, moe_top_k=2)).train()
    x = torch.randint(0, 320, (3, 64))
    _, loss = model(x, x)
    aux, z, counts = model.transformer.h[0].mlp.stats
    assert int(counts.sum()) == 3 * 64 * 2                 # every token goes to exactly k experts
    assert 0.99 < aux.item() < 1.2                         # near-uniform router at init: balanced ~ 1.0
    assert math.isclose(z.item(), math.log(4) ** 2, rel_tol=0.05)   # logits ~0: logsumexp = ln E
    model.eval()
    with torch.no_grad():
        _, ce = model(x, x)
    # The training loss carries aux_coef * sum aux + z_coef * sum z; evaluation's does not.
    stats = model.moe_stats()
    expected = ce + 2 * (0.01 * stats["aux_loss"] + 0.001 * stats["z_loss"])
    assert abs(loss.item() - expected.item()) < 1e-3
    assert len(stats["expert_frac"]) == 2 and all(abs(sum(r) - 1) < 1e-3 for r in stats["expert_frac"])
    assert model.moe_stats() == {}                          # read once per log record, then reset


def test_aux_loss_gradient_rebalances_a_collapsed_router():
    from zhgpt.model.gpt import MoE
    torch.manual_seed(0)
    moe = MoE(tiny(moe_experts=4, moe_top_k=1))
    x = torch.randn(4, 64, 64) + 0.5
    with torch.no_grad():
        moe.router.weight.normal_(std=0.02)
        moe.router.weight[0] = 0.1                           # every token prefers expert 0
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.03)
    history = []
    for _ in range(30):
        moe(x)
        aux, _, counts = moe.stats
        history.append((aux.item(), int(counts.max())))
        opt.zero_grad()
        aux.backward()
        opt.step()
    assert history[0][0] > 3 and history[0][1] == 4 * 64       # collapsed: aux ~ E, one expert takes all
    assert history[-1][0] < 1.5 and history[-1][1] < 4 * 64 * 0.6  # descending aux alone spreads the tokens


@pytest.mark.parametrize("name", MOE)
def test_moe_kv_cache_and_packed_segments_match_full_forward(name):
    torch.manual_seed(0)
    model = GPT(tiny(**MOE[name])).eval()
    sharpen_router(model)
    x = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.make_kv_cache(2)
        parts = [model(x[:, :25], kv_cache=cache)[0]] + [model(x[:, t:t + 1], kv_cache=cache)[0] for t in range(25, 40)]
        assert (torch.cat(parts, 1) - full).abs().max() < 1e-4
        packed, _ = model(x, segments=torch.tensor([[0] * 15 + [1] * 25] * 2))
        alone, _ = model(x[:, 15:])
        assert (packed[:, 15:] - alone).abs().max() < 1e-4


def test_parameters_total_and_active():
    cfg = tiny(moe_experts=8, moe_top_k=2, moe_shared_expert=True)
    model = GPT(cfg)
    dense = GPT(tiny())
    expert = sum(p.numel() for p in dense.transformer.h[0].mlp.parameters())
    assert count_params(cfg) == model.num_params()
    assert count_params(cfg, active=True) == model.num_params(active=True)
    # active = dense + (k - 1 + shared) experts + shared gate + router, per layer
    per_layer = (2 - 1 + 1) * expert + 64 + 8 * 64
    assert model.num_params(active=True) == dense.num_params() + 2 * per_layer
    # FLOPs per token count the active experts only: 6 per active matmul weight.
    assert model.flops_per_token() - dense.flops_per_token() == 6 * 2 * per_layer


def test_bad_moe_and_rope_configs_give_one_line_errors():
    for kw, match in [(dict(moe_experts=4, moe_top_k=5), "between 1 and --moe-experts 4"),
                      (dict(arch="gpt2", moe_experts=4, bias=True, n_kv_head=0), "needs --arch llama"),
                      (dict(rope_scaling="yarn", rope_factor=1.0), "must be > 1"),
                      (dict(rope_scaling="yarn", rope_factor=0.5), "must be > 1"),
                      (dict(arch="gpt2", rope_scaling="yarn", rope_factor=2.0, bias=True, n_kv_head=0), "needs --arch llama"),
                      (dict(rope_factor=2.0), "need --rope-scaling yarn")]:
        with pytest.raises(ZhgptError, match=match) as e:
            tiny(**kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ZhgptError, match="QK-norm and a shared expert"):
        hf_model_type(tiny(moe_experts=4, qk_norm=True, moe_shared_expert=True))
    with pytest.raises(ZhgptError, match="--no-bias"):
        hf_model_type(tiny(moe_experts=4, bias=True))


def greedy(model, x, n):
    """Greedy continuation with zhgpt's KV cache: prefill, then one token at a time."""
    cache = model.make_kv_cache(x.size(0))
    logits, _ = model(x, kv_cache=cache, last_only=True)
    out = []
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, _ = model(nxt, kv_cache=cache)
    return torch.cat(out, 1)


def export_and_load(model, path):
    from transformers import AutoModelForCausalLM
    _, sd = to_hf_state_dict(model)
    hf = AutoModelForCausalLM.from_config(hf_config(model.cfg))
    missing, unexpected = hf.load_state_dict(_fuse_experts(sd, hf.state_dict().keys()), strict=False)
    assert not unexpected and not missing
    hf.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("name,kw", [(n, kw) for n, kw in MOE.items()] + [
    ("llama", dict(rope_scaling="yarn", rope_factor=4.0)),
    ("qwen3_moe", dict(moe_experts=3, moe_top_k=2, qk_norm=True, rope_scaling="yarn", rope_factor=2.0,
                       rope_original_context=32))])
def test_hf_moe_and_yarn_parity_logits_and_greedy_generation(name, kw, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    if model.cfg.moe_experts:
        sharpen_router(model)
    hf = export_and_load(model, tmp_path)
    assert type(hf).__name__ == HF_CLASS[name]
    x = torch.randint(0, 320, (2, 64))
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
        assert (ours - theirs).abs().max().item() < 1e-4
        prompt = x[:, :8]
        mine = greedy(model, prompt, 40)
        hf_out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                             min_new_tokens=40, pad_token_id=0)
        assert torch.equal(mine, hf_out[:, 8:])
        back, _ = load_hf_folder(tmp_path)
        # The folder spells out what zhgpt leaves implicit (MLP width, YaRN's original context).
        explicit = dict(intermediate_size=model.cfg.mlp_hidden)
        if model.cfg.rope_scaling == "yarn":
            explicit["rope_original_context"] = model.cfg.original_context
        assert back.cfg == dataclasses.replace(model.cfg, **explicit)
        assert (back.eval()(x)[0] - ours).abs().max().item() < 1e-5


def test_yarn_matches_transformers_frequencies_and_changes_long_context_logits():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from zhgpt.model.gpt import rope_cache
    from zhgpt.model.hf import rope_parameters
    cfg = tiny(block_size=512, rope_scaling="yarn", rope_factor=4.0)      # trained at 128, run at 512
    hc = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512, rope_parameters=rope_parameters(cfg))
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](hc, "cpu")
    cos, _ = rope_cache(cfg, 512)
    t = torch.arange(512).float()
    theirs = torch.cat([torch.outer(t, inv_freq)] * 2, -1).cos() * scale
    assert scale == pytest.approx(0.1 * math.log(4) + 1)
    assert (cos - theirs).abs().max() < 1e-5
    plain, _ = rope_cache(tiny(block_size=512), 512)
    assert (cos - plain).abs().max() > 0.1                  # scaling does something


def test_presets_table_shows_total_and_active_parameters():
    from zhgpt.model.presets import PresetsConfig, main
    table = main(PresetsConfig(arch="llama", moe_experts=8, moe_top_k=2))
    assert "active/token" in table.splitlines()[0]
    cpu_tiny = next(line for line in table.splitlines() if line.startswith("cpu-tiny")).split()
    assert cpu_tiny[6] == "22.6M" and cpu_tiny[7] == "9.6M"
    with pytest.raises(ZhgptError, match="needs --arch llama"):
        PresetsConfig(moe_experts=4)
