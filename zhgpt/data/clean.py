"""Normalise, filter, deduplicate (exactly, and optionally near-duplicates) and split documents.

Everything here is a pure function of the document text (plus the options), so a dataset built
twice -- on another machine, with files in another order, or with more files added -- puts every
document it shares with the first build into the same split with the same repeat count:

* ``doc_hash`` is an unkeyed 64-bit BLAKE2b of the cleaned text's UTF-8 bytes, never Python's
  ``hash()`` (salted per process for str).
* validation = ``doc_hash(text) < val_threshold(val_fraction)``: a fixed slice of the 64-bit space.
* ``repeats`` (source weights) draws its fractional part from a *different* mix of the same hash,
  so which documents get an extra copy is independent of which ones went to validation.
"""
from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from array import array
from collections import Counter
from dataclasses import dataclass

from zhgpt.config import opt
from zhgpt.errors import ZhgptError
from zhgpt.data.neardup import NearDupIndex, mix64

# ---------------------------------------------------------------------------------------------
# Normalisation table.
#
# NFKC is what we want for almost everything in Chinese web/news text:
#   full-width digits/letters  １９９８年 ＡＢＣ      -> 1998年 ABC   (one token for 1998 everywhere)
#   ideographic space U+3000, NBSP, U+2000-U+200A  -> " "
#   full-width symbols ＃％＆＊＋－．／＜＝＞＠［＼］＾＿｀｛｜｝＂＇ -> ASCII
#   ￥ -> ¥, CJK compatibility ideographs and Kangxi radicals (PDF extractions) -> unified hanzi,
#   halfwidth ｡ ､ ｢ ｣ -> 。 、 「 」, ① -> 1, ℃ -> °C, ﬁ -> fi
# but NFKC also turns the full-width punctuation that *is* Chinese punctuation into ASCII, which
# would make "你好，世界！" look like English-style text ("你好,世界!") and mix two spellings of
# every comma in the corpus. So these keep (or get) their Chinese form:
#   ，！？；：（）  (U+FF0C FF01 FF1F FF1B FF1A FF08 FF09; NFKC would give , ! ? ; : ( ))
#   …  (U+2026, NFKC "...")   ‥ (U+2025, NFKC "..")   ～ (U+FF5E, NFKC "~", used for ranges 3～5)
#   small and vertical presentation forms of those (﹐ ﹔ ﹕ ﹖ ﹗ ﹙ ﹚ ︐ ︓ ︔ ︕ ︖ ︵ ︶ ︙)
#   are mapped to the same Chinese forms rather than to ASCII.
# Unchanged by NFKC anyway, listed for completeness: 。、《》〈〉「」『』【】〔〕〖〗“”‘’—·
# ---------------------------------------------------------------------------------------------
_KEEP = "，！？；：（）…‥～"
_TO_CHINESE = {   # compatibility variants -> the Chinese form kept above
    "﹐": "，", "﹔": "；", "﹕": "：", "﹖": "？", "﹗": "！", "﹙": "（", "﹚": "）",
    "︐": "，", "︓": "：", "︔": "；", "︕": "！", "︖": "？", "︵": "（", "︶": "）", "︙": "…",
}
# Placeholders from Supplementary Private Use Area-B (plane 16): NFKC leaves them alone and real
# text essentially never contains them (checked; the slow path handles it if it does).
_PLACEHOLDER = {c: chr(0x10FF00 + i) for i, c in enumerate(_KEEP)}
_PROTECT = list(_PLACEHOLDER.items())   # (the compatibility forms are already replaced by then)
_RESTORE = [(p, c) for c, p in _PLACEHOLDER.items()]
_HAS_PLACEHOLDER = re.compile("[\U0010FF00-\U0010FF7F]")
_KEEP_SPLIT = re.compile(f"([{re.escape(_KEEP + ''.join(_TO_CHINESE))}])")
_COMPAT_PUNCT = re.compile(f"[{''.join(_TO_CHINESE)}]")
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


@functools.cache
def _unstable_bmp() -> re.Pattern:
    """Runs of BMP characters that NFKC may change or that may join their neighbour: a character
    that NFKC changes on its own (full-width forms, compatibility ideographs, ...), a combining
    mark (canonical reordering), or the second half of a canonical pair (it may compose with the
    starter before it: U+0301 after "e", Hangul vowel/final jamo). The kept Chinese punctuation is
    left out. Any other character is a boundary NFKC never looks across, so the text between two
    runs is already normal and only each run -- with the one character before it, which a leading
    combining mark may attach to -- needs normalising. ~20 ms to build, on first use.

    Python's ``re`` tests a class of BMP characters with a bitmap, but one with astral ranges by
    walking the ranges, so this class is BMP-only and text with astral characters takes the
    placeholder path instead."""
    cps = set()
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if unicodedata.combining(ch) or unicodedata.normalize("NFKC", ch) != ch:
            cps.add(cp)
        d = unicodedata.decomposition(ch)
        if d and d[0] != "<":                       # canonical mapping: its later parts can compose
            cps.update(int(x, 16) for x in d.split()[1:])
    cps.update(range(0x1161, 0x1176), range(0x11A8, 0x11C3))   # Hangul V and T jamo (algorithmic)
    cps -= {ord(c) for c in _KEEP}
    return _runs_of(sorted(cps))


def _runs_of(cps: list[int]) -> re.Pattern:
    """A pattern matching runs of the given (sorted) code points, as a class of ranges."""
    ranges, start, prev = [], cps[0], cps[0]
    for c in cps[1:]:
        if c != prev + 1:
            ranges.append((start, prev))
            start = c
        prev = c
    ranges.append((start, prev))
    esc = lambda c: f"\\U{c:08x}"   # noqa: E731
    return re.compile("[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]+")


# Line breaks in all their spellings -> "\n" (Python's str.splitlines list, minus \n itself).
_NEWLINES = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _control_class() -> re.Pattern:
    """Control (Cc, except \\n and \\t), format (Cf: zero-width space, BOM, bidi marks, soft hyphen)
    and surrogate (Cs: lone halves from JSON "\\ud83d" escapes, unencodable as UTF-8) characters.

    Built from unicodedata at import (~30 ms) rather than hard-coded, so it follows the running
    Python's Unicode version. All Cf characters live in planes 0, 1 and 14.
    """
    cps = [c for r in (range(0, 0x20000), range(0xE0000, 0xE1000)) for c in r
           if c not in (9, 10) and unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs")]
    return _runs_of(cps)


_CONTROL = _control_class()
_SPACES = re.compile(r"[ \t]+")
_SPACE_AROUND_NL = re.compile(r" ?\n ?")
_MANY_NL = re.compile(r"\n{3,}")


def _nfkc_keep_chinese(text: str) -> str:
    # is_normalized is ~100x faster than normalize, and a text it accepts has none of the kept
    # punctuation (NFKC would change each of them)
    if unicodedata.is_normalized("NFKC", text):
        return text
    if _COMPAT_PUNCT.search(text):
        for k, v in _TO_CHINESE.items():
            if k in text:
                text = text.replace(k, v)
    if not _ASTRAL.search(text):
        # normalise only the runs NFKC can change (see _unstable_bmp): ~2x faster than one
        # normalize() of the whole text with the kept punctuation swapped out and back
        out, pos = [], 0
        for m in _unstable_bmp().finditer(text):
            s, e = m.span()
            if s and text[s - 1] not in _KEEP:
                s -= 1
            out.append(text[pos:s])
            out.append(unicodedata.normalize("NFKC", text[s:e]))
            pos = e
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)
    if not _HAS_PLACEHOLDER.search(text):
        for c, p in _PROTECT:
            if c in text:
                text = text.replace(c, p)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        for p, c in _RESTORE:
            if p in text:
                text = text.replace(p, c)
        return text
    # Slow path (text already contains our placeholder code points): normalise between the kept
    # characters piece by piece.
    parts = _KEEP_SPLIT.split(text)
    return "".join(_TO_CHINESE.get(p, p) if i % 2 else unicodedata.normalize("NFKC", p)
                   for i, p in enumerate(parts))


def normalize(text: str, nfkc: bool = True) -> str:
    """Canonical form of a document (see the table above).

    Steps, in order: line breaks -> "\\n"; NFKC keeping Chinese punctuation (if ``nfkc``);
    remove control/format characters; collapse runs of spaces/tabs to one space; drop spaces at
    line ends; at most one blank line in a row; strip. Newlines inside a document are kept (they
    matter for blank-line-separated documents such as poems or articles).
    """
    # The substitutions are skipped when a C-speed test shows they would change nothing: every line
    # break and control/format character is non-printable, and most documents are one printable line.
    if not text.isprintable():
        text = _NEWLINES.sub("\n", text)
    if nfkc:
        text = _nfkc_keep_chinese(text)
    if not text.isprintable():
        text = _CONTROL.sub("", text)
    if "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _MANY_NL.sub("\n\n", _SPACE_AROUND_NL.sub("\n", text))
    return text.strip()


# ---------------------------------------------------------------------------------------------
# hashing and splits

_MASK64 = (1 << 64) - 1


def doc_hash(text: str) -> int:
    """Stable unsigned 64-bit hash of a document: the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def val_threshold(val_fraction: float) -> int:
    """Hashes below this value are validation: ``val_fraction`` of the 64-bit space."""
    if not (0.0 <= val_fraction <= 1.0):
        raise ZhgptError(f"--val-fraction {val_fraction} must be between 0 and 1 (e.g. 0.005)")
    return min(1 << 64, int(round(val_fraction * (1 << 64))))


def is_val(h: int, threshold: int) -> bool:
    return h < threshold


def _mix64(h: int) -> int:
    """splitmix64 finaliser: an independent-looking 64-bit value from the same hash."""
    return mix64((h + 0x9E3779B97F4A7C15) & _MASK64)


def repeats(h: int, weight: float) -> int:
    """Copies of a document in train for a source of this weight.

    ``floor(weight)`` copies, plus one more for a deterministic ``weight - floor(weight)`` share of
    documents (picked by hash), so ``@1.5`` doubles half the documents and ``@0.3`` keeps 30 %.
    """
    if not weight > 0:
        raise ZhgptError(f"source weight {weight} must be positive")
    whole = int(weight)
    frac = weight - whole
    return whole + (1 if frac > 0 and _mix64(h) < frac * (1 << 64) else 0)


class HashSet64:
    """Set of 64-bit hashes in one flat array (open addressing, linear probing).

    A Python ``set`` of ints costs ~70 bytes per entry (int object + slot); this costs 8 bytes per
    slot at a load of at most 1/2, i.e. 16-32 bytes per document: ~0.5 GB for 20 M documents.
    The hashes are uniform, so their low bits are a good slot index. 0 marks an empty slot, so a
    hash of 0 is stored as 1 (a false duplicate with probability 2^-64).
    """

    def __init__(self, capacity: int = 1 << 16):
        cap = 1 << max(4, (capacity - 1).bit_length())
        self._table = array("Q", bytes(8 * cap))
        self._mask = cap - 1
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, h: int) -> bool:
        """Insert; True if it was new, False if already present."""
        h = h or 1
        t, mask = self._table, self._mask
        i = h & mask
        while True:
            v = t[i]
            if v == 0:
                break
            if v == h:
                return False
            i = (i + 1) & mask
        t[i] = h
        self._n += 1
        if 2 * self._n > len(t):
            self._grow()
        return True

    def __contains__(self, h: int) -> bool:
        h = h or 1
        t, mask = self._table, self._mask
        i = h & mask
        while (v := t[i]) != 0:
            if v == h:
                return True
            i = (i + 1) & mask
        return False

    def _grow(self):
        old = self._table
        cap = 2 * len(old)
        self._table, self._mask = array("Q", bytes(8 * cap)), cap - 1
        t, mask = self._table, self._mask
        for h in old:
            if h:
                i = h & mask
                while t[i]:
                    i = (i + 1) & mask
                t[i] = h


# ---------------------------------------------------------------------------------------------
# the cleaner

@dataclass
class CleanOptions:
    min_chars: int = opt(10, "drop documents shorter than this many characters after cleaning")
    nfkc: bool = opt(True, "Unicode NFKC normalisation (full-width letters/digits -> half-width), "
                           "keeping Chinese punctuation")
    dedup: bool = opt(True, "drop exact duplicate documents (by hash of the cleaned text)")
    near_dup: bool = opt(False, "also drop near-duplicate documents: MinHash + LSH on character n-grams, "
                                "the first one seen is kept (adds ~0.5 s per 3 M characters)")
    near_dup_threshold: float = opt(0.8, "--near-dup: estimated Jaccard similarity of two documents' "
                                         "n-gram sets from which the later one is dropped")
    near_dup_ngram: int = opt(5, "--near-dup: characters per n-gram (Chinese has no spaces; 5 characters "
                                 "are about 3 words)")

    def __post_init__(self):
        if int(self.min_chars) < 0:
            raise ZhgptError(f"--min-chars {self.min_chars} must be 0 or more")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ZhgptError(f"--near-dup-threshold {self.near_dup_threshold} must be above 0 and at most 1 "
                             "(e.g. 0.8)")
        if int(self.near_dup_ngram) < 1:
            raise ZhgptError(f"--near-dup-ngram {self.near_dup_ngram} must be at least 1 (e.g. 5)")


class Cleaner:
    """Stateful document filter: normalise, drop empty/short documents, exact duplicates and (with
    ``near_dup``) near-duplicates of earlier kept documents.

    ``kept`` counts documents returned, ``dropped`` counts the others by reason ("empty",
    "short", "duplicate", "near-duplicate"); ``duplicates`` and ``near_duplicates`` are the last two.
    ``clean_many`` is the fast path for near-duplicates (their hashing is vectorised over the batch)
    and gives the same results as ``clean`` on each text in turn.
    """

    def __init__(self, opts: CleanOptions | None = None, near=None):
        """``near``: the near-duplicate filter to use with ``near_dup`` (anything with ``add_many(texts)
        -> list[bool]``, e.g. decisions recorded in an earlier pass); a new ``NearDupIndex`` if None."""
        self.opts = opts or CleanOptions()
        self.kept = 0
        self.dropped: Counter = Counter()
        self._seen = HashSet64()
        self._near = None
        if self.opts.near_dup:
            self._near = near if near is not None else NearDupIndex(self.opts.near_dup_threshold,
                                                                    self.opts.near_dup_ngram)
        self.last_hash: int | None = None   # doc_hash of the last kept document (saves re-hashing)

    @property
    def duplicates(self) -> int:
        return self.dropped["duplicate"]

    @property
    def near_duplicates(self) -> int:
        return self.dropped["near-duplicate"]

    def _exact(self, text: str) -> tuple[str, int] | None:
        """Normalise, filter by length, drop exact duplicates: (cleaned text, doc_hash) or None."""
        t = normalize(text, self.opts.nfkc)
        if not t:
            self.dropped["empty"] += 1
            return None
        if len(t) < self.opts.min_chars:
            self.dropped["short"] += 1
            return None
        h = doc_hash(t)
        if self.opts.dedup and not self._seen.add(h):
            self.dropped["duplicate"] += 1
            return None
        return t, h

    def clean_many(self, texts: list[str]) -> list[tuple[str, int] | None]:
        """``clean_hashed`` of each text, in order (a near-duplicate of an earlier text in the same
        batch is dropped as if the texts had come one by one)."""
        out = [self._exact(t) for t in texts]
        if self._near is not None:
            todo = [i for i, r in enumerate(out) if r is not None]
            for i, new in zip(todo, self._near.add_many([out[i][0] for i in todo])):
                if not new:
                    out[i] = None
                    self.dropped["near-duplicate"] += 1
        for r in out:
            if r is not None:
                self.kept += 1
                self.last_hash = r[1]
        return out

    def clean_hashed(self, text: str) -> tuple[str, int] | None:
        """Like ``clean`` but also returns the cleaned text's ``doc_hash`` (for the split)."""
        return self.clean_many([text])[0]

    def clean(self, text: str) -> str | None:
        """The cleaned document, or None if it was dropped (reason counted in ``dropped``)."""
        r = self.clean_hashed(text)
        return None if r is None else r[0]

    def summary(self) -> dict:
        s = {"kept": self.kept, "dropped": dict(self.dropped), "duplicates": self.duplicates}
        if self.opts.near_dup:     # only then, so that the default summary is unchanged
            s["near_duplicates"] = self.near_duplicates
        return s
