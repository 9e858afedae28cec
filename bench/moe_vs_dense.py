"""MoE vs dense at equal active parameters and equal compute: two `zhgpt train` runs at the same time, each
pinned with taskset to its own core (one thread each), for the same wall-time budget, on pd1998; then
bits/char on all of pd1998 val, tokens/s and peak memory.

The two shapes are the cpu-tiny preset as llama (--no-bias, so it is exportable) and the same with its MLP
replaced by E experts of the same width with top-1 routing: one expert per token, so the active parameters
are the dense model's plus the router (E*C per layer) -- equal active, E times the MLP parameters in total.

    python bench/moe_vs_dense.py --budget 10m              # the comparison for bench/RESULTS.md
    python bench/moe_vs_dense.py --budget 30s --experts 4  # a smoke test (~2 minutes with data preparation)

Running both at once on separate cores (rather than one after the other) gives both the same machine load;
the numbers are still from a shared host: compare the two rows of one run, not across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, PD_TRAIN, PD_VAL, load_avg  # noqa: E402

SHAPE = ["--preset", "cpu-tiny", "--arch", "llama", "--no-bias"]


def prepare(out: Path) -> Path:
    """The unigram 16k dataset of cpu-tiny, prepared once (two runs preparing it at once would race)."""
    data = out / "data"
    if not (data / "meta.json").is_file():
        subprocess.run([sys.executable, "-m", "zhgpt", "data", "prepare", str(PD_TRAIN), "--val-source", str(PD_VAL),
                        "--tokenizer", "unigram", "--vocab-size", "16384", "--out", str(data)], check=True)
    return data


def start(name: str, core: int, data: Path, out: Path, budget: str, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "zhgpt", "train", "--data", str(data),
           # Evaluations count against the budget: only the one at step 0 and the final one (all of val).
           "--out", str(out / name), "--time-budget", budget, "--eval-tokens", "0", "--eval-every", "1000000",
           "--log", "none",
           "--no-report", *SHAPE, *extra]
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def summary(run: Path) -> dict:
    info = json.loads((run / "run.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trains = [r for r in rows if "loss" in r]
    last = trains[-1] if trains else {}
    return {"params": info.get("params"), "active": info.get("params_active", info.get("params")),
            "val_bpc": (info.get("final") or {}).get("val_bpc"), "steps": info.get("steps"),
            "tokens": info.get("tokens_seen"), "tok_s": info.get("tokens_per_sec"),
            "memory_mb": max((r.get("memory_mb") or 0) for r in trains) if trains else None,
            "aux_loss": last.get("aux_loss"), "expert_frac": last.get("expert_frac")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="10m", help="wall-time budget of each run (zhgpt train --time-budget)")
    ap.add_argument("--experts", type=int, default=4, help="experts per layer of the MoE run (top-1)")
    ap.add_argument("--out", default=str(OUT / f"moe_vs_dense-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(out)
    load_before = load_avg()
    runs = {"dense": [], "moe": ["--moe-experts", str(args.experts), "--moe-top-k", "1"]}
    procs = {name: start(name, core, data, out, args.budget, extra) for core, (name, extra) in enumerate(runs.items())}
    for name, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"{name} failed; see {out / (name + '.log')}")
    res = {name: summary(out / name) for name in runs}
    print(f"\nMoE vs dense, {args.budget} each, one core each (taskset), load {load_before} -> {load_avg()}; {out}\n")
    print("| run | params | active/token | val bits/char | steps | tokens | tokens/s | peak RSS MB | aux loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['active'] / 1e6:.2f}M | {r['val_bpc']:.4f} | {r['steps']} | "
              f"{r['tokens']:,} | {r['tok_s']:.0f} | {r['memory_mb']} | {r['aux_loss'] or '-'} |")
    if res["moe"]["expert_frac"]:
        print("\nMoE expert shares at the last log record (per layer):",
              json.dumps(res["moe"]["expert_frac"]))
    (out / "summary.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
