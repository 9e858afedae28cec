"""zhgpt models as GGUF files for llama.cpp, Ollama and LM Studio, written with the ``gguf`` package
(llama.cpp's own writer).

- ``gpt2`` -> GGUF arch ``gpt2`` (fused qkv, learned positions, LayerNorm with biases, tanh GELU).
- ``llama`` -> ``llama``; with ``qk_norm`` -> ``qwen3``. zhgpt's RoPE rotates halves (HF's layout).
  llama.cpp's ``llama`` graph rotates adjacent pairs, so q and k rows are permuted exactly as
  llama.cpp's convert_hf_to_gguf.py does for HF Llama weights; ``qwen3`` rotates halves (NEOX) as is.
- Experts -> the llama.cpp graph of the transformers class they export to: Mixtral -> ``llama`` with
  ``expert_count``, Qwen3-MoE -> ``qwen3moe``, Qwen2-MoE (shared expert) -> ``qwen2moe``; each layer's
  experts stacked into one tensor per matrix. Whether top-k gate weights are renormalised is fixed by
  the graph, so a model trained the other way is refused rather than written to compute something else.
- YaRN -> ``rope.scaling.{type,factor,original_context_length}``.

Quantisation (``f16``, ``q8_0``, ``q4_0``) is per tensor, as llama.cpp's quantiser does it: 1-D tensors
(norms, biases) stay f32; the embedding (which is also the output layer when tied) is kept at q8_0
in a q4_0 file, because the output layer is where 4-bit error costs the most loss; a matrix whose
rows are not a whole number of 32-value blocks falls back to f16 with a printed note.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.gguf_vocab import GGUFVocab, write_vocab
from zhgpt.model.gpt import GPT
from zhgpt.model.hf import hf_model_type, to_hf_state_dict

QUANTS = ("f16", "q8_0", "q4_0")
BLOCK = 32                              # values per q8_0 / q4_0 block
# Hugging Face Llama/Qwen3 names -> GGUF names, applied in order to each key
HF_TO_GGUF = (
    ("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output."),
    ("model.layers.", "blk."), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"), ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
)
EMBEDDINGS = ("token_embd.weight", "position_embd.weight", "output.weight")


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half rows -> llama.cpp adjacent-pair rows (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    c = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["transformer.wte.weight"], "position_embd.weight": sd["transformer.wpe.weight"],
           "output_norm.weight": sd["transformer.ln_f.weight"], "output_norm.bias": sd["transformer.ln_f.bias"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(c.n_layer):
        for ours, theirs in names.items():
            for s in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{s}"] = sd[f"transformer.h.{i}.{ours}.{s}"]
    return out


# transformers model type -> llama.cpp architecture. Mixtral is llama.cpp's ``llama`` graph with experts.
GGUF_ARCH = {"llama": "llama", "qwen3": "qwen3", "mixtral": "llama", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}
# llama.cpp's MoE graphs fix whether the top-k gate weights are renormalised (build_moe_ffn's norm_w): the
# llama (Mixtral) and qwen3moe graphs always do, qwen2moe never does. A file is only written when it matches.
GGUF_NORM_TOPK = {"llama": True, "qwen3moe": True, "qwen2moe": False}
EXPERT_MATS = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}


def gguf_arch(model: GPT) -> tuple[str, str]:
    """(transformers model type, llama.cpp architecture); ZhgptError where no llama.cpp graph computes it."""
    c = model.cfg
    if c.arch == "gpt2":
        return "gpt2", "gpt2"
    model_type = hf_model_type(c)
    arch = GGUF_ARCH[model_type]
    if c.moe_experts and c.moe_norm_topk != GGUF_NORM_TOPK[arch]:
        flag = "--moe-norm-topk" if GGUF_NORM_TOPK[arch] else "--no-moe-norm-topk"
        raise ZhgptError(f"llama.cpp's {arch} graph {'always' if GGUF_NORM_TOPK[arch] else 'never'} renormalises "
                         f"the top-k gate weights and this model was trained the other way; train with {flag} "
                         "to export it as GGUF (the Hugging Face export, --format hf, has it either way)")
    return model_type, arch


def _moe_tensors(hf: dict, c) -> dict[str, torch.Tensor]:
    """Pop each layer's router and experts out of the HF state dict into llama.cpp's layout: the experts of a
    layer stacked into one (E, out, in) tensor per matrix (ffn_{gate,up,down}_exps), the shared expert as
    ffn_*_shexp and its sigmoid gate as the 1-D ffn_gate_inp_shexp."""
    out = {}
    for i in range(c.n_layer):
        q = f"model.layers.{i}."
        block = q + ("block_sparse_moe." if q + "block_sparse_moe.gate.weight" in hf else "mlp.")
        out[f"blk.{i}.ffn_gate_inp.weight"] = hf.pop(block + "gate.weight")
        for theirs, ours in EXPERT_MATS.items():
            keys = [f"{block}experts.{e}.{theirs}.weight" for e in range(c.moe_experts)]
            if keys[0] in hf:
                out[f"blk.{i}.ffn_{ours}_exps.weight"] = torch.stack([hf.pop(k) for k in keys])
        if c.moe_shared_expert:
            for theirs in ("gate_proj", "up_proj", "down_proj"):
                out[f"blk.{i}.ffn_{EXPERT_MATS[theirs]}_shexp.weight"] = hf.pop(f"{block}shared_expert.{theirs}.weight")
            out[f"blk.{i}.ffn_gate_inp_shexp.weight"] = hf.pop(block + "shared_expert_gate.weight").reshape(-1)
    return out


def gguf_tensors(model: GPT) -> tuple[str, dict[str, torch.Tensor]]:
    """(GGUF architecture, tensors in GGUF names, nn.Linear (out, in) layout, fp32)."""
    c = model.cfg
    model_type, arch = gguf_arch(model)
    if arch == "gpt2":
        return "gpt2", _gpt2_tensors(model)
    # llama/qwen3 and the MoE classes: from the HF state dict (fused q/k/v and gate/up already split there),
    # renamed the way llama.cpp's convert_hf_to_gguf.py renames it
    _, hf = to_hf_state_dict(model)
    out = _moe_tensors(hf, c) if c.moe_experts else {}
    for k, v in hf.items():
        for theirs, ours in HF_TO_GGUF:
            k = k.replace(theirs, ours)
        if arch == "llama" and (".attn_q." in k or ".attn_k." in k):
            v = _permute(v, c.n_head if ".attn_q." in k else c.kv_heads)
        out[k] = v
    if arch == "qwen2moe" and "output.weight" not in out:
        out["output.weight"] = out["token_embd.weight"]    # llama.cpp's qwen2moe requires its own output matrix
    return arch, {k: v.contiguous() for k, v in out.items()}


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> tuple[str, str | None]:
    """(storage type, note or None) for one tensor of a ``quant`` file."""
    if len(shape) == 1 or ".ffn_gate_inp." in name:
        return "f32", None       # norms, biases, and the router, whose small errors would change the experts chosen
    want = "f16" if quant == "f16" else ("q8_0" if name in EMBEDDINGS else quant)
    if want != "f16" and shape[-1] % BLOCK:
        return "f16", (f"{name}: rows of {shape[-1]} values are not a multiple of the {BLOCK}-value {want} block; "
                       f"stored as f16 (give that dimension a multiple of {BLOCK} to quantise it)")
    return want, None


def _add(writer, name: str, t: torch.Tensor, kind: str) -> None:
    import gguf
    a = t.numpy().astype(np.float32)
    if kind == "f32":
        writer.add_tensor(name, a)
    elif kind == "f16":
        writer.add_tensor(name, a.astype(np.float16))
    else:
        qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
        writer.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)


def _add_moe_and_rope(w, arch: str, c) -> None:
    """Expert counts and sizes, and YaRN as llama.cpp reads it (its defaults are YaRN's own: beta_fast 32,
    beta_slow 1, attention factor 0.1 ln(factor) + 1, the values zhgpt and transformers use)."""
    import gguf
    if c.moe_experts:
        w.add_expert_count(c.moe_experts)
        w.add_expert_used_count(c.moe_top_k)
        if arch != "llama":
            w.add_expert_feed_forward_length(c.mlp_hidden)
        if c.moe_shared_expert:
            w.add_expert_shared_feed_forward_length(c.mlp_hidden)
    if c.rope_scaling == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(c.rope_factor)
        w.add_rope_scaling_orig_ctx_len(c.original_context)


def write_gguf(model: GPT, vocab: GGUFVocab, out: Path, quant: str = "f16", name: str = "zhgpt") -> list[str]:
    """Write ``out`` (a .gguf file); returns the notes about tensors that could not take ``quant``."""
    import gguf
    if quant not in QUANTS:
        raise ZhgptError(f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    c = model.cfg
    arch, tensors = gguf_tensors(model)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name)
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.mlp_hidden)
    w.add_head_count(c.n_head)
    w.add_vocab_size(c.vocab_size)
    if arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
    else:
        w.add_head_count_kv(c.kv_heads)
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_rope_freq_base(c.rope_theta)
        w.add_rope_dimension_count(c.head_dim)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        _add_moe_and_rope(w, arch, c)
    write_vocab(w, vocab)
    notes = list(vocab.notes)
    for tname, t in tensors.items():
        kind, note = tensor_type(tname, tuple(t.shape), quant)
        if note:
            notes.append(note)
        _add(w, tname, t, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notes
