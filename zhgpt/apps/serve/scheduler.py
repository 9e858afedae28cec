"""The generation worker: one thread runs every generation, taking jobs from a bounded queue.

Generation is CPU/GPU-bound and PyTorch already uses every core for one forward, so one worker thread runs
all generations; the event loop only parses requests and forwards tokens, so streaming never blocks other
clients. Waiting jobs that share the prompt and all sampling settings and carry no seed are merged into one
batched engine call (one forward for all their sequences); greedy duplicates are computed once.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from zhgpt.apps.serve.errors import ApiError
from zhgpt.model.engine import Engine, SamplingParams

log = logging.getLogger("zhgpt.apps.serve")


@dataclass(eq=False)
class Job:
    """One prompt of one request: ``params.num_return_sequences`` choices starting at response index ``offset``.
    ``sink`` is called from the worker thread with ("delta", index, text) / ("finish", index, reason) (streaming
    jobs only) and finally ("done", job) or ("error", message)."""
    prompt_ids: list[int]
    params: SamplingParams
    offset: int
    sink: Callable[[tuple], None]
    stream: bool = False
    cancelled: bool = False
    texts: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    left: int = 0

    @property
    def n(self) -> int:
        return self.params.num_return_sequences

    def merge_key(self):
        """Jobs with equal keys can share one engine call; None = must run alone."""
        p = self.params
        if p.temperature > 0 and p.seed >= 0:
            # Seeded sampling runs alone: a row's random stream depends on the other rows in its batch,
            # and the same seed must always give the same text.
            return None
        return (tuple(self.prompt_ids), p.max_new_tokens, p.temperature, p.top_k, p.top_p,
                p.repetition_penalty, p.no_repeat_ngram_size, p.frequency_penalty, p.presence_penalty,
                tuple(p.stop), p.stop_at_eot)


class Scheduler:
    """A bounded queue of jobs and the one thread that runs them through the engine."""

    def __init__(self, engine: Engine, max_queue: int = 64, max_batch: int = 16):
        self.engine, self.max_queue, self.max_batch = engine, max_queue, max_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0                  # jobs in the engine call now
        self._current: list[Job] = []
        self.stats = {"jobs": 0, "engine_calls": 0, "sequences": 0, "tokens": 0, "errors": 0}
        self._thread = threading.Thread(target=self._loop, name="zhgpt-generate", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, jobs: list[Job]) -> None:
        """Queue all jobs of a request or none of them."""
        with self._cv:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down", type="server_error")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise ApiError(429, f"too many requests waiting ({len(self._pending)} queued, limit "
                                    f"{self.max_queue}); retry shortly", code="queue_full",
                               type="rate_limit_error", headers={"Retry-After": "1"})
            self._pending.extend(jobs)
            self._cv.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closed = True
            pending, self._pending = list(self._pending), collections.deque()
            self._cv.notify_all()
        for job in self._current:         # stop the engine call under way at its next token
            job.cancelled = True
        for job in pending:
            job.sink(("error", "the server is shutting down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _take_group(self) -> list[Job]:
        """The oldest job plus every waiting job it can share an engine call with (called under the lock)."""
        first = self._pending.popleft()
        group, key = [first], first.merge_key()
        if key is None:
            return group
        greedy = first.params.temperature == 0
        rows = first.n
        for job in list(self._pending):
            if job.cancelled or job.merge_key() != key:
                continue
            if not greedy and rows + job.n > self.max_batch:
                continue
            rows += 0 if greedy else job.n
            group.append(job)
            self._pending.remove(job)
        return group

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                group = [j for j in self._take_group() if not j.cancelled]
                self.running, self._current = len(group), group
            try:
                if group:
                    self._run(group)
            except Exception as e:   # a bug must fail these requests, never kill the worker
                log.exception("generation failed")
                self.stats["errors"] += 1
                for job in group:
                    if job.left:
                        job.sink(("error", f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self._cv:
                    self.running, self._current = 0, []

    def _run(self, group: list[Job]) -> None:
        base = group[0].params
        targets: list[list[tuple[Job, int]]] = []      # engine row -> the (job, choice) pairs it answers
        if base.temperature == 0:
            # Greedy decoding is deterministic: every choice of every merged job is the same text.
            targets.append([(job, c) for job in group for c in range(job.n)])
        else:
            targets = [[(job, c)] for job in group for c in range(job.n)]
        for job in group:
            job.texts, job.reasons, job.tokens, job.left = [""] * job.n, ["length"] * job.n, [0] * job.n, job.n
        params = dataclasses.replace(base, num_return_sequences=len(targets))
        self.stats["engine_calls"] += 1
        self.stats["jobs"] += len(group)
        self.stats["sequences"] += len(targets)
        for row, delta, reason, ntok in self.engine.stream_rows(group[0].prompt_ids, params,
                                                    cancelled=lambda: all(j.cancelled for j in group)):
            for job, c in targets[row]:
                if delta:
                    job.texts[c] += delta
                    if job.stream:
                        job.sink(("delta", job.offset + c, delta))
                if reason is not None:
                    job.reasons[c], job.tokens[c] = reason, ntok
                    self.stats["tokens"] += ntok
                    job.left -= 1
                    if job.stream:
                        job.sink(("finish", job.offset + c, reason))
                    if job.left == 0:
                        job.sink(("done", job))
