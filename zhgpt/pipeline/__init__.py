"""Stages composed into the commands users run: `zhgpt train` is the training stage followed by the run
report (``--report``, on by default).

The report is downstream of training (it reads the run folder training wrote), so training never imports
it: training takes an ``on_finish`` callback and this module, which sits above every stage like the CLI,
passes the report as that callback.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhgpt.training.train import TrainConfig
from zhgpt.training import train as training


def write_report(run_dir: Path, cfg: TrainConfig) -> None:
    """End of a run: loss_curve.png, report.md and report.html in the run folder (when --report)."""
    if cfg.report:
        from zhgpt.report.report import ReportConfig, main as report_main
        report_main(ReportConfig(runs=[str(run_dir)]))


def train(cfg: TrainConfig, model_overrides: dict | None = None, explicit: dict | None = None) -> Path:
    """`zhgpt train` as a function: the training stage, then the report."""
    return training.main(cfg, model_overrides=model_overrides, explicit=explicit, on_finish=write_report)


def configure_parser(p: argparse.ArgumentParser) -> None:
    training.configure_parser(p)


def run_cli(args) -> None:
    training.run_cli(args, on_finish=write_report)
