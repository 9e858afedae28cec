"""`zhgpt sft`: the SFT stage (``zhgpt.training.sft``) followed by the run report, as `zhgpt train` is."""
from __future__ import annotations

import argparse
from pathlib import Path

from zhgpt.pipeline import write_report
from zhgpt.training import sft as stage


def sft(cfg: stage.SFTConfig, explicit: dict | None = None) -> Path:
    """`zhgpt sft` as a function: fine-tuning, then the report."""
    from zhgpt.training.train import main
    return main(cfg, explicit=explicit, on_finish=write_report, stage=stage.SFTStage())


def configure_parser(p: argparse.ArgumentParser) -> None:
    stage.configure_parser(p)


def run_cli(args) -> None:
    stage.run_cli(args, on_finish=write_report)
