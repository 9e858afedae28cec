"""Hugging Face interop: zhgpt models written as standard model folders, and such folders read back.

- ``gpt2`` architecture -> ``GPT2LMHeadModel``. GPT-2's ``Conv1D`` stores weights as (in, out), the
  transpose of ``nn.Linear``, so every matrix is transposed on the way out and back in.
- ``llama`` architecture -> ``LlamaForCausalLM`` (with ``qk_norm``: ``Qwen3ForCausalLM``, which is
  Llama plus per-head RMSNorm on q and k). The fused q/k/v and gate/up matrices are split.
- ``llama`` with experts (``moe_experts``) -> the transformers MoE class whose block is the same one:
  ``MixtralForCausalLM`` (no QK-norm, no shared expert; Mixtral always renormalises the top-k weights),
  ``Qwen3MoeForCausalLM`` (QK-norm; ``norm_topk_prob`` either way; it has no shared expert) or
  ``Qwen2MoeForCausalLM`` (a shared expert behind a sigmoid gate, no QK-norm). Other combinations (QK-norm
  and a shared expert; no QK-norm, no shared expert and no renormalisation) exist in no transformers class
  and are refused. The experts are written in the per-expert layout of the released checkpoints.
- YaRN (``rope_scaling``) -> ``rope_parameters`` (transformers 5) and ``rope_scaling`` (transformers 4).

The result loads with ``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer`` with no
custom code; tests check the logits match zhgpt's own model. Weight names and shapes are mapped
here, nothing wraps Hugging Face classes at training time. Both the end of a training run (RUN/final),
`zhgpt export` and loading (`--init-from`, `--model`) use this one module.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from zhgpt.config import load_json, save_json
from zhgpt.core.files import atomic_dir
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, YARN_BETA_FAST, YARN_BETA_SLOW, ModelConfig

EOT_ID = 0

# ------------------------------------------------------------------------- writing

def to_hf_state_dict(model: GPT) -> tuple[str, dict[str, torch.Tensor]]:
    """(model_type, state dict in Hugging Face names) for a zhgpt model."""
    c = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if not k.startswith("rope_")}
    out: dict[str, torch.Tensor] = {}
    if c.arch == "gpt2":
        for k, v in sd.items():
            if k == "lm_head.weight":
                continue   # tied to wte in GPT2LMHeadModel
            if k.endswith(".weight") and any(n in k for n in ("c_attn", "c_proj", "c_fc")):
                v = v.t().contiguous()   # nn.Linear (out, in) -> Conv1D (in, out)
            out[k] = v
        if not c.tie_embeddings:
            raise ZhgptError("GPT2LMHeadModel always ties input and output embeddings; this model was trained "
                             "with untied embeddings, so it can only be exported with --arch llama models")
        return "gpt2", out
    model_type = hf_model_type(c)
    hd, H, Hkv, hidden = c.head_dim, c.n_head, c.kv_heads, c.mlp_hidden
    out["model.embed_tokens.weight"] = sd["transformer.wte.weight"]
    out["model.norm.weight"] = sd["transformer.ln_f.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = sd[p + "ln_1.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "ln_2.weight"]
        for suffix in ("weight", "bias") if c.bias else ("weight",):
            wq, wk, wv = sd[p + f"attn.c_attn.{suffix}"].split([H * hd, Hkv * hd, Hkv * hd], dim=0)
            out[q + f"self_attn.q_proj.{suffix}"] = wq.contiguous()
            out[q + f"self_attn.k_proj.{suffix}"] = wk.contiguous()
            out[q + f"self_attn.v_proj.{suffix}"] = wv.contiguous()
            out[q + f"self_attn.o_proj.{suffix}"] = sd[p + f"attn.c_proj.{suffix}"]
            if not c.moe_experts:
                out.update(_swiglu_out(sd, p + "mlp.", q + "mlp.", suffix, hidden))
        if c.moe_experts:
            out.update(_moe_out(sd, p + "mlp.", q, c, model_type))
        if c.qk_norm:
            out[q + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.weight"]
            out[q + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.weight"]
    return model_type, out


# Mixtral's checkpoints name an expert's gate/up/down matrices w1/w3/w2 under block_sparse_moe.
MIXTRAL_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def hf_model_type(c: ModelConfig) -> str:
    """The transformers model_type a llama-architecture config exports to (ZhgptError if none fits)."""
    if not c.moe_experts:
        return "qwen3" if c.qk_norm else "llama"
    if c.bias:
        raise ZhgptError("transformers' MoE classes have no biases in their experts; train MoE models with "
                         "--no-bias to export them (or --no-export)")
    if c.moe_shared_expert and c.qk_norm:
        raise ZhgptError("no transformers MoE class has both QK-norm and a shared expert (Qwen3-MoE has no shared "
                         "expert, Qwen2-MoE no QK-norm); train with one of --no-qk-norm / --no-moe-shared-expert "
                         "(or --no-export)")
    if c.moe_shared_expert:
        return "qwen2_moe"
    if c.qk_norm:
        return "qwen3_moe"
    if not c.moe_norm_topk:
        raise ZhgptError("MixtralForCausalLM (MoE without QK-norm or shared expert) always renormalises the top-k "
                         "gate weights; train with --moe-norm-topk, or --qk-norm for Qwen3-MoE (or --no-export)")
    return "mixtral"


def _swiglu_out(sd: dict, p: str, q: str, suffix: str, hidden: int, names=None) -> dict:
    """One SwiGLU MLP's fused c_fc split into gate/up, and c_proj as down, under prefix ``q``."""
    names = names or {n: n for n in ("gate_proj", "up_proj", "down_proj")}
    gate, up = sd[p + f"c_fc.{suffix}"].split([hidden, hidden], dim=0)
    return {q + f"{names['gate_proj']}.{suffix}": gate.contiguous(), q + f"{names['up_proj']}.{suffix}": up.contiguous(),
            q + f"{names['down_proj']}.{suffix}": sd[p + f"c_proj.{suffix}"]}


def _moe_out(sd: dict, p: str, q: str, c: ModelConfig, model_type: str) -> dict:
    """One MoE layer in the per-expert checkpoint layout of ``model_type``."""
    mixtral = model_type == "mixtral"
    block = q + ("block_sparse_moe." if mixtral else "mlp.")
    out = {block + "gate.weight": sd[p + "router.weight"]}
    for e in range(c.moe_experts):
        out.update(_swiglu_out(sd, f"{p}experts.{e}.", f"{block}experts.{e}.", "weight", c.mlp_hidden,
                               MIXTRAL_NAMES if mixtral else None))
    if c.moe_shared_expert:
        out.update(_swiglu_out(sd, p + "shared.", block + "shared_expert.", "weight", c.mlp_hidden))
        out[block + "shared_expert_gate.weight"] = sd[p + "shared_gate.weight"]
    return out


def _fuse_experts(sd: dict, hf_keys) -> dict:
    """transformers 5 holds a layer's experts as two 3D tensors (mlp.experts.gate_up_proj (E, 2I, C) and
    down_proj (E, C, I)) and converts the per-expert files when it loads them; load_state_dict does not,
    so fuse here when the built model wants that layout."""
    if not any(k.endswith("experts.gate_up_proj") for k in hf_keys):
        return sd
    out, layers = {}, {}
    for k, v in sd.items():
        k = k.replace(".block_sparse_moe.", ".mlp.")
        head, sep, tail = k.partition(".mlp.experts.")
        if not sep:
            out[k] = v
            continue
        e, name = tail.split(".")[0], tail.split(".")[1]
        name = {v2: k2 for k2, v2 in MIXTRAL_NAMES.items()}.get(name, name)
        layers.setdefault(head, {}).setdefault(int(e), {})[name] = v
    for head, experts in layers.items():
        order = [experts[e] for e in sorted(experts)]
        out[head + ".mlp.experts.gate_up_proj"] = torch.stack([torch.cat([x["gate_proj"], x["up_proj"]]) for x in order])
        out[head + ".mlp.experts.down_proj"] = torch.stack([x["down_proj"] for x in order])
    return out


def hf_config(c: ModelConfig, eot_id: int = EOT_ID):
    common = dict(vocab_size=c.vocab_size, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                  tie_word_embeddings=c.tie_embeddings)
    if c.arch == "gpt2":
        from transformers import GPT2Config
        if not c.bias:
            raise ZhgptError("GPT2LMHeadModel has biases in every layer; a --no-bias gpt2 model cannot be exported")
        return GPT2Config(n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
                          n_inner=c.mlp_hidden, activation_function="gelu_new", resid_pdrop=c.dropout,
                          embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.norm_eps, **common)
    kw = dict(hidden_size=c.n_embd, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layer,
              num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, max_position_embeddings=c.block_size,
              rms_norm_eps=c.norm_eps, hidden_act="silu", attention_bias=c.bias, head_dim=c.head_dim,
              rope_parameters=rope_parameters(c), **common)
    if c.moe_experts:
        return _moe_config(c, kw)
    if c.qk_norm:
        from transformers import Qwen3Config
        if c.bias:
            raise ZhgptError("Qwen3ForCausalLM (llama + qk_norm) has no MLP biases; train with --no-bias")
        return Qwen3Config(**kw)
    from transformers import LlamaConfig
    return LlamaConfig(mlp_bias=c.bias, **kw)


def rope_parameters(c: ModelConfig) -> dict:
    """transformers 5's ``rope_parameters`` for a llama-architecture config."""
    if c.rope_scaling != "yarn":
        return {"rope_type": "default", "rope_theta": c.rope_theta}
    return {"rope_type": "yarn", "rope_theta": c.rope_theta, "factor": c.rope_factor,
            "original_max_position_embeddings": c.original_context, "beta_fast": YARN_BETA_FAST,
            "beta_slow": YARN_BETA_SLOW}


def _moe_config(c: ModelConfig, kw: dict):
    moe = dict(num_experts_per_tok=c.moe_top_k, router_aux_loss_coef=c.moe_aux_loss_coef)
    model_type = hf_model_type(c)
    if model_type == "mixtral":
        from transformers import MixtralConfig
        kw.pop("attention_bias")      # Mixtral has none (hf_model_type asked for --no-bias)
        return MixtralConfig(num_local_experts=c.moe_experts, sliding_window=None, **moe, **kw)
    # Qwen-MoE: every layer sparse (decoder_sparse_step 1), experts of moe_intermediate_size.
    moe.update(num_experts=c.moe_experts, moe_intermediate_size=c.mlp_hidden, norm_topk_prob=c.moe_norm_topk,
               decoder_sparse_step=1, mlp_only_layers=[])
    if model_type == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        return Qwen3MoeConfig(sliding_window=None, **moe, **kw)
    from transformers import Qwen2MoeConfig
    kw.pop("attention_bias")
    return Qwen2MoeConfig(shared_expert_intermediate_size=c.mlp_hidden, qkv_bias=False, use_sliding_window=False,
                          **moe, **kw)


def export_hf(model: GPT, tokenizer_dir, out_dir, eot_id: int = EOT_ID, dtype: torch.dtype = torch.float32) -> Path:
    """Write a Hugging Face model folder (config.json, model.safetensors, generation_config.json, tokenizer)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    model_type, sd = to_hf_state_dict(model)
    config = hf_config(model.cfg, eot_id)
    hf = AutoModelForCausalLM.from_config(config)
    missing, unexpected = hf.load_state_dict(_fuse_experts(sd, hf.state_dict().keys()), strict=False)
    # Tied output weights and non-persistent buffers are the only keys allowed to be absent.
    missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings) and ".attn.bias" not in k
               and "masked_bias" not in k]
    if missing or unexpected:
        raise ZhgptError(f"export to {model_type}: weights do not line up (missing {missing[:4]}, unexpected {unexpected[:4]})")
    hf.to(dtype)
    # A chat model ends its turn with <|im_end|>: transformers' generate() stops there as well.
    eos = [eot_id] + chat_end_ids(tokenizer_dir)
    hf.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eos if len(eos) > 1 else eot_id,
                                            pad_token_id=eot_id,
                                            do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
                                            max_new_tokens=100)
    with atomic_dir(out_dir) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        _add_legacy_fields(tmp / "config.json", model.cfg, dtype)
        tcfg_path = tmp / "tokenizer_config.json"
        if tcfg_path.is_file():
            tcfg = load_json(tcfg_path)
            tcfg["model_max_length"] = model.cfg.block_size
            save_json(tcfg_path, tcfg)
    return out_dir

def _add_legacy_fields(path: Path, c: ModelConfig, dtype: torch.dtype) -> None:
    """transformers 5 writes ``rope_parameters`` and ``dtype``; serving stacks built on transformers 4
    (vLLM, TGI, older llama.cpp converters) read ``rope_theta`` and ``torch_dtype``. Write both spellings:
    transformers 5 folds the old ones into the new when it loads the folder."""
    cfg = load_json(path)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    if c.arch == "llama":
        cfg["rope_theta"] = c.rope_theta
        scaling = None
        if c.rope_scaling == "yarn":
            scaling = {k: v for k, v in rope_parameters(c).items() if k != "rope_theta"}
            scaling["type"] = "yarn"     # the key transformers < 4.45 read
        cfg["rope_scaling"] = scaling
    save_json(path, cfg)


def chat_end_ids(tokenizer_dir) -> list[int]:
    """[id of <|im_end|>] when the tokenizer has the chat tokens, else []."""
    from zhgpt.data.chat_template import IM_END
    from zhgpt.data.tokenizer import load_tokenizer
    tid = load_tokenizer(Path(tokenizer_dir)).token_to_id(IM_END)
    return [] if tid is None else [tid]


# ------------------------------------------------------------------------- reading

def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(str(folder / shard)))
        return sd
    bin_ = folder / "pytorch_model.bin"
    if bin_.is_file():
        return torch.load(bin_, map_location="cpu", weights_only=True)
    raise ZhgptError(f"{folder}: no model.safetensors or pytorch_model.bin")


def load_hf_folder(folder) -> tuple[GPT, dict]:
    """A zhgpt GPT built from a local GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ZhgptError(f"{folder}: not a Hugging Face model folder (no config.json). zhgpt never downloads "
                         "models: pass a local folder (e.g. one made with `zhgpt export`)")
    hc = load_json(cfg_path)
    mt = hc.get("model_type")
    sd = _read_hf_weights(folder)
    sd = {k.removeprefix("base_model.").removeprefix("module."): v.float() for k, v in sd.items()}
    eot = hc.get("eos_token_id", EOT_ID)
    eot = eot[0] if isinstance(eot, list) else (eot if eot is not None else EOT_ID)
    if mt == "gpt2":
        cfg = ModelConfig(arch="gpt2", vocab_size=hc["vocab_size"], block_size=hc["n_positions"], n_layer=hc["n_layer"],
                          n_head=hc["n_head"], n_embd=hc["n_embd"], intermediate_size=hc.get("n_inner") or 0,
                          norm_eps=hc.get("layer_norm_epsilon", 1e-5), bias=True, tie_embeddings=True)
        ours = {}
        for k, v in sd.items():
            if not k.startswith("transformer.") or k.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if k.endswith(".weight") and any(n in k for n in ("c_attn", "c_proj", "c_fc")):
                v = v.t().contiguous()
            ours[k] = v
    elif mt in LLAMA_TYPES:
        cfg = _llama_config(hc, mt, folder)
        ours = _llama_weights(sd, cfg, mt)
    else:
        raise ZhgptError(f"{folder}: model_type {mt!r} is not supported; zhgpt reads "
                         f"{', '.join(('gpt2',) + LLAMA_TYPES)} folders")
    model = GPT(cfg)
    if cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise ZhgptError(f"{folder}: weights do not match config.json (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model, {"source": str(folder), "kind": "hf", "model_type": mt, "eot_id": eot}



LLAMA_TYPES = ("llama", "qwen3", "mixtral", "qwen3_moe", "qwen2_moe")


def _llama_config(hc: dict, mt: str, folder: Path) -> ModelConfig:
    """The zhgpt config of a llama-family config.json (Llama, Qwen3, and the MoE classes zhgpt exports to)."""
    rope = dict(hc.get("rope_parameters") or {})
    if hc.get("rope_scaling") and rope.get("rope_type", "default") == "default":
        rope.update(hc["rope_scaling"])           # a transformers-4 folder
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "yarn"):
        raise ZhgptError(f"{folder}: RoPE scaling {rope_type!r} is not supported (zhgpt has none and yarn)")
    yarn = {}
    if rope_type == "yarn":
        if (rope.get("beta_fast") or YARN_BETA_FAST) != YARN_BETA_FAST or (rope.get("beta_slow") or YARN_BETA_SLOW) \
                != YARN_BETA_SLOW or rope.get("attention_factor") or rope.get("mscale") or rope.get("truncate") is False:
            raise ZhgptError(f"{folder}: YaRN with non-default beta/mscale/attention_factor/truncate is not supported")
        yarn = dict(rope_scaling="yarn", rope_factor=float(rope["factor"]),
                    rope_original_context=int(rope.get("original_max_position_embeddings") or 0))
    H, C = hc["num_attention_heads"], hc["hidden_size"]
    hd = hc.get("head_dim") or C // H
    if hd * H != C:
        raise ZhgptError(f"{folder}: head_dim*heads != hidden_size is not supported by zhgpt's model")
    moe = {}
    if mt in ("mixtral", "qwen3_moe", "qwen2_moe"):
        if mt != "mixtral" and (hc.get("mlp_only_layers") or hc.get("decoder_sparse_step", 1) != 1):
            raise ZhgptError(f"{folder}: dense layers between MoE layers (mlp_only_layers / decoder_sparse_step) "
                             "are not supported; zhgpt's MoE models are sparse in every layer")
        if mt == "qwen2_moe" and hc.get("shared_expert_intermediate_size") != hc.get("moe_intermediate_size"):
            raise ZhgptError(f"{folder}: a shared expert of another size than the experts is not supported")
        moe = dict(moe_experts=hc.get("num_local_experts") or hc["num_experts"], moe_top_k=hc["num_experts_per_tok"],
                   moe_shared_expert=mt == "qwen2_moe", moe_norm_topk=mt == "mixtral" or bool(hc.get("norm_topk_prob")),
                   moe_aux_loss_coef=hc.get("router_aux_loss_coef", 0.01))
    bias = bool(hc.get("attention_bias", False) or hc.get("qkv_bias", False))
    return ModelConfig(arch="llama", vocab_size=hc["vocab_size"], block_size=hc.get("max_position_embeddings", 2048),
                       n_layer=hc["num_hidden_layers"], n_head=H, n_kv_head=hc.get("num_key_value_heads") or H,
                       n_embd=C, intermediate_size=hc.get("moe_intermediate_size") or hc["intermediate_size"],
                       bias=bias, tie_embeddings=bool(hc.get("tie_word_embeddings", False)),
                       rope_theta=float(rope.get("rope_theta", hc.get("rope_theta", 10000.0))),
                       qk_norm=mt in ("qwen3", "qwen3_moe"), norm_eps=hc.get("rms_norm_eps", 1e-6), **moe, **yarn)


def _swiglu_in(sd: dict, q: str, suffix: str = "weight", names=None) -> dict:
    """gate/up/down under prefix ``q`` -> zhgpt's fused c_fc and c_proj (names relative to an MLP)."""
    names = names or {n: n for n in ("gate_proj", "up_proj", "down_proj")}
    return {f"c_fc.{suffix}": torch.cat([sd[q + f"{names['gate_proj']}.{suffix}"], sd[q + f"{names['up_proj']}.{suffix}"]]),
            f"c_proj.{suffix}": sd[q + f"{names['down_proj']}.{suffix}"]}


def _llama_weights(sd: dict, cfg: ModelConfig, mt: str) -> dict:
    """zhgpt state dict from a llama-family one (MoE experts in the per-expert checkpoint layout)."""
    ours = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"]}
    if not cfg.tie_embeddings:
        ours["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        ours[p + "ln_1.weight"] = sd[q + "input_layernorm.weight"]
        ours[p + "ln_2.weight"] = sd[q + "post_attention_layernorm.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            ours[p + f"attn.c_attn.{suffix}"] = torch.cat([sd[q + f"self_attn.{n}_proj.{suffix}"] for n in "qkv"])
            if q + f"self_attn.o_proj.{suffix}" in sd or suffix == "weight":
                ours[p + f"attn.c_proj.{suffix}"] = sd[q + f"self_attn.o_proj.{suffix}"]
            if not cfg.moe_experts:
                ours.update({p + "mlp." + k: v for k, v in _swiglu_in(sd, q + "mlp.", suffix).items()})
        if cfg.qk_norm:
            ours[p + "attn.q_norm.weight"] = sd[q + "self_attn.q_norm.weight"]
            ours[p + "attn.k_norm.weight"] = sd[q + "self_attn.k_norm.weight"]
        if cfg.moe_experts:
            block = q + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
            ours[p + "mlp.router.weight"] = sd[block + "gate.weight"]
            for e in range(cfg.moe_experts):
                w = _swiglu_in(sd, f"{block}experts.{e}.", names=MIXTRAL_NAMES if mt == "mixtral" else None)
                ours.update({f"{p}mlp.experts.{e}.{k}": v for k, v in w.items()})
            if cfg.moe_shared_expert:
                ours.update({p + "mlp.shared." + k: v for k, v in _swiglu_in(sd, block + "shared_expert.").items()})
                ours[p + "mlp.shared_gate.weight"] = sd[block + "shared_expert_gate.weight"]
    return ours
