"""bench/gpu_check.py --dry-run: the GPU check's whole matrix on a CPU with a tiny model, so it keeps working
until the day a GPU is lent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_covers_every_configuration(pd_dataset, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--data", str(pd_dataset),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    configs = out["configs"]
    assert len(configs) == 7
    for name in ("bf16 eager", "bf16 + grad checkpointing", "bf16 + FSDP, 1 process"):     # run on the CPU
        assert configs[name]["status"] == "ok", configs[name]
        assert 0 < configs[name]["mfu"] < 1 and configs[name]["tokens_per_sec"] > 0
        assert configs[name]["predicted"]["memory_mb"] > 0
    for name in ("bf16 + compile", "fp16 + GradScaler", "bf16 + liger", "bf16 + adamw8bit"):   # CUDA only
        assert configs[name]["status"].startswith(("skipped", "unavailable")), configs[name]
    assert out["hf"]["status"] == "ok" and out["hf"]["tokens_per_sec"] > 0
    assert out["attention"]["forced_flash"] == "ok" and out["attention"]["picked"] in ("flash", "mem-efficient", "math")
    assert out["resume"]["identical"] is True and 0 < out["resume"]["stopped_after"] < 12
    md = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert md.startswith("## GPU check") and "| bf16 + compile | skipped (no CUDA) |" in md and md in res.stdout
