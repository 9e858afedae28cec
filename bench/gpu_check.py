"""One short GPU session checks every CUDA path of `zhgpt train` (issue 16), and writes a RESULTS section.

    python bench/gpu_check.py --prepare-only   # on any machine: the dataset (bench/out/gpu_check_data, ~10 MB)
    python bench/gpu_check.py                  # on the GPU (<= 8 minutes on one H100/H200)
    python bench/gpu_check.py --dry-run        # on a CPU: the same matrix with a tiny model, a few steps (CI)

What it runs, each configuration in its own process (one failure is recorded and the rest go on), all with the
``small`` preset (GPT-2 124M shape: 12 layers, 12 heads, 768 wide, ctx 1024), AdamW, batch 16 x 1024, same seed:

- zhgpt: bf16 eager, bf16 + ``--compile``, fp16 + GradScaler, ``--liger``, ``--grad-checkpointing``,
  ``--optimizer adamw8bit`` and ``--fsdp`` under ``torchrun --nproc_per_node 1``. From zhgpt's own
  metrics.jsonl rows: median tokens/s and MFU after the warm-up steps, and peak memory (``memory_mb``, which on
  CUDA is ``torch.cuda.max_memory_allocated``), beside ``zhgpt estimate``'s memory and its time at 40 % MFU;
- Hugging Face ``GPT2LMHeadModel`` (same shape and vocabulary, SDPA, bf16 autocast, fused AdamW, same batch):
  the baseline ratio;
- attention: ``scaled_dot_product_attention`` forced to the flash kernel (must not raise), and the kernels the
  profiler sees in one zhgpt training step;
- resume: the bf16 run again, stopped by SIGTERM part-way, then ``--resume``: losses equal the uninterrupted run.

Nothing is installed: liger-kernel or bitsandbytes missing is recorded as "unavailable". Writes a Markdown section
(stdout and OUT/gpu_check.md) and OUT/gpu_check.json; OUT is bench/results (bench/out/gpu_check_dry for --dry-run).
The dataset comes from ``--data`` (a prepared zhgpt dataset), else it is prepared from ``--text`` / the shared
People's Daily text / the built-in corpus. The device tool carries ignored folders: prepare it first and carry
``bench/out/gpu_check_data``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
PD_TRAIN = REPO.parent / "shared" / "data" / "pd1998" / "train.txt"
BUDGET_S = 8 * 60
TINY = ["--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--block-size", "64"]
# name, extra flags, needs CUDA, python module it needs
CONFIGS = [
    ("bf16 eager", ["--dtype", "bf16"], False, None),
    ("bf16 + compile", ["--dtype", "bf16", "--compile"], True, None),
    ("fp16 + GradScaler", ["--dtype", "fp16"], True, None),
    ("bf16 + liger", ["--dtype", "bf16", "--liger"], True, "liger_kernel"),
    ("bf16 + grad checkpointing", ["--dtype", "bf16", "--grad-checkpointing"], False, None),
    ("bf16 + adamw8bit", ["--dtype", "bf16", "--optimizer", "adamw8bit"], True, "bitsandbytes"),
    ("bf16 + FSDP, 1 process", ["--dtype", "bf16", "--fsdp"], False, None),
]


def env() -> dict:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
         "TOKENIZERS_PARALLELISM": "false"}
    e.setdefault("ZHGPT_HOME", str(OUT / "gpu_check_home"))
    return e


def machine() -> dict:
    import platform

    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    for mod in ("transformers", "liger_kernel", "bitsandbytes", "triton"):
        info[mod] = _version(mod)
    return info


def _version(mod: str) -> str | None:
    if importlib.util.find_spec(mod) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(mod.replace("_", "-"))
    except PackageNotFoundError:
        return "present"


# ------------------------------------------------------------------------- data

def prepare(args) -> Path:
    if args.data:
        return Path(args.data)
    ds = OUT / ("gpu_check_data_dry" if args.dry_run else "gpu_check_data")
    if (ds / "meta.json").is_file():
        return ds
    text = Path(args.text) if args.text else PD_TRAIN if PD_TRAIN.is_file() else None
    src = str(text) if text else "builtin:people-daily"
    if args.dry_run and text:       # a few hundred paragraphs are plenty for a few tiny steps
        small = OUT / "gpu_check_dry.txt"
        small.parent.mkdir(parents=True, exist_ok=True)
        with open(text, encoding="utf-8") as f:
            small.write_text("".join(line for _, line in zip(range(600), f)), encoding="utf-8")
        src = str(small)
    # bpe 32k: GPT-2 small's shape with a vocabulary of its size (zhgpt estimate's default for the preset)
    tok = ["--tokenizer", "char", "--vocab-size", "3000"] if args.dry_run else ["--tokenizer", "bpe", "--vocab-size", "32000"]
    cmd = [sys.executable, "-m", "zhgpt", "data", "prepare", src, "--out", str(ds), *tok, "--quiet"]
    subprocess.run(cmd, env=env(), check=True, cwd=REPO)
    return ds


# ------------------------------------------------------------------------- zhgpt runs

def train_args(args, ds: Path, out: Path, extra: list[str]) -> list[str]:
    a = ["train", "--data", str(ds), "--out", str(out), "--preset", "small", "--max-steps", str(args.steps),
         "--batch-size", str(args.batch_size), "--grad-accum", "1", "--optimizer", "adamw", "--eval-every", "100000",
         "--eval-tokens", str(args.batch_size * 64), "--sample-tokens", "1", "--log-every", "1", "--logger", "none",
         "--no-report", "--no-export", "--seed", "1", "--keep-last", "1", "--time-budget", "1h",
         "--device", "cuda" if not args.dry_run else "cpu"]
    if args.dry_run:
        a += TINY
    a += extra
    if "--optimizer" in extra:       # the last one wins in argparse, but keep the command readable
        i = a.index("--optimizer")
        del a[i:i + 2]
    return a


def zhgpt_cmd(targs: list[str], fsdp: bool) -> list[str]:
    if fsdp:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "zhgpt",
                *targs]
    return [sys.executable, "-m", "zhgpt", *targs]


def rows(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return []
    return [r for r in (json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
            if "loss" in r]


def run_config(args, ds: Path, name: str, extra: list[str], timeout: float) -> dict:
    out = args.work / slug(name)
    subprocess.run(["rm", "-rf", str(out)])
    targs = train_args(args, ds, out, extra)
    t0 = time.time()
    try:
        res = subprocess.run(zhgpt_cmd(targs, "--fsdp" in extra), env=env(), cwd=REPO, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "wall_s": round(time.time() - t0, 1)}
    rec = {"wall_s": round(time.time() - t0, 1), "command": "zhgpt " + " ".join(targs[:1] + extra)}
    if res.returncode != 0:
        tail = [line for line in (res.stderr or res.stdout).strip().splitlines() if line.strip()][-3:]
        return {**rec, "status": f"failed (exit {res.returncode}): " + " | ".join(tail)[-400:]}
    rec.update(summarise(rows(out), args.warmup))
    rec["status"] = "ok"
    notes = [line for line in res.stdout.splitlines() + res.stderr.splitlines() if "note:" in line]
    if notes:
        rec["notes"] = notes[:3]
    rec["model"] = json.loads((out / "config.json").read_text(encoding="utf-8"))["model"]
    return rec


def summarise(rs: list[dict], warmup: int) -> dict:
    steady = [r for r in rs if r["step"] > warmup] or rs
    med = lambda k: statistics.median(r[k] for r in steady if k in r) if any(k in r for r in steady) else None  # noqa: E731
    return {"steps": len(rs), "tokens_per_sec": med("tokens_per_sec"), "mfu": med("mfu"),
            "memory_mb": max((r["memory_mb"] for r in rs if "memory_mb" in r), default=None),
            "losses": [r["loss"] for r in rs]}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def predicted(rec: dict, extra: list[str], batch: int) -> dict:
    """zhgpt estimate for the run's model: memory of one step, and tokens/s at the 40 % MFU it assumes."""
    from zhgpt.model.gpt import ModelConfig
    from zhgpt.training.estimate import estimate, flops_per_token
    mcfg = ModelConfig(**rec["model"])
    prec = "fp16" if "fp16" in extra else "bf16"
    optimizer = "adamw8bit" if "adamw8bit" in extra else "adamw"
    e = estimate(mcfg, batch, precision=prec, optimizer=optimizer, grad_checkpointing="--grad-checkpointing" in extra)
    out = {"memory_mb": round(e.total / 2 ** 20, 1)}
    fpt = flops_per_token(mcfg, mcfg.block_size)
    if rec.get("mfu") and rec.get("tokens_per_sec"):
        peak = rec["tokens_per_sec"] * fpt / rec["mfu"]
        out["tokens_per_sec_at_40pct"] = round(0.4 * peak / fpt, 1)
    return out


# ------------------------------------------------------------------------- resume check

def resume_check(args, ds: Path, reference: dict) -> dict:
    """The bf16 eager run again, SIGTERM after a third of its steps, then --resume: the same losses?"""
    if reference.get("status") != "ok":
        return {"status": "skipped (the bf16 eager run failed)"}
    out = args.work / "resume"
    subprocess.run(["rm", "-rf", str(out)])
    targs = train_args(args, ds, out, ["--dtype", "bf16"])
    proc = subprocess.Popen(zhgpt_cmd(targs, False), env=env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, at = time.time() + 300, max(2, args.steps // 3)
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= at for r in rows(out)):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        return {"status": f"failed: the SIGTERM run exited {proc.returncode}: {err.strip()[-300:]}"}
    stopped = max((r["step"] for r in rows(out)), default=0)
    res = subprocess.run(zhgpt_cmd(["train", "--resume", str(out)], False), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return {"status": f"failed: --resume exited {res.returncode}: {res.stderr.strip()[-300:]}"}
    a, b = reference["losses"], [r["loss"] for r in rows(out)]
    same = a == b
    diff = max((abs(x - y) for x, y in zip(a, b)), default=None)
    return {"status": "ok" if same else "losses differ", "stopped_after": stopped, "steps": len(b),
            "identical": same, "max_abs_diff": diff, "preempted_msg": "SIGTERM: stopped after" in stdout}


# ------------------------------------------------------------------------- workers (run in their own process)

def worker_hf(spec: dict) -> dict:
    """The same step with Hugging Face's GPT2LMHeadModel: same shape, vocabulary, batch, bf16 autocast, AdamW."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from zhgpt.training.mfu import peak_flops
    m, dev, batch, steps = spec["model"], spec["device"], spec["batch"], spec["steps"]
    T = m["block_size"]
    cfg = GPT2Config(vocab_size=m["vocab_size"], n_positions=T, n_embd=m["n_embd"], n_layer=m["n_layer"],
                     n_head=m["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), fused=dev == "cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m["vocab_size"], (batch, T), generator=g).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    times = []
    for i in range(steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync()
        times.append(time.perf_counter() - t0)
    tps = batch * T / statistics.median(times[spec["warmup"]:] or times)
    n = sum(p.numel() for p in model.parameters())       # tied: wte counted once; wpe is not a matmul
    fpt = 6 * (n - m["block_size"] * m["n_embd"]) + 12 * m["n_layer"] * m["n_embd"] * T
    peak, _ = peak_flops(dev, torch.bfloat16, Path(os.environ["ZHGPT_HOME"]) / "cache")
    mem = torch.cuda.max_memory_allocated() / 2 ** 20 if dev == "cuda" else None
    return {"status": "ok", "tokens_per_sec": round(tps, 1), "mfu": round(tps * fpt / peak, 5),
            "memory_mb": round(mem, 1) if mem else None, "params": n}


def worker_attention(spec: dict) -> dict:
    """Flash attention forced (must not raise), and the attention kernels of one zhgpt training step."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from zhgpt.model.gpt import GPT, ModelConfig
    dev, m, batch = spec["device"], spec["model"], spec["batch"]
    out: dict = {"status": "ok"}
    H, D, T = m["n_head"], m["n_embd"] // m["n_head"], m["block_size"]
    q, k, v = (torch.randn(batch, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        out["forced_flash"] = "ok"
    except RuntimeError as e:
        out["forced_flash"] = f"raised: {str(e).splitlines()[0][:200]}"
    model = GPT(ModelConfig(**m)).to(dev).train()
    x = torch.randint(0, m["vocab_size"], (batch, T), device=dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=acts) as prof:
        with torch.autocast(dev, dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        if dev == "cuda":
            torch.cuda.synchronize()
    names = sorted({e.key for e in prof.key_averages()
                    if any(w in e.key.lower() for w in ("flash", "efficient_attention", "scaled_dot", "fmha"))})
    out["attention_kernels"] = names[:12]
    low = " ".join(names).lower()
    out["picked"] = "flash" if "flash" in low else "mem-efficient" if "efficient" in low else "math"
    return out


def run_worker(kind: str, spec: dict, timeout: float) -> dict:
    try:
        res = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)], env=env(), cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = [line for line in res.stderr.strip().splitlines() if line.strip()][-2:]
        return {"status": f"failed (exit {res.returncode}): " + " | ".join(tail)[-400:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- report

def markdown(res: dict) -> str:
    mi, dry = res["machine"], res["dry_run"]
    title = "GPU check (bench/gpu_check.py" + (" --dry-run, CPU" if dry else "") + f", {res['date']})"
    lines = [f"## {title}", "",
             f"{mi['gpu'] or mi['cpu']}; torch {mi['torch']}, CUDA {mi['cuda']}, transformers {mi['transformers']}, "
             f"liger-kernel {mi['liger_kernel'] or 'not installed'}, bitsandbytes {mi['bitsandbytes'] or 'not installed'}. "
             f"Model: {res['shape']}; batch {res['batch_size']}, {res['steps']} steps, AdamW; medians after step "
             f"{res['warmup']}. Memory: zhgpt's `memory_mb` (CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS) "
             f"vs `zhgpt estimate`; predicted tokens/s is the estimate's time at 40 % MFU.", "",
             "| configuration | status | tokens/s | MFU | peak memory MiB | estimate MiB | tokens/s at 40 % MFU |",
             "|---|---|---:|---:|---:|---:|---:|"]
    f = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "–"  # noqa: E731
    for name, r in res["configs"].items():
        p = r.get("predicted", {})
        lines.append(f"| {name} | {cell(r['status'])} | {f(r.get('tokens_per_sec'), ',.0f')} | "
                     f"{f(r.get('mfu'), '.1%')} | {f(r.get('memory_mb'), ',.0f')} | {f(p.get('memory_mb'), ',.0f')} | "
                     f"{f(p.get('tokens_per_sec_at_40pct'), ',.0f')} |")
    hf, ref = res["hf"], res["configs"].get("bf16 eager", {})
    lines.append(f"| HF GPT2LMHeadModel, bf16 eager | {cell(hf['status'])} | {f(hf.get('tokens_per_sec'), ',.0f')} | "
                 f"{f(hf.get('mfu'), '.1%')} | {f(hf.get('memory_mb'), ',.0f')} | | |")
    if hf.get("tokens_per_sec") and ref.get("tokens_per_sec"):
        lines += ["", f"zhgpt bf16 eager / HF: **{ref['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x** tokens/s."]
    at = res["attention"]
    lines += ["", f"Attention: SDPA forced to the flash kernel: {at.get('forced_flash', at['status'])}; "
                  f"kernel in a zhgpt step: **{at.get('picked', '–')}** ({', '.join(at.get('attention_kernels', [])) or '–'})."]
    rc = res["resume"]
    if rc.get("status") == "ok" or "identical" in rc:
        lines.append(f"Resume: SIGTERM after step {rc['stopped_after']}, then `--resume`: {rc['steps']} losses, "
                     f"identical to the uninterrupted run: **{rc['identical']}** (max |diff| {rc['max_abs_diff']}).")
    else:
        lines.append(f"Resume: {rc['status']}.")
    lines.append(f"Wall time of the check: {res['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, a few steps (what CI runs)")
    ap.add_argument("--prepare-only", action="store_true", help="prepare the dataset and stop")
    ap.add_argument("--data", help="a prepared zhgpt dataset folder")
    ap.add_argument("--text", help="a text file to prepare the dataset from")
    ap.add_argument("--steps", type=int, help="optimizer steps per configuration (default 30; 12 with --dry-run)")
    ap.add_argument("--batch-size", type=int, help="sequences per step (default 16; 4 with --dry-run)")
    ap.add_argument("--out", help="folder for gpu_check.md/.json (default bench/results; dry run: bench/out/gpu_check_dry)")
    ap.add_argument("--only", help="comma-separated configuration names to run (default all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps({"hf": worker_hf, "attention": worker_attention}[args.worker](json.loads(args.spec))))
        return
    t_start = time.time()
    args.steps = args.steps or (12 if args.dry_run else 30)
    args.batch_size = args.batch_size or (4 if args.dry_run else 16)
    args.warmup = 2 if args.dry_run else 10
    args.work = OUT / ("gpu_check_dry" if args.dry_run else "gpu_check") / "runs"
    args.work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out) if args.out else (OUT / "gpu_check_dry" if args.dry_run else REPO / "bench" / "results")
    import torch
    cuda = torch.cuda.is_available()
    mi = machine()
    print("machine:", json.dumps(mi), flush=True)
    ds = prepare(args)
    if args.prepare_only:
        print(f"dataset: {ds}")
        return
    if not cuda and not args.dry_run:
        sys.exit("gpu_check: no CUDA GPU visible to torch; run with --dry-run on a CPU")
    res = {"date": time.strftime("%Y-%m-%d"), "machine": mi, "dry_run": args.dry_run, "steps": args.steps,
           "batch_size": args.batch_size, "warmup": args.warmup, "configs": {}}
    only = set(args.only.split(",")) if args.only else None
    for name, extra, needs_cuda, module in CONFIGS:
        if only and name not in only:
            continue
        left = BUDGET_S - (time.time() - t_start)
        if needs_cuda and not cuda:
            rec = {"status": "skipped (no CUDA)"}
        elif module and importlib.util.find_spec(module) is None:
            rec = {"status": f"unavailable ({module} not installed)"}
        elif left < 30 and not args.dry_run:
            rec = {"status": "skipped (8-minute budget spent)"}
        else:
            rec = run_config(args, ds, name, extra, timeout=max(60.0, min(left, 240.0)) if not args.dry_run else 300)
            if rec["status"] == "ok":
                rec["predicted"] = predicted(rec, extra, args.batch_size)
        res["configs"][name] = rec
        print(f"{name}: {rec['status']}" + (f", {rec['tokens_per_sec']:,.0f} tok/s, MFU {rec['mfu']:.1%}, "
                                            f"{rec['memory_mb']} MiB" if rec.get("mfu") else ""), flush=True)
    ref = res["configs"].get("bf16 eager", {})
    model = ref.get("model")
    res["shape"] = (f"{model['n_layer']} layers, {model['n_head']} heads, {model['n_embd']} wide, ctx "
                    f"{model['block_size']}, vocab {model['vocab_size']}" if model else "?")
    spec = {"model": model, "device": "cuda" if cuda else "cpu", "batch": args.batch_size,
            "steps": args.steps, "warmup": min(args.warmup, args.steps - 1)}
    res["hf"] = run_worker("hf", spec, 240) if model else {"status": "skipped (no zhgpt run to copy the shape)"}
    res["attention"] = run_worker("attention", spec, 120) if model else {"status": "skipped"}
    res["resume"] = resume_check(args, ds, ref)
    res["wall_s"] = time.time() - t_start
    for r in res["configs"].values():
        r.pop("losses", None)
    md = markdown(res)
    print(md)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.md").write_text(md, encoding="utf-8")
    (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
