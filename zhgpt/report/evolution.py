"""What the model learned, step by step: the loss table at ~8 log-spaced evaluations and the
**sample evolution** table, each sample labelled with a stage.

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

import math

from zhgpt.report.runs import Run, finite, first_of

STAGES = ("noise", "characters", "words and punctuation", "sentences")
# Thresholds of the stage rule (see the module docstring); progress bounds per stage index.
PROGRESS_BOUNDS = (0.1, 0.4, 0.7)
MIN_CJK, MIN_PUNCT, MAX_PUNCT, MAX_REP_CHARS, MAX_REP_WORDS, MIN_CLAUSE = 0.5, 0.03, 0.3, 0.5, 0.25, 4
PUNCT = set("，。！？、；：“”‘’（）《》〈〉「」『』…—·．,.!?;:\"'()")
SENTENCE_END = set("。！？!?…")
TABLE_ROWS = 8   # default loss-table length: enough to see the shape, short enough to read
EVOLUTION_ROWS = 12   # sample rows per prompt; a long run's 1000 evaluations are thinned log-spaced


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
                     "train_loss": smooth.get(t.get("step")), "val_loss": finite(e.get("val_loss")),
                     "val_bpc": finite(e.get("val_bpc")), "val_ppl": finite(e.get("val_ppl"))})
    return rows


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
    bpcs = [e["val_bpc"] for e in run.evals if finite(e.get("val_bpc")) is not None]
    sample_bpcs = [s["val_bpc"] for s in run.samples if finite(s.get("val_bpc")) is not None]
    series = bpcs or sample_bpcs
    first, last = (series[0], series[-1]) if series else (None, None)
    table: dict[str, list[dict]] = {}
    for s in run.samples:
        if s.get("step") not in shown:
            continue
        e = run.eval_at(s.get("step"))
        bpc = finite(first_of(s.get("val_bpc"), e.get("val_bpc")))
        text = continuation(s)
        table.setdefault(str(s.get("prompt", "")), []).append({
            "step": s.get("step"), "tokens_seen": first_of(s.get("tokens_seen"), e.get("tokens_seen")),
            "val_loss": finite(first_of(s.get("val_loss"), e.get("val_loss"))), "val_bpc": bpc,
            "stage": stage_label(text, bpc, first, last), "output": text})
    return table
