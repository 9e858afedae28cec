"""`zhgpt dpo`: the DPO stage (``zhgpt.training.dpo``) followed by the run report."""
from __future__ import annotations

import argparse
from pathlib import Path

from zhgpt.pipeline import write_report
from zhgpt.training import dpo as stage


def dpo(cfg: stage.DPOConfig, explicit: dict | None = None) -> Path:
    """`zhgpt dpo` as a function: preference optimisation, then the report."""
    from zhgpt.training.train import main
    return main(cfg, explicit=explicit, on_finish=write_report, stage=stage.DPOStage())


def configure_parser(p: argparse.ArgumentParser) -> None:
    stage.configure_parser(p)


def run_cli(args) -> None:
    stage.run_cli(args, on_finish=write_report)
