"""`--preset auto`: a recipe chosen from the corpus, the budget and the hardware, one reason per value.

nanochat derives its model from one ``--depth`` dial; here the dials are facts about the run: how much text
there is and what kind (characters, distinct characters, document length), how long the run may take, and
how fast this machine trains (`zhgpt estimate`'s throughput model: peak FLOP/s x expected MFU). The fitted
constants come from bench/screen_genres.py (bench/RESULTS.md, "Recipe screening across genres"): news,
reviews, Song ci and Yuan sanqu, every recipe at 100 s and at 10 minutes, then fiction (Dream of the Red
Chamber) as a held-out genre, which added one rule (CHAR_CTX_SHORT_RUN). Flags the
user gives always win: auto fills only what was not asked for, and says which is which.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from zhgpt.config import load_json, parse_duration
from zhgpt.core import fmt

# ---- fitted to bench/screen_genres.py (RESULTS.md "Recipe screening across genres")
# Under ~1M characters the char tokenizer learned as much as or more than unigram 4k in 100 s (Yuan sanqu,
# 0.92M: 7.18 vs 7.29 bits/char); from 1.2M up unigram won (reviews 5.94 vs 6.27, news 6.53 vs 6.84).
CHAR_BELOW = 1_000_000
# Size alone missed Song ci (1.62M): at 10 minutes char beat unigram 8k there by 0.23 (6.49 vs 6.72). What
# separates the genres is how well pieces compress the text: a unigram 4k tokenizer trained on a 300k-character
# sample gives 1.10-1.12 chars/token on the verse (char won) and 1.29-1.31 on news and reviews (unigram won by
# ~0.3 bits/char at 100 s; at 10 minutes char caught up on reviews, 5.66 vs 5.64, and lost news by 0.11).
# Below this, pieces are too short to pay for their vocabulary: char.
CHAR_PIECES_BELOW = 1.2
# The best unigram vocabulary shrank with the text a run gets to see: 4k at 100 s on every genre, 8k (16k
# 0.065 bits/char worse) on news at 10 minutes. vocab ~ min(corpus characters, budget tokens) / this, a power
# of two in [MIN, MAX]: 4k at 100 s, 8k for a 1.76M-character corpus at 10 minutes, 16k for the built-in 4.4M.
CHARS_PER_PIECE = 190
VOCAB_MIN, VOCAB_MAX = 4096, 32768
CTX_DOC_FACTOR = 2.0          # context ~ this x the average document in tokens, a power of two in the limits
# Context at 100 s on four genres with documents of 73-95 characters: 64 won on two (Yuan sanqu by 0.10,
# reviews by 0.03 bits/char) and lost on two (Song ci by 0.03, news by 0.33); 256 lost on all four (0.04-0.2).
# 128 is the best overall, so it is the floor; longer documents get more.
CTX_MIN, CPU_CTX_MAX, GPU_CTX_MAX = 128, 256, 1024
# With single characters as tokens the 10-minute Yuan sanqu run (88-character documents) learned more at 64
# than at 128, at equal steps all along: the reference's 10-minute quality 12 % fewer steps sooner, 6.69 vs
# 6.73 bits/char at the 4-pass stop. A char corpus gets about one document per window, from 64 up.
CHAR_CTX_DOC_FACTOR, CHAR_CTX_MIN = 1.0, 64
# ...but not in the runs screened. Fiction (235-character paragraphs, added after the rule was fitted) with
# single characters: at 100 s (~0.6M tokens) 64 6.01, 128 6.07, 256 6.20 bits/char; at 10 minutes (~3.5M
# tokens), both stopped at 4 passes, 64 5.92 against 256's 5.95. 64 also won both budgets on Yuan sanqu and
# 100 s on Song ci (at 10 minutes Song ci's 128 was 0.04 ahead). So a char run keeps 64 up to ~20M tokens
# (about an hour of a 2-core CPU, 6x the longest screened run); longer runs get one document per window.
CHAR_CTX_SHORT_RUN = 20_000_000
CPU_SHAPE_BELOW_S = 3600      # CPU budgets under an hour keep the cpu-tiny shape (6L/384d lost at 10 min)
# ---- general rules, not fitted here
# Repeating data up to ~4 epochs costs little (Muennighoff et al. 2023). In the 10-minute screening the val loss
# was lowest at 3.8-4.5 passes and then rose (Yuan sanqu char +0.1 bits/char by 5.9 passes, unigram 4k +0.5 by
# 8.1; reviews 8k +0.09 by 5.5), so auto stops a run at 4 passes (max_epochs) instead of memorising.
EPOCHS_OK = 4.0
TOKENS_PER_PARAM = 20         # Chinchilla's compute-optimal tokens per parameter
# unigram on news (pd1998 val, measured 1.32 / 1.52 / 1.79 chars per token; 32768 extrapolated): a guess elsewhere
CHARS_PER_TOKEN_GUESS = {"char": 1.0, 4096: 1.3, 8192: 1.5, 16384: 1.75, 32768: 1.9}
GPU_SHAPES = ("tiny", "mini", "small", "medium", "large", "xl")    # smallest first


@dataclass
class AutoRecipe:
    model: dict
    train: dict
    values: dict = field(default_factory=dict)              # what each reason is about, as printed
    reasons: dict[str, str] = field(default_factory=dict)   # field -> why, one line each
    facts: dict = field(default_factory=dict)               # corpus, budget, throughput, epochs, tokens/param
    warnings: list[str] = field(default_factory=list)

    def lines(self, explicit: dict, model_overrides: dict) -> list[str]:
        out = []
        for k, why in self.reasons.items():
            given = explicit.get(k, model_overrides.get(k))
            if given is not None:
                out.append(f"auto: {k} = {given} (your flag; auto's choice {self.values[k]}: {why})")
            else:
                out.append(f"auto: {k} = {self.values[k]}: {why}")
        f = self.facts
        if "tokens_est" in f:
            out.append(f"auto: budget: ~{fmt.count(f['tokens_est'])} tokens ({f['throughput']}), "
                       f"{f['epochs_est']:g} passes over the corpus, {f['tokens_per_param_est']:g} tokens per parameter")
        return out + [f"auto: warning: {w}" for w in self.warnings]

    def record(self, explicit: dict, model_overrides: dict) -> dict:
        """What config.json keeps: the facts, the reasons, and which values the user's flags replaced."""
        given = sorted(k for k in self.reasons if k in explicit or k in model_overrides)
        return {"facts": self.facts, "reasons": self.reasons, "overridden_by_flags": given, "warnings": self.warnings}


def pow2_near(x: float) -> int:
    return 2 ** round(math.log2(max(x, 1.0)))


def clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


# ------------------------------------------------------------------------- facts

def corpus_facts(data: list[str]) -> dict:
    """Characters, documents, their average length (and distinct characters, CJK share) of the training
    sources; a prepared dataset folder answers from its meta.json (its tokenizer is then fixed)."""
    from zhgpt.data.shards import META
    if len(data) == 1 and (Path(data[0]) / META).is_file():
        meta = load_json(Path(data[0]) / META)
        tr = meta["splits"]["train"]
        return {"chars": tr["chars"], "docs": tr["docs"], "avg_doc_chars": tr["chars"] / max(tr["docs"], 1),
                "prepared": True, "tokenizer": meta.get("tokenizer_kind"), "vocab_size": meta["vocab_size"],
                "chars_per_token": tr["chars"] / max(tr["tokens"], 1)}
    from zhgpt.data.corpus_stats import corpus_stats
    return corpus_stats(data).as_dict()


def budget_seconds(explicit: dict, device: str) -> tuple[float | None, str]:
    if explicit.get("time_budget"):
        return parse_duration(explicit["time_budget"]), f"--time-budget {explicit['time_budget']}"
    if device == "cpu":
        return 600.0, "the CPU default budget of 10 minutes"
    return None, "no time budget (a GPU run goes by tokens)"


def tokens_per_second(model: dict, device: str) -> tuple[float, str]:
    """`zhgpt estimate`'s throughput model for ``model``: peak FLOP/s (measured or the GPU table) x the
    expected MFU / training FLOPs per token."""
    from zhgpt.core.device import resolve_dtype
    from zhgpt.model.gpt import ModelConfig
    from zhgpt.training.estimate import DEFAULT_MFU, flops_per_token
    from zhgpt.training.layout import cache_root
    from zhgpt.training.mfu import peak_flops
    cfg = ModelConfig(**model)
    peak, how = peak_flops(device, resolve_dtype("auto", device), cache_root())
    mfu = DEFAULT_MFU["cpu" if device == "cpu" else "gpu"][0]
    return peak * mfu / flops_per_token(cfg, cfg.block_size), f"{how} peak {peak / 1e12:.2f} TFLOP/s x MFU {mfu:g}"


# ------------------------------------------------------------------------- the choices

def chars_per_token_guess(kind: str, vocab: int) -> float:
    return 1.0 if kind == "char" else CHARS_PER_TOKEN_GUESS.get(vocab, 1.75)


def choose_tokenizer(facts: dict, budget_tokens: float | None) -> tuple[dict, dict]:
    """(train fields, reasons): tokenizer kind and vocabulary size."""
    if facts.get("prepared"):
        return {}, {}                      # a prepared dataset has its tokenizer already
    chars = facts["chars"]
    cpt = facts.get("unigram4k_chars_per_token")
    why = ""
    if chars < CHAR_BELOW:
        why = (f"{fmt.count(chars)} characters of text, under {fmt.count(CHAR_BELOW)}: too little for pieces to "
               "beat single characters (screened)")
    elif cpt and cpt < CHAR_PIECES_BELOW:
        why = (f"unigram 4k pieces average {cpt:.2f} characters on this text, under {CHAR_PIECES_BELOW:g}: too "
               "short to beat single characters (screened on classical verse)")
    if why:
        return {"tokenizer": "char", "vocab_size": 8000}, {"tokenizer": why,
                                                           "vocab_size": "every distinct character, at most 8000"}
    basis, what = (chars, "corpus characters")
    if budget_tokens and budget_tokens < chars:
        basis, what = budget_tokens, "tokens the budget trains on"
    vocab = clamp(pow2_near(basis / CHARS_PER_PIECE), VOCAB_MIN, VOCAB_MAX)
    return ({"tokenizer": "unigram", "vocab_size": vocab},
            {"tokenizer": f"{fmt.count(chars)} characters of text" + (
                f", unigram 4k pieces average {cpt:.2f} characters on it" if cpt else "") +
                ": unigram pieces with byte fallback",
             "vocab_size": f"~{fmt.count(basis)} {what} / {CHARS_PER_PIECE} per piece, a power of two in "
                           f"[{VOCAB_MIN}, {VOCAB_MAX}]"})


def choose_context(facts: dict, kind: str, vocab: int, device: str,
                   budget_tokens: float | None) -> tuple[int, str]:
    if kind == "char" and budget_tokens and budget_tokens < CHAR_CTX_SHORT_RUN:
        return CHAR_CTX_MIN, (f"single characters in a short run (~{fmt.count(budget_tokens)} tokens, under "
                              f"{fmt.count(CHAR_CTX_SHORT_RUN)}): {CHAR_CTX_MIN} learned most in the screened runs "
                              f"(100 s, 10 min), whatever the document length (here {facts['avg_doc_chars']:.0f} "
                              "characters)")
    cpt = facts.get("chars_per_token") or chars_per_token_guess(kind, vocab)
    doc_tokens = facts["avg_doc_chars"] / cpt
    hi = CPU_CTX_MAX if device == "cpu" else GPU_CTX_MAX
    factor, lo = (CHAR_CTX_DOC_FACTOR, CHAR_CTX_MIN) if kind == "char" else (CTX_DOC_FACTOR, CTX_MIN)
    ctx = clamp(pow2_near(doc_tokens * factor), lo, hi)
    return ctx, (f"documents average {facts['avg_doc_chars']:.0f} characters (~{doc_tokens:.0f} tokens at "
                 f"{cpt:.2f} chars/token): {factor:g}x that, a power of two in [{lo}, {hi}]")


def choose_shape(device: str, secs: float | None, corpus_tokens: float, vocab: int, ctx: int) -> tuple[str, str]:
    """A preset's shape: cpu-tiny for CPU budgets under an hour; otherwise the largest preset that the
    token budget (the time budget's tokens, or EPOCHS_OK passes over the corpus) trains to
    TOKENS_PER_PARAM tokens per parameter."""
    from zhgpt.model.presets import DEFAULT_GPU_PRESET, count_params, model_config
    if device == "cpu" and (secs or 0) < CPU_SHAPE_BELOW_S:
        return "cpu-tiny", (f"a CPU budget under {CPU_SHAPE_BELOW_S // 60} minutes: the shape screened for it "
                            "(4 layers x 256; 6 x 384 learned less in 10 minutes)")
    ladder = ("cpu-tiny",) + GPU_SHAPES
    data_tokens = EPOCHS_OK * corpus_tokens
    best, why = "cpu-tiny", ""
    for name in ladder:
        cfg = model_config(name, vocab_size=vocab, block_size=ctx)
        fields, n = dataclasses.asdict(cfg), count_params(cfg)
        limit, what = data_tokens, f"{EPOCHS_OK:g} passes over ~{fmt.count(corpus_tokens)} corpus tokens"
        if secs:
            tps, _ = tokens_per_second(fields, device)
            if tps * secs < limit:
                limit, what = tps * secs, f"~{fmt.count(tps * secs)} tokens in the budget"
        elif name not in ladder[: ladder.index(DEFAULT_GPU_PRESET) + 1]:
            break                           # without a budget, no larger than the GPU default
        if TOKENS_PER_PARAM * n > limit:
            break
        best, why = name, f"{fmt.params(n)} parameters x {TOKENS_PER_PARAM} tokens each fit {what}"
    return best, why or f"even the smallest shape gets under {TOKENS_PER_PARAM} tokens per parameter"


def choose_batch(shape: str, train: dict, preset_ctx: int, ctx: int) -> tuple[int, str]:
    """The preset's tokens per optimizer step (batch x context x accumulation), kept when the context moves."""
    accum = train.get("grad_accum", 1)
    per_step = train["batch_size"] * preset_ctx * accum
    how = "as screened" if shape == "cpu-tiny" else f"the {shape} preset's"
    return max(1, per_step // (ctx * accum)), (f"{per_step:,} tokens per step ({how}), at context {ctx}"
                                                + (f" x {accum} accumulation steps" if accum > 1 else ""))


def choose(explicit: dict, model_overrides: dict, device: str) -> AutoRecipe:
    """The recipe for this corpus, budget and machine. ``explicit``/``model_overrides``: the user's flags,
    which win (a chosen tokenizer or context feeds the later choices)."""
    from zhgpt.model.presets import get_preset
    data = explicit.get("data") or ["builtin"]
    facts = corpus_facts(data)
    if not facts.get("prepared") and facts["chars"] >= CHAR_BELOW and not explicit.get("tokenizer"):
        from zhgpt.data.corpus_stats import piece_compression
        facts["unigram4k_chars_per_token"] = round(piece_compression(data), 3)
    secs, secs_why = budget_seconds(explicit, device)
    # the vocabulary rule reads the budget in tokens, at the cpu-tiny shape's speed
    budget_tokens = tokens_per_second(get_preset("cpu-tiny")[0], device)[0] * secs if secs else None
    tok, reasons = choose_tokenizer(facts, budget_tokens)
    kind = explicit.get("tokenizer") or tok.get("tokenizer") or facts.get("tokenizer") or "unigram"
    vocab = explicit.get("vocab_size") or tok.get("vocab_size") or facts.get("vocab_size") or 16384
    ctx, reasons["block_size"] = choose_context(facts, kind, vocab, device, budget_tokens)
    ctx = model_overrides.get("block_size") or ctx
    cpt = facts.get("chars_per_token") or chars_per_token_guess(kind, vocab)
    corpus_tokens = facts["chars"] / cpt
    shape, reasons["shape"] = choose_shape(device, secs, corpus_tokens, vocab, ctx)
    model, train = get_preset(shape)
    train["batch_size"], reasons["batch_size"] = choose_batch(shape, train, model["block_size"], ctx)
    model.update(block_size=ctx, vocab_size=vocab)     # the data's tokenizer sets the final size
    train.update(tok)
    reasons["lr"] = f"{train.get('optimizer', 'adamw')} at the {shape} preset's rate" + (
        " (6e-3 beat 3e-3 with Muon in the news screening)" if shape == "cpu-tiny" else
        " (GPT-2/GPT-3's rate for a model this size)")
    values = {**tok, "block_size": ctx, "shape": f"{shape} ({model['n_layer']} layers x {model['n_embd']})",
              "batch_size": train["batch_size"], "lr": train["lr"]}
    rec = AutoRecipe(model=model, train=train, values=values, reasons=reasons)
    rec.facts = {"corpus": facts, "budget": secs_why, "corpus_tokens_est": round(corpus_tokens), "shape_preset": shape}
    _check_budget(rec, explicit, {**model, **model_overrides, "vocab_size": vocab}, device, secs, corpus_tokens)
    return rec


def _check_budget(rec: AutoRecipe, explicit: dict, model: dict, device: str, secs: float | None,
                  corpus_tokens: float) -> None:
    """Tokens per parameter and epochs the budget will give; past EPOCHS_OK passes a limit there."""
    from zhgpt.model.gpt import ModelConfig
    from zhgpt.model.presets import count_params
    if not secs:
        return
    tps, why = tokens_per_second(model, device)
    tokens = tps * secs
    n = count_params(ModelConfig(**model))
    epochs = tokens / max(corpus_tokens, 1)
    rec.facts.update(tokens_per_s_est=round(tps), throughput=why, tokens_est=round(tokens),
                     epochs_est=round(epochs, 2), tokens_per_param_est=round(tokens / n, 3))
    chosen = count_params(ModelConfig(**{**rec.model, "vocab_size": model["vocab_size"]}))
    if n > 2 * chosen:
        rec.warnings.append(
            f"the model flags give {fmt.params(n)} parameters, ~{tokens / n:.2g} tokens each in this budget "
            f"(auto's shape: {fmt.params(chosen)}, ~{tokens / chosen:.2g}); a model this large stays far "
            "under-trained: drop the shape flags or give a longer --time-budget")
    if epochs > EPOCHS_OK:
        cap = EPOCHS_OK * corpus_tokens
        step_tokens = (explicit.get("batch_size") or rec.train.get("batch_size", 1)) * model["block_size"]
        by_steps = (explicit.get("max_steps") or 0) * step_tokens
        if "max_tokens" not in explicit:    # a --max-tokens flag sets the length instead; --max-epochs wins
            rec.train["max_epochs"] = rec.values["max_epochs"] = EPOCHS_OK
            rec.reasons["max_epochs"] = (f"the validation loss rose past ~{EPOCHS_OK:g} passes in the screening; "
                                         "counted in the corpus's real tokens")
        if "max_tokens" in explicit:
            stop = "; --max-tokens sets the run's length"
        elif "max_epochs" in explicit:
            stop = (f"; --max-epochs {explicit['max_epochs']:g} sets the run's length" if explicit["max_epochs"]
                    else "; --max-epochs 0: the whole budget is trained")
        elif 0 < by_steps <= cap:
            stop = f"; --max-steps ends the run sooner, after ~{by_steps / corpus_tokens:.1f} passes"
        else:
            stop = (f"; training stops after {EPOCHS_OK:g} passes (~{fmt.count(cap)} tokens): add text to use "
                    "the whole budget, or give --max-epochs 0 to train on")
        rec.warnings.append(f"the budget would train on ~{fmt.count(tokens)} tokens, {epochs:.1f} passes over this "
                            f"corpus (~{fmt.count(corpus_tokens)} tokens){stop}")
