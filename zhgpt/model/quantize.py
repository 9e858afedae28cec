"""int8 models for CPU deployment: dynamic quantisation of every nn.Linear.

Weights are stored as int8 with a per-tensor scale; activations are quantised on the fly at each
matmul (``torch.ao.quantization.quantize_dynamic``). The embedding stays fp32 (it is a lookup, not
a matmul), so with tied embeddings the output layer gets its own int8 copy.

Folder layout (what `zhgpt export --quantize int8` writes and `zhgpt generate` loads):
    model_int8.pt   the quantised state dict (torch.save; packed int8 weights are not safetensors tensors)
    meta.json       {"quantized": "int8-dynamic", "model": ModelConfig, "eot_id": ...}
    tokenizer/
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from zhgpt.config import load_json, save_json
from zhgpt.core.files import atomic_dir
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig

WEIGHTS = "model_int8.pt"
SCHEME = "int8-dynamic"


def quantize_int8(model: GPT) -> torch.nn.Module:
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.engine == "none":
        raise ZhgptError("this PyTorch build has no quantized CPU engine; int8 export is not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # torch.ao eager quantisation is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model.float().cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def save_int8(model: GPT, tokenizer_dir, out_dir, eot_id: int = 0) -> Path:
    out_dir = Path(out_dir)
    q = quantize_int8(model)
    with atomic_dir(out_dir) as tmp:
        torch.save(q.state_dict(), tmp / WEIGHTS)
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        save_json(tmp / "meta.json", {"quantized": SCHEME, "model": asdict(model.cfg), "eot_id": eot_id})
    return out_dir


def is_int8_folder(path) -> bool:
    return (Path(path) / WEIGHTS).is_file()


def load_int8(path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    meta = load_json(path / "meta.json")
    if meta.get("quantized") != SCHEME:
        raise ZhgptError(f"{path}: unknown quantisation {meta.get('quantized')!r}")
    model = GPT(ModelConfig(**meta["model"]))
    q = quantize_int8(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu", weights_only=False))
    q.cfg = model.cfg
    return q, {"source": str(path), "kind": "int8", "eot_id": meta.get("eot_id", 0), "quantized": SCHEME}
