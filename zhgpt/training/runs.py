"""Run folders and every folder zhgpt writes a model into: one home for their layout and for loading them.

    RUN/config.json          {"train": TrainConfig, "model": ModelConfig, "data": dataset summary}
    RUN/run.json             status, params, hardware, tokens seen, final metrics (kept up to date)
    RUN/metrics.jsonl        one record per logged step / evaluation
    RUN/samples.jsonl        one record per (evaluation, prompt)
    RUN/tb/                  TensorBoard events
    RUN/checkpoints/step_*/  see ``zhgpt.training.checkpoint``
    RUN/final/               Hugging Face model folder (``zhgpt.model.hf``)
    RUN/loss_curve.png, report.md, report.html   written by ``zhgpt report``

``resolve_model_path`` classifies any --model / --init-from path (a run, a checkpoint, an exported HF
folder or an int8 folder); ``load_model`` builds the GPT and tokenizer from it. Training (``--init-from``),
`zhgpt eval/generate/export`, the demo and the API all load through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from zhgpt.config import load_json
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.training.checkpoint import (CKPT_DIR, META, TOKENIZER, WEIGHTS, best_or_latest, list_checkpoints,
                                       load_weights)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, by name (nothing is created or read by building one)."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.json")
    info = property(lambda self: self.root / "run.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    samples = property(lambda self: self.root / "samples.jsonl")
    tensorboard = property(lambda self: self.root / "tb")
    checkpoints_dir = property(lambda self: self.root / CKPT_DIR)
    final = property(lambda self: self.root / "final")
    loss_curve = property(lambda self: self.root / "loss_curve.png")
    report_md = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")

    def is_run(self) -> bool:
        return self.checkpoints_dir.is_dir() or self.info.is_file()

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.root)

    def read_config(self) -> dict:
        return load_json(self.config)

    def read_info(self) -> dict:
        """run.json, or {} for a run that has not written one yet."""
        return load_json(self.info) if self.info.is_file() else {}


def find_run_dir(model_path) -> Path | None:
    """The run folder a --model path belongs to (a run, one of its checkpoints, or its final/ export)."""
    p = Path(model_path).resolve()
    candidates = [p, p.parent.parent if p.parent.name == CKPT_DIR else None,
                  p.parent if p.name == "final" else None]
    for cand in candidates:
        if cand is not None and RunFolder(cand).is_run():
            return cand
    return None


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
