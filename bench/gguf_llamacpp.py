"""GGUF in llama.cpp vs zhgpt itself, on one model: file size, bits/char on pd1998 val, decode tokens/s and
greedy agreement with zhgpt fp32, for GGUF f16 / q8_0 / q4_0 beside zhgpt fp32 and int8.

    python bench/gguf_llamacpp.py --model runs/NAME [--val ../shared/data/pd1998/val.txt] [--max-chars 60000]
    python bench/gguf_llamacpp.py --model runs/NAME --sizes-at small   # also: file sizes at a preset's shape

File sizes at a preset's shape (``--sizes-at``) come from that shape, untrained, with the run's tokenizer:
a file's size depends on the shape and the per-tensor types only, not on the values.

Bits/char: every model scores the same token windows (the val lines, cleaned as `zhgpt data prepare` cleans
training text (NFKC), joined by <|endoftext|>, cut into
non-overlapping windows of the model's context), so the numbers differ only by the arithmetic.
Decode speed: greedy, batch 1, 2 threads, the same prompt and token count, the engines timed alternately.
Greedy agreement: the share of 64 greedy tokens, over 8 prompts, equal to zhgpt fp32's, up to the first
difference (after that the texts diverge and comparing positions means nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zhgpt.data.clean import normalize  # noqa: E402
from zhgpt.inference import llamacpp  # noqa: E402
from zhgpt.inference.gguf_export import export_gguf  # noqa: E402
from zhgpt.model.engine import Engine, SamplingParams  # noqa: E402
from zhgpt.model.quantize import quantize_int8  # noqa: E402
from zhgpt.training.runs import load_for_inference, resolve_model_path  # noqa: E402

PROMPTS = ["中国的经济", "新华社北京", "今年以来，", "人民群众", "改革开放", "他说：“", "在科学研究中", "１９９８年"]


@torch.no_grad()
def zhgpt_nats(model, ids: list[int], block: int) -> float:
    total = 0.0
    for chunk in llamacpp.windows(ids, block):
        x = torch.tensor([chunk[:-1]])
        logits = model(x)[0][0].double()
        total -= float(torch.log_softmax(logits, -1)[torch.arange(len(chunk) - 1), torch.tensor(chunk[1:])].sum())
    return total


def zhgpt_greedy(engine: Engine, ids: list[int], n: int) -> tuple[list[int], float]:
    p = SamplingParams(max_new_tokens=n, temperature=0, stop_at_eot=False)
    t = time.perf_counter()
    out = [int(t_[0]) for t_ in engine.generate_ids(ids, p)]
    return out, len(out) / (time.perf_counter() - t)


def llama_greedy(llm, ids: list[int], n: int) -> tuple[list[int], float]:
    t = time.perf_counter()
    out = llamacpp.greedy(llm, ids, n)      # includes the prompt's forward pass, as zhgpt_greedy does
    return out, n / (time.perf_counter() - t)


def agreement(ref: list[int], got: list[int]) -> int:
    n = 0
    for a, b in zip(ref, got):
        if a != b:
            break
        n += 1
    return n


def sizes_at(preset: str, tokdir: Path, work: Path, eot: int) -> dict:
    """f16 / q8_0 / q4_0 file sizes (MB) of the ``preset`` shape with the run's tokenizer's vocabulary."""
    from zhgpt.data.tokenizer import load_tokenizer
    from zhgpt.model.gpt import GPT
    from zhgpt.model.presets import model_config
    vocab = load_tokenizer(tokdir).get_vocab_size()
    cfg = model_config(preset, vocab_size=-(-vocab // 64) * 64)
    model = GPT(cfg).eval()
    out = {"preset": preset, "vocab": cfg.vocab_size, "params": sum(p.numel() for p in model.parameters())}
    for q in ("f16", "q8_0", "q4_0"):
        f, notes = export_gguf(model, tokdir, work / f"{preset}-{q}.gguf", q, eot, force=True)
        out[q] = f.stat().st_size / 2**20
        f.unlink()
    out["q4_0/f16"] = out["q4_0"] / out["f16"]
    print(f"{preset} shape ({out['params'] / 1e6:.1f}M parameters, vocab {cfg.vocab_size}): f16 {out['f16']:.1f} MB, "
          f"q8_0 {out['q8_0']:.1f} MB, q4_0 {out['q4_0']:.1f} MB = {out['q4_0/f16']:.3f}x f16", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--val", default=str(ROOT.parent / "shared/data/pd1998/val.txt"))
    ap.add_argument("--max-chars", type=int, default=60000)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--work", default=str(ROOT / "bench/out/gguf"))
    ap.add_argument("--json", default=str(ROOT / "bench/results/gguf_llamacpp.json"))
    ap.add_argument("--sizes-at", default="", help="also report the file sizes at this preset's shape (e.g. small)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok, info = load_for_inference(args.model)
    _, ckpt = resolve_model_path(args.model)
    tokdir = ckpt / "tokenizer"
    block, eot = model.cfg.block_size, info.get("eot_id", 0)
    lines, n = [], 0
    for line in Path(args.val).read_text(encoding="utf-8").splitlines():
        # as `zhgpt data prepare` cleaned the training text (NFKC: full-width digits and letters -> half-width)
        line = normalize(line)
        if line.strip() and n < args.max_chars:
            lines.append(line)
            n += len(line)
    chars = sum(len(x) for x in lines)
    ids = []
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        ids += [eot] + enc.ids
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bpc = lambda nats: nats / chars / math.log(2)  # noqa: E731
    rows = []
    ref = [zhgpt_greedy(Engine(model, tok, eot), p, args.new_tokens)[0] for p in prompts]
    int8 = quantize_int8(model)
    for name, m in (("zhgpt fp32", model), ("zhgpt int8", int8)):
        eng = Engine(m, tok, eot)
        outs = [zhgpt_greedy(eng, p, args.new_tokens) for p in prompts]
        unique = {t.data_ptr(): t for t in m.state_dict().values() if torch.is_tensor(t)}   # tied rows once
        size = sum(t.numel() * t.element_size() for t in unique.values())
        rows.append({"format": name, "size_mb": size / 2**20, "bpc": bpc(zhgpt_nats(m, ids, block)),
                     "tokens_per_s": float(np.median([o[1] for o in outs])),
                     "greedy_agree": sum(agreement(r, o[0]) for r, o in zip(ref, outs)) / (len(ref) * args.new_tokens)})
        print(rows[-1], flush=True)
    for q in ("f16", "q8_0", "q4_0"):
        f, notes = export_gguf(model, tokdir, work / f"model-{q}.gguf", q, eot, force=True)
        llm = llamacpp.load(f, n_ctx=block, threads=2)
        assert all(llamacpp.tokenize(llm, p) == i for p, i in zip(PROMPTS, prompts))
        outs = [llama_greedy(llm, p, args.new_tokens) for p in prompts]
        rows.append({"format": f"llama.cpp {q}", "size_mb": f.stat().st_size / 2**20,
                     "bpc": bpc(llamacpp.nats(llm, ids, block)[0]), "tokens_per_s": float(np.median([o[1] for o in outs])),
                     "greedy_agree": sum(agreement(r, o[0]) for r, o in zip(ref, outs)) / (len(ref) * args.new_tokens),
                     "notes": notes})
        print(rows[-1], flush=True)
    result = {"model": str(args.model), "shape": {k: getattr(model.cfg, k) for k in
                                                  ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
              "val_chars": chars, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    if args.sizes_at:
        result["sizes_at"] = sizes_at(args.sizes_at, tokdir, work, eot)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print("| format | size MB | bits/char | decode tok/s | greedy agreement |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['size_mb']:.1f} | {r['bpc']:.3f} | {r['tokens_per_s']:.0f} | {r['greedy_agree']:.0%} |")


if __name__ == "__main__":
    main()
