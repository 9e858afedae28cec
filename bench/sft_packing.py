"""SFT batches: packing vs padding, which reaches a held-out loss sooner.

    python bench/sft_packing.py --base runs/base

The same `zhgpt sft` twice on the built-in sentiment conversations (OpenAI JSONL, as in sft_sentiment.py),
same flags, --max-steps N, evaluating every 25 steps:

- pad:  one conversation per row, rows of a micro-batch grouped by length and padded to the longest;
- pack: conversations packed into rows of up to the context, attention and positions kept inside each.

Both take loss on the answer tokens only, and the output layer runs on those positions alone. The target is
the final held-out answer loss of the worse of the two; reported: the wall time at which each first reaches
it (the elapsed_s of that evaluation; it counts the evaluations too, the same ones for both runs), CPU time
and peak memory.
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
    target = max(result[m]["evals"][-1][2] for m in ("pad", "pack"))
    for mode in ("pad", "pack"):
        hit = next((e for e in result[mode]["evals"] if e[2] <= target), None)
        result[mode]["time_to_target_s"] = hit[1] if hit else None
        result[mode]["step_at_target"] = hit[0] if hit else None
    result["target_val_loss"] = target
    result["speedup"] = result["pad"]["time_to_target_s"] / result["pack"]["time_to_target_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"\ntarget: held-out answer loss {target:.4f}\n")
    print("| batches | steps to target | time to target | final val loss | CPU time (300 steps) | peak RSS |")
    print("|---|---|---|---|---|---|")
    for mode in ("pad", "pack"):
        r = result[mode]
        print(f"| {mode} | {r['step_at_target']} | {r['time_to_target_s']:.0f} s | {r['evals'][-1][2]:.4f} | "
              f"{r['cpu_s']:.0f} s | {r['peak_memory_mb']:.0f} MiB |")
    print(f"\npacking reaches the target {result['speedup']:.2f}x sooner")


if __name__ == "__main__":
    main()
