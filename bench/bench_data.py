"""Data-stage throughput: `zhgpt data prepare` vs raw `tokenizers` encode_batch on the same text.

    python bench/bench_data.py                 # builtin corpus: prepare MB/s vs the encode_batch ceiling
    python bench/bench_data.py --results       # also write the section in bench/RESULTS.md
    python bench/bench_data.py --tokenizers    # + chars/token and training time of bpe/unigram/char at defaults
    python bench/bench_data.py --big-gb 1      # peak RSS of `zhgpt data prepare` on a generated 1 GB file
    python bench/bench_data.py --big-gb 1 --no-throughput --results   # only that (its own RESULTS section)

The prepare pass is timed with a pre-trained tokenizer (the default bpe, 32k, trained once on the
builtin corpus and cached in bench/out/), so it measures read + clean + dedup + encode + shard writing.
Beside it, in the same process and alternating (see common.py), the cleaned documents of the same
corpus go straight through `Tokenizer.encode_batch` / `encode_batch_fast`: the ceiling, with no reading
or cleaning. MB/s is always of the cleaned UTF-8 text.

--big-gb N writes an N GB text file (builtin documents, each line two random documents joined so that
deduplication keeps them) to a temp folder under bench/out/, runs `zhgpt data prepare FILE` on it in a
subprocess with the default settings (bpe tokenizer trained on a 10M-char sample) and reports its peak
RSS (os.wait4's rusage of that child): the target is < 2 GB. `--big-tokenizer bpe bench/out/data-tok-bpe`
also runs it with a pre-trained tokenizer, which shows what the tokenizer training adds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# Raw encode_batch must run in parallel like prepare does (a test suite may have set it to false).
os.environ["TOKENIZERS_PARALLELISM"] = "true"

from zhgpt.data.clean import Cleaner, CleanOptions  # noqa: E402
from zhgpt.data.prepare import DataConfig, main as prepare  # noqa: E402
from zhgpt.data.sources import ReadOptions, iter_documents  # noqa: E402
from zhgpt.data.tokenizer import KINDS, load_tokenizer, save_tokenizer, train_tokenizer  # noqa: E402

TITLE_BIG = "bench_data.py: peak memory of zhgpt data prepare on a large file"
TITLE = "bench_data.py: zhgpt data prepare throughput"


def cleaned_builtin() -> list[str]:
    """The builtin corpus exactly as prepare keeps it (default cleaning and dedup)."""
    c = Cleaner(CleanOptions())
    return [r[0] for d in iter_documents(["builtin"], ReadOptions()) if (r := c.clean_hashed(d.text))]


def cached_tokenizer(kind: str, docs: list[str]) -> tuple[Path, str]:
    """bench/out/data-tok-KIND: trained once at the default vocabulary/sample; (folder, how long)."""
    d = common.OUT / f"data-tok-{kind}"
    if (d / "tokenizer.json").is_file():
        return d, "cached"
    t = time.perf_counter()
    tok = train_tokenizer(docs, kind, show_progress=False)
    took = time.perf_counter() - t
    save_tokenizer(tok, d, kind)
    return d, f"trained in {took:.1f}s"


def throughput(args, docs: list[str]) -> str:
    tok_dir, how = cached_tokenizer(args.kind, docs)
    tok = load_tokenizer(tok_dir)
    mb = sum(len(x.encode("utf-8")) for x in docs) / 1e6
    out = common.OUT / "data-bench"
    cfg = DataConfig(sources=["builtin"], out=str(out), tokenizer=str(tok_dir), force=True, quiet=True)
    fns = {
        "zhgpt data prepare": lambda: prepare(cfg),
        "encode_batch": lambda: tok.encode_batch(docs, add_special_tokens=False),
        "encode_batch_fast": lambda: tok.encode_batch_fast(docs, add_special_tokens=False),
    }
    prepare(cfg)   # warm-up: file cache, rayon pool, imports

    def show(r, times):
        print(f"  round {r + 1}: " + ", ".join(f"{n} {mb / t[-1]:.2f} MB/s" for n, t in times.items()),
              flush=True)
    # Also the process CPU time (all threads) of each call: unlike wall time it hardly depends on what
    # else runs on the host, so MB per CPU-second compares runs across loads.
    cpu: dict[str, list[float]] = {}
    times = common.alternate(fns, rounds=args.rounds, reps=1, on_round=show, cpu=cpu)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    s = meta["summary"]
    ref = times["encode_batch"]
    rows = []
    for name, ts in times.items():
        med, lo, hi = common.ratio_stats(ref, ts)     # per round t(encode_batch) / t(this): relative speed
        c = common.median(cpu[name])
        rows.append([name, common.median(ts), mb / common.median(ts), f"{med:.2f} ({lo:.2f}-{hi:.2f})",
                     f"{c:.2f}", f"{mb / c:.2f}"])
    table = common.md_table(["what", "median s", "MB/s (cleaned UTF-8)", "speed vs encode_batch (min-max)",
                             "CPU s (all threads)", "MB per CPU-second"], rows)
    ex = (f"\ncorpus: builtin, {s['docs_read']:,} documents read, {s['docs_kept']:,} kept "
          f"({s['chars']:,} chars, {mb:.2f} MB UTF-8 after cleaning); tokenizer {args.kind} "
          f"vocab {meta['vocab_size']:,} ({how}), {s['chars_per_token']:.3f} chars/token; "
          f"{args.rounds} rounds, {os.cpu_count()} cores; inside prepare the tokenize pass took "
          f"{s['seconds']['tokenize_s']:.2f}s ({s['mb_per_s']:.2f} MB/s) of {s['seconds']['total_s']:.2f}s\n")
    return table + "\n" + ex


def tokenizer_table(docs: list[str]) -> str:
    """Each kind at its default vocabulary and sample, trained by `zhgpt data prepare builtin`."""
    rows = []
    for kind in KINDS:
        out = common.OUT / f"data-builtin-{kind}"
        t = time.perf_counter()
        prepare(DataConfig(sources=["builtin"], out=str(out), tokenizer=kind, force=True, quiet=True))
        took = time.perf_counter() - t
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        s, sec = meta["summary"], meta["summary"]["seconds"]
        val = meta["splits"]["val"]
        rows.append([kind, f"{meta['vocab_size']:,}", f"{sec.get('tokenizer_train_s', 0.0):.1f}",
                     f"{s['chars_per_token']:.3f}", f"{val['chars'] / max(val['tokens'], 1):.3f}", f"{took:.1f}"])
        print(f"  {kind}: {rows[-1]}", flush=True)
    return common.md_table(["kind", "vocab", "train s", "chars/token (all)", "chars/token (val)",
                            "prepare s (all passes)"], rows) + "\n"


def make_big_file(path: Path, gb: float, docs: list[str], seed: int = 0) -> int:
    """Lines of two random builtin documents joined: unique, so dedup keeps (almost) all of them."""
    rng = random.Random(seed)
    target = int(gb * 1e9)
    written = 0
    n = len(docs)
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lines = [docs[rng.randrange(n)] + docs[rng.randrange(n)] for _ in range(10_000)]
            block = "\n".join(lines) + "\n"
            f.write(block)
            written += len(block.encode("utf-8"))
    return written


def _run_peak(cmd: list[str]) -> tuple[int, str, float]:
    """Run ``cmd``; (exit code, stderr, its own peak RSS in MB) -- os.wait4 gives that child's rusage,
    where RUSAGE_CHILDREN would give the largest of all children so far."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace"), usage.ru_maxrss / 1024   # KiB on Linux


def big(args, docs: list[str]) -> str:
    common.OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="data-big-", dir=common.OUT))
    try:
        src = tmp / "big.txt"
        t = time.perf_counter()
        size = make_big_file(src, args.big_gb, docs)
        print(f"wrote {src} ({size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f}s", flush=True)
        rows = []
        for tok in args.big_tokenizer:
            cmd = [sys.executable, "-m", "zhgpt", "data", "prepare", str(src), "--out", str(tmp / "ds"), "--quiet",
                   "--force", "--tokenizer", tok]
            t = time.perf_counter()
            code, err, peak_mb = _run_peak(cmd)
            took = time.perf_counter() - t
            if code != 0:
                raise SystemExit(f"prepare failed ({code}):\n{err[-3000:]}")
            s = json.loads((tmp / "ds" / "meta.json").read_text(encoding="utf-8"))["summary"]
            sec = s["seconds"]
            name = tok if tok in KINDS else f"{Path(tok).name} (pre-trained)"
            rows.append([f"{size / 1e9:.2f} GB", name, f"{s['docs_kept']:,}", f"{took:.0f}",
                         sec.get("tokenizer_train_s", 0.0), sec["tokenize_s"], s["mb_per_s"], f"{peak_mb:,.0f}",
                         "yes" if peak_mb < 2048 else "NO"])
            print(f"  {rows[-1]}", flush=True)
        return common.md_table(["input", "tokenizer", "docs kept", "wall s", "tokenizer train s", "tokenize s",
                                "tokenize MB/s", "peak RSS MB", "< 2 GB"], rows) + "\n"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="bpe", choices=KINDS, help="tokenizer of the throughput run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokenizers", action="store_true", help="also train each kind at its defaults")
    ap.add_argument("--big-gb", type=float, default=0.0, help="peak-RSS run on a generated file of this size")
    ap.add_argument("--big-tokenizer", nargs="+", default=["bpe"],
                    help="--tokenizer of the --big-gb run; several give one run (and row) each, e.g. "
                         "bpe bench/out/data-tok-bpe (trained on a sample vs pre-trained)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput comparison")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    args = ap.parse_args()
    common.OUT.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    import tokenizers
    load_before = common.load_avg()
    docs = cleaned_builtin()
    body = []
    if not args.no_throughput:
        print("throughput on the builtin corpus ...", flush=True)
        body.append("### prepare vs raw encode_batch (builtin corpus)\n\n" + throughput(args, docs))
    if args.tokenizers:
        print("tokenizer kinds at their defaults ...", flush=True)
        body.append("### tokenizers at default vocabulary and sample (builtin corpus)\n\n" + tokenizer_table(docs))
    if args.big_gb > 0:
        print(f"peak memory on a {args.big_gb} GB file ...", flush=True)
        body.append(f"### peak memory, {args.big_gb} GB input\n\n" + big(args, docs))
    load_after = common.load_avg()
    text = (common.header(info, load_before, load_after, common.command_line())
            + f"- tokenizers {tokenizers.__version__}\n\n" + "\n".join(body))
    print()
    print(text)
    if args.results:
        common.write_section(TITLE if not args.no_throughput else TITLE_BIG, text)


if __name__ == "__main__":
    main()
