"""The layout of a run folder and of its checkpoints: file names and `RunFolder`, nothing else.

No torch and no model code here, so readers of run folders (`zhgpt report`, the demo's run facts) start
in milliseconds; ``zhgpt.training.runs`` loads models from these folders and
``zhgpt.training.checkpoint`` writes and verifies the checkpoints.

    RUN/config.json          {"train": TrainConfig, "model": ModelConfig, "data": dataset summary}
    RUN/run.json             status, params, hardware, tokens seen, final metrics (kept up to date)
    RUN/metrics.jsonl        one record per logged step / evaluation
    RUN/samples.jsonl        one record per (evaluation, prompt)
    RUN/warnings.jsonl       health warnings: step, message ("<kind>: ...", ``zhgpt.training.health``)
    RUN/surprise.jsonl       per-character bits of one validation paragraph, per evaluation (``training.surprise``)
    RUN/probes.json          the probe set of the run: files, groups, items and chance per group (``training.probes``)
    RUN/tb/                  TensorBoard events
    RUN/checkpoints/step_NNNNNNN/   model.safetensors, optim.pt, meta.json, tokenizer/
    RUN/checkpoints/best     a text file naming the best checkpoint's folder
    RUN/final/               Hugging Face model folder (``zhgpt.model.hf``)
    RUN/loss_curve.png, reference_curve.png, report.md, report.html   written by ``zhgpt report``
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zhgpt.config import load_json

CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
OPTIM = "optim.pt"
META = "meta.json"
TOKENIZER = "tokenizer"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint folders, oldest first: exactly ``step_`` + digits, so neither a temp folder of a save that
    was killed (``.tmp-step_N.*``) nor the aside copy of a re-save (``step_N.old``) is ever picked up."""
    return sorted(p for p in (Path(run_dir) / CKPT_DIR).glob("step_*") if p.name[5:].isdigit() and p.is_dir())


def artifact_root() -> Path:
    """Where new run folders go: $ZHGPT_HOME, else the current folder."""
    return Path(os.environ.get("ZHGPT_HOME") or ".").resolve()


def cache_root() -> Path:
    """Where data prepared on the fly is cached: $ZHGPT_HOME/cache, else ~/.cache/zhgpt."""
    home = os.environ.get("ZHGPT_HOME")
    return Path(home).resolve() / "cache" if home else Path.home() / ".cache" / "zhgpt"



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
    warnings = property(lambda self: self.root / "warnings.jsonl")
    surprise = property(lambda self: self.root / "surprise.jsonl")
    probes = property(lambda self: self.root / "probes.json")
    reference_curve = property(lambda self: self.root / "reference_curve.png")
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
