"""`zhgpt report RUN [RUN...] [--compare] [--log-x]`: watch a model learn.

For each run folder (see docs/DESIGN.md, "Run folder") this writes

- ``loss_curve.png``: train loss (raw, light, and a debiased EMA) and val loss against steps, with tokens
  seen on the top axis and stars where samples were taken; below, val bits per character and the
  learning rate;
- ``report.md`` and a self-contained ``report.html`` (inline CSS, the PNG as a data URI: one file to
  e-mail or open from disk): run summary, a loss table at ~8 log-spaced evaluations, and the
  **sample evolution** table: what the model wrote for each prompt at each evaluation.

``--compare`` overlays several runs instead: ``compare.png`` (val BPC and loss by tokens seen and by wall
time) and ``compare.md``/``compare.html`` with one row per run.

The modules: ``runs`` (reading a run folder, summary numbers), ``evolution`` (loss table, stage labels,
sample evolution; the stage rule is documented there), ``plots`` (the PNGs), ``render`` (Markdown and
HTML); this one holds the command.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zhgpt.config import add_args, from_args, opt, print_config
from zhgpt.core.files import atomic_write_bytes, atomic_write_text
from zhgpt.errors import ZhgptError
from zhgpt.report.evolution import (EVOLUTION_ROWS, STAGES, evolution, loss_table, pick_steps, stage_label,
                                    text_features)
from zhgpt.report.experts import PNG_NAME as EXPERTS_PNG, experts_png
from zhgpt.report.plots import plot_compare, plot_run
from zhgpt.report.probes import PNG_NAME as PROBES_PNG, probes_png
from zhgpt.report.reference import reference_png
from zhgpt.report.render import (compare_rows, render_compare_html, render_compare_md, render_html, render_md,
                                 summary_rows)
from zhgpt.report.runs import Run, load_run
from zhgpt.training.layout import RunFolder

# What the CLI, zhgpt.pipeline, the tests and the benches import from here.
__all__ = ["EVOLUTION_ROWS", "STAGES", "ReportConfig", "Run", "configure_parser", "evolution", "load_run", "main",
           "pick_steps", "plot_run", "run_cli", "stage_label", "text_features", "write_compare", "write_report"]


@dataclass
class ReportConfig:
    runs: list[str] = opt(help="run folder(s) written by `zhgpt train`", positional=True)
    compare: bool = opt(False, "overlay the runs in one compare.png / compare.md / compare.html")
    log_x: bool = opt(False, "logarithmic step and token axes (shows the first minutes of learning)")
    out: str | None = opt(None, "folder for --compare output (default: <first run's parent>/compare-<time>)")
    steps: list[int] | None = opt(None, "steps for the loss table, rounded to the nearest evaluation "
                                  "(default: ~8 log-spaced evaluations)")

    def __post_init__(self):
        if isinstance(self.runs, (str, os.PathLike)):
            self.runs = [self.runs]
        self.runs = [str(r) for r in (self.runs or [])]
        if not self.runs:
            raise ZhgptError("no run folder given; usage: zhgpt report RUN [RUN...]")
        if self.compare and len(self.runs) < 2:
            raise ZhgptError("--compare needs at least two run folders")
        if self.steps is not None and any(s < 0 for s in self.steps):
            raise ZhgptError(f"--steps must be non-negative, got {self.steps}")


def write_report(run: Run, log_x: bool = False, steps: list[int] | None = None) -> list[Path]:
    png = plot_run(run, log_x)
    rows, table, evo = summary_rows(run), loss_table(run, steps), evolution(run)
    rf = RunFolder(run.path)
    paths = [rf.loss_curve, rf.report_md, rf.report_html]
    atomic_write_bytes(paths[0], png)   # a reader (or a browser refresh) never sees half a PNG
    atomic_write_text(paths[1], render_md(run, rows, table, evo))
    atomic_write_text(paths[2], render_html(run, rows, table, evo, png))
    moe_png = experts_png(run)     # None for a dense model
    if moe_png:
        atomic_write_bytes(run.path / EXPERTS_PNG, moe_png)
        paths.append(run.path / EXPERTS_PNG)
    probe_png = probes_png(run)    # None for a run without probe metrics
    if probe_png:
        atomic_write_bytes(run.path / PROBES_PNG, probe_png)
        paths.append(run.path / PROBES_PNG)
    ref_png = reference_png(run)   # None where no reference curve is shipped for the run's preset
    if ref_png:
        atomic_write_bytes(rf.reference_curve, ref_png)
        paths.append(rf.reference_curve)
    return paths


def _labels(runs: list[Run]) -> list[str]:
    """Folder names, with the parent added where two runs share a name (runs/a/x vs runs/b/x)."""
    names = [r.name for r in runs]
    return [f"{r.path.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def write_compare(runs: list[Run], out: Path, log_x: bool = False) -> list[Path]:
    labels = _labels(runs)
    png = plot_compare(runs, labels, log_x)
    rows = compare_rows(runs, labels)
    paths = [out / "compare.png", out / "compare.md", out / "compare.html"]
    atomic_write_bytes(paths[0], png)
    atomic_write_text(paths[1], render_compare_md(runs, rows))
    atomic_write_text(paths[2], render_compare_html(runs, labels, rows, png))
    return paths


def main(cfg: ReportConfig) -> list[Path]:
    """Write the reports (or the comparison) and return the files written."""
    runs = [load_run(r) for r in cfg.runs]   # load all first: a bad folder fails before anything is written
    for run in runs:
        for n in run.notes:
            print(f"zhgpt: note: {run.name}: {n}", file=sys.stderr)
    if cfg.compare:
        out = Path(cfg.out) if cfg.out else runs[0].path.resolve().parent / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        return write_compare(runs, out, cfg.log_x)
    written: list[Path] = []
    for run in runs:
        written += write_report(run, cfg.log_x, cfg.steps)
    return written


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ReportConfig)


def run_cli(args) -> None:
    cfg = from_args(ReportConfig, args)
    print_config(cfg)
    for path in main(cfg):
        print(f"wrote {path}")
