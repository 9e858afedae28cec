"""Training throughput: zhgpt's training step vs Hugging Face GPT2LMHeadModel of the same shape.

    python bench/bench_train.py              # both shapes, eager / bf16 autocast / torch.compile
    python bench/bench_train.py --quick      # smoke run, < 1 minute
    python bench/bench_train.py --results    # also write the section in bench/RESULTS.md
    python bench/bench_train.py --profile    # + torch.profiler top ops of each model's step
    python bench/bench_train.py --proto      # + prototype changes to the step (see PROTOTYPES)

A step is zhgpt's own `zhgpt.training.step.train_step`, the one `zhgpt train` runs: forward (fp32, or under
bf16 autocast), loss, backward, clip_grad_norm_(1.0), AdamW from build_optimizers (decay on matrices only,
betas 0.9/0.95, not fused on CPU), zero_grad(set_to_none), the loss read back. The Hugging Face model runs
the same train_step with the same weights (the export mapping of zhgpt.model.hf, so both compute the same
function: the initial losses are checked equal), the same batch (People's Daily windows), the same
optimizer and the same thread count; only its loss_fn differs: HF's own loss (labels=y, shift_labels=y, so
it predicts the same B*T targets). Every variant is timed in one process in rotating order, so the ratios hold under load.
Peak memory is measured in a fresh subprocess per variant (VmHWM minus the RSS before the first step).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

if "--warm-compile-cache" not in sys.argv:
    # Measure a cold torch.compile (as a user's first run sees it), not inductor's on-disk cache of our last run.
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from zhgpt.model.gpt import GPT, ModelConfig  # noqa: E402
from zhgpt.training.distributed import Dist  # noqa: E402
from zhgpt.training.optim import Optimizers, build_optimizers, param_groups  # noqa: E402
from zhgpt.training.step import lm_loss, train_step  # noqa: E402

# bf16-muon: zhgpt only, what `zhgpt train` does by default on this CPU (bf16 autocast + Muon for the block
# matrices); the AdamW modes are the like-for-like comparison with Hugging Face.
MODES = ("eager", "bf16", "compile", "compile-bf16", "bf16-muon")
CHAR_VOCAB = 4688      # distinct characters of People's Daily 1998-01 (shared/README.md)


# ------------------------------------------------------------------------- shapes and data

def shapes(quick: bool) -> dict[str, dict]:
    from zhgpt.model.presets import get_preset
    from zhgpt.training.train import pad_vocab
    m, t = get_preset("cpu-tiny")
    out = {
        "a": dict(desc=f"4L/4H/256d ctx256 batch16 vocab {CHAR_VOCAB} (char)",
                  model=dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=CHAR_VOCAB), batch=16),
        "b": dict(desc=f"cpu-tiny preset: {m['n_layer']}L/{m['n_head']}H/{m['n_embd']}d ctx{m['block_size']} "
                       f"batch{t['batch_size']} vocab {pad_vocab(m['vocab_size'])} ({t.get('tokenizer', '?')})",
                  model={**m, "vocab_size": pad_vocab(m["vocab_size"])}, batch=t["batch_size"],
                  extra={k: v for k, v in m.items() if k not in ("n_layer", "n_head", "n_embd", "block_size",
                                                                    "vocab_size")}),
    }
    if quick:   # same shapes, a quarter of the batch: the smoke run only checks that everything runs
        for s in out.values():
            s["batch"] = max(1, s["batch"] // 4)
            s["desc"] += " [quick: batch/4]"
    return out


def batch_windows(vocab: int, B: int, T: int, seed: int = 0):
    """(x, y) from People's Daily as character ids (ids >= vocab folded in) or random ids without the file."""
    g = np.random.default_rng(seed)
    if common.PD_TRAIN.is_file():
        text = common.PD_TRAIN.read_text(encoding="utf-8")[:400_000]
        chars = sorted(set(text))
        lut = {c: i % vocab for i, c in enumerate(chars)}
        ids = np.fromiter((lut[c] for c in text), dtype=np.int64, count=len(text))
        starts = g.integers(0, len(ids) - T - 1, size=B)
        w = np.stack([ids[s:s + T + 1] for s in starts])
    else:
        w = g.integers(0, vocab, size=(B, T + 1))
    w = torch.from_numpy(w)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


# ------------------------------------------------------------------------- the two models

def build_zhgpt(mfields: dict) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**mfields))


def build_hf(zmodel: GPT):
    """GPT2LMHeadModel with zhgpt's weights (the export mapping), SDPA attention, no dropout."""
    from transformers import AutoModelForCausalLM
    from zhgpt.model.hf import hf_config, to_hf_state_dict
    _, sd = to_hf_state_dict(zmodel)
    cfg = hf_config(zmodel.cfg)
    cfg._attn_implementation = "sdpa"
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    hf.load_state_dict(sd, strict=False)
    hf.config.use_cache = False
    return hf


def optimizer_for(model, fused: bool = False, muon: bool = False) -> Optimizers:
    """`zhgpt train`'s optimizers (build_optimizers) for both models: HF's GPT-2 parameter names follow the same
    rule (matrices decay; biases, norms, embeddings don't). ``fused``: a prototype, the CPU fused AdamW kernel
    (build_optimizers fuses on CUDA only)."""
    if fused:
        return Optimizers([torch.optim.AdamW(param_groups(model, 0.1, muon=False)[1], lr=1e-3, betas=(0.9, 0.95),
                                             fused=True)])
    return build_optimizers(model, "muon" if muon else "adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")


def hf_loss(model, batch):
    """HF's own loss on the same B*T targets (labels=y, shift_labels=y)."""
    x, y = batch
    return model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss


def make_step(model, kind: str, mode: str, x, y, fused_adamw: bool = False, threads: int | None = None,
              loss_fn=None):
    """A closure doing one optimizer step with zhgpt's own train_step (grad_accum 1, clip 1.0, no fp16 scaler).
    ``loss_fn(model, batch)`` defaults to zhgpt's LM loss, or HF's for the HF model."""
    amp = torch.bfloat16 if "bf16" in mode else torch.float32
    fwd = torch.compile(model) if mode.startswith("compile") else model
    opt = optimizer_for(model, fused_adamw, muon=mode.endswith("muon"))
    loss_fn = loss_fn or (lm_loss if kind == "zhgpt" else hf_loss)
    scaler, dist = torch.amp.GradScaler(enabled=False), Dist("cpu")
    model.train()

    def step():
        prev = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        loss, _ = train_step(fwd, opt, scaler, [(x, y)], loss_fn, device="cpu", amp_dtype=amp, dist=dist,
                             grad_accum=1, grad_clip=1.0)
        if threads:
            torch.set_num_threads(prev)
        return loss

    return step


# ------------------------------------------------------------------------- prototypes (changes to the step)

class ChunkedLinearCE(torch.autograd.Function):
    """lm_head + cross-entropy over row chunks, never holding the (N, V) fp32 logits: each chunk's
    logits are computed in the autocast dtype, log-softmaxed in fp32, and recomputed in backward."""

    @staticmethod
    def forward(ctx, h, w, y, chunk):
        N = h.size(0)
        total = h.new_zeros((), dtype=torch.float32)
        lse_all = torch.empty(N, dtype=torch.float32)
        for i in range(0, N, chunk):
            logits = (h[i:i + chunk] @ w.t()).float()
            lse = torch.logsumexp(logits, -1)
            lse_all[i:i + chunk] = lse
            total += (lse - logits.gather(1, y[i:i + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(h, w, y, lse_all)
        ctx.chunk = chunk
        return total / N

    @staticmethod
    def backward(ctx, g):
        h, w, y, lse_all = ctx.saved_tensors
        N, chunk = h.size(0), ctx.chunk
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=torch.float32)
        scale = g / N
        for i in range(0, N, chunk):
            hi = h[i:i + chunk]
            p = ((hi @ w.t()).float() - lse_all[i:i + chunk, None]).exp_()
            p[torch.arange(p.size(0)), y[i:i + chunk]] -= 1.0
            p = (p * scale).to(h.dtype)
            gh[i:i + chunk] = p @ w
            gw += (p.t() @ hi).float()
        return gh, gw.to(w.dtype), None, None


def proto_forward(model: GPT, chunked_ce: bool):
    """zhgpt's forward with the loss swapped (same blocks, same weights): the chunked linear+CE, or
    (chunked_ce=False) cross-entropy straight on the autocast-dtype logits, without the fp32 copy."""
    def fwd(idx, targets):
        B, T = idx.shape
        tr = model.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(T))
        for block in tr.h:
            x = block(x)
        x = tr.ln_f(x)
        if not chunked_ce:
            logits = model.lm_head(x)
            return logits, F.cross_entropy(logits.view(B * T, -1), targets.reshape(-1))
        h = x.reshape(B * T, -1)
        w = model.lm_head.weight
        if torch.is_autocast_enabled("cpu"):
            h, w = h.to(torch.bfloat16), w.to(torch.bfloat16)
        return None, ChunkedLinearCE.apply(h, w, targets.reshape(-1), 1024)
    return fwd


def proto_loss(fwd):
    """A train_step loss_fn calling the prototype's forward (same weights) in place of the model's."""
    def loss_fn(_, batch):
        return fwd(*batch)[1]
    return loss_fn


PROTOTYPES = {
    # name: (mode, description)
    "fused-adamw": ("eager", "AdamW(fused=True) — the CPU fused kernel (build_optimizers fuses only on CUDA)"),
    "fused-adamw-bf16": ("bf16", "bf16 autocast + AdamW(fused=True)"),
    "1-thread": ("eager", "torch.set_num_threads(1) (the other core is busy on a shared host)"),
    "1-thread-bf16": ("bf16", "bf16 autocast with torch.set_num_threads(1)"),
    "chunked-ce-bf16": ("bf16", "bf16 autocast + lm_head/cross-entropy in chunks of 1024 rows (no N*V fp32 logits)"),
    "chunked-ce-bf16-fused": ("bf16", "bf16 autocast + chunked CE + fused AdamW"),
    "bf16-logits-ce": ("bf16", "bf16 autocast, cross-entropy on the bf16 logits (no .float() copy of N*V)"),
}


def make_proto_step(name: str, mfields: dict, x, y):
    model = build_zhgpt(mfields)
    mode = PROTOTYPES[name][0]
    fused = "fused" in name
    threads = 1 if name.startswith("1-thread") else None
    loss_fn = None
    if name.startswith("chunked-ce") or name == "bf16-logits-ce":
        loss_fn = proto_loss(proto_forward(model, name.startswith("chunked-ce")))
    return make_step(model, "zhgpt", mode, x, y, fused_adamw=fused, threads=threads, loss_fn=loss_fn), model


# ------------------------------------------------------------------------- memory probe (subprocess)

def mem_probe(shape: str, kind: str, mode: str, quick: bool) -> dict:
    """Run in a fresh process: build the variant, then 3 steps; peak RSS growth over the RSS before them."""
    s = shapes(quick)[shape]
    x, y = batch_windows(s["model"]["vocab_size"], s["batch"], s["model"]["block_size"])
    z = build_zhgpt(s["model"])
    if kind.startswith("proto:"):
        step, _ = make_proto_step(kind[6:], s["model"], x, y)
    else:
        model = z if kind == "zhgpt" else build_hf(z)
        step = make_step(model, kind, mode, x, y)
    base = common.rss_mb()
    common.reset_peak_rss()
    for _ in range(3):
        step()
    return {"base_mb": round(base, 1), "peak_mb": round(common.peak_rss_mb(), 1),
            "growth_mb": round(common.peak_rss_mb() - base, 1)}


def run_probe(shape: str, kind: str, mode: str, quick: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--mem-probe", f"{shape}:{kind}:{mode}", "--threads", str(threads)]
    if quick:
        cmd.append("--quick")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    print(f"  memory probe {shape}:{kind}:{mode} failed: {r.stderr[-400:]}", file=sys.stderr)
    return {}


# ------------------------------------------------------------------------- profile

def profile_table(step, n_rows: int = 12) -> tuple[str, list[tuple[str, float, float]]]:
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    avgs = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in avgs) or 1
    rows = [(e.key, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total) for e in avgs[:n_rows]]
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n_rows), rows


# ------------------------------------------------------------------------- main

def bench_shape(name: str, s: dict, modes: list[str], args) -> dict:
    mf, B = s["model"], s["batch"]
    T = mf["block_size"]
    x, y = batch_windows(mf["vocab_size"], B, T)
    print(f"\n=== shape {name}: {s['desc']} ===", flush=True)

    # Same function check: zhgpt and HF with the same weights give the same initial loss.
    z0 = build_zhgpt(mf)
    h0 = build_hf(z0)
    with torch.no_grad():
        lz = z0(x, y)[1].item()
        lh = h0(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss.item()
    print(f"initial loss zhgpt {lz:.5f} | HF {lh:.5f} | ln V = {math.log(mf['vocab_size']):.5f}")
    assert abs(lz - lh) < 1e-3, "zhgpt and HF do not compute the same function"
    del z0, h0

    variants, warm = {}, {}
    for mode in modes:
        for kind in ("zhgpt", "hf"):
            if kind == "hf" and mode.endswith("muon"):
                continue
            z = build_zhgpt(mf)
            model = z if kind == "zhgpt" else build_hf(z)
            step = make_step(model, kind, mode, x, y)
            t = time.perf_counter()
            try:
                step()
                step()
            except Exception as e:        # e.g. a compile failure of one model: report it, keep the others
                print(f"  {kind} {mode}: FAILED ({type(e).__name__}: {str(e)[:200]})", flush=True)
                continue
            warm[(kind, mode)] = time.perf_counter() - t
            variants[(kind, mode)] = step
            print(f"  built {kind:5s} {mode:12s} first two steps {warm[(kind, mode)]:.1f} s", flush=True)
    protos = [p for p in PROTOTYPES if args.proto and name == "a"]
    for p in protos:
        step, _ = make_proto_step(p, mf, x, y)
        t = time.perf_counter()
        step()
        step()
        warm[("proto", p)] = time.perf_counter() - t
        variants[("proto", p)] = step
        print(f"  built proto {p}", flush=True)

    names = {f"{k[0]}:{k[1]}": fn for k, fn in variants.items()}

    def progress(r, times):
        line = " | ".join(f"{n} {B * T / t[-1]:,.0f}" for n, t in times.items())
        print(f"  round {r + 1}/{args.rounds} tok/s: {line}", flush=True)

    cpu: dict = {}
    times = common.alternate(names, args.rounds, args.steps, progress, cpu=cpu)

    ref = times.get("hf:eager")
    rows, res = [], {}
    for key in variants:
        n = f"{key[0]}:{key[1]}"
        t = times[n]
        med = common.median(t)
        r_ref = common.ratio_stats(ref, t) if ref else (float("nan"),) * 3
        same = times.get(f"hf:{key[1]}") if key[0] == "zhgpt" else None
        r_same = common.ratio_stats(same, t)[0] if same else None
        base = times.get("zhgpt:eager")
        r_zeager = common.ratio_stats(base, t)[0] if base and key[0] != "hf" else None
        compile_s = warm[key] - 2 * med if key[1].startswith("compile") else None
        res[n] = dict(ms=med * 1e3, tps=B * T / med, best_tps=B * T / min(t), vs_hf_eager=r_ref,
                      vs_hf_eager_best=(min(ref) / min(t)) if ref else float("nan"), vs_hf_same=r_same,
                      vs_zhgpt_eager=r_zeager, compile_s=compile_s, cpu_s=common.median(cpu[n]))
    if args.mem:
        print("  memory probes (fresh process per variant) ...", flush=True)
        for key in variants:
            if key[1].startswith("compile") and not args.mem_compile:
                continue
            res[f"{key[0]}:{key[1]}"]["mem"] = run_probe(name, key[0], key[1], args.quick, torch.get_num_threads())
    for n, r in res.items():
        kind, mode = n.split(":", 1)
        mem = r.get("mem") or {}
        rows.append([("zhgpt" if kind == "zhgpt" else "HF GPT2LMHeadModel" if kind == "hf" else "zhgpt proto"),
                     mode, f"{r['ms']:,.0f}", f"{r['tps']:,.0f}", f"{r['best_tps']:,.0f}",
                     f"{r['vs_hf_eager'][0]:.2f}x ({r['vs_hf_eager'][1]:.2f}-{r['vs_hf_eager'][2]:.2f})",
                     f"{r['vs_hf_eager_best']:.2f}x",
                     f"{r['vs_hf_same']:.2f}x" if r["vs_hf_same"] else "",
                     f"{r['vs_zhgpt_eager']:.2f}x" if r["vs_zhgpt_eager"] else "",
                     f"{r['cpu_s']:.2f}",
                     f"{r['compile_s']:.0f}" if r["compile_s"] is not None else "",
                     f"{mem['peak_mb']:,.0f} (+{mem['growth_mb']:,.0f})" if mem else "n/m"])
    headers = ["model", "mode", "ms/step (median)", "tokens/s (median)", "tokens/s (best round)",
               "vs HF eager: median of per-round ratios (range)", "vs HF eager: best vs best", "vs HF same mode",
               "vs zhgpt eager", "CPU s/step", "compile s", "peak RSS MB (+step growth)"]
    table = common.md_table(headers, rows)
    print(table, flush=True)
    out = {"table": table, "res": res, "desc": s["desc"], "init_loss": (lz, lh)}
    if args.profile:
        prof_rows = {}
        for mode in [m for m in ("eager", "bf16") if m in modes]:
            for kind in ("zhgpt", "hf"):
                if (kind, mode) not in variants:
                    continue
                txt, top = profile_table(variants[(kind, mode)])
                print(f"\n--- profile {kind} {mode} (shape {name}) ---\n{txt}")
                prof_rows[f"{kind} {mode}"] = top
        out["profile"] = prof_rows
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 minute): shape a, eager + bf16, 2 rounds")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    ap.add_argument("--shapes", default="a,b", help="a (char 4688 vocab), b (the cpu-tiny preset)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top ops for eager and bf16 steps")
    ap.add_argument("--proto", action="store_true", help="also time prototype changes on shape a")
    ap.add_argument("--no-mem", dest="mem", action="store_false", help="skip the memory probes")
    ap.add_argument("--mem-compile", action="store_true", help="memory probes for compiled variants too (slow)")
    ap.add_argument("--warm-compile-cache", action="store_true", help="let torch.compile use its on-disk cache "
                                                                      "(default: disabled, so compile time is a cold compile)")
    ap.add_argument("--mem-probe", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_probe:
        shape, kind, mode = args.mem_probe.split(":", 2)
        if kind == "proto":
            kind, mode = f"proto:{mode}", PROTOTYPES[mode][0]
        print(json.dumps(mem_probe(shape, kind, mode, args.quick)))
        return
    if args.quick:
        args.shapes, args.rounds, args.steps, args.mem = "a", 3, 1, False
        if args.modes == ",".join(MODES):
            args.modes = "eager,bf16"
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {MODES}")

    info = common.machine_info()
    load0 = common.load_avg()
    print(f"{info['cpu']} | {info['cores']} cores | torch {info['torch']} threads {torch.get_num_threads()} | "
          f"transformers {info['transformers']} | load {load0}", flush=True)
    all_shapes = shapes(args.quick)
    outs = {n: bench_shape(n, all_shapes[n], modes, args) for n in args.shapes.split(",")}
    load1 = common.load_avg()
    print(f"\nload average before {load0}, after {load1}")

    if args.results:
        body = [common.header(info, load0, load1, common.command_line()),
                f"A step = zhgpt.training.step.train_step (what `zhgpt train` runs): forward + loss + backward + clip "
                f"+ AdamW + zero_grad, for both models. "
                f"{args.rounds} rounds x {args.steps} steps per variant after 2 warm-up steps, variants in rotating "
                "order in one process; ms/step and tokens/s are medians over rounds, 'best round' is the fastest "
                "round (closest to an idle machine), ratios are medians of per-round ratios (higher = zhgpt "
                "faster) and the ratio of the best rounds. CPU s/step = process CPU time per step, all threads "
                "(on a busy host it includes OpenMP threads spinning at barriers). HF = `GPT2LMHeadModel` (SDPA attention) with zhgpt's "
                "weights; both compute the same initial loss. `compile s` = first two steps minus two steady steps. "
                "Memory: fresh process per variant, peak RSS over 3 steps (growth over the RSS after building "
                "the model and optimizer).\n"]
        for n, o in outs.items():
            body.append(f"### Shape {n}: {o['desc']}\n\ninitial loss zhgpt {o['init_loss'][0]:.4f}, "
                        f"HF {o['init_loss'][1]:.4f}\n\n{o['table']}\n")
            if args.proto and n == "a":
                body.append("Prototypes (`zhgpt proto` rows): " + "; ".join(
                    f"**{k}**: {v[1]}" for k, v in PROTOTYPES.items()) + "\n")
            for label, top in (o.get("profile") or {}).items():
                body.append(f"Profile, {label} (shape {n}), top ops by self CPU time:\n\n" + common.md_table(
                    ["op", "ms", "%"], [[k[:60], f"{ms:.0f}", f"{pc:.1f}"] for k, ms, pc in top]) + "\n")
        title = "Training throughput (bench/bench_train.py)" + (" — quick smoke run" if args.quick else "")
        common.write_section(title, "\n".join(body))


if __name__ == "__main__":
    main()
