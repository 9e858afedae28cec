"""Statistics of generated text, in [0, 1]: how varied it is, how much it repeats itself, how Chinese it is.

Computed on characters (no tokenizer: the numbers compare across tokenizers), whitespace ignored (a
line break is layout, not language). A list of texts is pooled the way Distinct-n is defined (Li et
al., 2016): the n-grams of every text are counted together, none crosses from one text into the next.

- ``distinct_2`` = distinct character bigrams / all bigrams. 1.0: no bigram occurs twice; "哈哈哈哈哈"
  has 4 bigrams, all "哈哈": 1/4 = 0.25.
- ``repeat_4`` = share of character 4-gram occurrences that repeat an earlier one = (all - distinct) /
  all = 1 - distinct_4 (the two readings of "share of repeated 4-grams" are the same number).
  "哈哈哈哈哈" has two 4-grams, both "哈哈哈哈": 0.5. A model stuck in a loop ("我们的我们的...") tends to 1.
- ``cjk_ratio`` = share of Chinese-script characters among the non-whitespace ones: ideographs, CJK
  punctuation (U+3000-303F), full-width forms (U+FF01-FF5E: ，！１Ａ, as People's Daily writes digits)
  and the general punctuation Chinese text uses (“”‘’…—·). Not Latin letters, ASCII digits, bytes or
  U+FFFD (what a young byte-level model emits). Real Chinese news text scores ~0.95-1.0.

Each returns None when the texts hold no n-gram (or no character) at all, rather than a made-up value.
No torch, no numpy: the report and the training loop both import this.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def is_cjk(ch: str) -> bool:
    """A Chinese ideograph (the unified blocks, extension A, compatibility ideographs, extensions B-F)."""
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F


def is_chinese_script(ch: str) -> bool:
    """An ideograph, CJK punctuation (U+3000-303F), a full-width form (U+FF01-FF5E: ，！１Ａ) or the
    general punctuation Chinese text uses (“”‘’…—·)."""
    o = ord(ch)
    return is_cjk(ch) or 0x3000 <= o <= 0x303F or 0xFF01 <= o <= 0xFF5E or ch in "“”‘’…—·"


def visible(text: str) -> str:
    """The text without whitespace (spaces, line breaks, the ideographic space U+3000)."""
    return "".join(text.split())


def _texts(texts: str | Iterable[str]) -> list[str]:
    return [visible(texts)] if isinstance(texts, str) else [visible(t) for t in texts]


def ngram_counts(texts: str | Iterable[str], n: int) -> Counter:
    """Character n-grams of each text (whitespace removed), counted together; none spans two texts."""
    c: Counter = Counter()
    for t in _texts(texts):
        c.update(t[i:i + n] for i in range(len(t) - n + 1))
    return c


def distinct_n(texts: str | Iterable[str], n: int) -> float | None:
    """Distinct character n-grams / all n-gram occurrences, or None without any n-gram."""
    c = ngram_counts(texts, n)
    total = sum(c.values())
    return len(c) / total if total else None


def distinct_2(texts: str | Iterable[str]) -> float | None:
    return distinct_n(texts, 2)


def repeat_4(texts: str | Iterable[str]) -> float | None:
    """Share of character 4-gram occurrences that repeat an earlier one (1 - distinct_4)."""
    d = distinct_n(texts, 4)
    return None if d is None else 1.0 - d


def cjk_ratio(texts: str | Iterable[str]) -> float | None:
    """Share of Chinese-script characters (``is_chinese_script``) among the non-whitespace ones."""
    chars = "".join(_texts(texts))
    return sum(map(is_chinese_script, chars)) / len(chars) if chars else None


def text_stats(texts: str | Iterable[str]) -> dict[str, float]:
    """distinct_2, repeat_4 and cjk_ratio of the texts, leaving out those that are undefined."""
    texts = _texts(texts)
    found = {"distinct_2": distinct_2(texts), "repeat_4": repeat_4(texts), "cjk_ratio": cjk_ratio(texts)}
    return {k: round(v, 4) for k, v in found.items() if v is not None}
