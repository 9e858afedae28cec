"""LoRA for `zhgpt sft --lora`, through peft: low-rank adapters on the GPT's linear layers, everything else frozen.

peft injects its LoRA layers into the zhgpt GPT in place (``inject_adapter_in_model``: it works on any
torch module), so the model keeps its own forward, KV cache and sampling engine while it trains. Besides
the adapters, two small things train: the rows of the tokens the chat template added (a frozen mean row
could never learn to end a turn) and the final norm (2 x n_embd numbers; frozen, it keeps the output
scale of pre-training and the answers stay unsure). By default (``--lora-embeddings``) every embedding
row trains as well: on a small model the task often lives in word meanings that frozen embeddings do not
hold (the built-in sentiment task on the 7M-parameter CPU model: 82.8 % with them, 59.7 % without,
bench/RESULTS.md). Nothing else moves. At the end:

- ``merged_model``: a plain GPT with the adapters folded into the weights (peft's own merge), exported
  to ``RUN/final`` like any run and loadable by ``AutoModelForCausalLM``;
- ``write_hf_adapter``: ``RUN/adapter``, the unmerged adapter in peft's format and Hugging Face's module
  names, for ``PeftModel.from_pretrained(base, RUN/adapter)`` on the base model's Hugging Face export.
  The new tokens' rows go in as peft "trainable tokens", the final norm as a "module to save".

A checkpoint of a LoRA run holds the injected model's weights (base and adapters, unmerged), so a resume
is exact; ``fold_lora`` merges such weights for the tools that load a checkpoint as a plain GPT.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT

TARGETS = ("c_attn", "c_proj", "c_fc")   # q/k/v, both output projections (attention, MLP), the MLP input
ADAPTER = "default"                      # peft's name for the one adapter


def check_targets(targets: list[str]) -> list[str]:
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ZhgptError(f"--lora-targets {','.join(targets)}: choose from {', '.join(TARGETS)} "
                         "(c_attn: q/k/v; c_proj: attention and MLP outputs; c_fc: MLP input)")
    return list(targets)


def apply_lora(model: GPT, rank: int, alpha: float, dropout: float, targets: list[str],
               train_rows: list[int]) -> GPT:
    """Freeze ``model``, inject LoRA adapters into the ``targets`` layers and make the final norm and the
    embedding rows ``train_rows`` (the new tokens', or every token's with --lora-embeddings) trainable.
    Returns the same model."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=check_targets(targets),
                        bias="none")
    model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    # The final norm trains too (2 x n_embd numbers): with it frozen, a small model's output scale stays
    # that of pre-training and LoRA cannot make an answer confident (measured: bench/RESULTS.md).
    for p in model.transformer.ln_f.parameters():
        p.requires_grad_(True)
    rows = torch.zeros(model.cfg.vocab_size, 1)
    rows[train_rows] = 1.0
    for w in {id(w): w for w in (model.transformer.wte.weight, model.lm_head.weight)}.values():
        w.requires_grad_(True)
        w.no_decay = True            # the frozen rows must not shrink under weight decay either
        w.register_hook(lambda g, rows=rows: g * rows.to(g))
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return any(".lora_A." in k for k in model.state_dict())


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name (zhgpt's, e.g. transformer.h.0.attn.c_attn) -> its peft LoRA layer."""
    from peft.tuners.lora import LoraLayer
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_model(model: GPT) -> GPT:
    """A plain GPT (new module, same config) whose weights are ``model``'s with each adapter merged in."""
    plain = GPT(model.cfg)
    sd = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    sd = {k.replace(".base_layer.", "."): v.clone() for k, v in sd.items()}
    for name, layer in lora_layers(model).items():
        sd[f"{name}.weight"] += layer.get_delta_weight(ADAPTER).to(sd[f"{name}.weight"])
    plain.load_state_dict(sd)
    return plain.to(next(model.parameters()).device)


@torch.no_grad()
def base_model(model: GPT) -> GPT:
    """A plain GPT with the frozen base weights of a LoRA model (the adapters left out)."""
    plain = GPT(model.cfg)
    sd = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(sd)
    return plain


def fold_lora(sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Unmerged LoRA weights (as a LoRA run's checkpoint holds them) -> plain GPT weights, W + alpha/r * B @ A."""
    out = {k.replace(".base_layer.", "."): v for k, v in sd.items() if ".lora_" not in k}
    for k, a in sd.items():
        if not k.endswith(f".lora_A.{ADAPTER}.weight"):
            continue
        name = k[: -len(f".lora_A.{ADAPTER}.weight")]
        b = sd[f"{name}.lora_B.{ADAPTER}.weight"]
        out[f"{name}.weight"] = out[f"{name}.weight"] + (alpha / a.shape[0]) * (b.float() @ a.float()).to(b)
    return out


# ------------------------------------------------------------------------- the adapter for peft + transformers

def _hf_lora(model: GPT) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(LoRA tensors under Hugging Face module names, the target module names). GPT-2 has zhgpt's names;
    Llama splits the fused q/k/v and gate/up matrices, so their adapters split too: the rows of B are cut
    like the rows of W (each part keeps A), which gives the same weight update exactly."""
    c = model.cfg
    out, targets = {}, set()
    for name, layer in lora_layers(model).items():
        a = layer.lora_A[ADAPTER].weight.detach().float().cpu()
        b = layer.lora_B[ADAPTER].weight.detach().float().cpu()
        if c.arch == "gpt2":
            parts = {name: b}
        else:
            i, kind = re.match(r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$", name).groups()
            q = f"model.layers.{i}."
            if kind == "attn.c_attn":
                bq, bk, bv = b.split([c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim])
                parts = {q + "self_attn.q_proj": bq, q + "self_attn.k_proj": bk, q + "self_attn.v_proj": bv}
            elif kind == "mlp.c_fc":
                gate, up = b.split([c.mlp_hidden, c.mlp_hidden])
                parts = {q + "mlp.gate_proj": gate, q + "mlp.up_proj": up}
            else:
                parts = {q + ("self_attn.o_proj" if kind == "attn.c_proj" else "mlp.down_proj"): b}
        for hf_name, part in parts.items():
            out[f"base_model.model.{hf_name}.lora_A.weight"] = a.clone()
            out[f"base_model.model.{hf_name}.lora_B.weight"] = part.contiguous()
            targets.add(hf_name.rsplit(".", 1)[1])
    return out, sorted(targets)


def write_hf_adapter(model: GPT, out_dir, base_dir, tokenizer_dir, new_ids: list[int], rank: int,
                     alpha: float, dropout: float) -> Path:
    """RUN/adapter: adapter_model.safetensors + adapter_config.json (peft's LoRA format, Hugging Face names,
    the new tokens as trainable tokens) and the chat tokenizer, for the Hugging Face model in ``base_dir``."""
    import shutil

    from safetensors.torch import save_file

    from zhgpt.core.files import atomic_dir

    c = model.cfg
    tensors, targets = _hf_lora(model)
    rows = torch.tensor(new_ids)
    emb = "transformer.wte" if c.arch == "gpt2" else "model.embed_tokens"
    tensors[f"base_model.model.{emb}.token_adapter.trainable_tokens_delta"] = \
        model.transformer.wte.weight.detach()[rows].float().cpu().contiguous()
    norm = "transformer.ln_f" if c.arch == "gpt2" else "model.norm"    # trained with the adapters: saved whole
    for name, t in model.transformer.ln_f.state_dict().items():
        tensors[f"base_model.model.{norm}.{name}"] = t.detach().float().cpu().contiguous()
    token_indices: list[int] | dict = list(new_ids)
    if not c.tie_embeddings:        # an untied output layer has its own rows for the new tokens
        token_indices = {"embed_tokens": list(new_ids), "lm_head": list(new_ids)}
        tensors["base_model.model.lm_head.token_adapter.trainable_tokens_delta"] = \
            model.lm_head.weight.detach()[rows].float().cpu().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(Path(base_dir).resolve()),
              "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets, "bias": "none",
              "fan_in_fan_out": c.arch == "gpt2",        # GPT-2's Conv1D stores weights as (in, out)
              "trainable_token_indices": token_indices, "modules_to_save": [norm], "inference_mode": True}
    with atomic_dir(Path(out_dir)) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        (tmp / "README.md").write_text(ADAPTER_README.format(base=config["base_model_name_or_path"], r=rank,
                                                             alpha=alpha), encoding="utf-8")
    return Path(out_dir)


ADAPTER_README = """# LoRA adapter (zhgpt sft --lora)

r = {r}, alpha = {alpha}, for the base model in `{base}`. The tokens the chat template added, and the final
norm, are part of the adapter. `../final` is the same model with the adapter merged in.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("adapter")
base = AutoModelForCausalLM.from_pretrained("{base}")
if base.get_input_embeddings().num_embeddings < len(tok):
    base.resize_token_embeddings(len(tok))      # rows for the chat tokens; the adapter sets their values
model = PeftModel.from_pretrained(base, "adapter")
ids = tok.apply_chat_template([{{"role": "user", "content": "你好"}}], add_generation_prompt=True, return_tensors="pt")
```
"""
