"""`zhgpt train` end to end on real Chinese text: learning, run folder, exact resume, bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_TRAIN, run_cli
from zhgpt.errors import ZhgptError
from zhgpt.training.train import TrainConfig, lr_at, main


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_tiny_model_learns_and_writes_a_complete_run_folder(trained_run):
    run = Path(trained_run)
    metrics = read_jsonl(run / "metrics.jsonl")
    evals = [m for m in metrics if "val_loss" in m]
    steps = [m for m in metrics if "loss" in m]
    assert [e["step"] for e in evals] == [0, 20, 40, 60]
    # Real learning on real text: val loss falls well below the uniform-guess start (~ln 3000 = 8.0).
    assert evals[0]["val_loss"] > 7.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert evals[-1]["val_bpc"] == pytest.approx(evals[-1]["val_loss"] / math.log(2), rel=0.05)  # char-level: ~1 char/token
    for key in ("step", "loss", "lr", "tokens_per_sec", "elapsed_s", "tokens_seen", "grad_norm"):
        assert key in steps[-1]
    assert {"val_loss", "val_bpc", "val_ppl"} <= set(evals[-1])
    samples = read_jsonl(run / "samples.jsonl")
    assert {s["prompt"] for s in samples} == {"中国的历史", "人工智能是", "今天天气", "教育的目的", "在科学研究中"}
    assert {s["step"] for s in samples} == {0, 20, 40, 60}
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 60
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 2 and cfg["train"]["max_steps"] == 60
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_0000060"
    meta = json.loads((run / "checkpoints" / "step_0000060" / "meta.json").read_text())
    assert meta["step"] == 60 and meta["files"]["model.safetensors"]["sha256"]
    assert (run / "final" / "config.json").is_file()
    # What a person opens: the report with curves and the sample evolution, and TensorBoard events.
    for name in ("loss_curve.png", "report.md", "report.html"):
        assert (run / name).stat().st_size > 1000, name
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "人工智能是" in html and "data:image/png;base64" in html
    tags = _tensorboard_tags(run)
    assert {"train/loss", "val/bpc"} <= set(tags["scalars"])
    assert any(t.startswith("samples/") for t in tags["tensors"])


def _tensorboard_tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(Path(run) / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags()


def test_sample_tags_are_escaped_for_tensorboard(pd_dataset, tmp_path):
    """Training names each prompt's samples with logger.sample_tag: a "/" in a prompt must not nest the
    tag one group deeper, and a long prompt is shortened for TensorBoard's tag column."""
    from zhgpt.training.logger import sample_tag
    prompt = "城市/乡村：一段很长很长很长很长很长很长很长的提示词"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(prompt + "\n今天天气\n", encoding="utf-8")
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "run"), max_steps=1, preset="cpu-tiny",
                      sample_prompts=str(prompts), **{**TINY_TRAIN, "log": ["tensorboard"], "export": False})
    run = main(cfg, model_overrides=dict(TINY))
    # add_text stores a tag T as the tensor "T/text_summary"
    tags = {t.removesuffix("/text_summary") for t in _tensorboard_tags(run)["tensors"] if t.startswith("samples/")}
    assert tags == {sample_tag(prompt), "samples/今天天气"}
    assert sample_tag(prompt) == "samples/城市／乡村：一段很长很长很长很长很长很长很长的提…"
    assert {s["prompt"] for s in read_jsonl(Path(run) / "samples.jsonl")} == {prompt, "今天天气"}


def test_the_loop_trains_on_any_batch_source_and_loss(pd_dataset, tmp_path):
    """The seam SFT and DPO build on: the same set-up and loop, with the Trainer's batches and loss swapped
    (here dict batches whose first half of targets is masked, as an SFT source masks the prompt)."""
    from zhgpt.training.config import resolve_run_config
    from zhgpt.training.distributed import Dist
    from zhgpt.training.loop import train
    from zhgpt.training.setup import setup
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "run"), max_steps=3, preset="cpu-tiny",
                      **{**TINY_TRAIN, "eval_every": 100, "export": False})
    cfg, model_fields, preset = resolve_run_config(cfg, None, dict(TINY), "cpu")
    tr = setup(cfg, model_fields, preset, Dist("cpu"), tokenizer_asked=True)
    lm_batches, seen = tr.batches, []

    class MaskedBatches:
        def step_batches(self, step):
            for x, y in lm_batches.step_batches(step):
                y = y.clone()
                y[:, :y.shape[1] // 2] = -1
                seen.append((step, x.shape))
                yield {"input_ids": x, "labels": y}

    tr.batches = MaskedBatches()
    tr.loss_fn = lambda model, batch: model(batch["input_ids"], batch["labels"])[1]
    run = train(tr)
    assert seen == [(s, (TINY_TRAIN["batch_size"], TINY["block_size"])) for s in range(3)]
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    assert json.loads((Path(run) / "run.json").read_text())["status"] == "completed"


def test_max_epochs_counts_the_real_training_tokens(pd_dataset, tmp_path):
    """--max-epochs ends the run after that many passes of the split's own tokens, the first limit winning."""
    from zhgpt.data.shards import TokenDataset
    from zhgpt.training.config import resolve_run_config
    from zhgpt.training.distributed import Dist
    from zhgpt.training.setup import setup
    train_tokens = TokenDataset(pd_dataset).split("train").tokens
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "run"), preset="cpu-tiny", max_epochs=0.5,
                      **{**TINY_TRAIN, "eval_every": 100, "export": False})
    cfg, model_fields, preset = resolve_run_config(cfg, None, dict(TINY), "cpu")
    tr = setup(cfg, model_fields, preset, Dist("cpu"), tokenizer_asked=True)
    per_step = 8 * 64
    assert tr.limits.max_steps == math.ceil(0.5 * train_tokens / per_step) > 10
    assert not tr.limits.max_tokens                           # no 20-tokens-per-parameter default on top
    both = setup(dataclasses.replace(cfg, max_steps=10), model_fields, preset, Dist("cpu"), tokenizer_asked=True)
    assert both.limits.max_steps == 10



def test_schedule_warms_up_then_anneals_to_min():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, max_steps=100)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 0.09) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55e-3)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(1e-4)
    wsd = TrainConfig(lr=1e-3, warmup_steps=0, schedule="wsd", decay_frac=0.2)
    assert lr_at(wsd, 50, 0.5) == 1e-3 and lr_at(wsd, 90, 0.9) == pytest.approx(0.55e-3)


def _train_args(ds, out, steps, extra=()):
    args = ["train", "--data", ds, "--out", out, "--max-steps", steps, "--preset", "cpu-tiny",
            "--n-layer", 2, "--n-head", 4, "--n-embd", 64, "--block-size", 64, "--batch-size", 8, "--lr", 3e-3,
            "--warmup-steps", 5, "--eval-every", 10, "--log-every", 1, "--sample-tokens", 4, "--eval-tokens", 2000,
            "--log", "none", "--no-report", "--no-export", "--seed", 3, *extra]
    return [str(a) for a in args]


def _losses(run):
    return {m["step"]: m["loss"] for m in read_jsonl(Path(run) / "metrics.jsonl") if "loss" in m}


@pytest.mark.slow
def test_save_every_minutes_checkpoints_between_evaluations(pd_dataset, tmp_path):
    out = tmp_path / "timed"
    run_cli(*_train_args(pd_dataset, out, 12, ["--eval-every", "1000", "--save-every-minutes", "0.0001",
                                              "--keep-last", "100"]), check=True)
    steps = sorted(int(c.name.split("_")[1]) for c in (out / "checkpoints").glob("step_*"))
    assert len(steps) >= 6 and steps[-1] == 12     # a step-based save would have come only at the end


@pytest.mark.slow
def test_every_logged_step_has_an_mfu_from_the_measured_peak(trained_run, zhgpt_home):
    rows = [m for m in read_jsonl(Path(trained_run) / "metrics.jsonl") if "loss" in m]
    assert rows and all(0 < m["mfu"] < 1 for m in rows)
    peaks = json.loads((zhgpt_home / "cache" / "peak_flops.json").read_text())
    assert peaks and all(1e9 < v < 1e16 for v in peaks.values())      # measured once, cached per machine
    assert "MFU" in (Path(trained_run) / "report.md").read_text(encoding="utf-8")


def test_a_second_sigterm_exits_at_once():
    # The same signal twice at once (torchrun forwarding a group-wide SIGTERM) is one request; a later one exits.
    code = ("import os, signal, time\nfrom zhgpt.training.loop import Preemption\np = Preemption()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\nos.kill(os.getpid(), signal.SIGTERM)\n"
            "print('first', p.signum, flush=True)\ntime.sleep(1.2)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\nprint('not reached')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["first", str(int(signal.SIGTERM))] and res.returncode == 128 + signal.SIGTERM


@pytest.mark.slow
def test_sigterm_saves_the_step_it_stopped_at_and_resume_is_exact(pd_dataset, tmp_path):
    """A provider's SIGTERM with no periodic checkpoints (--eval-every beyond the run): exit 0, a checkpoint at
    the step it stopped after, the resume command, and after --resume the uninterrupted run's losses bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    no_saves = ["--eval-every", "1000"]
    subprocess.run([sys.executable, "-m", "zhgpt", *_train_args(pd_dataset, ref, 30, no_saves)], env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "zhgpt", *_train_args(pd_dataset, stopped, 30, no_saves)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        m = stopped / "metrics.jsonl"
        if m.is_file() and any(r.get("step") == 12 and "loss" in r for r in read_jsonl(m)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    last = max(_losses(stopped))
    assert 12 <= last < 30
    assert [c.name for c in (stopped / "checkpoints").glob("step_*")] == [f"step_{last:07d}"]
    assert f"SIGTERM: stopped after step {last}" in out and f"zhgpt train --resume {stopped}" in out
    assert json.loads((stopped / "run.json").read_text())["status"] == "preempted"
    res = subprocess.run([sys.executable, "-m", "zhgpt", "train", "--resume", str(stopped)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _losses(ref) == _losses(stopped) and sorted(_losses(stopped)) == list(range(1, 31))


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_uninterrupted_run_bitwise(pd_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # same thread count in every process: bitwise equality
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    subprocess.run([sys.executable, "-m", "zhgpt", *_train_args(pd_dataset, ref, 30)], env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "zhgpt", *_train_args(pd_dataset, crashed, 30)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Kill it at an arbitrary point after the step-10 checkpoint, mid-way through steps 11..19.
    while time.time() < deadline:
        m = crashed / "metrics.jsonl"
        if m.is_file() and any(r.get("step") == 14 and "loss" in r for r in read_jsonl(m)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 14 <= max(_losses(crashed)) < 30
    res = subprocess.run([sys.executable, "-m", "zhgpt", "train", "--resume", str(crashed)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout
    a, b = _losses(ref), _losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    assert a == b     # bitwise: the same floats, not approximately
    # the surprise map: the killed run's record at the resumed step is dropped and redone, none repeated
    surprise = lambda run: read_jsonl(Path(run) / "surprise.jsonl")
    assert [r["step"] for r in surprise(crashed)] == [0, 10, 20, 30] and surprise(crashed) == surprise(ref)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_previous(pd_dataset, tmp_path):
    out = tmp_path / "run"
    run_cli(*_train_args(pd_dataset, out, 20, ["--keep-last", "3"]), check=True)
    latest = out / "checkpoints" / "step_0000020" / "model.safetensors"
    with open(latest, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 64)
    res = run_cli("train", "--resume", out, "--max-steps", 22, check=True)
    assert "damaged" in res.stderr and "step_0000020" in res.stderr
    assert "resuming from" in res.stdout and "step_0000010" in res.stdout


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(pd_dataset, tmp_path):
    out = tmp_path / "run"
    # -X faulthandler: if the run does not stop, SIGABRT makes it print every thread's stack for the failure
    cmd = [sys.executable, "-X", "faulthandler", "-m", "zhgpt", *_train_args(pd_dataset, out, 100000)]
    # A suite started as a background job (`pytest &` without job control) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: the run must get Ctrl-C as a terminal would deliver it.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline:
        m = out / "metrics.jsonl"
        if m.is_file() and any(r.get("step") == 13 for r in read_jsonl(m)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out_text, err = proc.communicate(timeout=60)
        pytest.fail(f"no exit 120 s after SIGINT; last output: {out_text[-500:]}\nstacks: {err[-4000:]}")
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert saved and int(saved[-1].name.split("_")[1]) >= 13


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(pd_dataset, tmp_path):
    res = run_cli(*_train_args(pd_dataset, tmp_path / "run", 40, ["--lr", "1e6", "--warmup-steps", "0",
                                                                   "--grad-clip", "0"]))
    assert res.returncode == 2
    assert "loss became" in res.stderr and "Lower --lr" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(pd_dataset, tmp_path):
    res = run_cli("train", "--preset", "huge", "--out", tmp_path / "x")
    assert res.returncode == 2 and "unknown preset 'huge'" in res.stderr and "cpu-tiny" in res.stderr
    res = run_cli("train", "--n-layerz", "3")
    assert res.returncode == 2 and "unrecognized arguments: --n-layerz" in res.stderr
    res = run_cli("train", "--resume", tmp_path)
    assert res.returncode == 2 and "not a zhgpt run folder" in res.stderr
    res = run_cli("train", "--data", pd_dataset, "--tokenizer", "bpe", "--max-steps", "1", "--out", tmp_path / "y")
    assert res.returncode == 2 and "was prepared with the 'char' tokenizer" in res.stderr
    res = run_cli("train", "--data", pd_dataset, "--init-from", "someorg/somemodel", "--out", tmp_path / "z")
    assert res.returncode == 2 and "never downloads" in res.stderr
    res = run_cli("train", "--data", pd_dataset, "--max-epochs", "-1", "--out", tmp_path / "e")
    assert res.returncode == 2 and "--max-epochs must be >= 0, got -1" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_single_process_and_resume_single(pd_dataset, tmp_path, mode):
    """DDP and FSDP2 under torchrun (gloo on CPU): same losses as one process with the same global batch;
    the checkpoint resumes in a single process, extended to more steps."""
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # DDP runs the preset's Muon; FSDP shards matrices, which Muon cannot orthogonalise: AdamW for both runs.
    opt = ["--optimizer", "adamw"] if mode == "fsdp" else []
    base = _train_args(pd_dataset, single, 8) + opt
    subprocess.run([sys.executable, "-m", "zhgpt", *base, "--grad-accum", "2"], env=env, check=True,
                   capture_output=True, timeout=300)
    args = [a if a != "--log" else "--logger" for a in _train_args(pd_dataset, ddp, 8)] + opt
    args += ["--fsdp"] if mode == "fsdp" else []
    # --standalone: a local rendezvous on a free loopback port.
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "zhgpt", *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _losses(single), _losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)
    # The DDP checkpoint resumes in one process, extended to more steps, keeping the global batch.
    res = run_cli("train", "--resume", ddp, "--max-steps", 12)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--grad-accum 2 keeps the same tokens per step" in res.stdout
    assert max(_losses(ddp)) == 12


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
def test_ddp_killing_one_rank_ends_the_job_instead_of_hanging(pd_dataset, tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to find the worker processes")
    out = tmp_path / "ddp"
    args = [a if a != "--log" else "--logger" for a in _train_args(pd_dataset, out, 100000)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZHGPT_DIST_TIMEOUT": "30"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "zhgpt", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            m = out / "metrics.jsonl"
            if m.is_file() and any(r.get("step") == 5 for r in read_jsonl(m)):
                break
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)   # the agent notices the dead worker and stops the other
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Signal 9" in err or "SIGKILL" in err or "failed" in err.lower()


def test_out_of_memory_becomes_advice(pd_dataset, tmp_path, monkeypatch):
    from zhgpt.model.gpt import GPT

    def boom(self, *a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
    monkeypatch.setattr(GPT, "forward", boom)
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "oom"), max_steps=3, preset="cpu-tiny",
                      **{**TINY_TRAIN, "eval_every": 100})
    with pytest.raises(ZhgptError, match="out of memory with --batch-size 8; lower --batch-size"):
        main(cfg, model_overrides=dict(TINY))


@pytest.mark.slow
def test_init_from_refuses_a_dataset_tokenised_differently(trained_run, pd_text, tmp_path, zhgpt_home):
    from zhgpt.data.prepare import DataConfig, main as prepare
    train, val = pd_text
    other = prepare(DataConfig(sources=[str(train)], out=str(tmp_path / "bpe"), tokenizer="bpe", vocab_size=600,
                               val_source=str(val), quiet=True))
    res = run_cli("train", "--init-from", Path(trained_run) / "final", "--data", other, "--max-steps", 1,
                  "--out", tmp_path / "r")
    assert res.returncode == 2
    assert "different tokenizer than --init-from" in res.stderr and "zhgpt data prepare" in res.stderr
