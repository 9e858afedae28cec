"""Time to quality: wall time for a training recipe to reach a validation bits-per-character.

    python bench/bench_quality.py               # reference recipe, then the finalists at 100 s and 10 min
    python bench/bench_quality.py --screen      # the screening sweep: every SCREEN recipe, 100-s budgets
    python bench/bench_quality.py --quick       # smoke run (< 1 minute of training)
    python bench/bench_quality.py --recipes NAME[,NAME] --budget 100s    # any recipes of the tables below
    python bench/bench_quality.py --clock wall  # plain --time-budget runs (only meaningful on an idle host)
    python bench/bench_quality.py --results     # also write the section(s) in bench/RESULTS.md

Every run is `zhgpt train` in a subprocess on the fixed benchmark text (shared/data/pd1998: train.txt
for training, val.txt as the whole validation split), with `--no-report --no-export --log none
--sample-tokens 0` (samples would only add generation time to the budget), and its metrics.jsonl read
back (val_bpc per evaluation). BPC counts characters, so it compares char, BPE and unigram tokenizers.

Two clocks:

- ``--clock idle`` (default). On a shared host the load swings 2-5x within minutes, so two 100-s
  `--time-budget` runs a few minutes apart get anything from 25 to 100 steps: the comparison measures the
  neighbours, not the recipe. Instead the bench first *calibrates* every recipe in one process: one
  training step and one evaluation forward of each, in rotating order, several rounds, fastest round
  kept (the machine's idle speed, the same load for all). A budget of S seconds then becomes
  ``--max-steps N`` with N*s_step + evals*s_eval = S, so the learning-rate schedule anneals exactly where
  a real S-second run on an idle machine would, and the BPC reached is independent of the load. The
  runs themselves may then use 1 thread each, two at a time (`--jobs`): that changes only the wall
  time, not the steps or the result (up to float summation order). Reported times are idle-equivalent
  seconds (steps*s_step + evals*s_eval); the actual wall time and load are in the table too.
- ``--clock wall``: plain `--time-budget` runs, val_bpc against metrics.jsonl's elapsed_s (wall time
  since training started, evaluations included, data preparation excluded). Right on an idle machine.

The reference recipe (vanilla GPT-2 char-level 4L/4H/256d, ctx 256, batch 16, AdamW 1e-3 constant, no
warm-up, fp32, 200 steps, an evaluation every 50) runs in the same script and the same calibration, so
both see the same machine; "speed-up vs ref" = the reference's time to its final BPC / the recipe's
time to that BPC. The data of each tokenizer is prepared once and cached under bench/out/zhgpt_home.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OUT = common.OUT / "quality"
HOME = common.OUT / "zhgpt_home"
TARGET_100S = 7.67          # the reference's val BPC at step 200 (302 s on an idle machine of this type)
TARGET_10M = 6.5
REF_SECONDS = 302.0

# --vocab-size 8000 is the char tokenizer's default cap: without it the cpu-tiny preset's 4096 would apply and
# cut the 4,688 characters of pd1998 (the vocabulary then holds <|endoftext|> + 256 bytes + 4,688 characters).
REFERENCE = ["--optimizer", "adamw", "--dtype", "fp32", "--tokenizer", "char", "--vocab-size", "8000",
             "--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--block-size", "256", "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "0",
             "--schedule", "constant", "--max-epochs", "0"]   # nanoGPT trains the whole budget: no auto stop
REF_STEPS, REF_EVAL_EVERY = 200, 50
# The text every run trains and validates on; bench/screen_genres.py passes other corpora per call.
PD = {"train": common.PD_TRAIN, "val": common.PD_VAL}


def _r(desc, *flags, muon=False):
    return {"desc": desc, "flags": list(flags) + (["--optimizer", "muon"] if muon else [])}


# The screening's base, pinned (the cpu-tiny preset has since become its winner): gpt2 4L/4H/256d, ctx 256,
# batch 16, BPE, AdamW, fp32, cosine. Later flags override earlier ones.
SCREEN_BASE = ["--preset", "cpu-tiny", "--tokenizer", "bpe", "--block-size", "256", "--optimizer", "adamw",
               "--dtype", "fp32", "--warmup-steps", "50"]


def _bpe(vocab, *more):
    return [*SCREEN_BASE, "--vocab-size", str(vocab), "--lr", "3e-3", "--warmup-steps", "20", *more]


# Screening recipes (100-s budgets). Each changes one thing against its base (named in the description).
# Flags are `zhgpt train` flags; `--preset cpu-tiny` = gpt2 4L/4H/256d ctx 256, batch 16, bpe, cosine.
SCREEN = {
    "ref@100s": _r("the reference recipe with a 100-s budget instead of 200 steps", *REFERENCE),
    "cpu-tiny": _r("the cpu-tiny preset as it was (bpe 4096, lr 2e-3, warm-up 50, cosine)", *SCREEN_BASE,
                   "--vocab-size", "4096", "--lr", "2e-3"),
    "char-3e-3": _r("char (4,945), lr 3e-3, warm-up 20, cosine", *REFERENCE[:-6], "--lr", "3e-3",
                    "--warmup-steps", "20", "--schedule", "cosine"),
    "bpe4k-3e-3": _r("cpu-tiny with lr 3e-3, warm-up 20", *_bpe(4096)),
    "bpe2k-3e-3": _r("bpe4k-3e-3 with bpe 2048", *_bpe(2048)),
    "bpe8k-3e-3": _r("bpe4k-3e-3 with bpe 8192", *_bpe(8192)),
    "bpe16k-3e-3": _r("bpe4k-3e-3 with bpe 16384", *_bpe(16384)),
    "unigram8k-3e-3": _r("bpe8k-3e-3 with a unigram tokenizer", *_bpe(8192, "--tokenizer", "unigram")),
    "bpe8k-6e-3": _r("bpe8k-3e-3 with lr 6e-3", *_bpe(8192, "--lr", "6e-3")),
    "bpe8k-bf16": _r("bpe8k-3e-3 with --dtype bf16 (autocast)", *_bpe(8192, "--dtype", "bf16")),
    "bpe8k-b8": _r("bpe8k-3e-3 with batch 8", *_bpe(8192, "--batch-size", "8")),
    "bpe8k-ctx128": _r("bpe8k-3e-3 with ctx 128 (half the tokens per step)", *_bpe(8192, "--block-size", "128")),
    "bpe8k-llama": _r("bpe8k-3e-3 with --arch llama --no-bias (RoPE, RMSNorm, SwiGLU)",
                      *_bpe(8192, "--arch", "llama", "--no-bias")),
    "bpe8k-muon": _r("bpe8k-3e-3 with Muon (match_rms_adamw) on the block matrices", *_bpe(8192), muon=True),
    # ---- stage 2: combinations of the stage-1 winners (bigger vocabulary, unigram, bf16, Muon, ctx 128)
    "uni16k-bf16": _r("unigram 16384 + bf16", *_bpe(16384, "--tokenizer", "unigram", "--dtype", "bf16")),
    "bpe16k-bf16": _r("bpe 16384 + bf16", *_bpe(16384, "--dtype", "bf16")),
    "uni8k-bf16-muon": _r("unigram 8192 + bf16 + Muon", *_bpe(8192, "--tokenizer", "unigram", "--dtype", "bf16"),
                          muon=True),
    "uni16k-bf16-muon": _r("unigram 16384 + bf16 + Muon", *_bpe(16384, "--tokenizer", "unigram", "--dtype", "bf16"),
                           muon=True),
    "bpe16k-bf16-muon": _r("bpe 16384 + bf16 + Muon", *_bpe(16384, "--dtype", "bf16"), muon=True),
    "bpe32k-bf16-muon": _r("bpe 32000 + bf16 + Muon", *_bpe(32000, "--dtype", "bf16"), muon=True),
    "uni16k-bf16-muon-6e-3": _r("uni16k-bf16-muon with lr 6e-3",
                                *_bpe(16384, "--tokenizer", "unigram", "--dtype", "bf16", "--lr", "6e-3"), muon=True),
    "uni16k-bf16-muon-ctx128": _r("uni16k-bf16-muon with ctx 128",
                                  *_bpe(16384, "--tokenizer", "unigram", "--dtype", "bf16", "--block-size", "128"),
                                  muon=True),
}

# Finalists, picked from the screening (RESULTS.md): each runs with the budgets listed; "ref/3" is a third of
# the reference's own time to its final BPC on the same clock (the "3x faster" test). "cpu-tiny" is the preset
# as it is now (the screening's best pieces together: unigram 16k, ctx 128, Muon lr 6e-3, bf16 on this CPU).
FINAL = {
    "cpu-tiny": (_r("the cpu-tiny preset: unigram 16384, ctx 128, Muon + AdamW lr 6e-3, --dtype auto (bf16 here)",
                    "--preset", "cpu-tiny"), ("ref/3", "100s", "10m")),
    "cpu-tiny-adamw": (_r("cpu-tiny with AdamW lr 3e-3 instead of Muon",
                          "--preset", "cpu-tiny", "--optimizer", "adamw", "--lr", "3e-3"), ("10m",)),
    "cpu-tiny-llama": (_r("cpu-tiny with --arch llama --no-bias (RoPE, RMSNorm, SwiGLU)",
                          "--preset", "cpu-tiny", "--arch", "llama", "--no-bias"), ("100s", "10m")),
    "cpu-tiny-wide": (_r("cpu-tiny at 6 layers x 384 hidden (6 heads): more capacity for the 10 minutes",
                         "--preset", "cpu-tiny", "--n-layer", "6", "--n-head", "6", "--n-embd", "384"), ("10m",)),
}


# ------------------------------------------------------------------------- running zhgpt train

def train_cmd(flags: list[str], run_dir: Path, budget: str, max_steps: int, eval_every: int,
              data: dict | None = None) -> list[str]:
    data = data or PD
    args = ["train", "--data", str(data["train"]), "--val-data", str(data["val"]), "--out", str(run_dir),
            "--no-report", "--no-export", "--log", "none", "--sample-tokens", "0", "--log-every", "5",
            "--eval-every", str(eval_every), "--keep-last", "1", *flags]
    if budget:
        args += ["--time-budget", budget]
    if max_steps:
        # A step-limited run must not stop at the cpu-tiny preset's 10-minute default budget on a loaded host.
        args += ["--max-steps", str(max_steps)] + ([] if budget else ["--time-budget", "12h"])
    return [sys.executable, "-m", "zhgpt", *args]


def read_run(run_dir: Path) -> dict:
    recs = []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    evals = [r for r in recs if "val_bpc" in r]
    trains = [r for r in recs if "loss" in r]
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    tps = sorted(r["tokens_per_sec"] for r in trains[1:]) or [run.get("tokens_per_sec", 0)]
    return {"evals": [(r["step"], r["elapsed_s"], r["val_bpc"]) for r in evals], "params": run.get("params"),
            "steps": run.get("steps"), "tokens_seen": run.get("tokens_seen"),
            "train_tps": tps[len(tps) // 2], "chars_per_token": cfg["data"]["chars_per_token"],
            "vocab": cfg["data"]["vocab_size"], "tokenizer": cfg["data"]["tokenizer_kind"],
            "model": {k: cfg["model"][k] for k in ("arch", "n_layer", "n_head", "n_embd", "block_size")},
            "train": {k: cfg["train"].get(k) for k in ("batch_size", "lr", "warmup_steps", "schedule", "dtype",
                                                       "optimizer")},
            "final_bpc": evals[-1]["val_bpc"] if evals else float("nan"),
            "wall_elapsed": evals[-1]["elapsed_s"] if evals else float("nan")}


def curve(r: dict) -> list[tuple[int, float, float]]:
    """[(step, seconds, bpc)] on the run's clock: idle-equivalent (step*s_step + evals before*s_eval) if it
    was calibrated, else the wall elapsed_s of metrics.jsonl."""
    cal = r.get("cal")
    if not cal:
        return r["evals"]
    return [(s, s * cal["s_step"] + i * cal["s_eval"], b) for i, (s, _, b) in enumerate(r["evals"])]


def time_to(points: list[tuple], target: float) -> float | None:
    """Seconds when val BPC first reached ``target``, interpolated linearly between evaluations."""
    prev = None
    for _, t, bpc in points:
        if bpc <= target:
            if prev is None:
                return t
            (t0, b0) = prev
            return t0 + (t - t0) * (b0 - target) / max(b0 - bpc, 1e-9)
        prev = (t, bpc)
    return None


def bpc_at(points: list[tuple], seconds: float) -> float | None:
    """Val BPC of the last evaluation at or before ``seconds`` (5 % slack: a budget ends after its last step)."""
    got = [b for _, t, b in points if t <= seconds * 1.05]
    return got[-1] if got else None


def run_recipe(name: str, recipe: dict, budget: str = "", max_steps: int = 0, eval_every: int = 10 ** 6,
               tag: str = "", threads: int = 0, cal: dict | None = None, out: Path | None = None,
               data: dict | None = None) -> dict:
    out = out or OUT
    run_dir = out / f"{name.replace('@', '-')}-{tag or budget or f'{max_steps}steps'}"
    if run_dir.exists():
        shutil.rmtree(run_dir)      # our own scratch folder under bench/out
    out.mkdir(parents=True, exist_ok=True)
    cmd = train_cmd(recipe["flags"], run_dir, budget, max_steps, eval_every, data)
    env = {**os.environ, "ZHGPT_HOME": str(HOME), "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load0 = common.load_avg()
    what = budget or f"{max_steps} steps" + (f" = {tag}" if tag else "")
    print(f">>> start {name} [{what}]: {recipe['desc']} | load {load0}", flush=True)
    t0 = time.time()
    log = run_dir.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(common.REPO)).returncode
    wall = time.time() - t0
    load1 = common.load_avg()
    base = {"name": name, "desc": recipe["desc"], "flags": recipe["flags"],
            "budget": budget or tag, "max_steps": max_steps, "load": (load0, load1), "threads": threads or "default",
            "cal": cal}
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        print(f"    {name} FAILED (exit {rc}); log {log}:\n{tail}", flush=True)
        return {**base, "failed": True}
    r = {**read_run(run_dir), **base, "wall": wall, "run_dir": str(run_dir)}
    print(f"<<< done {name}: {r['steps']} steps | val BPC {r['final_bpc']:.3f} | curve "
          + ", ".join(f"{b:.2f}@{t:.0f}s" for _, t, b in curve(r)) + f" | wall {wall:.0f} s | load {load1}", flush=True)
    with open(out / "runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return r


# ------------------------------------------------------------------------- idle-speed calibration

def resolve_recipe(flags: list[str], data: dict | None = None):
    """(TrainConfig, model fields) exactly as `zhgpt train FLAGS` would resolve them on a CPU."""
    from zhgpt.config import overrides_from_args
    from zhgpt.model.gpt import ModelConfig
    from zhgpt.training.train import TrainConfig, configure_parser, resolve_config
    p = argparse.ArgumentParser()
    configure_parser(p)
    data = data or PD
    ns = p.parse_args(["--data", str(data["train"]), "--val-data", str(data["val"]), *flags])
    explicit = overrides_from_args(TrainConfig, ns)
    model_overrides = overrides_from_args(ModelConfig, ns)
    model_overrides.pop("vocab_size", None)
    cfg, model_fields, _ = resolve_config(explicit, model_overrides, "cpu")
    return cfg, model_fields


# Two threads run this model's training step 1.84-2.04x faster than one on an idle 2-core machine
# (bench_train.py shape a, quiet period: eager 4,348 vs 2,366 tok/s median, bf16 7,070 vs 3,581).
THREAD_SPEEDUP = 1.9


def calibrate(recipes: dict[str, dict], rounds: int, data: dict | None = None, fresh: bool = False) -> dict[str, dict]:
    """Idle seconds per training step and per full validation pass of each recipe.

    On a busy host the wall time of a 2-thread step swings 2-8x (an OpenMP team of 2 waits at every op's
    barrier whenever either thread is descheduled), and even the fastest of several rounds can be far off
    for a recipe that never met a quiet moment. One thread's *CPU time* barely depends on the load: the
    step costs what it costs. So each recipe's step (`zhgpt train`'s own train_step) and one eval-mode forward
    run at 1 thread, in rotating order, and their process CPU seconds (fastest round, and across
    invocations: bench/out/quality/calibration.json; ``fresh``: this invocation's only, so that recipes
    measured together share one state of the host) divided by THREAD_SPEEDUP give the idle 2-thread
    seconds. The 2-thread wall time of the step is measured in the same rotation; where even its fastest
    round is slower than that estimate, it is used instead (conservative: fewer steps per budget)."""
    import torch
    from zhgpt.core.device import autocast_ctx, resolve_dtype
    from zhgpt.training.distributed import Dist
    from zhgpt.training.loader import TrainBatches, eval_windows
    from zhgpt.training.optim import build_optimizers
    from zhgpt.training.step import lm_loss, lr_at, set_lr, train_step
    from zhgpt.training.setup import build_model
    from zhgpt.training.train import prepare_data

    os.environ["ZHGPT_HOME"] = str(HOME)
    threads0 = torch.get_num_threads()
    dist = Dist("cpu")
    fns, meta = {}, {}
    for name, rec in recipes.items():
        cfg, mf = resolve_recipe(rec["flags"], data)
        ds = prepare_data(cfg, quiet=True, tokenizer_asked=True)
        mcfg, model = build_model(cfg, mf, ds, init_model=None, ckpt=None, device="cpu", quiet=True)
        amp = resolve_dtype(cfg.dtype, "cpu")
        opt = build_optimizers(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), "cpu")
        scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
        batches = TrainBatches(ds.split("train"), mcfg.block_size, cfg.batch_size, cfg.grad_accum, cfg.seed)
        val = ds.split("val")
        _, n_pred = eval_windows(val, mcfg.block_size, cfg.eval_tokens or None)
        n_eval_batches = math.ceil(math.ceil(n_pred / mcfg.block_size) / cfg.batch_size)

        def step(threads, model=model, opt=opt, scaler=scaler, batches=batches, amp=amp, cfg=cfg):
            # `zhgpt train`'s own step: the learning rate of step 0, then train_step on step 0's batches
            torch.set_num_threads(threads)
            model.train()
            set_lr(opt, lr_at(cfg, 0, 0.0))
            train_step(model, opt, scaler, batches.step_batches(0), lm_loss, device="cpu", amp_dtype=amp,
                       dist=dist, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip)
            torch.set_num_threads(threads0)

        def fwd(model=model, batches=batches, amp=amp):
            torch.set_num_threads(1)
            model.eval()
            x, y = batches.micro_batch(1, 0)
            with torch.no_grad(), autocast_ctx("cpu", amp):
                model(x, y, reduction="sum")
            model.train()
            torch.set_num_threads(threads0)

        step(1)          # warm-up (first-call allocations, oneDNN primitive creation)
        step(threads0)
        fwd()
        fns[f"{name}|step1"] = lambda step=step: step(1)
        fns[f"{name}|fwd1"] = fwd
        fns[f"{name}|step2"] = lambda step=step: step(threads0)
        meta[name] = {"tokens_per_step": cfg.batch_size * mcfg.block_size * cfg.grad_accum,
                      "eval_batches": n_eval_batches, "vocab": ds.vocab_size}
        print(f"  calibrating {name}: vocab {ds.vocab_size}, {n_eval_batches} eval batches", flush=True)

    cpu: dict = {}

    def progress(r, times):
        print(f"  calibration round {r + 1}/{rounds} (1-thread CPU s/step | 2-thread wall s/step): " + " | ".join(
            f"{n} {cpu[f'{n}|step1'][-1]:.2f} {times[f'{n}|step2'][-1]:.2f}" for n in recipes), flush=True)

    times = common.alternate(fns, rounds, 1, progress, cpu=cpu)
    # Load only ever slows a step down, so the cheapest step ever measured for a configuration is the best
    # estimate of its cost: keep the minimum across invocations (bench/out/quality/calibration.json).
    cache_path = OUT / "calibration.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    out = {}
    for name, rec in recipes.items():
        key = json.dumps([rec["flags"], torch.__version__] + ([str(data["train"])] if data else []))
        old = cache.get(key, {})
        now = {"cpu_step": min(cpu[f"{name}|step1"]), "cpu_fwd": min(cpu[f"{name}|fwd1"]),
               "wall2_step": min(times[f"{name}|step2"])}
        cache[key] = {**{k: min(v, old.get(k, v)) for k, v in now.items()}, "rounds": old.get("rounds", 0) + rounds}
        best = now if fresh else cache[key]
        # Conservative: if 2 threads were never measured as fast as CPU/THREAD_SPEEDUP (a recipe that scales
        # worse, e.g. bf16 with a 16k vocabulary: 1.7x), the measured 2-thread time counts.
        s_step = max(best["cpu_step"] / THREAD_SPEEDUP, best["wall2_step"])
        scale = s_step / (best["cpu_step"] / THREAD_SPEEDUP)
        out[name] = {**meta[name], "s_step": s_step, "s_fwd": best["cpu_fwd"] / THREAD_SPEEDUP * scale,
                     "s_eval": best["cpu_fwd"] / THREAD_SPEEDUP * scale * meta[name]["eval_batches"],
                     "cpu_step": best["cpu_step"], "cpu_fwd": best["cpu_fwd"], "wall2_step": best["wall2_step"],
                     "wall2_median": common.median(times[f"{name}|step2"]), "rounds": cache[key]["rounds"]}
    OUT.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache, indent=1))
    return out


def steps_for(seconds: float, cal: dict, eval_every: int) -> int:
    """Steps N such that N*s_step + (evaluations incl. the one at step 0)*s_eval fits in ``seconds``."""
    s, e = cal["s_step"], cal["s_eval"]
    n = (seconds - e) / (s + (e / eval_every if eval_every < 10 ** 6 else 0.0))
    return max(1, int(n))


# ------------------------------------------------------------------------- report

def fmt(x, spec=".3f"):
    return "—" if x is None or x != x else format(x, spec)


def runs_table(runs: list[dict], ref_time: float | None, ref_bpc: float | None) -> str:
    rows = []
    for r in runs:
        if r.get("failed"):
            rows.append([r["name"], r["desc"], "FAILED"] + [""] * 11)
            continue
        m, t = r["model"], r["train"]
        shape = f"{m['arch']} {m['n_layer']}L/{m['n_head']}H/{m['n_embd']}d ctx{m['block_size']}"
        tok = f"{r['tokenizer']} {r['vocab']} ({r['chars_per_token']:.2f} c/t)"
        opt = f"{'Muon+AdamW' if t.get('optimizer') == 'muon' else 'AdamW'} {t['lr']:g} wu{t['warmup_steps']} {t['schedule']}"
        pts = curve(r)
        t_ref = time_to(pts, ref_bpc) if ref_bpc else None
        speedup = ref_time / t_ref if (ref_time and t_ref) else None
        cal = r.get("cal")
        tps = cal["tokens_per_step"] / cal["s_step"] if cal else r["train_tps"]
        rows.append([r["name"], f"{shape}, B{t['batch_size']}, {tok}, {opt}, {t['dtype']}",
                     r["budget"] or f"{r['max_steps']} steps", f"{r['params'] / 1e6:.2f}M",
                     f"{tps:,.0f}", f"{tps * r['chars_per_token']:,.0f}", str(r["steps"]),
                     fmt(bpc_at(pts, 100)), fmt(r["final_bpc"]), f"{pts[-1][1]:.0f}",
                     fmt(speedup, ".2f") + ("x" if speedup else ""), f"{r.get('wall', 0):.0f}",
                     str(r.get("threads", "")), f"{r['load'][0]} → {r['load'][1]}"])
    return common.md_table(["run", "config", "budget", "params", "tok/s", "chars/s", "steps", "BPC @100 s",
                            "BPC at end", "end s", "speed-up vs ref", "wall s", "threads", "load before → after"],
                           rows)


def curve_lines(runs: list[dict]) -> str:
    lines = []
    for r in runs:
        if not r.get("failed") and len(r["evals"]) > 2:
            lines.append(f"- {r['name']} [{r['budget'] or str(r['max_steps']) + ' steps'}]: "
                         + ", ".join(f"{b:.2f} @ {t:.0f} s (step {s})" for s, t, b in curve(r)))
    return "\n".join(lines)


# ------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: reference 10 steps + cpu-tiny ~15 s")
    ap.add_argument("--screen", action="store_true", help="run the screening recipes at --budget (default 100s)")
    ap.add_argument("--recipes", default="", help="comma list of recipe names (SCREEN or FINAL tables)")
    ap.add_argument("--budget", default="", help="budget of --screen/--recipes runs (default 100s)")
    ap.add_argument("--long", default="10m", help="the long budget of the default run")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference recipe")
    ap.add_argument("--clock", choices=("idle", "wall"), default="idle",
                    help="idle: calibrated step budgets (load-proof, see above); wall: --time-budget runs")
    ap.add_argument("--cal-rounds", type=int, default=6, help="calibration rounds (fastest kept)")
    ap.add_argument("--jobs", type=int, default=2, help="idle clock: runs at a time (each with --run-threads)")
    ap.add_argument("--run-threads", type=int, default=1, help="idle clock: torch threads of each run")
    ap.add_argument("--eval-every", type=int, default=0, help="evaluation interval of the long runs in steps "
                                                              "(0 = about 12 evaluations per run)")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    args = ap.parse_args()
    if not (common.PD_TRAIN.is_file() and common.PD_VAL.is_file()):
        sys.exit(f"bench_quality needs {common.PD_TRAIN} and {common.PD_VAL} (see shared/README.md)")
    from zhgpt.config import parse_duration
    info = common.machine_info()
    load0 = common.load_avg()
    print(f"{info['cpu']} | {info['cores']} cores | torch {info['torch']} | load {load0} | clock {args.clock}",
          flush=True)
    all_recipes = {**SCREEN, **{n: rec for n, (rec, _) in FINAL.items()}}
    ref_recipe = _r("reference: vanilla GPT-2 char 4L/4H/256d ctx256 B16 AdamW 1e-3 constant fp32, 200 steps",
                    *REFERENCE)

    # ---- what to run: (name, recipe, budget seconds or None, fixed steps, eval_every, tag)
    plan = []
    if args.quick:
        # Quick: a few steps, a 16k-token validation prefix (the BPC is then an estimate, fine for a smoke run).
        short = ["--eval-tokens", "16384"]
        plan.append(("reference", {**ref_recipe, "flags": ref_recipe["flags"] + short}, None, 4, 2, "quick"))
        plan.append(("cpu-tiny", {**SCREEN["cpu-tiny"], "flags": SCREEN["cpu-tiny"]["flags"] + short}, 10.0, 0,
                     10 ** 6, "quick"))
        title = "Time to quality (bench/bench_quality.py) — quick smoke run"
    elif args.screen or args.recipes:
        names = args.recipes.split(",") if args.recipes else list(SCREEN)
        bad = [n for n in names if n not in all_recipes]
        if bad:
            sys.exit(f"unknown recipe(s) {bad}; known: {', '.join(all_recipes)}")
        budget = parse_duration(args.budget or "100s")
        plan += [(n, all_recipes[n], budget, 0, 10 ** 6, "") for n in names]
        title = (f"Time to quality — screening, {args.budget or '100s'} budgets, {args.clock} clock "
                 f"(bench/bench_quality.py)" if args.screen and not args.recipes else
                 f"Time to quality — {', '.join(names)} at {args.budget or '100s'}, {args.clock} clock "
                 f"(bench/bench_quality.py)")
    else:
        if not args.no_ref:
            plan.append(("reference", ref_recipe, None, REF_STEPS, REF_EVAL_EVERY, ""))
        for n, (rec, budgets) in FINAL.items():
            for b in budgets:
                if b == "ref/3":
                    plan.append((n, rec, "ref/3", 0, 10 ** 6, "ref3"))
                else:
                    secs = parse_duration(args.long if b == "10m" else b)
                    plan.append((n, rec, secs, 0, -1 if secs > 150 else 10 ** 6, ""))
        title = f"Time to quality — reference vs finalists, {args.clock} clock (bench/bench_quality.py)"

    # ---- calibration (idle clock) and the runs
    cals = {}
    if args.clock == "idle":
        uniq = {}
        for name, rec, *_ in plan:
            uniq.setdefault(name, rec)
        if any(p[2] == "ref/3" for p in plan):
            uniq.setdefault("reference", ref_recipe)
        print(f"calibrating {len(uniq)} recipe(s), {args.cal_rounds} rounds ...", flush=True)
        cals = calibrate(uniq, 1 if args.quick else args.cal_rounds)
        for n, c in cals.items():
            print(f"  {n}: idle {c['s_step']:.3f} s/step (1-thread CPU {c['cpu_step']:.3f} s / {THREAD_SPEEDUP}) "
                  f"({c['tokens_per_step'] / c['s_step']:,.0f} tok/s); 2-thread wall best {c['wall2_step']:.3f}, median "
                  f"{c['wall2_median']:.3f}; eval {c['s_eval']:.1f} s; {c['rounds']} rounds in all", flush=True)

    jobs = []
    for name, rec, secs, steps, every, tag in plan:
        if secs == "ref/3":
            # A third of the reference's time to its final BPC: REF_STEPS steps and an evaluation every
            # REF_EVAL_EVERY (the last one is the result, not counted), on this clock.
            if args.clock == "idle":
                c = cals["reference"]
                secs = (REF_STEPS * c["s_step"] + REF_STEPS // REF_EVAL_EVERY * c["s_eval"]) / 3
            else:
                secs = REF_SECONDS / 3
            tag = f"ref3-{secs:.0f}s"
        if args.clock == "idle":
            cal = cals[name]
            if every == -1:        # long runs: ~12 evaluations
                every = max(10, int(secs / cal["s_step"] / 12))
            n = steps or steps_for(secs, cal, every)
            label = tag or (f"{secs:g}s" if secs else "")
            jobs.append(dict(name=name, recipe=rec, max_steps=n, eval_every=every, tag=label or f"{n}steps",
                             threads=args.run_threads, cal=cal))
        else:
            if every == -1:
                every = 50
            jobs.append(dict(name=name, recipe=rec, budget=f"{secs:g}s" if secs else "", max_steps=steps,
                             eval_every=every, tag=tag))
    if args.clock == "idle" and args.jobs > 1:
        # Longest first, so the two lanes end together; the report keeps the plan's order.
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["max_steps"] * jobs[i]["cal"]["s_step"])
        with ThreadPoolExecutor(args.jobs) as pool:
            done = dict(zip(order, pool.map(lambda i: run_recipe(**jobs[i]), order)))
        runs = [done[i] for i in range(len(jobs))]
    else:
        runs = [run_recipe(**j) for j in jobs]

    # ---- report
    load1 = common.load_avg()
    ref = next((r for r in runs if r["name"] == "reference" and not r.get("failed")), None)
    ref_pts = curve(ref) if ref else None
    ref_bpc = ref["final_bpc"] if ref else None
    ref_time = ref_pts[-1][1] if ref else None
    table = runs_table(runs, ref_time, ref_bpc)
    print("\n" + table)
    print(f"\nload average before {load0}, after {load1}")
    summary = []
    if ref:
        summary.append(f"Reference: val BPC {ref_bpc:.3f} after {ref['steps']} steps, {ref_time:.0f} s on this "
                       f"clock (on an idle machine of this type it took {REF_SECONDS:.0f} s). 'speed-up vs ref' = the "
                       "reference's time to its final BPC / the run's time to the same BPC.")
    for r in runs:
        if r.get("failed") or r is ref:
            continue
        pts = curve(r)
        t1, t2 = time_to(pts, TARGET_100S), time_to(pts, TARGET_10M)
        summary.append(f"{r['name']} [{r['budget']}]: time to {TARGET_100S} BPC {fmt(t1, '.0f')} s, "
                       f"to {TARGET_10M} BPC {fmt(t2, '.0f')} s, final {r['final_bpc']:.3f}")
    for s in summary:
        print(s)
    if args.results:
        clock_note = ("Clock: **idle-equivalent seconds** (steps x calibrated idle s/step + evaluations x "
                      "calibrated s/eval; see the docstring); tok/s and chars/s are the calibrated idle speeds "
                      f"(fastest of {args.cal_rounds} rounds, 2 threads). 'wall s' is what the run really took "
                      f"with {args.run_threads} thread(s), {args.jobs} run(s) at a time on the shared host."
                      if args.clock == "idle" else
                      "Clock: wall seconds (metrics.jsonl elapsed_s, evaluations included).")
        body = (common.header(info, load0, load1, common.command_line()) + "\n" + clock_note + "\n\n" + table
                + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n")
        curves = curve_lines(runs)
        if curves:
            body += "\nValidation BPC curves (val BPC @ seconds on the clock above):\n\n" + curves + "\n"
        common.write_section(title, body)


if __name__ == "__main__":
    main()
