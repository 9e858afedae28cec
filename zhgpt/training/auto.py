"""`--preset auto`: a recipe chosen from the corpus, the budget and the hardware, one reason per value.

nanochat derives its model from one ``--depth`` dial; here the dials are facts about the run: how much text
there is and what kind (characters, distinct characters, document length), how long the run may take, and
how fast this machine trains (`zhgpt estimate`'s throughput model: peak FLOP/s x expected MFU). The rules
and their constants were fitted to bench/screen_genres.py (news, reviews, classical poetry, fiction at
100 s and 10 minutes on a 2-core CPU; bench/RESULTS.md) and are stated where they are used. Flags the user
gives always win: auto only fills what was not asked for, and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from zhgpt.core import fmt

# ---- fitted to bench/screen_genres.py (see RESULTS.md "Recipe screening across genres")
CHAR_BELOW = 300_000          # corpora smaller than this (characters) get the char tokenizer: too little text
                              # to learn multi-character pieces that pay for their embedding rows
CHARS_PER_PIECE = 100         # unigram vocabulary ~ corpus characters / this, before rounding and limits
VOCAB_MIN, VOCAB_MAX = 4096, 32768
CTX_DOC_FACTOR = 2.0          # context ~ this x the average document length in tokens (several documents or
                              # one long one per window), a power of two in [CTX_MIN, CTX_MAX]
CTX_MIN, CPU_CTX_MAX, GPU_CTX_MAX = 64, 256, 1024
CPU_TOKENS_PER_STEP = 2048    # the cpu-tiny screening's batch x context (16 x 128), kept when the context moves
EPOCHS_OK = 4.0               # repeating data up to ~4 epochs costs little (Muennighoff et al. 2023); beyond, warn
TOKENS_PER_PARAM = 20         # Chinchilla's compute-optimal tokens per parameter, for GPU-sized budgets
CPU_SHAPE_BELOW_S = 3600      # CPU budgets under an hour keep the cpu-tiny shape (wider lost at 10 min)


@dataclass
class AutoRecipe:
    model: dict
    train: dict
    reasons: dict[str, str] = field(default_factory=dict)   # field -> why, in one line
    corpus: dict = field(default_factory=dict)

    def lines(self, explicit: dict) -> list[str]:
        out = []
        for k, why in self.reasons.items():
            if k in explicit:
                out.append(f"auto: {k} = {explicit[k]} (your flag; auto would have chosen from: {why})")
            else:
                v = self.model.get(k, self.train.get(k))
                out.append(f"auto: {k} = {v}: {why}")
        return out


def pow2_near(x: float) -> int:
    return 2 ** round(math.log2(max(x, 1)))


def choose_tokenizer(corpus: dict) -> tuple[str, int, str, str]:
    """(kind, vocab size, why kind, why vocab)."""
    chars, distinct = corpus["chars"], corpus.get("distinct", 0)
    if chars < CHAR_BELOW:
        return ("char", 8000, f"{fmt.count(chars)} characters of text is under {fmt.count(CHAR_BELOW)}: too little "
                "to learn multi-character pieces", "char: every distinct character (capped at 8000)")
    vocab = min(VOCAB_MAX, max(VOCAB_MIN, pow2_near(chars / CHARS_PER_PIECE)))
    why = (f"unigram pieces from {fmt.count(chars)} characters of text (byte fallback, so no character is "
           "ever unknown)")
    why_v = (f"~{fmt.count(chars)} chars / {CHARS_PER_PIECE} per piece, as a power of two in "
             f"[{VOCAB_MIN}, {VOCAB_MAX}]" + (f"; {distinct} distinct characters" if distinct else ""))
    return "unigram", vocab, why, why_v
