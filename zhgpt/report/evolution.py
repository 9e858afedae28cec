"""What the model learned, step by step: the loss table at ~8 log-spaced evaluations and the
**sample evolution** table, each sample labelled with a stage.

Stage labels
------------
Runs whose evaluations carry the generation statistics (``cjk_ratio``, ``distinct_2``, ``repeat_4``,
``copy_rate``; and ``probe_acc`` with the probes) label every sample of an evaluation with the stage of
that evaluation, by the measured rule of ``zhgpt.report.stages`` (capped by the text rule below when
the run has no probes). Older runs (no statistics in
metrics.jsonl) label each sample by the text rule below, derived from numbers, never from the step:

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
# The stage rules live in stages.py; the names stay importable from here.
from zhgpt.report.stages import (STAGES, bpc_bounds, bpc_progress, continuation, sample_stage,  # noqa: F401
                                 stage_label, text_features)
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


def evolution(run: Run, max_rows: int | None = EVOLUTION_ROWS) -> dict[str, list[dict]]:
    """prompt -> rows (step, tokens seen, val loss, BPC, stage, output) in step order, at most ``max_rows``
    log-spaced evaluations per prompt (first and last always included)."""
    steps = sorted({s["step"] for s in run.samples if isinstance(s.get("step"), (int, float))})
    shown = set(pick_steps(steps, max_rows)) if max_rows else set(steps)
    first, last = bpc_bounds(run)
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
            "stage": sample_stage(e, text, bpc, first, last), "output": text})
    return table
