"""Generation speed: zhgpt's Engine (preallocated KV cache) vs Hugging Face `model.generate` on CPU.

    python bench/bench_generate.py                 # trained model if bench_quality left one, else random cpu-tiny
    python bench/bench_generate.py --model RUN     # a run folder, checkpoint folder or HF export
    python bench/bench_generate.py --quick         # smoke run, < 1 minute
    python bench/bench_generate.py --results       # also write the section in bench/RESULTS.md
    python bench/bench_generate.py --profile       # + torch.profiler of one zhgpt and one HF generation
    python bench/bench_generate.py --proto         # + prototype engine loops (see PROTOTYPES)

The Hugging Face side is the same weights exported with `zhgpt.inference.export.export_hf` and loaded back with
`AutoModelForCausalLM.from_pretrained`. Both generate exactly `--new-tokens` tokens (zhgpt:
stop_at_eot=False; HF: eos_token_id=None) from the same prompt ids, fp32, same thread count, batch 1:
greedy (temperature 0) and sampled (temperature 0.8, top-k 50, top-p 0.95, repetition penalty 1.1 — the
settings of the samples during training). First-token latency = prefill + first pick; decode tokens/s
counts the tokens after the first. Variants run alternately in one process; ratios are medians of
per-round ratios (> 1 = zhgpt faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

from zhgpt.model.engine import Engine, SamplingParams, sample_next  # noqa: E402
from zhgpt.model.gpt import GPT, ModelConfig  # noqa: E402

PROMPT_SHORT = "人工智能是"
# ~128 characters of People's Daily style text for the long-prompt (prefill) case.
PROMPT_LONG_CHARS = 128


# ------------------------------------------------------------------------- the model

def find_trained_run() -> Path | None:
    """The newest run folder that bench_quality left under bench/out/quality with a checkpoint."""
    root = common.OUT / "quality"
    if not root.is_dir():
        return None
    runs = sorted((p for p in root.iterdir() if (p / "checkpoints").is_dir() and any((p / "checkpoints").iterdir())),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    return runs[0] if runs else None


def random_model(out: Path) -> tuple[GPT, object, Path, str]:
    """A randomly initialised model of the cpu-tiny shape with a BPE tokenizer of its vocabulary size,
    trained on 1 M characters of train.txt (greedy speed does not depend on the weights)."""
    from zhgpt.model.presets import get_preset
    from zhgpt.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
    from zhgpt.training.train import pad_vocab
    m, t = get_preset("cpu-tiny")
    kind, vocab = t.get("tokenizer", "bpe"), t.get("vocab_size", m["vocab_size"])
    tok_dir = out / f"tokenizer-{kind}-{vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        text = common.PD_TRAIN.read_text(encoding="utf-8")[:1_000_000] if common.PD_TRAIN.is_file() else \
            "人工智能是计算机科学的一个分支。" * 1000
        tok = train_tokenizer(text.splitlines(), kind, vocab, show_progress=False)
        save_tokenizer(tok, tok_dir, kind, model_max_length=m["block_size"])
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**m, "vocab_size": pad_vocab(tok.get_vocab_size())})).eval()
    return model, tok, tok_dir, f"random init, cpu-tiny shape, {kind} {tok.get_vocab_size()} tokenizer"


def load_model(arg: str, out: Path, quick: bool):
    if arg == "random" or (not arg and quick):
        return random_model(out)
    run = Path(arg) if arg else find_trained_run()
    if run is None:
        return random_model(out)
    from zhgpt.training.runs import load_for_inference, resolve_model_path
    kind, p = resolve_model_path(run)
    model, tok, info = load_for_inference(run)
    tok_dir = p if kind == "hf" else p / "tokenizer"
    return model, tok, tok_dir, f"trained: {p} ({kind})"


def export_and_load_hf(model: GPT, tok_dir: Path, out: Path):
    from transformers import AutoModelForCausalLM
    from zhgpt.model.hf import export_hf
    folder = export_hf(model, tok_dir, out / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    return hf, folder


# ------------------------------------------------------------------------- the two generators

class _FirstTokenStreamer:
    """Records the time of the first generated token (HF calls put() once with the prompt first)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def sampling(kind: str, n: int, seed: int = 0) -> SamplingParams:
    if kind == "greedy":
        return SamplingParams(max_new_tokens=n, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              seed=seed, stop_at_eot=False)
    return SamplingParams(max_new_tokens=n, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1,
                          seed=seed, stop_at_eot=False)


def zhgpt_run(engine: Engine, ids: list[int], p: SamplingParams, gen_fn=None):
    """(first-token seconds, total seconds, generated ids)."""
    t0 = time.perf_counter()
    first, out = None, []
    for nxt in (gen_fn or engine.generate_ids)(ids, p):
        if first is None:
            first = time.perf_counter()
        out.append(int(nxt[0]))
    end = time.perf_counter()
    return first - t0, end - t0, out


def hf_run(hf, ids: list[int], p: SamplingParams):
    from transformers import GenerationConfig
    x = torch.tensor([ids])
    # min_new_tokens: eos_token_id=None alone is not enough, transformers falls back to the model's
    # generation_config (eos 0), and a trained model samples <|endoftext|> within a few dozen tokens.
    n = p.max_new_tokens
    if p.temperature == 0:
        gc = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, bos_token_id=0)
    else:
        gc = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=p.temperature,
                              top_k=p.top_k, top_p=p.top_p, repetition_penalty=p.repetition_penalty,
                              pad_token_id=0, bos_token_id=0)
    torch.manual_seed(p.seed)
    s = _FirstTokenStreamer()
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc, streamer=s)
    end = time.perf_counter()
    out = y[0, len(ids):].tolist()
    if len(out) != n:
        raise RuntimeError(f"HF generated {len(out)} tokens instead of {n}: the comparison would be unfair")
    return s.first - t0, end - t0, out


# ------------------------------------------------------------------------- prototypes of the engine loop

def forward_last(model: GPT, idx: torch.Tensor, cache) -> torch.Tensor:
    """GPT.forward for decoding, two changes: the lm_head runs on the last position only ((B, 1, V)
    instead of (B, T, V): a 128-token prompt wastes 127/128 of the prefill's output layer otherwise),
    and learned positions are a slice of wpe.weight instead of arange + embedding lookup."""
    B, T = idx.shape
    start = cache.pos
    tr = model.transformer
    x = tr.wte(idx)
    rope = None
    if model.cfg.arch == "gpt2":
        x = x + tr.wpe.weight[start:start + T]
    else:
        rope = (model.rope_cos[start:start + T], model.rope_sin[start:start + T])
    for block in tr.h:
        x = block(x, rope, cache)
    cache.pos += T
    return model.lm_head(tr.ln_f(x[:, -1:]))


@torch.inference_mode()
def lean_generate_ids(engine: Engine, prompt_ids: list[int], p: SamplingParams):
    """The engine loop with the per-step overheads removed (prototype of the proposed fix): logits of
    the last position only (forward_last); the sequence lives in a preallocated (n, T+max_new) buffer
    instead of a torch.cat per step; no done/where/all() bookkeeping when eot cannot end a row."""
    model = engine.model
    n = p.num_return_sequences
    gen = torch.Generator()
    gen.manual_seed(p.seed if p.seed >= 0 else torch.seed())
    T0 = len(prompt_ids)
    buf = torch.empty(n, T0 + p.max_new_tokens, dtype=torch.long)
    buf[:, :T0] = torch.tensor(prompt_ids)
    cache = model.make_kv_cache(n)
    fresh = buf[:, :T0]
    pos = T0
    done = torch.zeros(n, dtype=torch.bool) if p.stop_at_eot else None
    for _ in range(p.max_new_tokens):
        if cache.pos + fresh.size(1) > engine.block_size:
            cache.reset()
            fresh = buf[:, pos - engine.block_size // 2:pos]
        logits = forward_last(model, fresh, cache)[:, -1, :].float()
        nxt = sample_next(logits, buf[:, :pos] if p.repetition_penalty != 1.0 else None, p, gen)
        if done is not None:
            nxt = torch.where(done, torch.full_like(nxt, engine.eot_id), nxt)
            done |= nxt == engine.eot_id
        buf[:, pos] = nxt
        fresh = buf[:, pos:pos + 1]
        pos += 1
        yield nxt
        if done is not None and bool(done.all()):
            break


PROTOTYPES = {
    "lean-loop": "engine loop with output-layer logits for the last position only, a preallocated sequence "
                 "buffer (no torch.cat per token) and no eot bookkeeping when eot cannot stop a row",
}


# ------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 minute): random model, 2 rounds, 32 tokens")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    ap.add_argument("--model", default="", help="run/checkpoint/HF folder, or 'random' "
                                                "(default: newest bench_quality run, else random)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--threads-list", default="", help="comma list of thread counts to compare in the same "
                                                        "rotation (default: torch's default, and 1)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--proto", action="store_true", help="also time prototype engine loops")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.quick:
        args.rounds, args.new_tokens = 2, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.threads_list:
        args.threads_list = ",".join(dict.fromkeys(str(t) for t in (torch.get_num_threads(), 1)))

    out = common.OUT / "generate"
    out.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    load0 = common.load_avg()
    print(f"{info['cpu']} | {info['cores']} cores | torch {info['torch']} threads {torch.get_num_threads()} | "
          f"load {load0}", flush=True)
    model, tok, tok_dir, what = load_model(args.model, out, args.quick)
    model = model.float().eval()
    engine = Engine(model, tok, eot_id=0)
    hf, hf_dir = export_and_load_hf(model, tok_dir, out)
    print(f"model: {what} | {model.num_params() / 1e6:.2f}M params | ctx {model.cfg.block_size} | HF copy {hf_dir}")

    long_text = common.PD_VAL.read_text(encoding="utf-8").replace("\n", "")[:PROMPT_LONG_CHARS] \
        if common.PD_VAL.is_file() else PROMPT_SHORT * 30
    n_new = args.new_tokens
    prompts = {"short": engine.encode(PROMPT_SHORT)}
    long_ids = engine.encode(long_text)[: max(1, model.cfg.block_size - n_new - 1)]
    if not args.quick:
        prompts["long"] = long_ids
    for k, v in prompts.items():
        if len(v) + n_new > model.cfg.block_size:
            sys.exit(f"prompt {k} ({len(v)} tokens) + {n_new} new tokens exceeds the context {model.cfg.block_size}")

    # Same function check: greedy continuations agree token for token.
    _, _, a = zhgpt_run(engine, prompts["short"], sampling("greedy", n_new))
    _, _, b = hf_run(hf, prompts["short"], sampling("greedy", n_new))
    agree = sum(x == y for x, y in zip(a, b))
    print(f"greedy agreement zhgpt vs HF: {agree}/{n_new} tokens; sample: {PROMPT_SHORT}{engine.decode(a)[:40]!r}")

    threads_list = [int(t) for t in args.threads_list.split(",") if t] or [torch.get_num_threads()]

    def with_threads(n, fn):
        def f():
            prev = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(prev)
        return f

    variants = {}
    for th in threads_list:
        for pk, ids in prompts.items():
            for sk in ("greedy", "sampled"):
                p = sampling(sk, n_new)
                variants[f"zhgpt|{pk}|{sk}|{th}"] = with_threads(th, lambda ids=ids, p=p: zhgpt_run(engine, ids, p))
                variants[f"hf|{pk}|{sk}|{th}"] = with_threads(th, lambda ids=ids, p=p: hf_run(hf, ids, p))
                if args.proto:
                    variants[f"lean-loop|{pk}|{sk}|{th}"] = with_threads(th, lambda ids=ids, p=p: zhgpt_run(
                        engine, ids, p, lambda i, q: lean_generate_ids(engine, i, q)))
    for fn in variants.values():      # warm-up
        fn()

    rec = {k: [] for k in variants}

    def runner(k):
        def f():
            rec[k].append(variants[k]())
        return f

    def progress(r, times):
        parts = []
        for k in variants:
            if k.startswith("zhgpt"):
                h = k.replace("zhgpt", "hf", 1)
                parts.append(f"{k.split('|', 1)[1].replace('|', ' ')}t {times[h][-1] / times[k][-1]:.2f}x")
        print(f"  round {r + 1}/{args.rounds}: zhgpt/HF speed " + " | ".join(parts), flush=True)

    common.alternate({k: runner(k) for k in variants}, args.rounds, 1, progress)

    rows = []
    for k in variants:
        who, pk, sk, th = k.split("|")
        first = [r[0] for r in rec[k]]
        total = [r[1] for r in rec[k]]
        decode = [(n_new - 1) / (r[1] - r[0]) for r in rec[k]]
        hk = f"hf|{pk}|{sk}|{th}"
        if who != "hf":
            sp = common.ratio_stats([r[1] for r in rec[hk]], total)
            fl = common.ratio_stats([r[0] for r in rec[hk]], first)
            ratio_s = f"{sp[0]:.2f}x ({sp[1]:.2f}-{sp[2]:.2f})"
            ratio_f = f"{fl[0]:.2f}x"
        else:
            ratio_s = ratio_f = ""
        name = {"zhgpt": "zhgpt Engine", "hf": "HF generate", "lean-loop": "zhgpt proto lean-loop"}[who]
        rows.append([name, th, f"{pk} ({len(prompts[pk])} tok)", sk, f"{common.median(first) * 1e3:.1f}",
                     f"{n_new / common.median(total):.0f}", f"{common.median(decode):.0f}", ratio_s, ratio_f])
    headers = ["generator", "threads", "prompt", "decoding", "first token ms", "tokens/s (all)", "decode tokens/s",
               "speed vs HF (range)", "first-token speed vs HF"]
    table = common.md_table(headers, rows)
    print(table)

    prof_txt = ""
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        th = threads_list[-1]
        for label, fn in ((f"zhgpt greedy, {th} thread(s)", variants[f"zhgpt|short|greedy|{th}"]),
                          (f"HF greedy, {th} thread(s)", variants[f"hf|short|greedy|{th}"]),
                          (f"zhgpt sampled, {th} thread(s)", variants[f"zhgpt|short|sampled|{th}"]),
                          (f"HF sampled, {th} thread(s)", variants[f"hf|short|sampled|{th}"])):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            t = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            print(f"\n--- profile {label} ---\n{t}")
            avgs = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
            tot = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
            prof_txt += (f"\nProfile, {label} ({n_new} tokens, short prompt), top ops by self CPU time "
                         f"(total {tot / 1e3:.0f} ms):\n\n" + common.md_table(
                             ["op", "calls", "ms", "%"],
                             [[e.key[:60], e.count, f"{e.self_cpu_time_total / 1e3:.1f}",
                               f"{100 * e.self_cpu_time_total / tot:.1f}"] for e in avgs]) + "\n")
    load1 = common.load_avg()
    print(f"load average before {load0}, after {load1}")
    if args.results:
        body = (common.header(info, load0, load1, common.command_line())
                + f"\nModel: {what}, {model.num_params() / 1e6:.2f}M parameters, fp32, batch 1, {n_new} new tokens "
                f"per call, {args.rounds} rounds in rotating order after a warm-up. Greedy agreement zhgpt vs HF: "
                f"{agree}/{n_new} tokens. Medians over rounds; ratios > 1 mean zhgpt is faster.\n\n" + table + "\n"
                + (("\nPrototypes: " + "; ".join(f"**{k}**: {v}" for k, v in PROTOTYPES.items()) + "\n")
                   if args.proto else "") + prof_txt)
        title = "Generation speed (bench/bench_generate.py)" + (" — quick smoke run" if args.quick else "")
        common.write_section(title, body)


if __name__ == "__main__":
    main()
