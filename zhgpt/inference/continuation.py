"""`zhgpt eval --continuation N`: can the model continue a held-out document the way its author did?

N documents of the text being scored are cut in two; the model gets the first half and writes about as many
characters as the real second half, which is the reference. The scores are character-level ROUGE-L (F1,
averaged over documents; Google's ``rouge-score``) and corpus BLEU (``sacrebleu`` with its ``zh`` tokenizer:
one token per Chinese character, 13a for the rest). Both are reported on a 0..1 scale, like every ratio
zhgpt reports (sacrebleu's BLEU 0..100 is divided by 100).
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field

from zhgpt.errors import ZhgptError
from zhgpt.model.engine import Engine, SamplingParams

# A document shorter than this gives a prompt and a reference of under 8 characters each: too little to
# continue, and BLEU's 4-grams barely fit. Such documents are skipped (and counted).
MIN_DOC_CHARS = 16
EVAL_EXTRA = "pip install -e \".[eval]\""


def _need(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ZhgptError(f"zhgpt eval --continuation needs the {package} package; "
                         f"install the eval extra: {EVAL_EXTRA}") from None


def require_packages() -> None:
    """Fail before any work when the eval extra is missing."""
    _need("rouge_score.rouge_scorer", "rouge-score")
    _need("sacrebleu", "sacrebleu")


class CharTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9] and so drops every Chinese character (ROUGE 0 for
    any Chinese pair); this one makes each non-space character a token."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean character-level ROUGE-L F1 over (hypothesis, reference) pairs, in [0, 1]."""
    rouge_scorer = _need("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer())
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return sum(scores) / len(scores) if scores else 0.0


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU with the Chinese tokenizer (per character), divided by 100: in [0, 1]."""
    sacrebleu = _need("sacrebleu", "sacrebleu")
    # min: identical texts give 100.00000000000004 (floating point in the geometric mean)
    return min(sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score / 100, 1.0)


def split_document(text: str, max_chars: int) -> tuple[str, str] | None:
    """(prompt, reference): the first half and the real second half, each at most ``max_chars`` characters
    (a long document keeps its first 2 * max_chars). None for a document too short to split."""
    if len(text) < MIN_DOC_CHARS:
        return None
    half = min(len(text) // 2, max_chars)
    return text[:half], text[half:2 * half]


@dataclass
class Reservoir:
    """A uniform, seeded choice of ``n`` eligible documents in one pass (reservoir sampling), so a 1 GB file
    needs memory for n documents only and the same text and seed always give the same documents."""
    n: int
    seed: int = 0
    items: list = field(default_factory=list)
    seen: int = 0
    skipped: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def offer(self, item) -> None:
        if item is None:
            self.skipped += 1
            return
        self.seen += 1
        if len(self.items) < self.n:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.n:
                self.items[j] = item


def continue_text(engine: Engine, prompt: str, chars: int, p: SamplingParams) -> str:
    """The model's continuation of ``prompt``, cut at ``chars`` characters. The prompt follows an
    end-of-text token, as every document does in training; generation stops once the text is long enough
    (a byte-level token can be a third of a character, so up to 3 tokens per character are allowed)."""
    ids = [engine.eot_id] + engine.encode(prompt)
    p = SamplingParams(**{**p.__dict__, "max_new_tokens": 3 * chars + 8, "num_return_sequences": 1})
    ids, _ = engine.fit_prompt(ids, p.max_new_tokens)   # a long prompt keeps its last tokens
    text = ""
    for _, delta, _, _ in engine.stream_rows(ids, p):
        text += delta
        if len(text) >= chars:
            break
    return text[:chars]


class _Progress:
    """A tqdm bar on a terminal, else one plain line every 10 s (the house rule for long work)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done, self.last = total, desc, 0, time.time()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="doc", dynamic_ncols=True)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.time() - self.last > 10 or self.done == self.total:
            self.last = time.time()
            print(f"{self.desc}: {self.done}/{self.total} documents", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def score_continuations(engine: Engine, pairs: list[tuple[str, str]], p: SamplingParams,
                        desc: str = "continuation") -> dict:
    """Generate a continuation for each (prompt, reference) pair and score them all."""
    hyps, refs = [], []
    bar = _Progress(len(pairs), desc)
    try:
        for prompt, ref in pairs:
            hyps.append(continue_text(engine, prompt, len(ref), p))
            refs.append(ref)
            bar.update()
    finally:
        bar.close()
    return {"continuation_docs": len(pairs), "rouge_l": rouge_l(hyps, refs), "bleu": bleu(hyps, refs),
            "continuation_examples": [{"prompt": a, "reference": b, "output": h}
                                      for (a, b), h in zip(pairs[:3], hyps[:3])]}
