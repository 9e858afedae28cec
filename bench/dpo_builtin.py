"""The default chat path on the built-in data: base -> `zhgpt sft` -> `zhgpt dpo`, and what DPO changes.

    python bench/dpo_builtin.py --base runs/base          # a pre-trained run (e.g. bench/sft_sentiment.py's)

1. `zhgpt sft --init-from BASE --max-steps N` on the built-in SFT set (review sentiment + news continuation);
2. `zhgpt dpo --init-from SFT --max-steps M` on its default data, the built-in continuation pairs (the real next
   text chosen, a same-length loop on its first 12 characters rejected);
3. from the DPO run's metrics: held-out preference accuracy (share of pairs whose chosen answer the model
   gives the higher log-probability) at step 0, which is the SFT model, and at the end; reward accuracy and
   margin; both models scored again here on all held-out pairs of both built-in tasks (sentiment: the right
   label chosen, the wrong one rejected), to show what DPO did to the task it was not trained on;
4. the repetition rate (share of repeated 4-grams) and mean length of greedy continuations by both models.

Writes bench/results/dpo_builtin.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_sentiment import run  # noqa: E402


@torch.no_grad()
def preference_accuracy(model_dir: Path, pairs, tok) -> dict:
    """Share of pairs with log p(chosen) > log p(rejected) under the model in ``model_dir``, per task."""
    from zhgpt.training.dpo import sequence_logps
    from zhgpt.training.pair_data import encode_pairs, pair_batch
    from zhgpt.training.runs import load_for_inference
    model, _, _ = load_for_inference(model_dir)
    out = {}
    for task in ("sentiment", "people-daily"):
        split = encode_pairs(task, [p for p in pairs if task in p.source], tok, model.cfg.block_size)
        wins = 0
        for i in range(0, len(split.examples), 32):
            rows = list(range(i, min(i + 32, len(split.examples))))
            x, y = pair_batch(split.examples, split.rejected, rows, 0)
            lp = sequence_logps(model.eval(), x, y)
            wins += int((lp[:len(rows)] > lp[len(rows):]).sum())
        out[task] = {"pairs": len(split.examples), "pref_acc": wins / max(len(split.examples), 1)}
    return out


def continuation_repetition(model_dir: Path, pairs, n: int = 40) -> dict:
    """Greedy answers to the first ``n`` held-out continuation questions: their share of repeated 4-grams and
    their mean length (a model can stop looping by stopping early)."""
    from zhgpt.inference.loading import load_engine
    from zhgpt.model.engine import SamplingParams
    from zhgpt.report.chat import repetition_rate
    from zhgpt.training.sft import chat_prompt
    lm = load_engine(model_dir)
    texts = []
    for p in [p for p in pairs if "people-daily" in p.source][:n]:
        texts.append(lm.engine.generate(chat_prompt(p.context[-1].content),
                                        SamplingParams(max_new_tokens=60, temperature=0)).texts[0])
    return {"rep4": repetition_rate(texts), "mean_chars": sum(map(len, texts)) / len(texts), "examples": texts[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="", help="the pre-trained run SFT starts from (unless --sft-run)")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--dpo-steps", type=int, default=200)
    ap.add_argument("--dpo-args", default="", help="more zhgpt dpo flags, e.g. '--rpo-alpha 1'")
    ap.add_argument("--sft-run", default="", help="an SFT run to start from instead of training one")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "dpo_builtin"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dpo_builtin.json"))
    args = ap.parse_args()

    from zhgpt.data.chat_builtin import builtin_preferences
    from zhgpt.data.tokenizer import load_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ZHGPT_HOME", str(work))
    zhgpt = [sys.executable, "-m", "zhgpt"]
    sft, dpo = Path(args.sft_run) if args.sft_run else work / "sft", work / "dpo"
    for d in ([] if args.sft_run else [sft]) + [dpo]:
        shutil.rmtree(d, ignore_errors=True)
    result = {"base": args.base, "dpo_args": args.dpo_args}
    if not args.sft_run:
        result["sft"] = run(zhgpt + ["sft", "--init-from", args.base, "--max-steps", str(args.sft_steps), "--out",
                                     str(sft), "--no-report"])
    result["dpo"] = run(zhgpt + ["dpo", "--init-from", str(sft), "--max-steps", str(args.dpo_steps), "--out", str(dpo),
                                 "--no-report"] + args.dpo_args.split())
    evals = [json.loads(line) for line in open(dpo / "metrics.jsonl", encoding="utf-8") if "val_margin" in line]
    keys = ("val_pref_acc", "val_reward_acc", "val_margin", "val_loss", "val_answer_acc")
    result["dpo_evals"] = [{"step": e["step"], **{k: e.get(k) for k in keys}} for e in evals]
    val = builtin_preferences("val")
    tok = load_tokenizer(dpo / "tokenizer")
    for name, d in (("sft_model", sft / "final"), ("dpo_model", dpo / "final")):
        result[name] = {"preference": preference_accuracy(d, val, tok), "continuations": continuation_repetition(d, val)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False, indent=1))
    print("\n| model | pref. acc. sentiment | pref. acc. continuation | repeated 4-grams in continuations | their mean length |")
    print("|---|---|---|---|---|")
    for name in ("sft_model", "dpo_model"):
        r = result[name]
        print(f"| {name} | {r['preference']['sentiment']['pref_acc']:.1%} | "
              f"{r['preference']['people-daily']['pref_acc']:.1%} | {r['continuations']['rep4']:.1%} | "
              f"{r['continuations']['mean_chars']:.0f} chars |")


if __name__ == "__main__":
    main()
