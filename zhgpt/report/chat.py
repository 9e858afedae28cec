"""The chat-stage part of a report (`zhgpt sft` / `zhgpt dpo` runs): how the answers did at each evaluation.

- answer accuracy: exact-match accuracy of greedy answers to held-out questions with short answers;
- preference accuracy, reward accuracy, reward margin (DPO; see ``zhgpt.training.dpo``);
- answer repetition: the share of repeated 4-grams in the answers to the fixed chat prompts, pooled over
  the prompts (a 4-gram is repeated when it already occurred earlier in the same answer). Looping on a
  phrase is the most common complaint about small chat models; this number shows whether it grows.
"""
from __future__ import annotations

from zhgpt.report.evolution import continuation
from zhgpt.report.runs import Run, finite

METRICS = {"val_answer_acc": "answer accuracy", "val_pref_acc": "preference accuracy",
           "val_reward_acc": "reward accuracy", "val_margin": "reward margin"}
REP_N = 4


def repeated_ngrams(text: str, n: int = REP_N) -> tuple[int, int]:
    """(repeated, total) character n-grams of ``text``, whitespace ignored."""
    chars = [c for c in text if not c.isspace()]
    seen, repeated = set(), 0
    grams = ["".join(chars[i:i + n]) for i in range(len(chars) - n + 1)]
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated, len(grams)


def repetition_rate(texts: list[str], n: int = REP_N) -> float | None:
    counts = [repeated_ngrams(t, n) for t in texts]
    total = sum(t for _, t in counts)
    return sum(r for r, _ in counts) / total if total else None


def chat_rows(run: Run) -> list[dict]:
    """One row per evaluation of a chat-stage run (none for a pre-training run): step, the stage's
    metrics, and the repetition rate of that evaluation's sample answers."""
    evals = [e for e in run.evals if any(k in e for k in METRICS)]
    answers: dict = {}
    for s in run.samples:
        answers.setdefault(s.get("step"), []).append(continuation(s))
    return [{"step": e["step"], **{k: finite(e.get(k)) for k in METRICS},
             "answer_rep4": repetition_rate(answers.get(e["step"], []))} for e in evals]


def chat_columns(rows: list[dict]) -> list[str]:
    """The metric keys any row has, in METRICS order, then the repetition rate."""
    return [k for k in METRICS if any(r[k] is not None for r in rows)] + ["answer_rep4"]


HEADS = {**METRICS, "answer_rep4": f"answer repetition ({REP_N}-grams)"}
NOTE = ("answer accuracy: exact match of greedy answers to held-out questions with short answers. "
        "answer repetition: share of repeated 4-grams in the answers to the fixed chat prompts. "
        "preference / reward accuracy, reward margin: DPO on held-out pairs (zhgpt dpo --help).")
