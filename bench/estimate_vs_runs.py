"""`zhgpt estimate`'s time against measured runs: predicted vs measured tokens/s for finished run folders.

    python bench/estimate_vs_runs.py RUN_DIR [RUN_DIR ...]

For each run, the model shape and tokens per step come from its config.json/run.json, the peak and the
expected MFU from ``estimate.throughput`` exactly as `zhgpt estimate` takes them on this machine, with torch's
thread count set to the run's first (the cached CPU peak is per thread count, so a run pinned to one thread
is predicted from the one-thread peak). Measured: the median logged tokens/s (training steps only), and the
run's tokens_seen / elapsed_s (which also pays for evaluations, samples and checkpoints). Nothing is trained.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zhgpt.model.gpt import ModelConfig  # noqa: E402
from zhgpt.training import estimate as E  # noqa: E402


def check(run_dir: Path) -> dict:
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("tokens_per_sec") and r.get("mfu")]
    model = ModelConfig(**cfg["model"])
    batch = cfg["train"]["batch_size"] * cfg["train"].get("grad_accum", 1) * run.get("world_size", 1)
    seq_len = run["tokens_per_step"] // batch
    torch.set_num_threads(run["hardware"]["threads"])
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(run["dtype"], "fp32")
    peak, peak_src, mfu, mfu_src = E.throughput(E.EstimateConfig(precision=precision))
    est = E.estimate(model, batch, seq_len, precision=precision, peak=peak, mfu=mfu,
                     tokens_per_step=run["tokens_per_step"])
    predicted = est.tokens_per_step / est.step_time_s
    logged = statistics.median(r["tokens_per_sec"] for r in rows)
    overall = run["tokens_seen"] / run["elapsed_s"]
    return {"run": str(run_dir), "threads": run["hardware"]["threads"], "dtype": run["dtype"],
            "tokens": run["tokens_seen"], "elapsed_s": run["elapsed_s"], "peak_tflops": peak / 1e12,
            "peak_source": peak_src, "mfu_assumed": mfu, "mfu_measured": statistics.median(r["mfu"] for r in rows),
            "run_peak_tflops": statistics.median(r["tokens_per_sec"] * est.flops_per_token / r["mfu"]
                                                 for r in rows) / 1e12,
            "tps_predicted": predicted, "tps_logged": logged, "tps_overall": overall,
            "time_predicted_s": run["tokens_seen"] / predicted,
            "error_vs_logged": predicted / logged - 1, "error_vs_overall": predicted / overall - 1}


def main(argv: list[str]) -> None:
    results = [check(Path(d)) for d in argv]
    print(json.dumps(results, indent=1))
    print("\n| run | threads | peak used (TFLOP/s) | MFU assumed / measured | tokens/s predicted | logged (median) "
          "| tokens/elapsed | time predicted / measured | error vs logged | vs elapsed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['threads']} | {r['peak_tflops']:.3f} (run: {r['run_peak_tflops']:.3f}) "
              f"| {r['mfu_assumed']:.1%} / {r['mfu_measured']:.1%} | {r['tps_predicted']:,.0f} | {r['tps_logged']:,.0f} "
              f"| {r['tps_overall']:,.0f} | {r['time_predicted_s']:.0f} s / {r['elapsed_s']:.0f} s "
              f"| {r['error_vs_logged']:+.0%} | {r['error_vs_overall']:+.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
