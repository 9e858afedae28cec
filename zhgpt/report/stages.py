"""Stages of learning from measured numbers, and the generation statistics per evaluation in the report.

Every evaluation of a run trained with the ``genstats`` watcher carries, over its samples (continuations
only, pooled over the prompts): ``cjk_ratio``, ``distinct_2``, ``repeat_4`` and, when the dataset has a
copy index, ``copy_rate`` (``zhgpt.data.textstats``, ``zhgpt.data.ngram_index``); with the probes
watcher also ``probe_acc``. ``progress`` is the share of the run's BPC improvement reached
(``evolution.bpc_progress``). The stage of an evaluation is the first rule that matches:

1. **noise** -- cjk_ratio < 0.5 or progress < 0.1: not even the script is learned (a random byte-level
   model writes fragments and U+FFFD; a random char-level one writes varied rare characters, which only
   the progress bound catches: its distinct_2 is ~1);
2. **characters** -- repeat_4 > 0.5 or distinct_2 < 0.3 or progress < 0.4 or probe_acc < probe_base + 0.1:
   frequent characters in loops ("的的的", "，，"), probes not clearly above what the tokenizer alone scores
   (``probe_base``: the 0.5 chance of a two-way choice for a char tokenizer, 0.58 for cpu-tiny's unigram);
3. **copying** -- copy_rate >= 0.5: half of the generated 8-character spans occur verbatim in the
   training text. Held-out People's Daily text shares ~4 % of its spans with the rest (up to ~20 % on a
   single evaluation's ~350 characters): fluent text at >= 50 % is recited, not composed;
4. **words and punctuation** -- repeat_4 > 0.15 or distinct_2 < 0.6 or progress < 0.7 or
   probe_acc < probe_base + 0.25: words, some repetition left;
5. **sentences** -- otherwise: as varied as real text (5 x 70-character pieces of People's Daily have
   distinct_2 0.77-0.93 and repeat_4 0-0.08) and most probes right.

A number that is absent (no probes, no copy index) takes no part in its rule. Without probes nothing
above measures structure (a young char model's word salad has distinct_2 ~0.95 and repeat_4 ~0, like
real text), so a sample is then never placed later than the text rule's stage for it (``stage_label``:
punctuation share, sentences closed by 。！？). Runs without any of these numbers (trained before them)
keep the text rule alone.
"""
from __future__ import annotations

from zhgpt.core import fmt
from zhgpt.data.textstats import is_chinese_script
from zhgpt.report.runs import Run, finite

STATS = ("cjk_ratio", "distinct_2", "repeat_4", "copy_rate")
# In the order of the path a run takes; "copying" is off that path, last (report.html colours them s0-s4).
STAGES = ("noise", "characters", "words and punctuation", "sentences", "copying")
MIN_CJK = 0.5
PROGRESS_NOISE, PROGRESS_CHARS, PROGRESS_WORDS = 0.1, 0.4, 0.7
MAX_REPEAT_CHARS, MIN_DISTINCT_CHARS, PROBE_CHARS = 0.5, 0.3, 0.1
MAX_COPY = 0.5
MAX_REPEAT_WORDS, MIN_DISTINCT_WORDS, PROBE_WORDS = 0.15, 0.6, 0.25
# The probe bounds are gains over probe_base, what the tokenizer alone scores (0.5, chance, for a char
# tokenizer and for runs that do not record it; 0.58 for cpu-tiny's unigram 16k, where step 0 measures 0.62).
MAX_ROWS = 16   # evaluations shown in the statistics table (all of them are in metrics.jsonl)
# The text rule (zhgpt.report.evolution's docstring); progress bounds per stage index.
PROGRESS_BOUNDS = (PROGRESS_NOISE, PROGRESS_CHARS, PROGRESS_WORDS)
MIN_PUNCT, MAX_PUNCT, MAX_REP_CHARS, MAX_REP_WORDS, MIN_CLAUSE = 0.03, 0.3, 0.5, 0.25, 4
PUNCT = set("，。！？、；：“”‘’（）《》〈〉「」『』…—·．,.!?;:\"'()")
SENTENCE_END = set("。！？!?…")

RULE_NOTE = [
    "How stages are assigned (first match wins; per evaluation, from the statistics of its samples, "
    "the probes and progress = share of the run's BPC improvement reached; an absent number is skipped):",
    f"noise: cjk_ratio < {MIN_CJK} or progress < {PROGRESS_NOISE}.",
    f"characters: repeat_4 > {MAX_REPEAT_CHARS} or distinct_2 < {MIN_DISTINCT_CHARS} or progress < "
    f"{PROGRESS_CHARS} or probe_acc < probe_base + {PROBE_CHARS} (probe_base: what the tokenizer alone scores, "
    "0.5 = chance for a char tokenizer).",
    f"copying: copy_rate >= {MAX_COPY} (half the generated 8-character spans are verbatim training text; "
    "held-out text scores copy_rate_val).",
    f"words and punctuation: repeat_4 > {MAX_REPEAT_WORDS} or distinct_2 < {MIN_DISTINCT_WORDS} or progress < "
    f"{PROGRESS_WORDS} or probe_acc < probe_base + {PROBE_WORDS}.",
    "sentences: otherwise (real news text: distinct_2 ~0.77-0.93, repeat_4 ~0-0.08).",
    "Without probe_acc a sample is never placed later than its text's own stage (text rule: noise under half "
    f"Chinese script; characters under {MIN_PUNCT:.0%} or over {MAX_PUNCT:.0%} punctuation or over {MAX_REP_CHARS:.0%} "
    f"repeated 3-grams; words and punctuation with no sentence of {MIN_CLAUSE}+ characters closed by 。！？ or over "
    f"{MAX_REP_WORDS:.0%} repeated 3-grams), because varied characters alone are not sentences. The stage column "
    "here is the median over the evaluation's samples.",
    "Statistics: distinct_2 = distinct character bigrams / all; repeat_4 = share of character 4-grams that "
    "repeat an earlier one; cjk_ratio = share of Chinese-script characters; copy_rate = share of 8-character "
    "spans found in the training text (Bloom filter: its false-positive rate is the floor). All over the "
    "continuations of every prompt together, whitespace ignored.",
]


def bpc_progress(bpc: float | None, first: float | None, last: float | None) -> float | None:
    """Share of the run's BPC improvement reached, clipped to [0, 1]; None when it cannot be computed."""
    if bpc is None or first is None or last is None or not first > last:
        return None
    return min(1.0, max(0.0, (first - bpc) / (first - last)))


def bpc_bounds(run: Run) -> tuple[float | None, float | None]:
    """The val BPC of the run's first and last evaluations (from samples.jsonl when metrics lack it)."""
    bpcs = [e["val_bpc"] for e in run.evals if finite(e.get("val_bpc")) is not None]
    series = bpcs or [s["val_bpc"] for s in run.samples if finite(s.get("val_bpc")) is not None]
    return (series[0], series[-1]) if series else (None, None)


def has_stats(rec: dict) -> bool:
    return any(finite(rec.get(k)) is not None for k in STATS)


def eval_stage(rec: dict, progress: float | None) -> str | None:
    """The stage of an evaluation row (rule in the module docstring), or None without its statistics."""
    if not has_stats(rec):
        return None
    g = {k: finite(rec.get(k)) for k in (*STATS, "probe_acc")}
    base = finite(rec.get("probe_base"))
    base = 0.5 if base is None else base

    def above(k, x):
        return g[k] is not None and g[k] > x

    def below(k, x):
        return g[k] is not None and g[k] < x

    def early(x):
        return progress is not None and progress < x

    if below("cjk_ratio", MIN_CJK) or early(PROGRESS_NOISE):
        return "noise"
    if (above("repeat_4", MAX_REPEAT_CHARS) or below("distinct_2", MIN_DISTINCT_CHARS) or early(PROGRESS_CHARS)
            or below("probe_acc", base + PROBE_CHARS)):
        return "characters"
    if g["copy_rate"] is not None and g["copy_rate"] >= MAX_COPY:
        return "copying"
    if (above("repeat_4", MAX_REPEAT_WORDS) or below("distinct_2", MIN_DISTINCT_WORDS) or early(PROGRESS_WORDS)
            or below("probe_acc", base + PROBE_WORDS)):
        return "words and punctuation"
    return "sentences"


def stats_rows(run: Run, steps: list[int] | None = None) -> list[dict]:
    """step, the four statistics, probe_acc, copy_rate_val and the stage of every evaluation that has them
    (only at ``steps`` when given)."""
    first, last = bpc_bounds(run)
    rows = []
    for r in run.evals:
        if not has_stats(r) or (steps is not None and r.get("step") not in steps):
            continue
        bpc = finite(r.get("val_bpc"))
        # the evaluation's stage: the median of its sample rows' stages (as in the sample evolution table)
        found = sorted(STAGES.index(sample_stage(r, continuation(x), bpc, first, last))
                       for x in run.samples if x.get("step") == r.get("step"))
        stage = STAGES[found[(len(found) - 1) // 2]] if found else eval_stage(r, bpc_progress(bpc, first, last))
        rows.append({"step": r.get("step"), **{k: finite(r.get(k)) for k in (*STATS, "probe_acc", "copy_rate_val")},
                     "stage": stage})
    return rows if steps is not None else _thin(rows)


def _thin(rows: list[dict], n: int = MAX_ROWS) -> list[dict]:
    """At most n rows, denser early (where learning is fast), first and last always kept."""
    if len(rows) <= n:
        return rows
    return [rows[i] for i in sorted({round((len(rows) - 1) * (j / (n - 1)) ** 2) for j in range(n)})]


def _columns(rows: list[dict]) -> list[str]:
    return [k for k in ("probe_acc", *STATS) if any(r[k] is not None for r in rows)]


def stats_md(run: Run, steps: list[int] | None = None) -> list[str]:
    """The "Generation statistics" section of report.md (empty for runs without them)."""
    rows = stats_rows(run, steps)
    if not rows:
        return []
    cols = _columns(rows)
    head = ["step", *cols, "stage"]
    lines = ["## Generation statistics", "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join([str(r["step"]), *(fmt.num(r[c]) for c in cols), r["stage"]]) + " |" for r in rows]
    lines += [""] + _reference(rows) + [f"- {n}" if i else f"_{n}_" for i, n in enumerate(RULE_NOTE)] + [""]
    return lines


def stats_html(run: Run, e, steps: list[int] | None = None) -> str:
    """The same section for report.html (``e`` escapes HTML)."""
    rows = stats_rows(run, steps)
    if not rows:
        return ""
    cols = _columns(rows)
    head = "".join(f"<th>{e(h)}</th>" for h in ["step", *cols, "stage"])
    body = "".join("<tr>" + "".join(f'<td class="num">{e(v)}</td>' for v in [r["step"], *(fmt.num(r[c]) for c in cols)])
                   + f'<td><span class="stage s{STAGES.index(r["stage"])}">{e(r["stage"])}</span></td></tr>'
                   for r in rows)
    ref = "".join(f'<p class="note">{e(n)}</p>' for n in _reference(rows))
    note = (f'<p class="note">{e(RULE_NOTE[0])}</p><ul class="note">'
            + "".join(f"<li>{e(n)}</li>" for n in RULE_NOTE[1:]) + "</ul>")
    return f"<h2>Generation statistics</h2>\n<table><tr>{head}</tr>{body}</table>\n{ref}{note}"


def _reference(rows: list[dict]) -> list[str]:
    val = next((r["copy_rate_val"] for r in rows if r["copy_rate_val"] is not None), None)
    return ([f"Held-out validation text has copy_rate {fmt.num(val)} (spans it shares with the training text "
             "by chance): the baseline for the model's copy_rate.", ""] if val is not None else [])


# ---------------------------------------------------------------------------- the text rule

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


def sample_stage(rec: dict, text: str, bpc: float | None, first: float | None, last: float | None) -> str:
    """The stage of one sample row: the measured stage of its evaluation (``eval_stage``); without probes
    never later than the text rule's stage for the sample (varied characters alone are not sentences: a
    young char model's word salad has distinct_2 ~0.95); the text rule alone for runs without statistics."""
    measured = eval_stage(rec, bpc_progress(bpc, first, last))
    if measured is None:
        return stage_label(text, bpc, first, last)
    if measured == "copying" or finite(rec.get("probe_acc")) is not None:
        return measured
    return STAGES[min(STAGES.index(measured), STAGES.index(stage_label(text, bpc, first, last)))]
