"""Preemption under torchrun: SIGTERM to the launcher (what a provider stopping the machine sends to its main
process) stops both ranks after the same step with one checkpoint, and --resume with 2 ranks again reproduces
the uninterrupted 2-rank run's losses bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def _args(ds, out, steps):
    return ["--data", str(ds), "--out", str(out), "--max-steps", str(steps), "--preset", "cpu-tiny", "--n-layer", "2",
            "--n-head", "4", "--n-embd", "64", "--block-size", "64", "--batch-size", "8", "--lr", "3e-3",
            "--warmup-steps", "5", "--eval-every", "1000", "--log-every", "1", "--sample-tokens", "4",
            "--eval-tokens", "2000", "--logger", "none", "--no-report", "--no-export", "--seed", "3", "--dtype", "fp32"]


def _torchrun(*args):
    # --standalone: a local rendezvous on a free loopback port.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zhgpt",
            "train", *args]


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_both_ranks_and_resume_is_exact(pd_dataset, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    res = subprocess.run(_torchrun(*_args(pd_dataset, ref, 24)), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = subprocess.Popen(_torchrun(*_args(pd_dataset, stopped, 24)), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        m = stopped / "metrics.jsonl"
        if m.is_file() and max(_losses(stopped), default=0) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)      # to torchrun only: it forwards the signal to both workers
    out, err = proc.communicate(timeout=120)
    last = max(_losses(stopped))
    assert 8 <= last < 24, err[-3000:]
    assert [c.name for c in (stopped / "checkpoints").glob("step_*")] == [f"step_{last:07d}"], err[-3000:]
    assert f"SIGTERM: stopped after step {last}" in out
    assert json.loads((stopped / "run.json").read_text())["status"] == "preempted"
    res = subprocess.run(_torchrun("--resume", str(stopped)), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _losses(ref) == _losses(stopped) and sorted(_losses(stopped)) == list(range(1, 25))
