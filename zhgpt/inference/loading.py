"""Load a model for use: the one "resolve the device, load the weights, build the engine" sequence that
`zhgpt generate`, `zhgpt eval`, the demo and the API share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhgpt.config import opt
from zhgpt.core.device import DTYPE_NAMES, DTYPES, resolve_device
from zhgpt.errors import ZhgptError
from zhgpt.model.engine import Engine
from zhgpt.training.runs import load_for_inference


@dataclass
class ModelOptions:
    """Which model to load and how to run it: the fields every stage that uses a trained model shares
    (`zhgpt generate`, `zhgpt eval`, `zhgpt demo`, `zhgpt serve`); their configs inherit them."""
    model: str = opt("", "run folder, checkpoint folder, exported Hugging Face folder or int8 folder")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt("fp32", "inference precision", choices=DTYPE_NAMES)

    def require_model(self, command: str) -> None:
        if not self.model:
            raise ZhgptError(f"zhgpt {command} needs --model (a run folder such as runs/20260101-120000, a "
                             "checkpoint folder or an exported model folder)")

    def load(self) -> "LoadedModel":
        return load_engine(self.model, self.device, self.dtype)


@dataclass
class LoadedModel:
    """A model ready to generate: its engine (model + tokenizer), where it came from and how it runs."""
    engine: Engine
    info: dict = field(default_factory=dict)   # source, kind (checkpoint/hf/int8), step, metrics, eot_id
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    path: Path | None = None

    @property
    def model(self):
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer


def load_engine(path, device: str = "auto", dtype: str | torch.dtype = "fp32") -> LoadedModel:
    """A run, checkpoint, Hugging Face or int8 folder -> LoadedModel on ``device`` ('auto' picks one)."""
    device = resolve_device(device)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model, tok, info = load_for_inference(path, device, dtype)
    return LoadedModel(Engine(model, tok, eot_id=info.get("eot_id", 0)), info, device, dtype, Path(path))
