"""`zhgpt estimate` against torch.cuda.max_memory_allocated() on a real GPU.

    python bench/bench_estimate_gpu.py                # cpu-tiny..large, batch 1/4/16, bf16, +/- checkpointing
    python bench/bench_estimate_gpu.py --quick        # cpu-tiny and small, batch 4, < 1 minute
    python bench/bench_estimate_gpu.py --out FILE.md  # the Markdown table (default bench/out/estimate_gpu.md)

Each configuration runs the step zhgpt/train.py runs on CUDA: forward under autocast (the loop keeps the
logits, ``_, loss = model(x, y)``), backward, clip_grad_norm_(1.0), fused AdamW, zero_grad(set_to_none).
The first step creates AdamW's state; the peak is measured on the second, the steady state of a run.
max_memory_allocated() counts tensors only: not the CUDA context (~0.5 GiB) nor the caching allocator's
slack, which the estimate's --memory fit leaves 15% headroom for. Exits with a message without CUDA.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from zhgpt.training import estimate as E  # noqa: E402
from zhgpt.model.gpt import GPT  # noqa: E402
from zhgpt.training.optim import param_groups  # noqa: E402
from zhgpt.model.presets import model_config  # noqa: E402

GiB = 2 ** 30


def measure(preset: str, batch: int, dtype: torch.dtype, ckpt: bool) -> int | None:
    """Peak bytes of the second training step, or None on out-of-memory."""
    cfg = model_config(preset, vocab_size=None)
    model = opt = x = y = None
    try:
        model = GPT(cfg).cuda().train()
        model.grad_checkpointing = ckpt
        opt = torch.optim.AdamW(param_groups(model, 0.1, muon=False)[1], lr=1e-4, betas=(0.9, 0.95), fused=True)
        x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device="cuda")
        y = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device="cuda")
        for i in range(2):
            if i == 1:   # everything allocated from here counts: weights, AdamW state, activations
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            del _, loss
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del model, opt, x, y
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["cpu-tiny", "tiny", "small", "medium", "large"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--quick", action="store_true", help="cpu-tiny and small at batch 4 only")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "estimate_gpu.md"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_estimate_gpu: no CUDA device here; run it on a machine with a GPU "
              "(the estimate itself is checked on CPU by tests/training/test_estimate.py)")
        sys.exit(0)
    if args.quick:
        args.presets, args.batches = ["cpu-tiny", "small"], [4]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    total_mem = torch.cuda.get_device_properties(0).total_memory
    rows = []
    for preset in args.presets:
        cfg = model_config(preset, vocab_size=None)
        for batch in args.batches:
            for ckpt in (False, True):
                est = E.estimate(cfg, batch, precision=args.precision, grad_checkpointing=ckpt)
                if est.total > 0.95 * total_mem:
                    rows.append((preset, batch, ckpt, None, est.total, "skipped (estimate > GPU memory)"))
                    continue
                got = measure(preset, batch, dtype, ckpt)
                note = "OOM" if got is None else f"{est.total / got:.2f}"
                rows.append((preset, batch, ckpt, got, est.total, note))
                print(f"{preset:9s} batch {batch:3d} ckpt {ckpt!s:5s} measured "
                      f"{'OOM' if got is None else f'{got / GiB:6.2f} GiB'} estimated {est.total / GiB:6.2f} GiB "
                      f"-> {note}", flush=True)
    lines = [f"## zhgpt estimate vs max_memory_allocated ({datetime.date.today()})", "",
             f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.precision} autocast, fused AdamW, "
             "context = block_size, vocab 32000 (cpu-tiny: 4096). Ratio = estimate / measured.", "",
             "| preset | batch | grad ckpt | measured | estimated | ratio |", "|---|---:|---|---:|---:|---:|"]
    for preset, batch, ckpt, got, est, note in rows:
        lines.append(f"| {preset} | {batch} | {'yes' if ckpt else 'no'} | "
                     f"{'–' if got is None else f'{got / GiB:.2f} GiB'} | {est / GiB:.2f} GiB | {note} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print("\n" + text + f"\nwrote {out}")


if __name__ == "__main__":
    main()
