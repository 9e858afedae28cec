"""SFT batches: packing vs padding, which reaches a held-out loss sooner.

    python bench/sft_packing.py --base runs/base

The same `zhgpt sft` twice on the built-in sentiment conversations (OpenAI JSONL, as in sft_sentiment.py),
same flags, --max-steps N, evaluating every 25 steps:

- pad:  one conversation per row, rows of a micro-batch grouped by length and padded to the longest;
- pack: conversations packed into rows of up to the context, attention and positions kept inside each.

Both take loss on the answer tokens only, and the output layer runs on those positions alone. Targets: the
final held-out answer loss of the worse of the two, x1.25, x1.1 and x1.0; reported: the step and wall time at
which each run first reaches each (the elapsed_s of that evaluation; it counts the evaluations too, the same
ones for both runs), CPU time and peak memory.
Writes bench/results/sft_packing.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (1.25, 1.1, 1.0)     # x the final held-out loss of the worse run
sys.path.insert(0, str(ROOT / "bench"))

from sft_sentiment import run, write_openai  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "sft_packing"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft_packing.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from zhgpt.data.chat_builtin import sentiment_conversations

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ZHGPT_HOME", str(work))
    write_openai(sentiment_conversations("train"), work / "train.jsonl")
    write_openai(sentiment_conversations("val"), work / "val.jsonl")
    result: dict = {"base": args.base, "steps": args.steps, "batch_size": args.batch_size}
    for mode in ("pad", "pack"):
        out = work / mode
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "zhgpt", "sft", "--init-from", args.base, "--data", str(work / "train.jsonl"),
               "--val-data", str(work / "val.jsonl"), "--max-steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--eval-every", "25", "--eval-answers", "0", "--out", str(out), "--no-report",
               "--no-export", "--packing" if mode == "pack" else "--no-packing"]
        timing = run(cmd)
        rows = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
        result[mode] = {**timing, "evals": [(r["step"], r["elapsed_s"], r["val_loss"]) for r in rows if "val_loss" in r],
                        "peak_memory_mb": max((r.get("memory_mb", 0) for r in rows), default=None)}
    worst = max(result[m]["evals"][-1][2] for m in ("pad", "pack"))
    result["targets"] = {}
    for factor in TARGETS:
        target = worst * factor
        hits = {m: next((e for e in result[m]["evals"] if e[2] <= target), None) for m in ("pad", "pack")}
        result["targets"][f"{target:.4f}"] = {m: ({"step": h[0], "elapsed_s": h[1]} if h else None) for m, h in hits.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n| held-out answer loss | pad: step, time | pack: step, time | packing sooner by |")
    print("|---|---|---|---|")
    for target, hits in result["targets"].items():
        pad, pack = hits["pad"], hits["pack"]
        cell = lambda h: f"{h['step']}, {h['elapsed_s']:.0f} s" if h else "not reached"
        ratio = f"{pad['elapsed_s'] / pack['elapsed_s']:.2f}x" if pad and pack else "-"
        print(f"| {target} | {cell(pad)} | {cell(pack)} | {ratio} |")
    print("\n| batches | final val loss | wall (300 steps) | CPU time | peak RSS |")
    print("|---|---|---|---|---|")
    for mode in ("pad", "pack"):
        r = result[mode]
        print(f"| {mode} | {r['evals'][-1][2]:.4f} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {r['peak_memory_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
