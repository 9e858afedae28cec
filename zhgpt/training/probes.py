"""Probes of Chinese: what the model has learned about measure words, word order, particles, punctuation,
collocations and simple facts, measured at every evaluation as ``probe_acc`` and ``probe_acc_<group>``.

An item is a few alternative texts of which one is right; the model "answers" it by giving the right one
the highest total log-likelihood. No generation: the score is deterministic and costs a few forward passes
(the 634 alternatives of the built-in set, ~4,700 tokens with the cpu-tiny unigram tokenizer, in 6 batches:
0.22 s on 2 CPU cores in bf16, about half of one of its training steps, measured side by side).

**The file format** (JSON Lines, one item per line, UTF-8; ``zhgpt/assets/probes.jsonl`` is the built-in set)::

    {"group": "measure_words", "good": "我在书店买了一本书。", "bad": "我在书店买了一只书。"}
    {"group": "facts", "prefix": "日本的首都是", "options": ["东京。", "巴黎。"], "answer": 0}

``good``/``bad`` is a minimal pair of whole sentences (``bad`` may be a list of several wrong ones);
``prefix``/``options``/``answer`` is a cloze item: a shared beginning and its alternative continuations,
``answer`` the index of the right one (default 0). ``note`` may hold a comment. ``group`` names the metric
(``probe_acc_<group>``): lower-case letters, digits and ``_``; a user's file may add new groups.

**Scoring.** Each alternative is scored as one whole text, ``prefix + option``, after the end-of-text token
(the token that starts every training document, so the first character is predicted too): the sum of its
tokens' log-probabilities. For a causal model the shared prefix costs the same in every alternative, so
this ranks the options by P(option | prefix), and scoring whole texts keeps a BPE tokenizer free to merge
across the prefix/option boundary. (The tokens all alternatives share at the start are left out of the
computation: they add the same amount to each, see ``shared_prefix``.)

No length normalisation: every built-in item's alternatives have the same number of characters (a test
enforces it), where the sum compares like with like; dividing by the number of *tokens* instead would
favour whichever alternative the tokenizer happens to cut into more pieces. A user's items with
alternatives of different lengths are allowed but favour the shorter one (each extra character costs
~2-8 bits), so keep them equal where you can.

An item scores 1 when its right alternative has the highest log-likelihood, 1/k when it ties with k-1
others, else 0, so a model that knows nothing (equal scores) gets exactly the chance level, 1/(options).
``probe_acc`` is the mean over all items, ``probe_acc_<group>`` over a group's. Every built-in item has
two alternatives (chance 0.5), and its pairs are counterbalanced: the wrong word of one item is the right
word of another (一本书/一只书 and 一只猫/一本猫), so a model that merely prefers frequent words stays at chance.

**Step 0 is not at chance with a subword tokenizer.** An untrained model gives every token about ln V nats,
so it prefers the alternative cut into fewer tokens, and a vocabulary learned from Chinese holds common
words whole (the right text is often one token shorter): with the cpu-tiny unigram tokenizer this alone
scores 0.58 over the built-in set, from 0.50 (facts) to 0.68 (particles). That head start is the tokenizer's
knowledge, not the model's: RUN/probes.json records it per group as ``token_baseline`` (fewest tokens
wins), with the files, the groups and their chance levels, for the report. With the char tokenizer every
alternative has the same number of tokens and step 0 sits at chance.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from zhgpt.config import save_json
from zhgpt.core.device import autocast_ctx
from zhgpt.data.clean import normalize
from zhgpt.errors import ZhgptError
from zhgpt.training.watch import Watcher

BUILTIN = Path(__file__).resolve().parents[1] / "assets" / "probes.jsonl"
OFF = "none"                 # --probes none: no probes at all
MAX_CHARS = 300              # a probe is a sentence or two; longer lines are mistakes (a pasted document)
GROUP_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
KEYS = {"group", "good", "bad", "prefix", "options", "answer", "note"}
# Rows x tokens x vocabulary of one batch's logits: 2^24 floats = 64 MB in fp32, ~1,000 tokens of a 16k
# vocabulary per forward (the built-in set with the cpu-tiny unigram: 6 passes).
LOGIT_BUDGET = 1 << 24
EXAMPLE = '{"group": "measure_words", "good": "我买了一本书。", "bad": "我买了一只书。"}'


@dataclass(frozen=True)
class Probe:
    group: str
    texts: tuple[str, ...]     # every alternative as one whole text (prefix + option), normalised
    answer: int                # index of the right one in texts
    where: str                 # file:line, for messages


# ------------------------------------------------------------------------- reading and validating

def _texts(obj: dict, where: str) -> tuple[list[str], int]:
    """(alternatives as whole texts, index of the right one) of one item, or a one-line error."""
    def strings(v, key):
        vals = [v] if isinstance(v, str) else v
        if not isinstance(vals, list) or not vals or not all(isinstance(x, str) for x in vals):
            raise ZhgptError(f"{where}: {key!r} must be a string{' or a list of strings' if key == 'bad' else ''}"
                             f"; e.g. {EXAMPLE}")
        return vals
    if "good" in obj or "bad" in obj:
        if "options" in obj or "prefix" in obj or "answer" in obj:
            raise ZhgptError(f"{where}: an item is either good/bad or prefix/options/answer, not both; "
                             "split it into two lines")
        if "good" not in obj or "bad" not in obj:
            raise ZhgptError(f"{where}: a minimal pair needs both 'good' and 'bad'; e.g. {EXAMPLE}")
        if not isinstance(obj["good"], str):
            raise ZhgptError(f"{where}: 'good' must be a string (the one right text); e.g. {EXAMPLE}")
        return [obj["good"], *strings(obj["bad"], "bad")], 0
    if "options" not in obj:
        raise ZhgptError(f"{where}: no alternatives; give 'good' and 'bad', or 'options' (and 'prefix', "
                         f"'answer'); e.g. {EXAMPLE}")
    options = strings(obj["options"], "options")
    prefix = obj.get("prefix", "")
    answer = obj.get("answer", 0)
    if not isinstance(prefix, str):
        raise ZhgptError(f"{where}: 'prefix' must be a string")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise ZhgptError(f"{where}: 'answer' must be the index of the right option, 0..{len(options) - 1}, "
                         f"got {answer!r}")
    return [prefix + o for o in options], answer


def parse_probe(obj, where: str) -> Probe:
    """One item of a probe file, checked: a one-line ``file:line: reason; fix`` error for anything wrong."""
    if not isinstance(obj, dict):
        raise ZhgptError(f"{where}: each line must be a JSON object; e.g. {EXAMPLE}")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise ZhgptError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                         f"{', '.join(sorted(KEYS))}")
    group = obj.get("group")
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise ZhgptError(f"{where}: 'group' must be lower-case letters, digits and _ (it names the metric "
                         f"probe_acc_<group>), got {group!r}; e.g. \"measure_words\"")
    texts, answer = _texts(obj, where)
    if len(texts) < 2:
        raise ZhgptError(f"{where}: an item needs at least two alternatives (one right, one wrong)")
    # The training text is normalised (NFKC keeping Chinese punctuation, spaces collapsed): so are the probes,
    # or a full-width digit in a probe would be a character the model never saw.
    texts = [normalize(t) for t in texts]
    if not all(texts):
        raise ZhgptError(f"{where}: an alternative is empty; every option needs text")
    if len(set(texts)) < len(texts):
        raise ZhgptError(f"{where}: two alternatives are the same text (after normalisation); make the wrong "
                         "ones differ from the right one")
    if max(map(len, texts)) > MAX_CHARS:
        raise ZhgptError(f"{where}: an alternative is over {MAX_CHARS} characters; probes are short sentences")
    return Probe(group, tuple(texts), answer, where)


def load_probes(path, flag: str = "--probes") -> list[Probe]:
    """The items of one JSONL probe file (blank lines skipped), each validated."""
    path = Path(path)
    name = str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ZhgptError(f"{flag} {name}: cannot read ({e.strerror}); give a JSONL file of probe items")
    except UnicodeDecodeError:
        raise ZhgptError(f"{flag} {name}: not UTF-8 text; save it as UTF-8")
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZhgptError(f"{name}:{n}: not valid JSON ({e.msg}); one object per line, e.g. {EXAMPLE}")
        items.append(parse_probe(obj, f"{name}:{n}"))
    if not items:
        raise ZhgptError(f"{flag} {name}: the file has no probe items; one JSON object per line, e.g. {EXAMPLE}")
    return items


def probe_files(user: str) -> list[str]:
    """The files a run's probes come from: the built-in set, plus ``user``'s (``--probes``); none for 'none'."""
    if user == OFF:
        return []
    return [str(BUILTIN)] + ([user] if user else [])


def check_probes_flag(user: str) -> None:
    """Validate --probes at configuration time, before any data or model work."""
    if user and user != OFF:
        load_probes(user)


def chance(items: list[Probe]) -> float:
    """The accuracy of guessing: the mean over items of 1 / (number of alternatives)."""
    return sum(1 / len(p.texts) for p in items) / len(items) if items else 0.0


# ------------------------------------------------------------------------- scoring

def make_batches(seqs: list[list[int]], budget_tokens: int,
                 skip: list[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """(x, y, sequence indices) batches: similar lengths together (less padding), at most ``budget_tokens``
    padded positions each. Right padding is harmless under a causal mask; its targets are -1 (not scored),
    as are the first ``skip[i]`` targets of sequence i (see ``shared_prefix``)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * (len(seqs[i]) - 1) > budget_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = []
    for rows in batches:
        T = max(len(seqs[i]) for i in rows) - 1
        x = torch.zeros(len(rows), T, dtype=torch.long)
        y = torch.full((len(rows), T), -1, dtype=torch.long)
        for r, i in enumerate(rows):
            s = torch.tensor(seqs[i], dtype=torch.long)
            x[r, :len(s) - 1], y[r, :len(s) - 1] = s[:-1], s[1:]
            y[r, :skip[i] if skip else 0] = -1
        out.append((x, y, rows))
    return out


@torch.no_grad()
def log_likelihoods(model, batches, n: int, device: str, amp_dtype) -> list[float]:
    """Total log-likelihood (nats) of each of the ``n`` sequences the batches hold."""
    was_training = model.training
    model.eval()
    out = torch.zeros(n, dtype=torch.float64)
    try:
        for x, y, rows in batches:
            x, y = x.to(device), y.to(device)
            with autocast_ctx(device, amp_dtype):
                _, loss = model(x, y, reduction="none")    # (scored positions,), row-major
            keep = y != -1
            row_of = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(y)[keep]
            sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
            sums.index_add_(0, row_of, loss.reshape(-1).double())
            out[torch.tensor(rows)] = -sums.cpu()
    finally:
        if was_training:
            model.train()
    return out.tolist()


def shared_prefix(seqs: list[list[int]]) -> int:
    """Targets the alternatives of one item share before their first different token: the model predicts
    them from the same context, so they add the same log-probability to every alternative and cannot change
    which one wins. Leaving them out of the scoring skips their share of the output layer (a 16k-vocabulary
    matmul per position: most of the cost), 47 % of the built-in set's targets with the cpu-tiny unigram."""
    n = 0
    while all(len(s) > n + 1 for s in seqs) and len({s[n + 1] for s in seqs}) == 1:
        n += 1
    return n


def credit(lls: list[float], answer: int) -> float:
    """1 if the right alternative scores highest, 1/k if it ties with k-1 others, else 0."""
    best = max(lls)
    top = [i for i, v in enumerate(lls) if v == best]
    return 1 / len(top) if answer in top else 0.0


def probe_metrics(items: list[Probe], credits: list[float]) -> dict:
    """probe_acc over every item and probe_acc_<group> per group, each in [0, 1]."""
    m = {"probe_acc": round(sum(credits) / len(credits), 4)}
    by: dict[str, list[float]] = {}
    for p, c in zip(items, credits):
        by.setdefault(p.group, []).append(c)
    for g, cs in sorted(by.items()):
        m[f"probe_acc_{g}"] = round(sum(cs) / len(cs), 4)
    return m


class ProbeWatcher(Watcher):
    """Loads the probe items and tokenises them once (start); scores them at every evaluation (at_eval)."""
    name = "probes"

    def __init__(self, user: str = ""):
        self.files = probe_files(user)
        self.items: list[Probe] = []
        self.batches: list = []
        self.owner: list[tuple[int, int]] = []      # (item, alternative) of every sequence
        self.base = 0.5                             # the token baseline over all items (set at start)

    def start(self, tr) -> None:
        tokenizer_dir = getattr(tr.ds, "tokenizer_dir", None)
        if not self.files or tokenizer_dir is None:
            return
        from zhgpt.data.tokenizer import load_tokenizer
        items = [p for f in self.files for p in load_probes(f)]
        tok = load_tokenizer(tokenizer_dir)
        enc = tok.encode_batch([t for p in items for t in p.texts], add_special_tokens=False)
        eot, limit = tr.ds.eot_id, tr.mcfg.block_size
        ids, k = [], 0
        for p in items:
            ids.append([[eot] + e.ids for e in enc[k:k + len(p.texts)]])
            k += len(p.texts)
        # The end-of-text token is the context of the first token: an alternative fits in block_size + 1.
        fits = [len(max(s, key=len)) <= limit + 1 for s in ids]
        self.items = [p for p, ok in zip(items, fits) if ok]
        seqs = [s for seq, ok in zip(ids, fits) if ok for s in seq]
        skip = [shared_prefix(seq) for seq, ok in zip(ids, fits) if ok for _ in seq]
        self.owner = [(i, j) for i, p in enumerate(self.items) for j in range(len(p.texts))]
        vocab = getattr(tr.mcfg, "vocab_size", 0) or tok.get_vocab_size()
        self.batches = make_batches(seqs, max(limit, LOGIT_BUDGET // vocab), skip)
        lengths = [[len(s) for s in seq] for seq, ok in zip(ids, fits) if ok]
        baseline = token_baseline(self.items, lengths)
        self.base = round(sum(baseline) / max(len(baseline), 1), 4)
        if tr.dist.master:
            skipped = len(items) - len(self.items)
            if skipped:
                print(f"zhgpt: note: {skipped} probe item(s) longer than the context ({limit} tokens) are skipped")
            save_json(tr.run.probes, describe(self.files, self.items, skipped, baseline))

    def scores(self, model, device: str, amp_dtype) -> list[float]:
        """Each item's credit (see ``credit``), from the log-likelihoods of what differs between alternatives."""
        lls = log_likelihoods(model, self.batches, len(self.owner), device, amp_dtype)
        per_item: list[list[float]] = [[] for _ in self.items]
        for (i, _), v in zip(self.owner, lls):
            per_item[i].append(v)
        return [credit(v, p.answer) for v, p in zip(per_item, self.items)]

    def at_eval(self, tr, step: int, samples) -> dict:
        if not self.items:
            return {}
        # probe_base: what the tokenizer alone scores (see token_baseline), the floor the report's stages
        # measure the probes from
        return {**probe_metrics(self.items, self.scores(tr.raw_model, tr.device, tr.amp_dtype)),
                "probe_base": self.base}


def token_baseline(items: list[Probe], lengths: list[list[int]]) -> list[float]:
    """Each item's credit under a model that knows nothing but the tokenizer: every token equally likely
    (ln V nats each, as at step 0), so the alternative cut into the fewest tokens wins. A subword vocabulary
    holds common words whole (一本 may be one token, 一只书 never is), so this beats chance before any training."""
    return [credit([-n for n in ns], p.answer) for p, ns in zip(items, lengths)]


def describe(files: list[str], items: list[Probe], skipped: int = 0, baseline: list[float] | None = None) -> dict:
    """RUN/probes.json: where the items came from; each group's size, chance level and token baseline."""
    def summary(ps: list[Probe], idx: list[int]) -> dict:
        d = {"items": len(ps), "chance": round(chance(ps), 4)}
        if baseline is not None:
            d["token_baseline"] = round(sum(baseline[i] for i in idx) / len(idx), 4)
        return d
    by: dict[str, list[int]] = {}
    for i, p in enumerate(items):
        by.setdefault(p.group, []).append(i)
    return {"files": ["builtin" if f == str(BUILTIN) else f for f in files], "skipped": skipped,
            **summary(items, list(range(len(items)))),
            "groups": {g: summary([items[i] for i in idx], idx) for g, idx in by.items()}}
