"""A run folder as the report sees it: its records read leniently (a killed or resumed run still reports)
and the summary numbers taken from them: final metrics, parameters, tokens seen, wall time, throughput.

The file names come from :class:`zhgpt.training.layout.RunFolder`; everything here tolerates missing files
and fields (an older zhgpt, a run that has just started), falling back through run.json, config.json and
the metrics.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from zhgpt.config import load_json
from zhgpt.errors import ZhgptError
from zhgpt.training.layout import RunFolder


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


def finite(x) -> float | None:
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
    warnings: list[dict] = field(default_factory=list)   # RUN/warnings.jsonl: {step, message}

    # Cached: a long run has 10^5 metric lines and the tables look evaluations up per sample.
    @functools.cached_property
    def train(self) -> list[dict]:
        return [m for m in self.metrics if finite(m.get("loss")) is not None]

    @functools.cached_property
    def evals(self) -> list[dict]:
        return [m for m in self.metrics if finite(m.get("val_loss")) is not None]

    @functools.cached_property
    def _evals_by_step(self) -> dict:
        return {e["step"]: e for e in self.evals}

    def eval_at(self, step) -> dict:
        return self._evals_by_step.get(step, {})


def load_run(path) -> Run:
    p = Path(path)
    if p.is_file() and p.name == RunFolder(p.parent).metrics.name:
        p = p.parent
    if not p.exists():
        raise ZhgptError(f"{p}: no such folder; give the --out folder of `zhgpt train`")
    rf = RunFolder(p)
    if not rf.metrics.is_file():
        raise ZhgptError(f"{p} is not a zhgpt run folder (no metrics.jsonl); give the --out folder of "
                         "`zhgpt train`")
    notes: list[str] = []
    metrics = _merge_steps(_after_resume(read_jsonl(rf.metrics, notes)))
    samples = _after_resume(read_jsonl(rf.samples, notes)) if rf.samples.is_file() else []
    # A prompt sampled twice at one step (resume) keeps the later output.
    dedup: dict = {}
    for s in samples:
        dedup[(s.get("step"), s.get("prompt", ""))] = s
    samples = sorted(dedup.values(), key=lambda s: (s.get("step") or 0))
    warnings = _after_resume(read_jsonl(rf.warnings, notes)) if rf.warnings.is_file() else []
    config = load_json(rf.config) if rf.config.is_file() else {}
    info = rf.read_info()
    if not config:
        notes.append("config.json missing: model and data details unknown")
    return Run(path=p, name=p.resolve().name, metrics=metrics, samples=samples, config=config, info=info,
               notes=notes, warnings=warnings)


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def first_of(*values):
    return next((v for v in values if v not in (None, "", [], {})), None)


def final_metrics(run: Run) -> dict:
    """Final val loss/BPC/perplexity: the last evaluation, else what run.json recorded."""
    last = run.evals[-1] if run.evals else {}
    fin = first_of(dig(run.info, "final"), dig(run.info, "final_metrics"), {}) or {}
    out = {}
    for k in ("val_loss", "val_bpc", "val_ppl"):
        out[k] = finite(first_of(last.get(k), fin.get(k), run.info.get(k)))
    if out["val_ppl"] is None and out["val_loss"] is not None:
        out["val_ppl"] = math.exp(min(out["val_loss"], 50))
    return out


def run_params(run: Run) -> int | None:
    n = first_of(run.info.get("params"), run.info.get("n_params"), run.info.get("num_params"),
               dig(run.info, "model", "params"))
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
    v = first_of(last.get("tokens_seen"), run.info.get("tokens_seen"))
    return int(v) if isinstance(v, (int, float)) else None


def wall_time(run: Run) -> float | None:
    last = run.metrics[-1] if run.metrics else {}
    return finite(first_of(run.info.get("elapsed_s"), run.info.get("wall_time_s"), last.get("elapsed_s")))


def tokens_per_sec(run: Run) -> float | None:
    toks, secs = tokens_seen(run), wall_time(run)
    if toks and secs:
        return toks / secs
    rates = [finite(m.get("tokens_per_sec")) for m in run.metrics if finite(m.get("tokens_per_sec"))]
    return sum(rates) / len(rates) if rates else None


def chars_per_token(run: Run) -> float | None:
    data = run.config.get("data") or {}
    train = dig(data, "splits", "train") or dig(data, "splits", "val") or {}
    if finite(train.get("chars")) and finite(train.get("tokens")):
        return train["chars"] / train["tokens"]
    v = finite(first_of(dig(data, "summary", "chars_per_token"), data.get("chars_per_token"),
                    run.info.get("chars_per_token")))
    if v:
        return v
    # BPC = loss / ln 2 * tokens / chars, so an evaluation with both gives the ratio back.
    for e in reversed(run.evals):
        if finite(e.get("val_bpc")):
            return e["val_loss"] / (e["val_bpc"] * math.log(2))
    return None
