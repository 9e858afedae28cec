"""YaRN vs plain RoPE extrapolation: bits/char on pd1998 val at 1x, 2x and 4x the context a llama model was
trained at, each without scaling (`--context W`: positions as trained, angles never seen past 128) and with
YaRN (`--rope-scaling yarn --rope-factor W/128`); then the same after 100 more steps of training, at 512 with
YaRN (`zhgpt train --init-from RUN --rope-scaling yarn --rope-factor 4`) and, as the control for "more
training", at 128 without it.

    python bench/yarn_context.py                                 # train, continue 100 steps each way, measure
    python bench/yarn_context.py --run RUN --continue-steps 0    # measure an existing llama run (trained at 128)

Measured like `zhgpt eval` on one long text: pd1998 val's documents joined by <|endoftext|> as in training
(its documents have a median of 70 characters, so scored one by one no window would pass 128 tokens),
slid with a stride of half the window, so every scored token after the first window sees between W/2 and W
tokens of history: at W = 512 all of them sit at positions 256..511, 2-4x past the trained context. The
numbers of one run compare with each other; training on a shared host is not timed here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, OUT, PD_TRAIN, PD_VAL, command_line, load_avg, machine_info, md_table, write_section  # noqa: E402

SHAPE = ["--preset", "cpu-tiny", "--arch", "llama", "--no-bias"]
QUIET = ["--log", "none", "--no-report", "--no-export", "--eval-tokens", "0", "--eval-every", "1000000"]


def zhgpt(*args, log: Path) -> None:
    with open(log, "a") as f:
        if subprocess.run([sys.executable, "-m", "zhgpt", *map(str, args)], stdout=f, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"zhgpt {args[0]} failed; see {log}")


def prepare(out: Path, data: str = "") -> Path:
    """cpu-tiny's unigram 16k dataset of pd1998 (val = pd1998 val), prepared once (or ``data``, prepared)."""
    if data:
        return Path(data)
    data = out / "data"
    if not (data / "meta.json").is_file():
        zhgpt("data", "prepare", PD_TRAIN, "--val-source", PD_VAL, "--tokenizer", "unigram", "--vocab-size", "16384",
              "--out", data, log=out / "data.log")
    return data


def train(data: Path, out: Path, name: str, steps: int, extra: list[str]) -> Path:
    run = out / name
    if not (run / "run.json").is_file() or json.loads((run / "run.json").read_text()).get("status") != "completed":
        print(f"training {name}: {steps} steps {' '.join(map(str, extra))}", flush=True)
        zhgpt("train", "--data", data, "--out", run, "--max-steps", steps, *SHAPE, *QUIET, *extra,
              log=out / f"{name}.log")
    return run


def last_checkpoint(run: Path) -> Path:
    from zhgpt.training.layout import list_checkpoints
    return list_checkpoints(run)[-1]


def val_stream(tokenizer, eot: int) -> tuple[list[int], int, int]:
    """pd1998 val as one token stream, each document after an end-of-text token as in training (read as
    `zhgpt eval` reads it: same sources, same cleaning), its characters (+1 per document for the newline)
    and its documents."""
    from zhgpt.data.clean import normalize
    from zhgpt.data.sources import ReadOptions, iter_documents
    ids, chars, docs = [eot], 0, 0
    for doc in iter_documents([str(PD_VAL)], ReadOptions()):
        text = normalize(doc.text)
        if text:
            ids += tokenizer.encode(text, add_special_tokens=False).ids + [eot]
            chars, docs = chars + len(text) + 1, docs + 1
    return ids, chars, docs


@torch.no_grad()
def sliding_nats(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """(nats, predicted tokens) of ``ids`` with `zhgpt eval`'s sliding windows (``score_document``: each window
    scores only the tokens it adds), run in batches of equal-length windows: one window per forward pass
    spends most of its time in per-call overhead at 128 tokens. The tests' smoke run checks both agree."""
    xs, ys, n, prev_end = [], [], 0, 1
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + window + 1, len(ids))
        new = end - prev_end           # targets at positions prev_end..end-1 are new
        y = ids[begin + 1:end]
        xs.append(ids[begin:end - 1])
        ys.append([-1] * (len(y) - new) + y[len(y) - new:])
        n, prev_end = n + new, end
        if end == len(ids):
            break
    nats, per_batch = 0.0, max(1, 4096 // window)    # (4096, 16384) fp32 logits: 256 MiB
    for length in sorted({len(x) for x in xs}):
        group = [(x, y) for x, y in zip(xs, ys) if len(x) == length]
        for i in range(0, len(group), per_batch):
            x = torch.tensor([g[0] for g in group[i:i + per_batch]])
            y = torch.tensor([g[1] for g in group[i:i + per_batch]])
            nats += float(model(x, y, reduction="sum")[1])
    return nats, n


def bits_per_char(model_path: Path, window: int, trained: int, scaling: str) -> dict:
    """bits/char of the val stream at ``window`` tokens: ``scaling`` none = positions as trained (--context),
    yarn = YaRN by window/trained (a model trained with YaRN keeps its own and runs at --context)."""
    from zhgpt.inference.loading import ModelOptions
    from zhgpt.training.evaluation import metrics_from_nats
    opts = dict(model=str(model_path), device="cpu")
    if scaling == "yarn" and window > trained:
        opts.update(rope_scaling="yarn", rope_factor=window / trained)
    else:
        opts.update(context=window)
    loaded = ModelOptions(**opts).load()
    assert loaded.model.cfg.block_size == window
    ids, chars, docs = val_stream(loaded.tokenizer, loaded.info.get("eot_id", 0))
    t0 = time.perf_counter()
    nats, n = sliding_nats(loaded.model, ids, window, window // 2)
    m = metrics_from_nats(nats, n, chars)
    return {"bpc": round(m["val_bpc"], 4), "loss": round(m["val_loss"], 4), "tokens": n, "chars": chars, "docs": docs,
            "seconds": round(time.perf_counter() - t0, 1), "options": {k: v for k, v in opts.items() if k != "model"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="", help="measure this llama run (trained at --trained) instead of training one; "
                    "continuing it needs --data, a dataset with its tokenizer")
    ap.add_argument("--max-steps", type=int, default=400, help="steps of the short-context model (batch 16 x 128)")
    ap.add_argument("--time-budget", default="", help="wall-time budget of each training run ('' = none: the "
                    "steps decide; cpu-tiny's own is 10m, which a contended host hits long before 400 steps)")
    ap.add_argument("--continue-steps", type=int, default=100,
                    help="steps of each continued run, batch 4 x 512 (YaRN) and 16 x 128 (control); 0 = none")
    ap.add_argument("--trained", type=int, default=128, help="the context the model was trained at")
    ap.add_argument("--windows", default="128,256,512")
    ap.add_argument("--out", default=str(OUT / "yarn_context"))
    ap.add_argument("--data", default="", help="an already prepared dataset with the model's tokenizer")
    ap.add_argument("--json", default=str(BENCH_DIR / "results" / "yarn_context.json"))
    ap.add_argument("--no-results", action="store_true", help="do not write the section of bench/RESULTS.md")
    args = ap.parse_args()
    budget = ["--time-budget", args.time_budget]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    windows = [int(w) for w in args.windows.split(",")]
    load_before, t0 = load_avg(), time.time()
    models = {}
    if args.run:
        models["base"] = Path(args.run)
    else:
        data = prepare(out, args.data)
        models["base"] = train(data, out, "base", args.max_steps, ["--block-size", str(args.trained), *budget])
    if args.continue_steps:
        base = last_checkpoint(models["base"]) if (models["base"] / "checkpoints").is_dir() else models["base"]
        data = prepare(out, args.data)
        factor = max(windows) / args.trained
        # Equal tokens per step (2,048) for both: batch 4 at 512 against cpu-tiny's 16 at 128.
        models["yarn_continued"] = train(data, out, "yarn_continued", args.continue_steps, [
            "--init-from", base, "--rope-scaling", "yarn", "--rope-factor", f"{factor:g}", "--batch-size", "4", *budget])
        models["control_continued"] = train(data, out, "control_continued", args.continue_steps, ["--init-from", base, *budget])
    rows = {}
    for name, run in models.items():
        path = last_checkpoint(run) if (run / "checkpoints").is_dir() else run
        for scaling in (("none",) if name == "yarn_continued" else ("none", "yarn")):
            for w in windows:
                if scaling == "yarn" and w <= args.trained:
                    continue            # factor 1: the same model as no scaling
                r = bits_per_char(path, w, args.trained, scaling)
                rows[f"{name}/{scaling}/{w}"] = {"model": name, "scaling": scaling, "window": w, "path": str(path), **r}
                print(f"{name:18s} {scaling:5s} window {w:4d}: {r['bpc']:.4f} bits/char ({r['seconds']} s)", flush=True)
    runs = {name: {**json.loads((run / "config.json").read_text()), **json.loads((run / "run.json").read_text())}
            for name, run in models.items() if (run / "run.json").is_file()}
    result = {"machine": machine_info(), "command": command_line(), "load_before": load_before, "load_after": load_avg(),
              "wall_s": round(time.time() - t0), "trained_context": args.trained, "windows": windows,
              "runs": {n: {"steps": r.get("steps"), "tokens_seen": r.get("tokens_seen"), "elapsed_s": r.get("elapsed_s"),
                           "final_val_bpc": (r.get("final") or {}).get("val_bpc"),
                           **{k: r["train"].get(k) for k in ("optimizer", "lr", "warmup_steps", "batch_size", "time_budget")},
                           "block_size": r["model"].get("block_size")} for n, r in runs.items()},
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")
    table = results_table(rows, windows, args.trained, args.continue_steps)
    print("\n" + table)
    if not args.no_results:
        write_section("YaRN vs plain RoPE extrapolation (bench/yarn_context.py)", section(result, table, args))


def results_table(rows: dict, windows: list[int], trained: int, steps: int) -> str:
    def get(key):
        r = rows.get(key)
        return f"{r['bpc']:.4f}" if r else "-"
    head = ["context (tokens)", "no scaling", "YaRN (inference only)"]
    if steps:
        head += [f"+{steps} steps at {trained}, no scaling", f"+{steps} steps at {trained}, YaRN",
                 f"YaRN + {steps} steps at {max(windows)}"]
    body = []
    for w in windows:
        same = "base/none/%d" % w
        row = [f"{w} ({w / trained:g}x)", get(same), get(f"base/yarn/{w}") if w > trained else get(same)]
        if steps:
            ctl = f"control_continued/none/{w}"
            row += [get(ctl), get(f"control_continued/yarn/{w}") if w > trained else get(ctl),
                    get(f"yarn_continued/none/{w}")]
        body.append(row)
    return md_table(head, body)


def section(result: dict, table: str, args) -> str:
    m, runs = result["machine"], result["runs"]
    base = runs.get("base", {})
    lines = [f"- date {m['date']} | `{result['command']}` | {m['cpu']}, torch {m['torch']} | load "
             f"{result['load_before']} -> {result['load_after']} | wall {result['wall_s']} s",
             f"- model: cpu-tiny as llama (--no-bias), trained at {args.trained} tokens"
             + (f" for {base.get('steps')} steps ({base.get('tokens_seen'):,} tokens), val bits/char at the end of "
                f"training (disjoint 128-token windows) {base.get('final_val_bpc'):.4f}" if base.get("steps") else ""),
             "- bits/char on all of pd1998 val (documents joined by <|endoftext|>, one stream), windows slid by half "
             "their length: every scored token after the first window sees W/2..W tokens of history",
             "- no scaling = `zhgpt eval --context W` (plain RoPE extrapolation); YaRN = `--rope-scaling yarn "
             "--rope-factor W/128`; the continued runs start from the same checkpoint, 2,048 tokens per step "
             "(YaRN: batch 4 x 512, `--init-from RUN --rope-scaling yarn --rope-factor 4`; control: batch 16 x 128) "
             "and are run at each window with their own RoPE"
             + (f"; `--init-from`'s fine-tuning recipe: {cont['optimizer']} lr {cont['lr']:g}, warmup "
                f"{cont['warmup_steps']}, {cont['steps']} steps" if (cont := runs.get("yarn_continued")) else ""),
             f"- all numbers (and each run's own end-of-training val bits/char) in {os.path.relpath(args.json, BENCH_DIR.parent)}",
             "", table]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
