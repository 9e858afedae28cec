"""Hugging Face interop: zhgpt models written as standard model folders, and such folders read back.

- ``gpt2`` architecture -> ``GPT2LMHeadModel``. GPT-2's ``Conv1D`` stores weights as (in, out), the
  transpose of ``nn.Linear``, so every matrix is transposed on the way out and back in.
- ``llama`` architecture -> ``LlamaForCausalLM`` (with ``qk_norm``: ``Qwen3ForCausalLM``, which is
  Llama plus per-head RMSNorm on q and k). The fused q/k/v and gate/up matrices are split.

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
from zhgpt.model.gpt import GPT, ModelConfig

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
            gate, up = sd[p + f"mlp.c_fc.{suffix}"].split([hidden, hidden], dim=0)
            out[q + f"mlp.gate_proj.{suffix}"] = gate.contiguous()
            out[q + f"mlp.up_proj.{suffix}"] = up.contiguous()
            out[q + f"mlp.down_proj.{suffix}"] = sd[p + f"mlp.c_proj.{suffix}"]
        if c.qk_norm:
            out[q + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.weight"]
            out[q + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.weight"]
    return ("qwen3" if c.qk_norm else "llama"), out


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
              rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, **common)
    if c.qk_norm:
        from transformers import Qwen3Config
        if c.bias:
            raise ZhgptError("Qwen3ForCausalLM (llama + qk_norm) has no MLP biases; train with --no-bias")
        return Qwen3Config(**kw)
    from transformers import LlamaConfig
    return LlamaConfig(mlp_bias=c.bias, **kw)


def export_hf(model: GPT, tokenizer_dir, out_dir, eot_id: int = EOT_ID, dtype: torch.dtype = torch.float32) -> Path:
    """Write a Hugging Face model folder (config.json, model.safetensors, generation_config.json, tokenizer)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    model_type, sd = to_hf_state_dict(model)
    config = hf_config(model.cfg, eot_id)
    hf = AutoModelForCausalLM.from_config(config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
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
        cfg.setdefault("rope_scaling", None)
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
    elif mt in ("llama", "qwen3"):
        rope = hc.get("rope_parameters") or {}
        if rope.get("rope_type", "default") not in ("default", None) or hc.get("rope_scaling"):
            raise ZhgptError(f"{folder}: RoPE scaling ({rope.get('rope_type') or hc.get('rope_scaling')}) is not supported")
        H, C = hc["num_attention_heads"], hc["hidden_size"]
        hd = hc.get("head_dim") or C // H
        if hd * H != C:
            raise ZhgptError(f"{folder}: head_dim*heads != hidden_size is not supported by zhgpt's model")
        bias = bool(hc.get("attention_bias", False))
        cfg = ModelConfig(arch="llama", vocab_size=hc["vocab_size"], block_size=hc.get("max_position_embeddings", 2048),
                          n_layer=hc["num_hidden_layers"], n_head=H, n_kv_head=hc.get("num_key_value_heads") or H,
                          n_embd=C, intermediate_size=hc["intermediate_size"], bias=bias,
                          tie_embeddings=bool(hc.get("tie_word_embeddings", False)),
                          rope_theta=float(rope.get("rope_theta", hc.get("rope_theta", 10000.0))),
                          qk_norm=mt == "qwen3", norm_eps=hc.get("rms_norm_eps", 1e-6))
        ours = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"]}
        if not cfg.tie_embeddings:
            ours["lm_head.weight"] = sd["lm_head.weight"]
        for i in range(cfg.n_layer):
            p, q = f"transformer.h.{i}.", f"model.layers.{i}."
            ours[p + "ln_1.weight"] = sd[q + "input_layernorm.weight"]
            ours[p + "ln_2.weight"] = sd[q + "post_attention_layernorm.weight"]
            for suffix in ("weight", "bias") if bias else ("weight",):
                ours[p + f"attn.c_attn.{suffix}"] = torch.cat([sd[q + f"self_attn.{n}_proj.{suffix}"] for n in "qkv"])
                ours[p + f"attn.c_proj.{suffix}"] = sd[q + f"self_attn.o_proj.{suffix}"]
                ours[p + f"mlp.c_fc.{suffix}"] = torch.cat([sd[q + f"mlp.gate_proj.{suffix}"], sd[q + f"mlp.up_proj.{suffix}"]])
                ours[p + f"mlp.c_proj.{suffix}"] = sd[q + f"mlp.down_proj.{suffix}"]
            if cfg.qk_norm:
                ours[p + "attn.q_norm.weight"] = sd[q + "self_attn.q_norm.weight"]
                ours[p + "attn.k_norm.weight"] = sd[q + "self_attn.k_norm.weight"]
    else:
        raise ZhgptError(f"{folder}: model_type {mt!r} is not supported; zhgpt reads gpt2, llama and qwen3 folders")
    model = GPT(cfg)
    if cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise ZhgptError(f"{folder}: weights do not match config.json (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model, {"source": str(folder), "kind": "hf", "model_type": mt, "eot_id": eot}

