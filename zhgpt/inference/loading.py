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
from zhgpt.model.gpt import ROPE_SCALINGS
from zhgpt.training.runs import load_for_inference


@dataclass
class ModelOptions:
    """Which model to load and how to run it: the fields every stage that uses a trained model shares
    (`zhgpt generate`, `zhgpt eval`, `zhgpt demo`, `zhgpt serve`); their configs inherit them."""
    model: str = opt("", "run folder, checkpoint folder, exported Hugging Face folder or int8 folder")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt("fp32", "inference precision", choices=DTYPE_NAMES)
    rope_scaling: str = opt("none", "RoPE scaling for prompts longer than the trained context: none or yarn "
                            "(llama models)", choices=ROPE_SCALINGS)
    rope_factor: float = opt(1.0, "YaRN: run at this many times the trained context (> 1, e.g. 4)")
    context: int = opt(0, "run at this many tokens of context, positions as trained (0 = the trained context); "
                          "longer is plain RoPE extrapolation, the baseline YaRN is measured against (llama "
                          "models; GPT-2's learned positions only allow shorter)")

    def require_model(self, command: str) -> None:
        if not self.model:
            raise ZhgptError(f"zhgpt {command} needs --model (a run folder such as runs/20260101-120000, a "
                             "checkpoint folder or an exported model folder)")

    def context_options(self) -> dict:
        """``load_engine``'s rope_factor and context, checked. Checked here, not in __post_init__: the stage
        configs inheriting these fields have their own."""
        if self.rope_scaling == "yarn" and not self.rope_factor > 1:
            raise ZhgptError(f"--rope-factor must be > 1 with --rope-scaling yarn, got {self.rope_factor:g}; "
                             "e.g. 4 for four times the trained context")
        if self.rope_scaling == "none" and self.rope_factor != 1.0:
            raise ZhgptError("--rope-factor needs --rope-scaling yarn")
        if self.context < 0:
            raise ZhgptError(f"--context must be >= 0 tokens (0 = the trained context), got {self.context}")
        if self.context and self.rope_scaling == "yarn":
            raise ZhgptError("--context runs the model with its positions as trained; with --rope-scaling yarn "
                             "the context is the trained one times --rope-factor: pass one of the two")
        return {"rope_factor": self.rope_factor if self.rope_scaling == "yarn" else None, "context": self.context}

    def load(self, path=None) -> "LoadedModel":
        """The model (or ``path``, e.g. another checkpoint of its run) with these options."""
        return load_engine(path or self.model, self.device, self.dtype, **self.context_options())


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


def load_engine(path, device: str = "auto", dtype: str | torch.dtype = "fp32",
                rope_factor: float | None = None, context: int = 0) -> LoadedModel:
    """A run, checkpoint, Hugging Face or int8 folder -> LoadedModel on ``device`` ('auto' picks one)."""
    device = resolve_device(device)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model, tok, info = load_for_inference(path, device, dtype)
    adapt_context(model, rope_factor, context)
    return LoadedModel(Engine(model, tok, eot_id=info.get("eot_id", 0)), info, device, dtype, Path(path))


def adapt_context(model, rope_factor: float | None = None, context: int = 0):
    """``rope_factor``: YaRN-extend the model's context by that factor; ``context``: run it at that many
    tokens with its positions as they are (plain RoPE extrapolation when longer). In place."""
    if rope_factor:
        model.extend_context(rope_factor)
    if context:
        model.set_context(context)
    return model
