"""The model a server answers for: its engine, the name clients use, its facts and its chat tokenizer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhgpt.apps.serve.chat import load_chat_tokenizer
from zhgpt.apps.serve.config import ServeConfig
from zhgpt.model.engine import Engine
from zhgpt.training.runs import tokenizer_dir_of


@dataclass
class ServedModel:
    engine: Engine
    name: str
    info: dict = field(default_factory=dict)
    chat_tokenizer: Any = None            # a transformers tokenizer with a chat template, or None
    created: int = field(default_factory=lambda: int(time.time()))


def default_model_name(model_path) -> str:
    """The folder's name; RUN/final (the export every run writes) is named after its run."""
    p = Path(model_path).resolve()
    return p.parent.name if p.name == "final" and (p.parent / "run.json").is_file() else p.name


def load_model(cfg: ServeConfig) -> ServedModel:
    cfg.require_model("serve")
    loaded = cfg.load()
    engine = loaded.engine
    info = {**loaded.info, "device": loaded.device, "dtype": cfg.dtype, "params": loaded.model.num_params()}
    return ServedModel(engine, cfg.model_name or default_model_name(cfg.model), info,
                       load_chat_tokenizer(tokenizer_dir_of(cfg.model)))


def serve_engine(cfg: ServeConfig, engine: Engine) -> ServedModel:
    """An engine built by the caller (tests, notebooks); cfg.model, if given, still names it and finds its
    chat template."""
    name = cfg.model_name or (default_model_name(cfg.model) if cfg.model else "zhgpt")
    return ServedModel(engine, name, {"params": engine.model.num_params()},
                       load_chat_tokenizer(tokenizer_dir_of(cfg.model)) if cfg.model else None)
