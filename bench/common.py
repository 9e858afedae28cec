"""Shared helpers for the benchmarks in bench/: machine header, alternating timing, memory, Markdown.

The host these benchmarks run on is usually shared, so absolute numbers drift by 2-3x with the load.
Every bench therefore measures the things it compares *in one process, alternating* (A B B A ...,
rounds rotated so neither side always runs first), reports medians and per-round ratios, and records
the load average before and after. Compare ratios across runs, not tokens/s.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
OUT = BENCH_DIR / "out"               # git-ignored scratch space for run folders and exports
SHARED = REPO.parent / "shared"
PD_TRAIN = SHARED / "data" / "pd1998" / "train.txt"
PD_VAL = SHARED / "data" / "pd1998" / "val.txt"


# ------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_avg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict:
    import torch
    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = "not installed"
    flags = cpu_flags()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "isa": ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no avx512",
        "mem_gb": round(mem_gb, 1), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": tf,
    }


def header(info: dict, load_before: str, load_after: str, command: str) -> str:
    return (f"- date {info['date']} | `{command}`\n"
            f"- machine: {info['cpu']}, {info['cores']} cores ({info['isa']}), {info['mem_gb']} GiB RAM, "
            f"torch threads {info['threads']}\n"
            f"- versions: python {info['python']}, torch {info['torch']}, transformers {info['transformers']}\n"
            f"- load average (1/5/15 min) before {load_before}, after {load_after} "
            f"(the host is shared: compare the ratios, not the absolute speeds)\n")


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


# ------------------------------------------------------------------------- timing

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def alternate(fns: dict, rounds: int, reps: int, on_round=None, cpu: dict | None = None) -> dict[str, list[float]]:
    """Run each callable ``reps`` times per round, rotating the order every round (A B C, B C A, ...)
    and reversing every other round, so slow drift in the machine's load hits every variant alike.
    Returns wall seconds per call, one entry per round, for each name; if ``cpu`` is a dict it gets
    the process CPU seconds (all threads) per call the same way."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    if cpu is not None:
        cpu.update({n: [] for n in names})
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order = order[::-1]
        for n in order:
            c = time.process_time()
            t = time.perf_counter()
            for _ in range(reps):
                fns[n]()
            times[n].append((time.perf_counter() - t) / reps)
            if cpu is not None:
                cpu[n].append((time.process_time() - c) / reps)
        if on_round:
            on_round(r, times)
    return times


def ratio_stats(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of a[i]/b[i] (the same round ran both close together)."""
    rs = sorted(x / y for x, y in zip(a, b))
    return median(rs), rs[0], rs[-1]


# ------------------------------------------------------------------------- memory (Linux)

def _status_kb(key: str) -> float:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later peak belongs to what ran in between."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------- Markdown

def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x):
        if isinstance(x, float):
            return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
        return str(x)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Put ``## title`` + body in RESULTS.md: replace the section with exactly this heading if there is one
    (it is this bench's own earlier result), else append. Other sections are kept byte for byte."""
    heading = f"## {title}"
    section = f"{heading}\n\n{body.rstrip()}\n"
    path.touch(exist_ok=True)
    with open(path, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)     # others append to the same file; keep the read-modify-write atomic
        text = f.read()
        lines = text.splitlines(keepends=True)
        start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == heading), None)
        if start is None:
            if not text.strip():
                text = "# Benchmark results\n\nEach section is written by the script named in it; see bench/README.md.\n"
            new = text.rstrip("\n") + "\n\n" + section
        else:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            rest = "".join(lines[end:])
            new = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
        f.seek(0)
        f.write(new)
        f.truncate()
    print(f"wrote section '{title}' to {path}")
