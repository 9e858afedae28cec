"""Metric loggers: TensorBoard (default), Weights & Biases, trackio, or nothing.

The training loop calls one object and never asks which backend is behind it::

    logger = make_logger(cfg.log, run_dir, config, enabled=rank == 0)
    logger.log_scalars(step, {"loss": 3.2, "lr": 6e-4, "tokens_per_sec": 41000})
    logger.log_text(step, "samples/今天天气", "今天天气很好，...")
    logger.close()

The loop passes the flat keys it also writes to metrics.jsonl; ``metric_name`` maps them to grouped
dashboard names (``loss`` -> ``train/loss``, ``val_bpc`` -> ``val/bpc``) so TensorBoard shows one panel
per group. Non-zero DDP ranks get the no-op ``Logger`` (``enabled=False``), so only rank 0 writes.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

from zhgpt.errors import ZhgptError

BACKENDS = ("tensorboard", "wandb", "trackio", "none")

# Flat metrics.jsonl keys -> dashboard names. Keys not listed go under train/ (the loop's own extras).
METRIC_NAMES = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "val_loss": "val/loss",
    "val_bpc": "val/bpc",
    "val_ppl": "val/ppl",
    "tokens_per_sec": "perf/tokens_per_sec",
    "memory_mb": "perf/memory_mb",
    "tokens_seen": "perf/tokens_seen",
    "elapsed_s": "perf/elapsed_s",
    "eta_s": "perf/eta_s",
    "mfu": "perf/mfu",
}
# Keys that are the x axis or bookkeeping, not curves.
SKIP_KEYS = {"step", "time", "timestamp"}


def metric_name(key: str) -> str:
    """Dashboard name of a flat key; names that already have a group ("val/loss") are kept."""
    if "/" in key:
        return key
    return METRIC_NAMES.get(key, f"train/{key}")


def named_scalars(scalars: dict) -> dict[str, float]:
    """Grouped names -> floats. Drops the x-axis keys, None, strings and bools, so the loop can pass
    its whole metrics.jsonl record; numpy/torch scalars are converted."""
    out = {}
    for k, v in scalars.items():
        if k in SKIP_KEYS or v is None or isinstance(v, (bool, str)):
            continue
        try:
            out[metric_name(k)] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            continue
    return out


def sample_tag(prompt: str) -> str:
    """Text tag for a prompt's samples: "samples/<prompt>", shortened (TensorBoard lists tags in a narrow
    column) and without "/" (which would nest it one group deeper)."""
    short = prompt.strip().replace("/", "／").replace("\n", " ")
    return "samples/" + (short[:24] + "…" if len(short) > 24 else short or "(empty prompt)")


def _import_optional(module: str, backend: str, pip_name: str | None = None):
    """Import an optional backend package or tell the user how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ZhgptError(f"--log {backend} needs the {pip_name or module} package: "
                         f"pip install {pip_name or module}") from None


class Logger:
    """The no-op logger: what non-zero ranks and `--log none` get. Backends override every method."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_text(self, step: int, tag: str, text: str) -> None:
        pass

    def log_config(self, config: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TensorBoardLogger(Logger):
    """Event files in RUN/tb/ (`tensorboard --logdir RUN/tb`)."""

    def __init__(self, run_dir, config: dict | None = None):
        tb = _import_optional("torch.utils.tensorboard", "tensorboard", "tensorboard")
        # flush_secs=30 instead of 120: a 10-minute CPU run should show up in TensorBoard while it trains.
        self.writer = tb.SummaryWriter(log_dir=str(Path(run_dir) / "tb"), flush_secs=30)
        if config:
            self.log_config(config)

    def log_scalars(self, step, scalars):
        for name, value in named_scalars(scalars).items():
            if math.isfinite(value):   # a NaN loss would flatten the whole chart's y-range
                self.writer.add_scalar(name, value, step)

    def log_text(self, step, tag, text):
        # TensorBoard renders text as Markdown; a 4-space indent makes it a code block, so model output
        # such as "*" or "#" is shown as written.
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def log_config(self, config):
        import json
        body = json.dumps(config, ensure_ascii=False, indent=2, default=str)
        self.writer.add_text("config", "    " + body.replace("\n", "\n    "), 0)

    def close(self):
        self.writer.flush()
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases, offline unless an API key is available (no network needed to train)."""

    def __init__(self, run_dir, config: dict | None = None):
        self.wandb = _import_optional("wandb", "wandb")
        mode = os.environ.get("WANDB_MODE")
        if not mode:
            if os.environ.get("WANDB_API_KEY"):
                mode = "online"
            else:
                mode = "offline"
                print(f"zhgpt: wandb: WANDB_API_KEY is not set, logging offline to {Path(run_dir) / 'wandb'}; "
                      "upload later with `wandb sync` or set WANDB_MODE=online", file=sys.stderr)
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "zhgpt"), dir=str(run_dir),
                                   name=Path(run_dir).name, config=config or {}, mode=mode)
        self._tables: dict[str, list] = {}

    def log_scalars(self, step, scalars):
        self.run.log(named_scalars(scalars), step=step)

    def log_text(self, step, tag, text):
        # W&B has no text-over-time panel; a table that grows by one row per evaluation is the idiom.
        rows = self._tables.setdefault(tag, [])
        rows.append([step, text])
        self.run.log({tag: self.wandb.Table(columns=["step", "text"], data=list(rows))}, step=step)

    def log_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def close(self):
        self.run.finish()


class TrackioLogger(Logger):
    """trackio (Hugging Face's local-first W&B-compatible tracker); stores under ~/.cache unless a Space is set."""

    def __init__(self, run_dir, config: dict | None = None):
        self.trackio = _import_optional("trackio", "trackio")
        self.run = self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "zhgpt"), name=Path(run_dir).name,
                                     config=config or {})

    def log_scalars(self, step, scalars):
        self.trackio.log(named_scalars(scalars), step=step)

    def log_text(self, step, tag, text):
        # trackio's dashboard plots numbers only; samples stay in RUN/samples.jsonl and the report.
        pass

    def close(self):
        self.trackio.finish()


class FanoutLogger(Logger):
    """Several backends at once (`--log tensorboard wandb`)."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log_scalars(self, step, scalars):
        for lg in self.loggers:
            lg.log_scalars(step, scalars)

    def log_text(self, step, tag, text):
        for lg in self.loggers:
            lg.log_text(step, tag, text)

    def log_config(self, config):
        for lg in self.loggers:
            lg.log_config(config)

    def close(self):
        for lg in self.loggers:
            lg.close()


_CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "trackio": TrackioLogger}


def parse_backends(backends) -> list[str]:
    """["tensorboard", "wandb"], "tensorboard,wandb" or "none" -> validated, de-duplicated names."""
    if backends is None:
        return ["tensorboard"]
    if isinstance(backends, str):
        backends = [backends]
    names: list[str] = []
    for item in backends:
        for name in str(item).replace(",", " ").split():
            name = name.strip().lower()
            if name not in BACKENDS:
                raise ZhgptError(f"unknown --log backend {name!r}; choose from {', '.join(BACKENDS)}")
            if name != "none" and name not in names:
                names.append(name)
    return names


def make_logger(backends, run_dir, config: dict, *, enabled: bool = True) -> Logger:
    """The logger for a run. ``enabled=False`` (DDP ranks other than 0) or no backend -> no-op."""
    names = parse_backends(backends)
    if not enabled or not names:
        return Logger()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = []
    try:
        for name in names:
            loggers.append(_CLASSES[name](run_dir, config))
    except BaseException:
        for lg in loggers:   # do not leave a half-started W&B run behind a missing trackio
            lg.close()
        raise
    return loggers[0] if len(loggers) == 1 else FanoutLogger(loggers)
