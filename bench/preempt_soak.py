"""Preemption soak: 20 kills at random points of 400-step runs, each resumed; steps lost per kill, and whether
the final per-step losses equal an uninterrupted run's bit for bit (issue 16).

    python bench/preempt_soak.py                 # 2 chains x 10 kills, tiny model, ~3 minutes on 2 CPU cores
    python bench/preempt_soak.py --kills 4 --steps 100   # a quick look

Two chains, each one run folder killed again and again and resumed with `zhgpt train --resume` after every kill,
then resumed to the end:

- **SIGTERM, periodic saves off** (``--eval-every`` beyond the run, no ``--save-every``): what a cloud provider
  does. The loop must finish its step, checkpoint it and exit 0: 0 steps lost, every time.
- **SIGKILL and SIGTERM mixed, ``--save-every 50``**: a SIGKILL (out-of-memory killer, power) loses the steps since
  the last checkpoint, which must be exactly the last multiple of 50 or the last SIGTERM stop, whichever is later.

Kill steps are drawn uniformly and sorted; the signal lands a random 0-20 ms after that step is logged. "Steps
lost" = the last step the killed process logged minus the step of the checkpoint `--resume` picks. The reference
is the same command uninterrupted. One thread per process (OMP_NUM_THREADS=1), so the floats can be compared
exactly. The model is the tests' tiny one (2 layers, 64 wide, ctx 64, batch 8, fp32, the preset's Muon): this
measures correctness, not speed. Writes bench/results/preempt_soak.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "preempt_soak"
PD = REPO.parent / "shared" / "data" / "pd1998"
SAVE_EVERY = 50


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "ZHGPT_HOME": os.environ.get("ZHGPT_HOME", str(OUT / "home")),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def prepare() -> Path:
    ds = OUT / "data"
    if not (ds / "meta.json").is_file():
        src = str(PD / "train.txt") if (PD / "train.txt").is_file() else "builtin:people-daily"
        subprocess.run([sys.executable, "-m", "zhgpt", "data", "prepare", src, "--out", str(ds), "--tokenizer", "char",
                        "--vocab-size", "3000", "--quiet"], env=env(), check=True, cwd=REPO)
    return ds


def train_args(ds: Path, out: Path, steps: int, extra: list[str]) -> list[str]:
    return ["train", "--data", str(ds), "--out", str(out), "--max-steps", str(steps), "--preset", "cpu-tiny",
            "--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--block-size", "64", "--batch-size", "8",
            "--dtype", "fp32", "--eval-every", "100000", "--eval-tokens", "2000", "--sample-tokens", "4",
            "--log-every", "1", "--log", "none", "--no-report", "--no-export", "--seed", "7", "--keep-last", "2",
            "--time-budget", "1h", *extra]


def losses(run: Path) -> dict[int, float]:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return {}
    rs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rs if "loss" in r}


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*") if p.name[5:].isdigit())


def chain(ds: Path, out: Path, steps: int, kills: list[tuple[int, str]], extra: list[str], rng: random.Random) -> list[dict]:
    """One run folder killed at each (step, signal) in turn, resumed after each; then resumed to the end."""
    subprocess.run(["rm", "-rf", str(out)])
    records, stops = [], [0]      # steps a checkpoint was written at by a stop (SIGTERM) or a resume point
    logged = 0
    for i, (at, sig) in enumerate(kills):
        # Past every row the previous process logged: until the new one truncates metrics.jsonl to its checkpoint,
        # those stale rows are still there and must not trigger the kill.
        at = min(max(at, logged + 2), steps - 2)
        proc = subprocess.Popen([sys.executable, "-m", "zhgpt", *start(ds, out, steps, extra)], env=env(), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and max(losses(out), default=0) < at:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGTERM if sig == "SIGTERM" else signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
        logged = max(losses(out), default=0)
        ckpts = checkpoint_steps(out)
        resumed_from = ckpts[-1] if ckpts else 0
        periodic = [s for s in range(SAVE_EVERY, logged + 1, SAVE_EVERY)] if "--save-every" in extra else []
        expected = max([s for s in periodic + stops if s <= logged], default=0) if sig == "SIGKILL" else logged
        records.append({"kill": i + 1, "signal": sig, "target_step": at, "logged_step": logged,
                        "exit_code": proc.returncode, "checkpoint": resumed_from, "steps_lost": logged - resumed_from,
                        "expected_checkpoint": expected, "ok": resumed_from == expected and
                        (proc.returncode == 0 if sig == "SIGTERM" else proc.returncode == -signal.SIGKILL),
                        "resume_msg": sig != "SIGTERM" or "SIGTERM: stopped after" in stdout,
                        "stderr_tail": stderr.strip()[-300:] if proc.returncode not in (0, -signal.SIGKILL) else ""})
        stops.append(resumed_from)
        print(f"  kill {i + 1}: {sig} at step {logged} (aimed at {at}), exit {proc.returncode}, resume from "
              f"{resumed_from}, lost {logged - resumed_from}", flush=True)
    res = subprocess.run([sys.executable, "-m", "zhgpt", *start(ds, out, steps, extra)], env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"final --resume failed: {res.stderr[-2000:]}")
    return records


def start(ds: Path, out: Path, steps: int, extra: list[str]) -> list[str]:
    """`--resume`, or the first command again when there is no checkpoint yet (a SIGKILL before the first save
    loses the whole run so far: that is what --save-every is for)."""
    if checkpoint_steps(out):
        return ["train", "--resume", str(out)]
    subprocess.run(["rm", "-rf", str(out)])
    return train_args(ds, out, steps, extra)


def kill_points(rng: random.Random, steps: int, n: int, signals: list[str]) -> list[tuple[int, str]]:
    return list(zip(sorted(rng.sample(range(2, steps - 1), n)), signals))


def markdown(res: dict) -> str:
    lines = [f"## Preemption soak: {res['kills']} kills, resumed each time (bench/preempt_soak.py, {res['date']})", "",
             f"Tiny model (2 layers, 64 wide, ctx 64, batch 8, fp32, Muon), {res['steps']}-step runs, one thread per "
             f"process, {res['cpu']}; per chain, the kill steps are drawn uniformly from 2..{res['steps'] - 2} and sorted "
             "(each at least 2 past the previous kill), and the signal lands 0-20 ms after that step is logged. Steps "
             "lost = last step the killed process logged minus the step of the checkpoint `--resume` picked; a "
             "SIGKILL before the first checkpoint restarts the run.", "",
             "| chain | kills | steps lost per kill | checkpoint as expected | final losses = uninterrupted run |",
             "|---|---|---|---|---|"]
    for c in res["chains"]:
        for sig in ("SIGTERM", "SIGKILL"):
            ks = [k for k in c["records"] if k["signal"] == sig]
            if ks:
                lines.append(f"| {c['name']} | {len(ks)} {sig} | {', '.join(str(k['steps_lost']) for k in ks)} | "
                             f"{sum(k['ok'] for k in ks)}/{len(ks)} | {'**yes**, bitwise' if c['identical'] else '**no**'} "
                             f"({c['steps_compared']} steps) |")
    term = [k for c in res["chains"] for k in c["records"] if k["signal"] == "SIGTERM"]
    kill = [k for c in res["chains"] for k in c["records"] if k["signal"] == "SIGKILL"]
    lines += ["", f"SIGTERM: {len(term)} kills, {sum(k['steps_lost'] for k in term)} steps lost in all, every one exited 0 "
                  f"with the resume command: {all(k['exit_code'] == 0 and k['resume_msg'] for k in term)}. "
                  f"SIGKILL: {len(kill)} kills, {sum(k['steps_lost'] for k in kill)} steps lost in all (mean "
                  f"{sum(k['steps_lost'] for k in kill) / max(len(kill), 1):.1f}; saves every {SAVE_EVERY} steps). "
                  f"Wall time {res['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--kills", type=int, default=20, help="in all, half per chain")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    t0, rng = time.time(), random.Random(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    ds = prepare()
    ref = OUT / "reference"
    subprocess.run(["rm", "-rf", str(ref)])
    subprocess.run([sys.executable, "-m", "zhgpt", *train_args(ds, ref, args.steps, [])], env=env(), cwd=REPO,
                   check=True, capture_output=True)
    want = losses(ref)
    n1 = args.kills // 2
    mixed = ["SIGKILL", "SIGTERM"] * ((args.kills - n1 + 1) // 2)
    rng.shuffle(mixed)
    plans = [("SIGTERM, periodic saves off", kill_points(rng, args.steps, n1, ["SIGTERM"] * n1), []),
             (f"mixed, --save-every {SAVE_EVERY}", kill_points(rng, args.steps, args.kills - n1, mixed),
              ["--save-every", str(SAVE_EVERY)])]
    chains = []
    for name, kills, extra in plans:
        print(f"{name}:", flush=True)
        out = OUT / name.split(",")[0].lower()
        records = chain(ds, out, args.steps, kills, extra, rng)
        got = losses(out)
        chains.append({"name": name, "records": records, "identical": got == want, "steps_compared": len(got),
                       "differing_steps": [s for s in want if got.get(s) != want[s]][:10]})
    import platform
    res = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "kills": args.kills, "seed": args.seed,
           "cpu": platform.processor() or platform.machine(), "chains": chains, "wall_s": time.time() - t0}
    md = markdown(res)
    print(md)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "preempt_soak.md").write_text(md, encoding="utf-8")
    (Path(args.out) / "preempt_soak.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    bad = [k for c in chains for k in c["records"] if not k["ok"]] or [c for c in chains if not c["identical"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
