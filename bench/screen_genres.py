"""Recipe screening across genres of Chinese text: which tokenizer, vocabulary, context and shape learn the
most in a fixed budget on news, reviews, classical poetry and fiction -- the runs `--preset auto` is fitted to.

    python bench/genres.py                                    # build the genre corpora first (bench/out/genres)
    python bench/screen_genres.py --budget 100s               # every recipe x every genre, 100-s budgets
    python bench/screen_genres.py --budget 10m --recipes cpu-tiny,auto,reference
    python bench/screen_genres.py --budget 100s --genres news --recipes cpu-tiny --cal-rounds 1   # smoke

Each run is `zhgpt train` on a genre's train.txt with its val.txt as the whole validation split, on the
**idle clock** of bench/bench_quality.py: every recipe's training step and evaluation are first timed
at 1 thread (CPU seconds, fastest round) and a budget of S seconds becomes the number of steps an idle
2-core machine fits into S. So the runs can go two at a time, one thread each, on a shared host, and the
BPC reached does not depend on the load. Times below are idle-equivalent seconds.

"reference" is the nanoGPT-style char recipe of bench_quality.py (vanilla GPT-2 char 4L/256d, ctx 256,
AdamW 1e-3 constant, fp32). "speed-up" = the reference's budget / a recipe's time to the reference's
final BPC on the same genre (interpolated between evaluations; at 10 minutes there are about 12).

"auto" is what `zhgpt train --preset auto --time-budget S` would train on the genre: its choices for a
budget of S are resolved here and pinned as flags (tokenizer, vocabulary, context, batch, shape, passes),
because the runs themselves go by steps with a 12-hour wall limit, and auto left alone would choose for 12
hours. The pinned flags also key the calibration cache, so a change of auto's rule is timed afresh.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq  # noqa: E402
import common  # noqa: E402

GENRES = common.OUT / "genres"
OUT = common.OUT / "screen_genres"
TINY = ["--preset", "cpu-tiny"]
# Each recipe changes one thing of the cpu-tiny preset (unigram 16k, ctx 128, batch 16, 4L/4H/256d, Muon
# 6e-3). Tokens per step stay 2,048 where the context changes, so that only the context differs.
RECIPES = {
    "reference": bq._r("nanoGPT-style char recipe (bench_quality.py's reference)", *bq.REFERENCE),
    "cpu-tiny": bq._r("the cpu-tiny preset", *TINY),
    "uni8k": bq._r("cpu-tiny with unigram 8192", *TINY, "--vocab-size", "8192"),
    "uni4k": bq._r("cpu-tiny with unigram 4096", *TINY, "--vocab-size", "4096"),
    "bpe16k": bq._r("cpu-tiny with byte-level BPE 16384", *TINY, "--tokenizer", "bpe"),
    "char": bq._r("cpu-tiny with the char tokenizer", *TINY, "--tokenizer", "char", "--vocab-size", "8000"),
    "ctx64": bq._r("cpu-tiny with ctx 64, batch 32", *TINY, "--block-size", "64", "--batch-size", "32"),
    "ctx256": bq._r("cpu-tiny with ctx 256, batch 8", *TINY, "--block-size", "256", "--batch-size", "8"),
    "char-ctx64": bq._r("cpu-tiny with the char tokenizer, ctx 64, batch 32", *TINY, "--tokenizer", "char",
                        "--vocab-size", "8000", "--block-size", "64", "--batch-size", "32"),
    "auto": bq._r("--preset auto (the rule fitted to this screening), its choices for the budget pinned",
                  "--preset", "auto"),
    "auto-ctx64": bq._r("--preset auto with ctx 64, batch 32", "--preset", "auto", "--block-size", "64",
                        "--batch-size", "32"),
}
DEFAULT_RECIPES = ["reference", "cpu-tiny", "uni8k", "uni4k", "bpe16k", "char", "ctx64", "ctx256"]


def genre_data(name: str) -> dict:
    if name == "news":
        return dict(bq.PD)          # People's Daily 1998-01: the fixed benchmark text itself (shared/data/pd1998)
    d = GENRES / name
    data = {"train": d / "train.txt", "val": d / "val.txt"}
    if not all(p.is_file() for p in data.values()):
        sys.exit(f"{d}: no train.txt/val.txt; build the genres first: python bench/genres.py")
    return data


def auto_recipe(data: dict, secs: float) -> dict:
    """--preset auto with what it chooses on ``data`` for a budget of ``secs`` pinned as flags."""
    from zhgpt.training.auto import choose
    rec = choose({"data": [str(data["train"])], "time_budget": f"{secs:g}s"}, {}, "cpu")
    m, t = rec.model, rec.train
    pinned = {"tokenizer": t["tokenizer"], "vocab-size": t["vocab_size"], "block-size": m["block_size"],
              "batch-size": t["batch_size"], "n-layer": m["n_layer"], "n-head": m["n_head"], "n-embd": m["n_embd"],
              "max-epochs": f"{t.get('max_epochs', 0):g}"}
    flags = [x for k, v in pinned.items() for x in (f"--{k}", str(v))]
    return bq._r(RECIPES["auto"]["desc"], *RECIPES["auto"]["flags"], *flags)


def recipe_for(name: str, data: dict, secs: float) -> dict:
    """The recipe's flags; auto's variants are auto's pinned choices with their own flags after them (last wins)."""
    if not name.startswith("auto"):
        return RECIPES[name]
    own = RECIPES[name]["flags"][2:]            # after "--preset auto"
    return bq._r(RECIPES[name]["desc"], *auto_recipe(data, secs)["flags"], *own)


def for_genre(recipes: list[str], genre: str) -> list[str]:
    """The recipes that run on ``genre``: plain names run everywhere, ``genre/recipe`` only there."""
    return [r.split("/")[-1] for r in recipes if "/" not in r or r.split("/")[0] == genre]


def plan_jobs(genres: list[str], recipes: list[str], secs: float, cal_rounds: int, threads: int) -> list[dict]:
    """Calibrate each genre's recipes (its own vocabulary and val size) and turn the budget into steps."""
    jobs = []
    for g in genres:
        data = genre_data(g)
        mine = for_genre(recipes, g)
        if not mine:
            continue
        print(f"calibrating {len(mine)} recipe(s) on {g} ...", flush=True)
        recipes_here = {r: recipe_for(r, data, secs) for r in mine}
        cals = bq.calibrate(recipes_here, cal_rounds, data)
        for r in mine:
            cal = cals[r]
            every = max(10, int(secs / cal["s_step"] / 12)) if secs > 150 else 10 ** 6
            jobs.append(dict(name=r, recipe=recipes_here[r], max_steps=bq.steps_for(secs, cal, every), eval_every=every,
                             tag=f"{secs:g}s", threads=threads, cal=cal, out=OUT / g, data=data, genre=g))
    return jobs


def run_all(jobs: list[dict], lanes: int) -> list[dict]:
    """Longest first over ``lanes`` one-thread lanes; results in the plan's order."""
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["max_steps"] * jobs[i]["cal"]["s_step"])

    def one(i):
        j = dict(jobs[i])
        genre = j.pop("genre")
        return {**bq.run_recipe(**j), "genre": genre}

    with ThreadPoolExecutor(lanes) as pool:
        done = dict(zip(order, pool.map(one, order)))
    return [done[i] for i in range(len(jobs))]


def stored_runs(genres: list[str], recipes: list[str], tag: str) -> list[dict]:
    """The latest finished run of each genre x recipe at budget ``tag`` from bench/out/screen_genres/<genre>/runs.jsonl."""
    runs = []
    for g in genres:
        path = OUT / g / "runs.jsonl"
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
        last = {r["name"]: r for r in recs if r.get("budget") == tag}
        runs += [{**last[n], "genre": g} for n in for_genre(recipes, g) if n in last]
    return runs


def recalibrate(runs: list[dict], rounds: int) -> None:
    """Re-time every stored run's step and evaluation, the recipes of a genre together in one rotation, on
    1-thread CPU seconds alone. The calibration cache keeps each recipe's cheapest step ever seen, and host
    noise (~20 % on this shared machine) then favours whichever recipe met the quietest moment; timed
    together they meet the same host. The 2-thread wall time (which a run's own calibration counts where it
    is slower) is left out: under load it swings far more than CPU time. The steps run stay as they were;
    only the clock they are read on changes. Recipes whose flags now mean something else (auto after a
    change of its rule) are re-timed with the flags they ran with; for an auto run from before its choices
    were pinned that is bare `--preset auto`, resolved as auto now resolves it."""
    for g in dict.fromkeys(r["genre"] for r in runs):
        mine = [r for r in runs if r["genre"] == g and not r.get("failed")]
        cals = bq.calibrate({r["name"]: {"desc": r["desc"], "flags": r["flags"]} for r in mine}, rounds, genre_data(g),
                            fresh=True)
        for r in mine:
            c = cals[r["name"]]
            r["cal"] = {**c, "s_step": c["cpu_step"] / bq.THREAD_SPEEDUP,
                        "s_eval": c["cpu_fwd"] / bq.THREAD_SPEEDUP * c["eval_batches"]}


def table(runs: list[dict], genres: list[str], recipes: list[str]) -> str:
    """Recipes x genres: final val BPC (best per genre in bold), chars/token, and speed-up vs the reference."""
    by = {(r["genre"], r["name"]): r for r in runs if not r.get("failed")}
    best = {g: min((by[g, n]["final_bpc"] for n in recipes if (g, n) in by and n != "reference"), default=None)
            for g in genres}
    rows = []
    for n in recipes:
        row = [n]
        for g in genres:
            r = by.get((g, n))
            if not r:
                row.append("failed" if any(x["genre"] == g and x["name"] == n for x in runs) else "")
                continue
            bpc = f"{r['final_bpc']:.3f}"
            bpc = f"**{bpc}**" if r["final_bpc"] == best[g] else bpc
            ref, c = by.get((g, "reference")), bq.curve(r)
            # a speed-up needs a curve to interpolate on: the 100-s runs evaluate only at the start and the end
            t = bq.time_to(c, ref["final_bpc"]) if ref and n != "reference" and len(c) >= 4 else None
            up = f", {bq.curve(ref)[-1][1] / t:.1f}x" if t else ""
            low = min(b for *_, b in c)
            low = f", lowest {low:.3f}" if low < r["final_bpc"] - 0.01 else ""   # the val loss rose again
            row.append(f"{bpc} ({r['chars_per_token']:.2f} c/t, {r['steps']} st{up}{low})")
        rows.append(row)
    return common.md_table(["recipe"] + genres, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="100s", help="idle-equivalent budget of every run")
    ap.add_argument("--genres", default="", help="comma list (default: news and every folder of bench/out/genres)")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                    help=f"comma list of {', '.join(RECIPES)}; genre/recipe runs on that genre only")
    ap.add_argument("--cal-rounds", type=int, default=3)
    ap.add_argument("--lanes", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    ap.add_argument("--table-only", action="store_true", help="no runs: the table of the runs stored for this budget")
    ap.add_argument("--recalibrate", action="store_true", help="with --table-only: re-time the stored runs of "
                    "each genre together (like-for-like speed-ups)")
    args = ap.parse_args()
    from zhgpt.config import parse_duration
    genres = args.genres.split(",") if args.genres else ["news"] + sorted(p.name for p in GENRES.iterdir()
                                                                          if (p / "train.txt").is_file())
    recipes = args.recipes.split(",")
    bad = [r for r in recipes if r.split("/")[-1] not in RECIPES]
    if bad:
        sys.exit(f"unknown recipe(s) {', '.join(bad)}; known: {', '.join(RECIPES)}")
    secs = parse_duration(args.budget)
    info, load0, t0 = common.machine_info(), common.load_avg(), time.time()
    if args.table_only:
        runs = stored_runs(genres, recipes, f"{secs:g}s")
        if args.recalibrate:
            recalibrate(runs, args.cal_rounds)
    else:
        runs = run_all(plan_jobs(genres, recipes, secs, args.cal_rounds, 1), args.lanes)
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"screen-{args.budget}.jsonl", "a", encoding="utf-8") as f:
            for r in runs:
                f.write(json.dumps({k: v for k, v in r.items() if k != "cal"}, ensure_ascii=False, default=str) + "\n")
    body = table(runs, genres, list(dict.fromkeys(r.split("/")[-1] for r in recipes)))
    print("\n" + body + f"\n\nwall {time.time() - t0:.0f} s, load {load0} -> {common.load_avg()}")
    if args.results:
        note = (f"Final val bits/char after {args.budget} idle-equivalent seconds per run (idle clock of "
                "bench_quality.py; runs two at a time, one thread each); bold = best non-reference recipe of the "
                "genre; c/t = characters per token on val; st = steps; Nx = speed-up to the reference's final "
                "BPC; lowest = the lowest val BPC of the run where the end was higher.\n\n")
        common.write_section(f"Recipe screening across genres, {args.budget} (bench/screen_genres.py)",
                             common.header(info, load0, common.load_avg(), common.command_line()) + "\n" + note
                             + body + "\n")


if __name__ == "__main__":
    main()
