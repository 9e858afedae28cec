"""int8 vs fp32 on CPU: size on disk, generation tokens/s, and bits per character on the validation text.

    python bench/bench_int8.py --model runs/NAME [--val ../shared/data/pd1998/val.txt] [--results]

Both models are loaded in this process and timed alternately (the host may be shared), greedy,
same prompt and token count. BPC comes from `zhgpt eval` on the same file for both.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zhgpt.training.checkpoint import resolve_model_path  # noqa: E402
from zhgpt.training.runs import load_for_inference
from zhgpt.model.engine import Engine, SamplingParams  # noqa: E402
from zhgpt.inference.evaluate import EvalConfig, main as eval_main  # noqa: E402
from zhgpt.inference.export import ExportConfig, main as export_main  # noqa: E402


def folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and "tokenizer" not in f.parts]
    return sum(f.stat().st_size for f in files) / 2 ** 20


def tokens_per_sec(engine: Engine, prompt: str, n: int) -> float:
    p = SamplingParams(max_new_tokens=n, temperature=0, stop_at_eot=False)
    t = time.perf_counter()
    count = sum(1 for _ in engine.generate_ids(engine.encode(prompt), p))
    return count / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run folder or checkpoint")
    ap.add_argument("--val", default=str(ROOT.parent / "shared" / "data" / "pd1998" / "val.txt"))
    ap.add_argument("--max-chars", type=int, default=30000, help="characters of --val to score (0 = all)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()

    kind, ckpt = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        q_dir = export_main(ExportConfig(model=str(ckpt), quantize="int8", out=str(Path(tmp) / "int8")))
        fp_model, tok, info = load_for_inference(ckpt)
        q_model, _, _ = load_for_inference(q_dir)
        engines = {"fp32": Engine(fp_model, tok, info["eot_id"]), "int8": Engine(q_model, tok, info["eot_id"])}
        prompt = "中国的历史"
        speed = {k: [] for k in engines}
        for _ in range(args.rounds):           # alternate so load on a shared host hits both alike
            for k, e in engines.items():
                speed[k].append(tokens_per_sec(e, prompt, args.tokens))
        bpc = {}
        for k, path in (("fp32", str(ckpt)), ("int8", str(q_dir))):
            bpc[k] = eval_main(EvalConfig(files=[args.val], model=path, max_chars=args.max_chars))[0]["bpc"]
        sizes = {"fp32": folder_mb(Path(ckpt) / "model.safetensors"), "int8": folder_mb(Path(q_dir) / "model_int8.pt")}
    n_params = fp_model.num_params()
    rows = [(k, f"{sizes[k]:.1f}", f"{statistics.median(speed[k]):.1f}", f"{bpc[k]:.4f}") for k in engines]
    table = ["| weights | size on disk (MiB) | greedy tokens/s (median of %d) | val bits/char |" % args.rounds,
             "|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    change = bpc["int8"] - bpc["fp32"]
    summary = (f"model {ckpt} ({n_params / 1e6:.2f}M parameters), {args.tokens} new tokens per run, BPC on the first "
               f"{args.max_chars or 'all'} characters of {Path(args.val).name}; int8/fp32 speed "
               f"{statistics.median(speed['int8']) / statistics.median(speed['fp32']):.2f}x, size "
               f"{sizes['int8'] / sizes['fp32']:.2f}x, BPC change {change:+.4f} ({100 * change / bpc['fp32']:+.2f}%)")
    text = "\n".join(table) + "\n\n" + summary + "\n"
    print(text)
    if args.results:
        import platform
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## int8 dynamic quantisation vs fp32 (CPU)\n\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads, torch {torch.__version__}. Command: `python bench/bench_int8.py "
                    f"--model {args.model}`\n\n{text}")


if __name__ == "__main__":
    main()
