"""Faults during a checkpoint save: a full disk or a kill between writing and renaming leaves the previous
checkpoint intact, nothing half-written is ever resumed from, and the run stops with one line."""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.training import checkpoint as ck
from zhgpt.training.layout import list_checkpoints

CFG = dict(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32, tie_embeddings=True)

# Python run in a child process: SIGKILL itself at the rename that would complete checkpoint step 20.
KILL_AT_STEP_20_RENAME = textwrap.dedent("""
    import os, signal
    real = os.replace
    def replace(src, dst):
        if str(dst).endswith("step_0000020"):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    os.replace = replace
""")


def _save(run: Path, step: int, model: GPT, opt: torch.optim.Optimizer, tok: Path) -> Path:
    return ck.save_checkpoint(run, step, model, opt.state_dict(), {"step": step}, {"model": CFG}, tok, keep_last=5)


@pytest.fixture
def run_with_one_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CFG))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8)))[1].backward()
    opt.step()
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}", encoding="utf-8")
    run = tmp_path / "run"
    first = _save(run, 10, model, opt, tok)
    return run, first, model, opt, tok


def _intact(run: Path, first: Path) -> None:
    assert list_checkpoints(run) == [first] and ck.latest_good(run) == first and ck.verify(first) is None
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_disk_full_mid_write_keeps_the_previous_checkpoint(run_with_one_checkpoint, monkeypatch):
    run, first, model, opt, tok = run_with_one_checkpoint
    real_save = torch.save

    def full(obj, f, *a, **k):      # the weights are written, then the optimizer state hits a full disk
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(ZhgptError) as e:
        _save(run, 20, model, opt, tok)
    msg = str(e.value)
    assert "\n" not in msg and str(run / "checkpoints" / "step_0000020") in msg
    assert "No space left on device" in msg and "needs about" in msg and "MiB free" in msg
    assert "step_0000010 is intact" in msg and f"--resume {run}" in msg
    _intact(run, first)


def test_not_enough_free_space_stops_before_writing(run_with_one_checkpoint, monkeypatch):
    run, first, model, opt, tok = run_with_one_checkpoint
    need = ck.checkpoint_bytes(ck.state_dict_for_save(model.state_dict(), True), {"optimizer": opt.state_dict()}, tok)
    on_disk = sum(f.stat().st_size for f in (first / "model.safetensors", first / "optim.pt"))
    assert on_disk <= need < on_disk * 1.2 + 2 ** 17     # the estimate is what the files take, not a guess
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(ZhgptError, match=r"not enough free space.*has 0\.0 MiB"):
        _save(run, 20, model, opt, tok)
    _intact(run, first)


def test_an_error_that_is_not_the_disk_stays_a_bug(run_with_one_checkpoint, monkeypatch):
    run, first, model, opt, tok = run_with_one_checkpoint
    monkeypatch.setattr(ck.torch, "save", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _save(run, 20, model, opt, tok)
    _intact(run, first)


def test_killed_between_write_and_rename_resumes_from_the_previous_checkpoint(run_with_one_checkpoint):
    """SIGKILL at the rename of a complete step_20 (its meta.json written): the temp folder is never taken for a
    checkpoint, and the next save deletes it."""
    run, first, model, opt, tok = run_with_one_checkpoint
    code = KILL_AT_STEP_20_RENAME + textwrap.dedent(f"""
        import torch
        from zhgpt.model.gpt import GPT, ModelConfig
        from zhgpt.training import checkpoint as ck
        model = GPT(ModelConfig(**{CFG!r}))
        ck.save_checkpoint({str(run)!r}, 20, model, None, {{"step": 20}}, {{"model": {CFG!r}}}, {str(tok)!r})
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    temps = [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-step_0000020")]
    assert len(temps) == 1 and (temps[0] / "meta.json").is_file()      # complete, but never renamed
    assert list_checkpoints(run) == [first] and ck.latest_good(run) == first
    _save(run, 30, model, opt, tok)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in list_checkpoints(run)] == ["step_0000010", "step_0000030"]


def test_a_resave_killed_between_its_two_renames_gets_its_earlier_copy_back(run_with_one_checkpoint):
    run, first, model, opt, tok = run_with_one_checkpoint
    old = first.with_name(first.name + ".old")
    os.replace(first, old)                         # what a kill between the aside-move and the swap leaves
    assert list_checkpoints(run) == [] and ck.latest_good(run) is None
    _save(run, 20, model, opt, tok)
    assert [p.name for p in list_checkpoints(run)] == ["step_0000010", "step_0000020"]
    assert ck.verify(first) is None and not old.exists()


# ------------------------------------------------------------------------- end to end, `zhgpt train`

def _args(ds, out, steps):
    return ["train", "--data", str(ds), "--out", str(out), "--max-steps", str(steps), "--preset", "cpu-tiny",
            "--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--block-size", "64", "--batch-size", "8",
            "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "10", "--log-every", "1", "--sample-tokens", "4",
            "--eval-tokens", "2000", "--log", "none", "--no-report", "--no-export", "--seed", "3", "--keep-last", "5"]


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
def test_train_on_a_full_disk_stops_with_one_line_and_resumes(pd_dataset, tmp_path):
    """RLIMIT_FSIZE below a checkpoint's size (writes fail with EFBIG, as on a full disk): the save at step 20
    fails, exit 2 with one line naming the folder and the space needed; step 10 still loads, and --resume
    (with room again) replays steps 11-20 with the same losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    run_cli(*_args(pd_dataset, out, 10), env=env, check=True)
    limit = (out / "checkpoints" / "step_0000010" / "model.safetensors").stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    res = subprocess.run([sys.executable, "-m", "zhgpt", "train", "--resume", str(out), "--max-steps", "20"],
                         env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert res.returncode == 2, res.stderr[-2000:]
    err = [line for line in res.stderr.splitlines() if "step_0000020" in line]
    assert len(err) == 1 and "Traceback" not in res.stderr
    assert "File too large" in err[0] and "needs about" in err[0] and "step_0000010 is intact" in err[0]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000010"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    failed = _losses(out)[10:]
    assert [s for s, _ in failed] == list(range(11, 21))
    res = run_cli("train", "--resume", out, "--max-steps", 20, env=env, check=True)
    assert "resuming from" in res.stdout and "step_0000010" in res.stdout
    assert _losses(out)[10:] == failed and ck.latest_good(out).name == "step_0000020"


@pytest.mark.slow
def test_train_killed_at_the_rename_resumes_from_the_previous_checkpoint(pd_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    code = KILL_AT_STEP_20_RENAME + textwrap.dedent(f"""
        import sys
        from zhgpt.cli import main
        sys.exit(main({_args(pd_dataset, out, 20)!r}))
    """)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000010"]
    killed = _losses(out)[10:]
    assert [s for s, _ in killed] == list(range(11, 21))
    res = run_cli("train", "--resume", out, env=env, check=True)
    assert "resuming from" in res.stdout and "step_0000010" in res.stdout
    assert _losses(out)[10:] == killed     # the killed run's steps 11-20 are dropped from the log and redone
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
