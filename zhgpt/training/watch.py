"""Watching a run learn: the measurements beside the validation loss, and the run's health warnings.

A *watcher* is one measurement of what the model has learned (probes of Chinese, statistics of the
generated samples, the surprise map of a fixed paragraph, ...) or one health check of the run. The loop
calls every watcher of the stage (`Stage.watchers`) through three optional methods:

    start(tr)                          once, after set-up (load probe items, pick the paragraph, ...)
    at_eval(tr, step, samples) -> dict at every evaluation, after the samples: metrics for the eval row
                                       (metrics.jsonl, TensorBoard, the eval log line). ``samples`` is the
                                       list of (prompt, output) the evaluation just wrote.
    check(tr, rec) -> list[str]        after every record written to metrics.jsonl (a logged step or an
                                       evaluation, with the metrics above): one-line health warnings

``at_eval`` runs where the samples are generated (rank 0, or every rank under FSDP, where each forward is a
collective); ``check`` on rank 0 only. Warnings are printed as ``warning: ...`` and kept in
``RUN/warnings.jsonl`` for the report. Nothing here may change the training itself: a watcher reads the
model under ``torch.no_grad`` and leaves it in the mode it found it in, so a run with and without watchers
takes identical steps.
"""
from __future__ import annotations

import time


class Watcher:
    """The no-op watcher: subclasses override what they need."""
    name = "watcher"

    def start(self, tr) -> None:
        pass

    def at_eval(self, tr, step: int, samples: list[tuple[str, str]]) -> dict:
        return {}

    def check(self, tr, rec: dict) -> list[str]:
        return []


def start_all(tr) -> None:
    for w in tr.watchers:
        w.start(tr)


def eval_metrics(tr, step: int, samples: list[tuple[str, str]]) -> dict:
    """Every watcher's metrics for this evaluation, plus ``watch_s``: the seconds they took together (the
    overhead of watching, which the report and bench/RESULTS.md state as a share of the run's wall time)."""
    t0 = time.perf_counter()
    out: dict = {}
    for w in tr.watchers:
        out.update(w.at_eval(tr, step, samples))
    if tr.watchers:
        out["watch_s"] = round(time.perf_counter() - t0, 3)
    return out


def warnings_for(tr, rec: dict) -> list[str]:
    """Every watcher's warnings for one metrics.jsonl record (rank 0)."""
    found: list[str] = []
    for w in tr.watchers:
        found.extend(w.check(tr, rec))
    return found
