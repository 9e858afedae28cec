"""Token-level generation: sampling with a preallocated KV cache, streaming, n sequences.

One engine serves `zhgpt generate`, the fixed-prompt samples during training, the web demo and the
HTTP API. Sampling follows Hugging Face's order of logits processors (repetition penalty ->
temperature -> top-k -> top-p) so the same settings mean the same thing in both.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from zhgpt.config import opt
from zhgpt.data.chat_template import IM_END
from zhgpt.errors import ZhgptError


@dataclass
class SamplingParams:
    max_new_tokens: int = opt(100, "tokens to generate")
    min_new_tokens: int = opt(0, "do not end before this many tokens (the end-of-text token is masked until then)")
    temperature: float = opt(0.8, "softmax temperature; 0 = greedy (always the most likely token)")
    top_k: int = opt(50, "sample only from the k most likely tokens (0 = off)")
    top_p: float = opt(0.95, "sample from the smallest set of tokens whose probability sums to p (1 = off)")
    repetition_penalty: float = opt(1.0, "divide the logits of tokens already present (>1 discourages repeats; "
                                          "1.1-1.3 helps small Chinese models that loop)")
    no_repeat_ngram_size: int = opt(0, "never generate an n-gram of this many tokens that the text already contains "
                                       "(0 = off; 3-4 stops the loops small Chinese models fall into)")
    frequency_penalty: float = opt(0.0, "OpenAI's additive penalty: subtract this times the number of times a token "
                                        "was already generated from its logit (0 = off, -2..2)")
    presence_penalty: float = opt(0.0, "subtract this from the logit of every token already generated "
                                       "(0 = off, -2..2)")
    num_return_sequences: int = opt(1, "independent samples for the same prompt")
    seed: int = opt(-1, "random seed for sampling (-1 = random)")
    stop: list[str] = opt(help="stop when any of these strings is generated", factory=list)
    stop_at_eot: bool = opt(True, "stop a sequence at the end-of-text token (and a chat model's <|im_end|>)")

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ZhgptError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ZhgptError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ZhgptError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ZhgptError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ZhgptError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ZhgptError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.num_return_sequences < 1:
            raise ZhgptError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.no_repeat_ngram_size < 0:
            raise ZhgptError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ZhgptError(f"{name} must be in [-2, 2] (OpenAI's range), got {getattr(self, name)}")

    @property
    def penalizes(self) -> bool:
        """Whether sampling needs the tokens seen so far."""
        return (self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.frequency_penalty != 0
                or self.presence_penalty != 0)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL / Hugging Face rule: shrink positive logits, grow negative ones, of every token already present."""
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def ban_repeated_ngrams(logits: torch.Tensor, seen: torch.Tensor, n: int) -> torch.Tensor:
    """-inf for every token that would complete an n-gram already in ``seen`` (B, T): Hugging Face's
    no_repeat_ngram_size, vectorised over all earlier n-grams at once instead of a Python dict per row."""
    if seen.size(1) < n:
        return logits
    grams = seen.unfold(1, n, 1)                                          # (B, W, n): every n-gram so far
    hit = (grams[:, :, :-1] == seen[:, None, seen.size(1) - n + 1:]).all(-1)   # its first n-1 tokens = the tail
    rows = torch.arange(seen.size(0), device=seen.device)[:, None].expand_as(hit)
    ban = torch.zeros_like(logits, dtype=torch.bool)
    ban[rows[hit], grams[:, :, -1][hit]] = True
    return logits.masked_fill(ban, float("-inf"))


def penalize_counts(logits: torch.Tensor, generated: torch.Tensor, frequency: float, presence: float) -> torch.Tensor:
    """OpenAI's additive penalties on the tokens generated so far (not the prompt's, as vLLM counts them)."""
    counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams, generated: int) -> torch.Tensor:
    """Repetition, n-gram, frequency and presence penalties. ``seen`` (B, T) is the prompt and the tokens
    generated so far, of which the last ``generated`` are the model's own."""
    if seen is None:
        return logits
    if p.repetition_penalty != 1.0:
        logits = penalize_repeats(logits, seen, p.repetition_penalty)
    if p.no_repeat_ngram_size > 0:
        logits = ban_repeated_ngrams(logits, seen, p.no_repeat_ngram_size)
    if (p.frequency_penalty or p.presence_penalty) and generated > 0:
        logits = penalize_counts(logits, seen[:, -generated:], p.frequency_penalty, p.presence_penalty)
    return logits


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams,
                   generated: int = 0) -> torch.Tensor:
    """Apply the penalties, temperature, top-k and top-p to (B, V) fp32 logits."""
    logits = apply_penalties(logits, seen, p, generated)
    if p.temperature == 0:
        return logits
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop tokens once the mass *before* them already exceeds p; the top token always stays.
        remove = (cum - sorted_logits.softmax(-1)) > p.top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, idx, sorted_logits)
    return logits


def sample_next(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams,
                gen: torch.Generator | None = None, generated: int = 0) -> torch.Tensor:
    """The next token of each row of (B, V) fp32 logits: the same distribution as ``process_logits``
    followed by a softmax draw, but top-k/top-p work on the k candidates only (one ``topk`` instead of a
    sort, softmax and scatter over the whole vocabulary: a third of the per-token time of a 4M model)."""
    logits = apply_penalties(logits, seen, p, generated)
    if p.temperature == 0:
        return logits.argmax(-1)
    logits = logits / p.temperature
    V = logits.size(-1)
    if not (0 < p.top_k < V) and p.top_p >= 1.0:
        return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    if 0 < p.top_k < V:
        vals, idx = torch.topk(logits, p.top_k, dim=-1)          # sorted, largest first
    else:
        vals, idx = torch.sort(logits, descending=True, dim=-1)
    if p.top_p < 1.0:
        probs = vals.softmax(-1)
        # Drop tokens once the mass *before* them already exceeds p; the top token always stays.
        vals = vals.masked_fill(probs.cumsum(-1) - probs > p.top_p, float("-inf"))
    choice = torch.multinomial(vals.softmax(-1), 1, generator=gen)
    return idx.gather(1, choice).squeeze(1)


@dataclass
class Generation:
    """The result for one prompt: the text and token count of each returned sequence."""
    prompt_tokens: int
    texts: list[str] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)   # generated tokens per row (end-of-text excluded)
    finish_reasons: list[str] = field(default_factory=list)      # "stop" (eot or stop string) or "length"
    truncated_prompt: bool = False


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string: it is not sent yet,
    so a streamed answer never shows the start of a stop string that the final answer cuts away."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[:min(cuts)] if cuts else text


class Engine:
    def __init__(self, model, tokenizer, eot_id: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer               # a tokenizers.Tokenizer
        self.eot_id = eot_id
        # A sequence ends at end-of-text, and in a chat model also at the end of the assistant's turn.
        end = tokenizer.token_to_id(IM_END) if hasattr(tokenizer, "token_to_id") else None
        self.end_ids = sorted({eot_id} | ({end} if end is not None else set()))
        self.block_size = model.cfg.block_size
        self.device = next(model.parameters()).device

    # ---------------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def fit_prompt(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """Keep the last tokens of a prompt that would not fit the context (with room to generate)."""
        room = max(1, self.block_size - min(max_new_tokens, self.block_size // 2))
        if len(ids) > room:
            return ids[-room:], True
        return ids, False

    # ---------------------------------------------------------------- token loop
    @torch.inference_mode()
    def generate_ids(self, prompt_ids: list[int], p: SamplingParams, use_cache: bool = True) -> Iterator[torch.Tensor]:
        """Yield the next token of each of the ``num_return_sequences`` rows, one (n,) tensor per step.
        Rows that finished (end-of-text or <|im_end|>) keep yielding ``eot_id``; the loop ends when all rows finished."""
        if not prompt_ids:
            prompt_ids = [self.eot_id]   # an empty prompt starts a fresh document
        n = p.num_return_sequences
        gen = torch.Generator(device=self.device)
        gen.manual_seed(p.seed if p.seed >= 0 else torch.seed())
        seq = torch.tensor([prompt_ids] * n, dtype=torch.long, device=self.device)   # (n, T)
        cache = self.model.make_kv_cache(n) if use_cache else None
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        end_ids = torch.tensor(self.end_ids, device=self.device)
        fresh = seq                                # tokens not yet fed to the model
        for i in range(p.max_new_tokens):
            if cache is not None and cache.pos + fresh.size(1) > self.block_size:
                # Context full: slide the window, keeping the last half of the sequence as the new prefix.
                cache.reset()
                fresh = seq[:, -(self.block_size // 2):]
            if cache is None:
                logits, _ = self.model(seq[:, -self.block_size:], last_only=True)
            else:
                logits, _ = self.model(fresh, kv_cache=cache, last_only=True)
            logits = logits[:, -1, :].float()      # (n, V)
            if i < p.min_new_tokens:
                logits[:, self.end_ids] = float("-inf")
            nxt = sample_next(logits, seq if p.penalizes else None, p, gen, generated=i)
            nxt = torch.where(done, torch.full_like(nxt, self.eot_id), nxt)
            if p.stop_at_eot:
                done |= torch.isin(nxt, end_ids)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            fresh = nxt[:, None]
            yield nxt
            if bool(done.all()):
                break

    # ---------------------------------------------------------------- text API
    def stream_rows(self, prompt_ids: list[int], p: SamplingParams, use_cache: bool = True,
                    cancelled: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, str, str | None, int]]:
        """Text deltas of all ``p.num_return_sequences`` rows, as they are generated.

        Yields ``(row, delta, finish_reason, tokens)``: finish_reason is None until the row's last event, then
        "stop" (end-of-text or a stop string) or "length"; ``tokens`` counts the row's generated tokens (the
        end-of-text token excluded). Deltas never end inside a multi-byte character (byte-level tokens can)
        and never show the start of a stop string that the final text cuts away, so streamed and
        non-streamed answers with the same seed are the same text. The CLI, the demo and the API use this.
        """
        n = p.num_return_sequences
        stops = [s for s in p.stop if s]
        ids: list[list[int]] = [[] for _ in range(n)]
        sent = [""] * n
        done = [False] * n

        def finish(i: int, text: str, reason: str):
            done[i] = True
            # The text only grows at its end, except for a trailing half character that a later byte completed.
            delta = text[len(sent[i]):] if text.startswith(sent[i]) else ""
            sent[i] = text
            return i, delta, reason, len(ids[i])

        gen = self.generate_ids(prompt_ids, p, use_cache)
        try:
            for nxt in gen:
                if cancelled():
                    return
                for i, t in enumerate(nxt.tolist()):
                    if done[i]:
                        continue
                    if t in self.end_ids and p.stop_at_eot:
                        yield finish(i, self.decode(ids[i]), "stop")
                        continue
                    ids[i].append(t)
                    text = self.decode(ids[i])
                    if stops:
                        cut = _cut_at_stop(text, stops)
                        if cut != text:
                            yield finish(i, cut, "stop")
                            continue
                    if text.endswith("\ufffd"):   # a byte-level token ended inside a multi-byte character
                        continue
                    safe = len(text) - _held_back(text, stops)
                    if safe > len(sent[i]) and text.startswith(sent[i]):
                        yield i, text[len(sent[i]):safe], None, len(ids[i])
                        sent[i] = text[:safe]
                if all(done):
                    return
            for i in range(n):
                if not done[i]:
                    yield finish(i, self.decode(ids[i]), "length")
        finally:
            gen.close()

    def _prompt_ids(self, prompt: str, p: SamplingParams) -> tuple[list[int], bool]:
        ids, truncated = self.fit_prompt(self.encode(prompt), p.max_new_tokens)
        if truncated:
            warnings.warn(f"prompt longer than the context ({self.block_size} tokens): kept its last {len(ids)} tokens")
        return ids, truncated

    def generate(self, prompt: str, p: SamplingParams, use_cache: bool = True) -> Generation:
        ids, truncated = self._prompt_ids(prompt, p)
        n = p.num_return_sequences
        g = Generation(len(ids), [""] * n, [0] * n, ["length"] * n, truncated)
        for row, delta, reason, ntok in self.stream_rows(ids, p, use_cache):
            g.texts[row] += delta
            g.completion_tokens[row] = ntok
            if reason:
                g.finish_reasons[row] = reason
        return g

    def stream(self, prompt: str, p: SamplingParams) -> Iterator[str]:
        """Text pieces of one sequence as they are generated (terminal streaming)."""
        ids, _ = self._prompt_ids(prompt, p)
        single = SamplingParams(**{**p.__dict__, "num_return_sequences": 1})
        for _, delta, _, _ in self.stream_rows(ids, single):
            if delta:
                yield delta
