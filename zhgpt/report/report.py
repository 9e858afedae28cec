"""`zhgpt report RUN [RUN...] [--compare] [--log-x]`: watch a model learn.

For each run folder (see docs/DESIGN.md, "Run folder") this writes

- ``loss_curve.png``: train loss (raw, light, and a debiased EMA) and val loss against steps, with tokens
  seen on the top axis and stars where samples were taken; below, val bits per character and the
  learning rate;
- ``report.md`` and a self-contained ``report.html`` (inline CSS, the PNG as a data URI: one file to
  e-mail or open from disk): run summary, a loss table at ~8 log-spaced evaluations, and the
  **sample evolution** table: what the model wrote for each prompt at each evaluation.

``--compare`` overlays several runs instead: ``compare.png`` (val BPC and loss by tokens seen and by wall
time) and ``compare.md``/``compare.html`` with one row per run.

Stage labels
------------
Each sample row gets a stage, derived from numbers, never from the step:

- ``progress`` = (first BPC - this BPC) / (first BPC - last BPC), the share of the run's total
  improvement in val bits per character reached at this evaluation (first/last = the run's first and
  last evaluations);
- features of the generated continuation (whitespace ignored): ``cjk`` = share of Chinese-script
  characters (ideographs, Chinese punctuation, full-width forms such as the digits People's Daily uses;
  not Latin letters, bytes or U+FFFD), ``punct`` = share of punctuation marks, ``rep`` = share of
  repeated character 3-grams (1 - distinct/total), ``ends`` = number of sentence-final marks (。！？!?…)
  that close a clause of at least 4 characters.

The first rule that matches wins:

1. **noise** — ``cjk < 0.5`` or ``progress < 0.1``: not even the script is learned yet (a random
   byte-level model writes fragments and U+FFFD; a random char-level one writes rare characters, which
   only the progress bound catches);
2. **characters** — ``punct < 0.03`` or ``punct > 0.3`` or ``rep > 0.5`` or ``progress < 0.4``: frequent
   characters and marks, no structure (Chinese prose has a mark every ~8-12 characters, punct ~ 0.1;
   a young model sprays its most frequent tokens, "，" and "。", at 30-50%);
3. **words and punctuation** — ``ends == 0`` or ``rep > 0.25`` or ``progress < 0.7``: words and commas,
   but clauses do not close into sentences;
4. **sentences** — everything else.

Outputs shorter than 4 characters carry too little text to judge and are labelled by ``progress`` alone
(< 0.1, < 0.4, < 0.7, else). With a single evaluation there is no progress and the text decides.
"""
from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from zhgpt.config import add_args, format_config, from_args, load_json, opt
from zhgpt.errors import ZhgptError

STAGES = ("noise", "characters", "words and punctuation", "sentences")
# Thresholds of the stage rule (see the module docstring); progress bounds per stage index.
PROGRESS_BOUNDS = (0.1, 0.4, 0.7)
MIN_CJK, MIN_PUNCT, MAX_PUNCT, MAX_REP_CHARS, MAX_REP_WORDS, MIN_CLAUSE = 0.5, 0.03, 0.3, 0.5, 0.25, 4
PUNCT = set("，。！？、；：“”‘’（）《》〈〉「」『』…—·．,.!?;:\"'()")
SENTENCE_END = set("。！？!?…")
TABLE_ROWS = 8   # default loss-table length: enough to see the shape, short enough to read
EVOLUTION_ROWS = 12   # sample rows per prompt; a long run's 1000 evaluations are thinned log-spaced


@dataclass
class ReportConfig:
    runs: list[str] = opt(help="run folder(s) written by `zhgpt train`", positional=True)
    compare: bool = opt(False, "overlay the runs in one compare.png / compare.md / compare.html")
    log_x: bool = opt(False, "logarithmic step and token axes (shows the first minutes of learning)")
    out: str | None = opt(None, "folder for --compare output (default: <first run's parent>/compare-<time>)")
    steps: list[int] | None = opt(None, "steps for the loss table, rounded to the nearest evaluation "
                                  "(default: ~8 log-spaced evaluations)")

    def __post_init__(self):
        if isinstance(self.runs, (str, os.PathLike)):
            self.runs = [self.runs]
        self.runs = [str(r) for r in (self.runs or [])]
        if not self.runs:
            raise ZhgptError("no run folder given; usage: zhgpt report RUN [RUN...]")
        if self.compare and len(self.runs) < 2:
            raise ZhgptError("--compare needs at least two run folders")
        if self.steps is not None and any(s < 0 for s in self.steps):
            raise ZhgptError(f"--steps must be non-negative, got {self.steps}")


# --- reading a run folder ---------------------------------------------------------------------------

def read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict]:
    """Records of a .jsonl file, skipping lines that are not JSON objects.

    A killed run leaves a truncated last line; a run resumed after that appends after it, so the bad
    line can also sit in the middle. Neither should cost the user their report: skip and say so.
    """
    records, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad.append(lineno)
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad.append(lineno)
    if bad and notes is not None:
        where = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        notes.append(f"{path.name}: skipped {len(bad)} unreadable line(s) (line {where}; "
                     "a run killed while writing leaves one)")
    return records


def _after_resume(records: list[dict]) -> list[dict]:
    """Drop records a resumed run re-did: when the step goes back to s, the earlier records with step >= s
    were overwritten by the resumed run (it restarted from a checkpoint at s)."""
    kept: list[dict] = []
    for r in records:
        s = r.get("step")
        if isinstance(s, (int, float)) and kept and s < kept[-1].get("step", -1):
            kept = [k for k in kept if k.get("step", -1) < s]
        kept.append(r)
    return kept


def _merge_steps(records: list[dict]) -> list[dict]:
    """One record per step: the loop may write the train line and the evaluation line separately."""
    by_step: dict = {}
    for r in records:
        if not isinstance(r.get("step"), (int, float)):
            continue
        by_step.setdefault(r["step"], {}).update({k: v for k, v in r.items() if v is not None})
    return [by_step[s] for s in sorted(by_step)]


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclass
class Run:
    path: Path
    name: str
    metrics: list[dict]
    samples: list[dict]
    config: dict
    info: dict
    notes: list[str] = field(default_factory=list)

    # Cached: a long run has 10^5 metric lines and the tables look evaluations up per sample.
    @functools.cached_property
    def train(self) -> list[dict]:
        return [m for m in self.metrics if _num(m.get("loss")) is not None]

    @functools.cached_property
    def evals(self) -> list[dict]:
        return [m for m in self.metrics if _num(m.get("val_loss")) is not None]

    @functools.cached_property
    def _evals_by_step(self) -> dict:
        return {e["step"]: e for e in self.evals}

    def eval_at(self, step) -> dict:
        return self._evals_by_step.get(step, {})


def load_run(path) -> Run:
    p = Path(path)
    if p.is_file() and p.name == "metrics.jsonl":
        p = p.parent
    if not p.exists():
        raise ZhgptError(f"{p}: no such folder; give the --out folder of `zhgpt train`")
    if not (p / "metrics.jsonl").is_file():
        raise ZhgptError(f"{p} is not a zhgpt run folder (no metrics.jsonl); give the --out folder of "
                         "`zhgpt train`")
    notes: list[str] = []
    metrics = _merge_steps(_after_resume(read_jsonl(p / "metrics.jsonl", notes)))
    samples = _after_resume(read_jsonl(p / "samples.jsonl", notes)) if (p / "samples.jsonl").is_file() else []
    # A prompt sampled twice at one step (resume) keeps the later output.
    dedup: dict = {}
    for s in samples:
        dedup[(s.get("step"), s.get("prompt", ""))] = s
    samples = sorted(dedup.values(), key=lambda s: (s.get("step") or 0))
    config = load_json(p / "config.json") if (p / "config.json").is_file() else {}
    info = load_json(p / "run.json") if (p / "run.json").is_file() else {}
    if not config:
        notes.append("config.json missing: model and data details unknown")
    return Run(path=p, name=p.resolve().name, metrics=metrics, samples=samples, config=config, info=info,
               notes=notes)


# --- summary numbers --------------------------------------------------------------------------------

def _dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _first(*values):
    return next((v for v in values if v not in (None, "", [], {})), None)


def final_metrics(run: Run) -> dict:
    """Final val loss/BPC/perplexity: the last evaluation, else what run.json recorded."""
    last = run.evals[-1] if run.evals else {}
    fin = _first(_dig(run.info, "final"), _dig(run.info, "final_metrics"), {}) or {}
    out = {}
    for k in ("val_loss", "val_bpc", "val_ppl"):
        out[k] = _num(_first(last.get(k), fin.get(k), run.info.get(k)))
    if out["val_ppl"] is None and out["val_loss"] is not None:
        out["val_ppl"] = math.exp(min(out["val_loss"], 50))
    return out


def run_params(run: Run) -> int | None:
    n = _first(run.info.get("params"), run.info.get("n_params"), run.info.get("num_params"),
               _dig(run.info, "model", "params"))
    if isinstance(n, (int, float)):
        return int(n)
    model = run.config.get("model")
    if isinstance(model, dict):
        try:
            from zhgpt.model.gpt import ModelConfig
            from zhgpt.model.presets import count_params
            return count_params(ModelConfig(**model))
        except (TypeError, ZhgptError, ImportError):
            return None
    return None


def tokens_seen(run: Run) -> int | None:
    last = run.metrics[-1] if run.metrics else {}
    v = _first(last.get("tokens_seen"), run.info.get("tokens_seen"))
    return int(v) if isinstance(v, (int, float)) else None


def wall_time(run: Run) -> float | None:
    last = run.metrics[-1] if run.metrics else {}
    return _num(_first(run.info.get("elapsed_s"), run.info.get("wall_time_s"), last.get("elapsed_s")))


def tokens_per_sec(run: Run) -> float | None:
    toks, secs = tokens_seen(run), wall_time(run)
    if toks and secs:
        return toks / secs
    rates = [_num(m.get("tokens_per_sec")) for m in run.metrics if _num(m.get("tokens_per_sec"))]
    return sum(rates) / len(rates) if rates else None


def chars_per_token(run: Run) -> float | None:
    data = run.config.get("data") or {}
    train = _dig(data, "splits", "train") or _dig(data, "splits", "val") or {}
    if _num(train.get("chars")) and _num(train.get("tokens")):
        return train["chars"] / train["tokens"]
    v = _num(_first(_dig(data, "summary", "chars_per_token"), data.get("chars_per_token"),
                    run.info.get("chars_per_token")))
    if v:
        return v
    # BPC = loss / ln 2 * tokens / chars, so an evaluation with both gives the ratio back.
    for e in reversed(run.evals):
        if _num(e.get("val_bpc")):
            return e["val_loss"] / (e["val_bpc"] * math.log(2))
    return None


def fmt_int(n) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"   # 4.27M, 65.5M, 100k
    return f"{n:.0f}"


def fmt_secs(s) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_num(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _sources(data: dict) -> str:
    srcs = data.get("sources") or _dig(data, "config", "sources") or []
    if isinstance(srcs, (str, dict)):
        srcs = [srcs]
    names = []
    for s in srcs:
        if isinstance(s, dict):
            s = _first(s.get("name"), s.get("path"), s.get("source"), s.get("spec"), json.dumps(s, ensure_ascii=False))
        names.append(str(s))
    text = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return text or "–"


def hardware_text(info: dict) -> str:
    """"cuda: NVIDIA H200 x8, bf16" / "cpu: AMD EPYC (2 threads), float32" from run.json."""
    hw = info.get("hardware")
    dtype = info.get("dtype")
    if isinstance(hw, dict):
        device = hw.get("device") or info.get("device") or ""
        if hw.get("gpu"):
            what = f"{hw['gpu']}" + (f" x{hw['gpus']}" if (hw.get("gpus") or 1) > 1 else "")
        else:
            what = f"{hw.get('cpu', 'CPU')}" + (f" ({hw['threads']} threads)" if hw.get("threads") else "")
        world = info.get("world_size")
        text = f"{device}: {what}" if device else what
        if isinstance(world, int) and world > 1:
            text += f", {world} processes"
    else:
        text = " / ".join(str(x) for x in (info.get("device"), hw) if x)
    if dtype:
        text += f", {dtype}"
    return text or "–"


def summary_rows(run: Run) -> list[tuple[str, str]]:
    """(label, value) pairs for the run summary, from run.json, config.json and the metrics."""
    cfg, info = run.config, run.info
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    train_cfg = cfg.get("train") or {}
    fin = final_metrics(run)
    tr = _dig(data, "splits", "train") or {}
    train_tokens = _num(_first(tr.get("tokens"), data.get("train_tokens")))
    train_chars = _num(_first(tr.get("chars"), data.get("train_chars")))
    data_desc = _sources(data)
    if train_tokens:
        data_desc += f" ({fmt_int(train_chars)} chars, {fmt_int(train_tokens)} tokens in the train split)"
    cpt = chars_per_token(run)
    tok_kind = _first(data.get("tokenizer_kind"), _dig(data, "tokenizer", "kind"), train_cfg.get("tokenizer"))
    vocab = _first(data.get("vocab_size"), model.get("vocab_size"))
    arch = "–"
    if model:
        arch = (f"{model.get('arch', 'gpt2')}: {model.get('n_layer')} layers, {model.get('n_head')} heads, "
                f"{model.get('n_embd')} hidden, context {model.get('block_size')}")
        preset = _first(info.get("preset"), train_cfg.get("preset"))
        if preset:
            arch = f"{preset} ({arch})"
    rows_hw = hardware_text(info)
    best = min((e["val_loss"] for e in run.evals), default=None)
    rows = [
        ("run", f"{run.path}" + (f" ({info['status']})" if info.get("status") else "")),
        ("data", data_desc),
        ("tokenizer", f"{tok_kind or '–'}, vocab {vocab or '–'}, "
                      f"{fmt_num(cpt, 2) if cpt else '–'} chars/token"),
        ("model", arch),
        ("parameters", fmt_int(run_params(run))),
        ("hardware", rows_hw),
        ("wall time", fmt_secs(wall_time(run))),
        ("tokens seen", fmt_int(tokens_seen(run))),
        ("tokens/s", fmt_int(tokens_per_sec(run)) + (f" ({fmt_int(info['tokens_per_step'])} tokens/step)"
                                                     if _num(info.get("tokens_per_step")) else "")),
        ("steps", str(run.metrics[-1]["step"]) if run.metrics else "0"),
        ("final val loss", fmt_num(fin["val_loss"]) + (f" (best {best:.3f})" if best is not None else "")),
        ("final val BPC", fmt_num(fin["val_bpc"])),
        ("final val perplexity", fmt_num(fin["val_ppl"], 1)),
    ]
    return rows


# --- tables -----------------------------------------------------------------------------------------

def ema(values: list[float], weight: float | None = None) -> list[float]:
    """TensorBoard's debiased exponential moving average (the first points are not pulled towards 0)."""
    if weight is None:
        # ~1/(1-w) points of memory: 5% of the run, between 0 and 0.98.
        weight = max(0.0, min(0.98, 1 - 20 / max(len(values), 1)))
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = acc * weight + (1 - weight) * v
        out.append(acc / (1 - weight ** i) if weight > 0 else v)
    return out


def pick_steps(steps: list[int], n: int = TABLE_ROWS) -> list[int]:
    """~n steps log-spaced over ``steps`` (learning is fast early, slow late), always the first and last."""
    steps = sorted(set(steps))
    if len(steps) <= n:
        return steps
    pos = [s for s in steps if s > 0]
    targets = [math.exp(math.log(pos[0]) + i * (math.log(pos[-1]) - math.log(pos[0])) / (n - 2))
               for i in range(n - 1)]
    chosen = {steps[0], steps[-1]}
    for t in targets:
        chosen.add(min(pos, key=lambda s: abs(math.log(s) - math.log(t))))
    return sorted(chosen)


def _nearest(records: list[dict], step) -> dict:
    return min(records, key=lambda r: abs(r["step"] - step)) if records else {}


def loss_table(run: Run, steps: list[int] | None = None) -> list[dict]:
    """Rows at ~8 log-spaced evaluations, or at the requested steps (rounded to the nearest evaluation;
    to the nearest logged step when there are no evaluations yet)."""
    evals, train = run.evals, run.train
    base = evals or train
    if not base:
        return []
    if steps:
        chosen = sorted({_nearest(base, s)["step"] for s in steps})
    else:
        chosen = pick_steps([r["step"] for r in base])
    smooth = dict(zip([t["step"] for t in train], ema([t["loss"] for t in train])))
    by_step = {r["step"]: r for r in run.metrics}
    rows = []
    for s in chosen:
        e = run.eval_at(s)
        t = by_step.get(s, {})    # the train loss at exactly this step (there is none at step 0)
        m = by_step.get(s, {})
        rows.append({"step": s, "tokens_seen": m.get("tokens_seen"), "elapsed_s": m.get("elapsed_s"),
                     "train_loss": smooth.get(t.get("step")), "val_loss": _num(e.get("val_loss")),
                     "val_bpc": _num(e.get("val_bpc")), "val_ppl": _num(e.get("val_ppl"))})
    return rows


# --- stage labels -----------------------------------------------------------------------------------

def is_cjk(ch: str) -> bool:
    """A Chinese ideograph."""
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F


def is_chinese_script(ch: str) -> bool:
    """An ideograph, CJK punctuation (U+3000-303F), a full-width form (U+FF01-FF5E: ，！１Ａ) or the
    general punctuation Chinese text uses (“”‘’…—)."""
    o = ord(ch)
    return is_cjk(ch) or 0x3000 <= o <= 0x303F or 0xFF01 <= o <= 0xFF5E or ch in "“”‘’…—·"


def text_features(text: str) -> dict:
    """The text side of the stage rule: cjk, punct, rep, ends, n (see the module docstring)."""
    chars = [c for c in text if not c.isspace()]
    n = len(chars)
    if not n:
        return {"n": 0, "cjk": 0.0, "punct": 0.0, "rep": 0.0, "ends": 0}
    grams = ["".join(chars[i:i + 3]) for i in range(n - 2)]
    rep = 1 - len(set(grams)) / len(grams) if grams else 0.0
    ends, clause = 0, 0
    for c in chars:
        if c in SENTENCE_END:
            ends += clause >= MIN_CLAUSE
            clause = 0
        elif c in PUNCT:
            clause = 0
        else:
            clause += 1
    return {"n": n, "cjk": sum(map(is_chinese_script, chars)) / n, "punct": sum(c in PUNCT for c in chars) / n,
            "rep": rep, "ends": ends}


def bpc_progress(bpc: float | None, first: float | None, last: float | None) -> float | None:
    """Share of the run's BPC improvement reached, clipped to [0, 1]; None when it cannot be computed."""
    if bpc is None or first is None or last is None or not first > last:
        return None
    return min(1.0, max(0.0, (first - bpc) / (first - last)))


def stage_label(text: str, bpc: float | None = None, first_bpc: float | None = None,
                last_bpc: float | None = None) -> str:
    """One of STAGES for a sample; the rule is in the module docstring."""
    f = text_features(text)
    p = bpc_progress(bpc, first_bpc, last_bpc)

    def below(i: int) -> bool:
        return p is not None and p < PROGRESS_BOUNDS[i]

    if f["n"] < 4:
        if p is None:
            return STAGES[0]
        return STAGES[next((i for i in range(3) if below(i)), 3)]
    if f["cjk"] < MIN_CJK or below(0):
        return STAGES[0]
    if not MIN_PUNCT <= f["punct"] <= MAX_PUNCT or f["rep"] > MAX_REP_CHARS or below(1):
        return STAGES[1]
    if f["ends"] == 0 or f["rep"] > MAX_REP_WORDS or below(2):
        return STAGES[2]
    return STAGES[3]


def continuation(sample: dict) -> str:
    """The generated text without the prompt (the loop may store prompt + continuation)."""
    out, prompt = str(sample.get("output", "")), str(sample.get("prompt", ""))
    return out[len(prompt):] if prompt and out.startswith(prompt) else out


def evolution(run: Run, max_rows: int | None = EVOLUTION_ROWS) -> dict[str, list[dict]]:
    """prompt -> rows (step, tokens seen, val loss, BPC, stage, output) in step order, at most ``max_rows``
    log-spaced evaluations per prompt (first and last always included)."""
    steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))})
    shown = set(pick_steps(steps, max_rows)) if max_rows else set(steps)
    bpcs = [e["val_bpc"] for e in run.evals if _num(e.get("val_bpc")) is not None]
    sample_bpcs = [s["val_bpc"] for s in run.samples if _num(s.get("val_bpc")) is not None]
    series = bpcs or sample_bpcs
    first, last = (series[0], series[-1]) if series else (None, None)
    table: dict[str, list[dict]] = {}
    for s in run.samples:
        if s.get("step") not in shown:
            continue
        e = run.eval_at(s.get("step"))
        bpc = _num(_first(s.get("val_bpc"), e.get("val_bpc")))
        text = continuation(s)
        table.setdefault(str(s.get("prompt", "")), []).append({
            "step": s.get("step"), "tokens_seen": _first(s.get("tokens_seen"), e.get("tokens_seen")),
            "val_loss": _num(_first(s.get("val_loss"), e.get("val_loss"))), "val_bpc": bpc,
            "stage": stage_label(text, bpc, first, last), "output": text})
    return table


# --- plots ------------------------------------------------------------------------------------------

def _figure(figsize):
    # Figure + Agg canvas, not pyplot: no global figure registry, no GUI backend, safe in a training process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _token_axis(ax, steps: list, tokens: list):
    """A top x-axis in tokens seen, mapped from steps (linear beyond the logged range)."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter
    pairs = sorted((s, t) for s, t in zip(steps, tokens) if s is not None and t is not None)
    if len(pairs) < 2 or pairs[-1][0] <= 0:
        return
    xs, ys = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        return   # not invertible (e.g. repeated steps); better no axis than a wrong one
    k = ys[-1] / xs[-1] if xs[-1] else 1.0

    def s2t(s):
        s = np.asarray(s, float)
        return np.where(s < xs[0], ys[0] + (s - xs[0]) * k,
                        np.where(s > xs[-1], ys[-1] + (s - xs[-1]) * k, np.interp(s, xs, ys)))

    def t2s(t):
        t = np.asarray(t, float)
        return np.where(t < ys[0], xs[0] + (t - ys[0]) / k,
                        np.where(t > ys[-1], xs[-1] + (t - ys[-1]) / k, np.interp(t, ys, xs)))

    top = ax.secondary_xaxis("top", functions=(s2t, t2s))
    top.set_xlabel("tokens seen")
    if ax.get_xscale() == "log":
        top.set_xscale("log")
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_int(v) if v >= 0 else ""))


def plot_run(run: Run, log_x: bool = False) -> bytes:
    """loss_curve.png as bytes."""
    import matplotlib
    from zhgpt.report import fonts
    with matplotlib.rc_context(fonts.cjk_rc()), fonts.quiet_missing_glyphs():
        fig = _figure((10, 7.5))
        ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
        keep = (lambda s: s > 0) if log_x else (lambda s: True)   # a log axis cannot show step 0
        train = [t for t in run.train if keep(t["step"])]
        evals = [e for e in run.evals if keep(e["step"])]
        if train:
            xs = [t["step"] for t in train]
            ys = [t["loss"] for t in train]
            ax1.plot(xs, ys, color="C0", alpha=0.25, lw=0.8, label="train loss")
            ax1.plot(xs, ema(ys), color="C0", lw=1.8, label="train loss (EMA)")
        if evals:
            ax1.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="C1", ms=4,
                     lw=1.5, label="val loss")
        sample_steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))
                               and keep(s["step"])})
        prompts = list(dict.fromkeys(str(s.get("prompt", "")) for s in run.samples))
        marked = [(st, run.eval_at(st).get("val_loss")) for st in sample_steps]
        marked = [(st, v) for st, v in marked if _num(v) is not None]
        if marked:
            label = "samples taken"
            if prompts and prompts[0]:
                p = prompts[0] if len(prompts[0]) <= 12 else prompts[0][:12] + "…"
                label += f" (prompt 「{p}」" + (f" +{len(prompts) - 1}" if len(prompts) > 1 else "") + ")"
            ax1.plot(*zip(*marked), "*", color="C3", ms=11, label=label, zorder=5)
        if not train and not evals:
            ax1.text(0.5, 0.5, "no steps logged yet", transform=ax1.transAxes, ha="center", va="center")
        ax1.set_ylabel("loss (nats/token)")
        ax1.set_title(f"{run.name}: learning curves", loc="left")
        ax1.grid(alpha=0.3)
        if ax1.get_legend_handles_labels()[0]:
            ax1.legend(loc="upper right", fontsize=9)
        if log_x and (train or evals):
            ax1.set_xscale("log")   # before the token axis: a scale change resets the secondary axis
        _token_axis(ax1, [m["step"] for m in run.metrics if keep(m["step"])],
                    [m.get("tokens_seen") for m in run.metrics if keep(m["step"])])

        bpc = [(e["step"], e["val_bpc"]) for e in evals if _num(e.get("val_bpc")) is not None]
        handles = []
        if bpc:
            handles += ax2.plot(*zip(*bpc), "o-", color="C2", ms=4, label="val bits per character")
            bmarked = [(st, run.eval_at(st).get("val_bpc")) for st in sample_steps]
            bmarked = [(st, v) for st, v in bmarked if _num(v) is not None]
            if bmarked:
                ax2.plot(*zip(*bmarked), "*", color="C3", ms=11, zorder=5)
        ax2.set_ylabel("val bits per character")
        lrs = [(m["step"], m["lr"]) for m in run.metrics if _num(m.get("lr")) is not None and keep(m["step"])]
        if lrs:
            ax_lr = ax2.twinx()
            handles += ax_lr.plot(*zip(*lrs), "--", color="C4", lw=1, label="learning rate")
            ax_lr.set_ylabel("learning rate")
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if handles:
            ax2.legend(handles=handles, loc="upper right", fontsize=9)
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("step" + (" (log scale; step 0 not shown)" if log_x else ""))
        fig.tight_layout()
        return _png(fig)


def _short_secs(v: float) -> str:
    """Axis tick for seconds: 30s, 5min, 1.5h."""
    if v < 120:
        return f"{v:.3g}s"
    if v < 7200:
        return f"{v / 60:.3g}min"
    return f"{v / 3600:.3g}h"


def plot_compare(runs: list[Run], labels: list[str], log_x: bool = False) -> bytes:
    """compare.png: val BPC (top) and val loss (bottom) by tokens seen (left) and wall time (right)."""
    import matplotlib
    from zhgpt.report import fonts
    with matplotlib.rc_context(fonts.cjk_rc()), fonts.quiet_missing_glyphs():
        fig = _figure((12, 8))
        axes = fig.subplots(2, 2, sharey="row")
        for i, (run, label) in enumerate(zip(runs, labels)):
            for row, key in enumerate(("val_bpc", "val_loss")):
                for col, xkey in enumerate(("tokens_seen", "elapsed_s")):
                    pts = [(e[xkey], e[key]) for e in run.evals
                           if _num(e.get(xkey)) is not None and _num(e.get(key)) is not None
                           and (not log_x or e[xkey] > 0)]
                    if pts:
                        axes[row][col].plot(*zip(*pts), "o-", ms=3, lw=1.5, color=f"C{i % 10}", label=label)
        for row, name in enumerate(("val bits per character", "val loss (nats/token)")):
            axes[row][0].set_ylabel(name)
        for col, name in enumerate(("tokens seen", "wall time")):
            axes[1][col].set_xlabel(name + (" (log scale)" if log_x else ""))
        from matplotlib.ticker import FuncFormatter, NullFormatter
        for row in axes:
            for col, ax in enumerate(row):
                ax.grid(alpha=0.3)
                if log_x and ax.has_data():
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())   # 2x10^1 3x10^1 ... overlap
                ax.xaxis.set_major_formatter(FuncFormatter(
                    (lambda v, _: fmt_int(v) if v >= 0 else "") if col == 0 else
                    (lambda v, _: _short_secs(v) if v >= 0 else "")))
        axes[0][0].set_title("by tokens seen (data efficiency)", loc="left")
        axes[0][1].set_title("by wall time (compute efficiency)", loc="left")
        if axes[0][0].has_data() or axes[1][0].has_data():
            (axes[0][0] if axes[0][0].has_data() else axes[1][0]).legend(fontsize=9)
        fig.tight_layout()
        return _png(fig)


# --- writing ----------------------------------------------------------------------------------------

def _write_bytes(path: Path, data: bytes) -> None:
    """Atomic write: a reader (or a browser refresh) never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open() rather than mkstemp(): mkstemp makes 0600 files, a report should be readable like any other
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def md_cell(text) -> str:
    """Model output inside a Markdown table cell: escape what Markdown or HTML would interpret."""
    s = html.escape(str(text), quote=False)
    s = re.sub(r"([\\`*_\[\]|#])", r"\\\1", s)
    return s.replace("\r", "").replace("\n", "<br>")


def e(text) -> str:
    return html.escape(str(text), quote=True)


CSS = """
body{font-family:-apple-system,"Segoe UI","Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#1f2328;
line-height:1.5}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}table.summary{min-width:760px}table.summary th{width:170px}
td.out{white-space:pre-wrap;word-break:break-all;min-width:420px}
.stage{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;white-space:nowrap;color:#fff}
.s0{background:#8c959f}.s1{background:#d4a72c}.s2{background:#218bff}.s3{background:#2da44e}
.note{color:#57606a;font-size:.9em}img{max-width:100%;border:1px solid #d0d7de}.prompt{font-weight:bold}
.best{font-weight:bold}
"""


def _html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _html_table(head: list[str] | None, rows: list[list[str]], cls: str = "", num_cols=(),
                row_headers: bool = False) -> str:
    """head and rows are already HTML; head None = no header row; row_headers: first cell is a <th>."""
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for r in rows:
        cells = [f"<th>{c}</th>" if i == 0 and row_headers else
                 f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(r)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def _thinned(run: Run) -> str:
    steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))})
    shown = len(pick_steps(steps, EVOLUTION_ROWS))
    return (f" Showing {shown} of {len(steps)} evaluations, log-spaced; all are in samples.jsonl."
            if shown < len(steps) else "")


STAGE_RULE = ("Stage: derived per row from the numbers — noise (under half Chinese script, or under 10% "
              "of the run's BPC improvement), characters (no punctuation or over 30% punctuation, heavy "
              "repetition, or under 40%), words and punctuation (no completed sentence, or under 70%), "
              "sentences (otherwise). Full rule: zhgpt/report.py.")
LOSS_HEAD = ["step", "tokens seen", "time", "train loss (EMA)", "val loss", "val BPC", "val ppl"]


def _loss_cells(r: dict) -> list[str]:
    return [str(r["step"]), fmt_int(r["tokens_seen"]), fmt_secs(r["elapsed_s"]), fmt_num(r["train_loss"]),
            fmt_num(r["val_loss"]), fmt_num(r["val_bpc"]), fmt_num(r["val_ppl"], 1)]


def render_md(run: Run, rows: list[tuple[str, str]], table: list[dict], evo: dict) -> str:
    out = [f"# zhgpt report: {md_cell(run.name)}", ""]
    out += [_md_table(["", ""], [[f"**{k}**", md_cell(v)] for k, v in rows]), ""]
    out += ["## Learning curves", "", "![loss curve](loss_curve.png)", ""]
    out += ["## Loss at selected steps", ""]
    out += [_md_table(LOSS_HEAD, [_loss_cells(r) for r in table]) if table else "_no steps logged yet_", ""]
    out += ["## Sample evolution", ""]
    if not evo:
        out += ["_no samples yet (samples.jsonl missing or empty)_", ""]
    for prompt, prow in evo.items():
        out += [f"### Prompt: 「{md_cell(prompt)}」", ""]
        out += [_md_table(["step", "tokens seen", "val loss", "BPC", "stage", "output"],
                          [[str(r["step"]), fmt_int(r["tokens_seen"]), fmt_num(r["val_loss"]),
                            fmt_num(r["val_bpc"]), r["stage"], md_cell(r["output"]) or "_(empty)_"] for r in prow]), ""]
    if evo:
        out += [f"_{STAGE_RULE}{_thinned(run)}_", ""]
    if run.notes:
        out += ["## Notes", ""] + [f"- {md_cell(n)}" for n in run.notes] + [""]
    return "\n".join(out)


def render_html(run: Run, rows: list[tuple[str, str]], table: list[dict], evo: dict, png: bytes) -> str:
    body = [f"<h1>zhgpt report: {e(run.name)}</h1>",
            f'<p class="note">generated {e(time.strftime("%Y-%m-%d %H:%M"))} from {e(run.path)}</p>',
            _html_table(None, [[e(k), e(v)] for k, v in rows], cls="summary", row_headers=True),
            "<h2>Learning curves</h2>",
            f'<img alt="loss curve" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
            "<h2>Loss at selected steps</h2>"]
    body.append(_html_table(LOSS_HEAD, [[e(c) for c in _loss_cells(r)] for r in table], num_cols=range(7))
                if table else '<p class="note">no steps logged yet</p>')
    body.append("<h2>Sample evolution</h2>")
    if not evo:
        body.append('<p class="note">no samples yet (samples.jsonl missing or empty)</p>')
    for prompt, prow in evo.items():
        body.append(f'<h3>Prompt: <span class="prompt">「{e(prompt)}」</span></h3>')
        cells = []
        for r in prow:
            i = STAGES.index(r["stage"])
            cells.append([e(r["step"]), e(fmt_int(r["tokens_seen"])), e(fmt_num(r["val_loss"])),
                          e(fmt_num(r["val_bpc"])), f'<span class="stage s{i}">{e(r["stage"])}</span>',
                          f'<span class="prompt">{e(prompt)}</span>{e(r["output"])}'])
        t = _html_table(["step", "tokens seen", "val loss", "BPC", "stage", "output"], cells, cls="evolution",
                        num_cols=(0, 1, 2, 3))
        # the output column wraps; mark it so the CSS can give it the width
        body.append(re.sub(r"<td>(<span class=\"prompt\">)", r'<td class="out">\1', t))
    if evo:
        body.append(f'<p class="note">{e(STAGE_RULE + _thinned(run))}</p>')
    if run.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in run.notes) + "</ul>")
    return _html_page(f"zhgpt report: {run.name}", "\n".join(body))


def write_report(run: Run, log_x: bool = False, steps: list[int] | None = None) -> list[Path]:
    png = plot_run(run, log_x)
    rows, table, evo = summary_rows(run), loss_table(run, steps), evolution(run)
    paths = [run.path / "loss_curve.png", run.path / "report.md", run.path / "report.html"]
    _write_bytes(paths[0], png)
    _write_text(paths[1], render_md(run, rows, table, evo))
    _write_text(paths[2], render_html(run, rows, table, evo, png))
    return paths


def _labels(runs: list[Run]) -> list[str]:
    """Folder names, with the parent added where two runs share a name (runs/a/x vs runs/b/x)."""
    names = [r.name for r in runs]
    return [f"{r.path.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def write_compare(runs: list[Run], out: Path, log_x: bool = False) -> list[Path]:
    labels = _labels(runs)
    png = plot_compare(runs, labels, log_x)
    head = ["run", "final val BPC", "final val loss", "params", "model", "tokenizer", "tokens seen",
            "wall time", "tokens/s"]
    fins = [final_metrics(r) for r in runs]
    best = min((f["val_bpc"] for f in fins if f["val_bpc"] is not None), default=None)
    rows = []
    for run, label, fin in zip(runs, labels, fins):
        model = run.config.get("model") or {}
        data = run.config.get("data") or {}
        shape = f"{model.get('arch', '–')} {model.get('n_layer', '?')}x{model.get('n_embd', '?')}" if model else "–"
        vocab = _first(data.get("vocab_size"), model.get("vocab_size")) or ""
        rows.append([label, fmt_num(fin["val_bpc"]), fmt_num(fin["val_loss"]), fmt_int(run_params(run)), shape,
                     f"{data.get('tokenizer_kind') or '–'} {vocab}".strip(),
                     fmt_int(tokens_seen(run)), fmt_secs(wall_time(run)), fmt_int(tokens_per_sec(run)),
                     fin["val_bpc"] is not None and fin["val_bpc"] == best])
    note = ("Compare runs by bits per character: loss is per token, and tokens differ between tokenizers. "
            "Best BPC in bold.")
    md = ["# zhgpt compare", "", "![compare](compare.png)", "",
          _md_table(head, [[md_cell(c) if j == 0 else (f"**{c}**" if j == 1 and r[-1] else c)
                            for j, c in enumerate(r[:-1])] for r in rows]), "", f"_{note}_", "",
          "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    html_rows = [[e(c) if not (j == 1 and r[-1]) else f'<span class="best">{e(c)}</span>'
                  for j, c in enumerate(r[:-1])] for r in rows]
    body = ["<h1>zhgpt compare</h1>",
            f'<p class="note">generated {e(time.strftime("%Y-%m-%d %H:%M"))}: '
            + ", ".join(e(r.path) for r in runs) + "</p>",
            _html_table(head, html_rows, num_cols=(1, 2, 3, 6, 7, 8)),
            f'<p class="note">{e(note)}</p>',
            f'<img alt="comparison" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    for run, label in zip(runs, labels):
        for n in run.notes:
            body.append(f'<p class="note">{e(label)}: {e(n)}</p>')
    paths = [out / "compare.png", out / "compare.md", out / "compare.html"]
    _write_bytes(paths[0], png)
    _write_text(paths[1], "\n".join(md))
    _write_text(paths[2], _html_page("zhgpt compare", "\n".join(body)))
    return paths


def main(cfg: ReportConfig) -> list[Path]:
    """Write the reports (or the comparison) and return the files written."""
    runs = [load_run(r) for r in cfg.runs]   # load all first: a bad folder fails before anything is written
    for run in runs:
        for n in run.notes:
            print(f"zhgpt: note: {run.name}: {n}", file=sys.stderr)
    if cfg.compare:
        out = Path(cfg.out) if cfg.out else runs[0].path.resolve().parent / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        return write_compare(runs, out, cfg.log_x)
    written: list[Path] = []
    for run in runs:
        written += write_report(run, cfg.log_x, cfg.steps)
    return written


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ReportConfig)


def run_cli(args) -> None:
    cfg = from_args(ReportConfig, args)
    print(format_config(cfg))
    for path in main(cfg):
        print(f"wrote {path}")
