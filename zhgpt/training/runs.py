"""Loading a model from any folder zhgpt writes a model into: a run, a checkpoint, an exported Hugging
Face folder or an int8 folder (the layout of a run folder is ``zhgpt.training.layout``).

``resolve_model_path`` classifies any --model / --init-from path; ``load_for_inference`` builds the GPT and
its tokenizer from it. Training (``--init-from``), `zhgpt eval/generate/export`, the demo and the API all
load through here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zhgpt.config import load_json
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.training.checkpoint import best_or_latest, load_weights
from zhgpt.training.layout import CKPT_DIR, META, TOKENIZER, WEIGHTS


def tokenizer_dir_of(model_path) -> Path | None:
    """The folder holding tokenizer.json for a run / checkpoint / HF / int8 folder (None if not found)."""
    try:
        kind, p = resolve_model_path(model_path)
    except ZhgptError:
        return None
    d = p if kind == "hf" else p / TOKENIZER
    return d if (d / "tokenizer.json").is_file() else None


def resolve_model_path(path) -> tuple[str, Path]:
    """Classify a --model path: ('checkpoint', dir), ('hf', dir) or a run folder resolved to one of those."""
    p = Path(path)
    if not p.exists():
        hint = (" (it looks like a Hugging Face hub id: zhgpt never downloads models, pass a local folder)"
                if str(path).count("/") == 1 and not str(path).startswith((".", "/")) else "")
        raise ZhgptError(f"{p}: no such model{hint}; pass a run folder (runs/NAME), a checkpoint folder or an "
                         "exported Hugging Face folder")
    from zhgpt.model.quantize import is_int8_folder   # deferred: torch.ao is slow to import
    if is_int8_folder(p):
        return "int8", p
    if (p / WEIGHTS).is_file() and (p / META).is_file() and (p / TOKENIZER).is_dir():
        return "checkpoint", p
    if (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / "pytorch_model.bin").is_file()):
        return "hf", p
    if (p / CKPT_DIR).is_dir() or (p / "final").is_dir():
        ckpt = best_or_latest(p)
        if ckpt is not None:
            return "checkpoint", ckpt
        if (p / "final" / "config.json").is_file():
            return "hf", p / "final"
    raise ZhgptError(f"{p}: not a zhgpt run, checkpoint or Hugging Face model folder "
                     "(expected checkpoints/, model.safetensors + meta.json, or config.json)")


def load_for_inference(path, device: str = "cpu", dtype: torch.dtype | None = None):
    """-> (model, tokenizer, info dict) from a run folder, checkpoint folder or HF export folder."""
    from zhgpt.data.tokenizer import load_tokenizer

    kind, p = resolve_model_path(path)
    if kind == "int8":
        from zhgpt.model.quantize import load_int8
        if device != "cpu":
            raise ZhgptError(f"{p} is an int8 CPU model; run it with --device cpu")
        model, info = load_int8(p)
        return model.eval(), load_tokenizer(p / TOKENIZER), info
    if kind == "hf":
        from zhgpt.model.hf import load_hf_folder
        model, info = load_hf_folder(p)
        tok = load_tokenizer(p)
    else:
        meta = load_json(p / META)
        model = GPT(ModelConfig(**meta["model"]))
        load_weights(model, p / WEIGHTS)
        tok = load_tokenizer(p / TOKENIZER)
        info = {"source": str(p), "kind": "checkpoint", "step": meta.get("step"),
                "metrics": meta.get("metrics", {}), "eot_id": meta.get("eot_id", 0)}
    model.to(device=device, dtype=dtype or torch.float32).eval()
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise ZhgptError(f"{p}: tokenizer has {tok.get_vocab_size()} tokens but the model only "
                         f"{model.cfg.vocab_size}; the tokenizer does not belong to this model")
    return model, tok, info
