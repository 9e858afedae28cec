"""Turn a run folder into the reference curve `zhgpt report` draws beside every run of the same preset
("Is my loss normal?", ``zhgpt.report.reference``).

    python bench/make_reference.py RUN_DIR --preset cpu-tiny        # writes zhgpt/assets/reference_cpu-tiny.json
    python bench/make_reference.py RUN_DIR --preset cpu-tiny --out /tmp/ref.json --command "zhgpt train"

The JSON keeps val_bpc against tokens_seen and elapsed_s at every evaluation, and where it came from: the
machine (run.json's hardware), the date of the run, the command (``--command``, else rebuilt from the run's
config.json: the flags that define a run of the preset), the dataset (the --data spec, tokenizer kind and
vocabulary, train/val characters and tokens) and the schedule (time budget, steps, LR, ...). The report
calls a run's data "the same" only when the tokenizer and the character counts match
(``zhgpt.report.reference.same_data``), and names any schedule difference.

The shipped cpu-tiny reference should come from the plain 10-minute default run on an idle machine:

    zhgpt train --out runs/reference-cpu-tiny && python bench/make_reference.py runs/reference-cpu-tiny --preset cpu-tiny
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zhgpt.errors import ZhgptError  # noqa: E402
from zhgpt.report.reference import FORMAT, run_dataset, run_schedule  # noqa: E402
from zhgpt.report.runs import finite, load_run  # noqa: E402
from zhgpt.training.layout import RunFolder  # noqa: E402

# Flags that define a run beyond its preset, in the order a person would type them.
COMMAND_FLAGS = ("data", "val_data", "tokenizer", "vocab_size", "time_budget", "max_steps", "max_tokens",
                 "optimizer", "lr", "batch_size", "grad_accum", "eval_every", "seed")


def rebuild_command(train: dict, preset: str) -> str:
    """`zhgpt train --preset P` with the run's flags that differ from what the preset alone would use."""
    import dataclasses
    from zhgpt.model.presets import get_preset
    from zhgpt.training.config import TrainConfig
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    try:
        defaults.update(get_preset(preset)[1])
    except ZhgptError:
        pass
    parts = ["zhgpt train", f"--preset {preset}"]
    for k in COMMAND_FLAGS:
        v = train.get(k)
        if v is None or v == defaults.get(k):
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(f"{flag} {' '.join(map(str, v))}" if isinstance(v, list) else f"{flag} {v}")
    return " ".join(parts)


def make_reference(run_dir: str, preset: str, command: str | None = None) -> dict:
    run = load_run(run_dir)
    if not run.evals:
        raise ZhgptError(f"{run_dir}: no evaluation in metrics.jsonl; a reference needs a val_bpc curve")
    ran = (run.info.get("preset") or (run.config.get("train") or {}).get("preset"))
    if ran and ran != preset:
        raise ZhgptError(f"{run_dir} ran the {ran} preset, not {preset}; give --preset {ran}")
    points = [{"step": e["step"], "tokens_seen": e.get("tokens_seen"), "elapsed_s": e.get("elapsed_s"),
               "val_bpc": round(e["val_bpc"], 4)} for e in run.evals if finite(e.get("val_bpc")) is not None]
    config_file = RunFolder(run.path).config
    date = datetime.datetime.fromtimestamp(config_file.stat().st_mtime if config_file.is_file()
                                           else run.path.stat().st_mtime, datetime.timezone.utc)
    data = run.config.get("data") or {}
    dataset = {**run_dataset(run), "train_tokens": data.get("train_tokens"), "val_tokens": data.get("val_tokens"),
               "chars_per_token": data.get("chars_per_token")}
    hw = run.info.get("hardware") or {}
    return {"format": FORMAT, "preset": preset, "date": date.strftime("%Y-%m-%d"),
            "command": command or rebuild_command(run.config.get("train") or {}, preset),
            "machine": {k: hw.get(k) for k in ("device", "cpu", "threads", "gpu", "gpus", "torch") if hw.get(k)}
                       | {"dtype": run.info.get("dtype"), "world_size": run.info.get("world_size", 1)},
            "dataset": dataset, "schedule": run_schedule(run),
            "model": {k: (run.config.get("model") or {}).get(k) for k in ("arch", "n_layer", "n_head", "n_embd",
                                                                          "block_size", "vocab_size")},
            "params": run.info.get("params"), "tokens_per_step": run.info.get("tokens_per_step"),
            "status": run.info.get("status"), "points": points}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", help="a run folder written by zhgpt train")
    p.add_argument("--preset", required=True, help="the preset the reference is for (the run must have used it)")
    p.add_argument("--out", default="", help="output file (default: zhgpt/assets/reference_<preset>.json)")
    p.add_argument("--command", default="", help="the command that made the run (default: rebuilt from its config)")
    args = p.parse_args(argv)
    try:
        ref = make_reference(args.run_dir, args.preset, args.command or None)
    except ZhgptError as e:
        p.exit(2, f"make_reference: error: {e}\n")
    out = Path(args.out) if args.out else REPO / "zhgpt" / "assets" / f"reference_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    last = ref["points"][-1]
    print(f"wrote {out}: {len(ref['points'])} evaluations, final val BPC {last['val_bpc']} at "
          f"{last['tokens_seen']:,} tokens / {last['elapsed_s']} s; command: {ref['command']}")
    return out


if __name__ == "__main__":
    main()
