"""From a base model to a review-sentiment assistant: `zhgpt sft`, full and --lora, measured through transformers.

    python bench/sft_sentiment.py                       # trains the 300-step base too (~5 min on 2 cores)
    python bench/sft_sentiment.py --base runs/base --steps 300

1. a base model: `zhgpt train --max-steps 300` on the built-in corpus (cpu-tiny), unless --base is given;
2. the built-in sentiment conversations («这条评论是正面还是负面？\\n{review}» -> 正面 / 负面, labels from the
   file each review comes from) written as OpenAI-format JSONL, train and held-out splits;
3. `zhgpt sft --data train.jsonl --val-data val.jsonl --max-steps N --batch-size 32`: full, --lora (adapters,
   embedding rows, final norm), and --lora --no-lora-embeddings (the other flags at their defaults: packing,
   the base's optimizer);
4. each RUN/final loaded with transformers' AutoModelForCausalLM + AutoTokenizer, every held-out review
   formatted with apply_chat_template and answered greedily: exact-match accuracy.

CPU time is the user + system time of the zhgpt processes (both cores count), wall time beside it.
Writes bench/results/sft_sentiment.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


MODES = {"full": [], "lora": ["--lora"], "lora-adapters-only": ["--lora", "--no-lora-embeddings"]}


def run(cmd: list[str]) -> dict:
    """Run a zhgpt command; its wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu, 1)}


def write_openai(convs, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps({"messages": [{"role": m.role, "content": m.content} for m in c.messages]},
                               ensure_ascii=False) + "\n")


def final_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl", encoding="utf-8")]
    evals = [r for r in rows if "val_loss" in r]
    return {k: evals[-1].get(k) for k in ("val_loss", "val_bpc", "val_answer_acc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="", help="a pre-trained run to start from (default: train one)")
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "sft_sentiment"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft_sentiment.json"))
    ap.add_argument("--modes", default="full,lora,lora-adapters-only")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from zhgpt.data.chat_builtin import sentiment_conversations
    from zhgpt.inference.chat_eval import hf_answer_accuracy

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ZHGPT_HOME", str(work))
    zhgpt = [sys.executable, "-m", "zhgpt"]
    result: dict = {"steps": args.steps}
    base = Path(args.base) if args.base else work / "base"
    if not args.base:
        if not (base / "run.json").is_file() or json.loads((base / "run.json").read_text())["status"] != "completed":
            shutil.rmtree(base, ignore_errors=True)
            result["base"] = run(zhgpt + ["train", "--max-steps", str(args.base_steps), "--out", str(base), "--no-report"])
    result["base_run"] = str(base)
    train, val = sentiment_conversations("train"), sentiment_conversations("val")
    write_openai(train, work / "train.jsonl")
    write_openai(val, work / "val.jsonl")
    result["data"] = {"train": len(train), "val": len(val)}
    for mode in args.modes.split(","):
        out = work / f"sft-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = zhgpt + ["sft", "--init-from", str(base), "--data", str(work / "train.jsonl"), "--val-data",
                       str(work / "val.jsonl"), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--out", str(out), "--no-report"] + MODES[mode]
        timing = run(cmd)
        acc = hf_answer_accuracy(out / "final", val, max_new_tokens=4)
        result[mode] = {**timing, **final_metrics(out), "hf_accuracy": acc["accuracy"], "hf_scored": acc["n"],
                        "hf_too_long": acc["too_long"], "hf_eval_cpu_s": acc["cpu_seconds"],
                        "examples": acc["examples"], "command": " ".join(cmd[2:])}
        print(json.dumps(result[mode], ensure_ascii=False, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print("\n| mode | steps | accuracy (transformers, held-out) | scored | CPU time | wall |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        r = result[mode]
        print(f"| {mode} | {args.steps} | {r['hf_accuracy']:.1%} | {r['hf_scored']} | {r['cpu_s']:.0f} s | {r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
