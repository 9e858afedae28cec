"""Near-duplicate documents: MinHash + LSH on character n-grams, streaming, first seen wins.

Chinese has no spaces, so a document is the *set* of its character n-grams (5 by default: about
three words). Two documents are near-duplicates when the Jaccard similarity of those sets is at
least the threshold (0.8 by default) -- the approach of large corpus pipelines (datatrove,
text-dedup), here vectorised with numpy over a batch of documents at a time, because the builtin
corpus has a median document of 65 characters and per-document numpy calls would cost more than
the hashing itself:

* ``signatures``: every n-gram of the batch gets a 32-bit hash in a few array operations (a
  polynomial over the code points plus a finaliser); ``NUM_PERM`` = 128 hash functions
  ``(a*x + b) mod 2^64 >> 32`` (multiply-add-shift: 2-independent for 32-bit keys) are applied as
  one (128 x n-grams) product, and each document's signature is the minimum over its rows.
* ``NearDupIndex.add_many``: the signature is cut into ``b`` bands of ``r`` rows; a document sharing
  a band with an earlier kept document is a *candidate*, and only a candidate whose estimated
  Jaccard (share of equal signature entries) reaches the threshold is dropped. LSH decides whom to
  compare with, the signatures decide, so unrelated documents that share one band are kept.

State per kept document, never the text: ``b`` band keys (12 bytes each, in sorted arrays) and the
low 8 bits of each of the 128 minhashes (128 bytes; b-bit minwise hashing, whose chance agreement
of 1/256 is corrected for). At the default threshold b = 14: ~300 bytes a kept document, ~3 GB
for 10 M documents (plus ~13 bytes a key while the two largest key arrays are merged).

Everything is a pure function of the texts and their order (no Python ``hash()``, no RNG whose
stream could change between numpy versions), so two builds drop the same documents.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

NUM_PERM = 128            # hash functions per signature: std of the Jaccard estimate ~0.035 at J = 0.8
_CHUNK_ROWS = 4096        # n-grams per (NUM_PERM x rows) product: 4 MB of uint64, stays in cache
_BLOCK = 1 << 15          # kept signatures per block: 4 MB
_MASK64 = (1 << 64) - 1
_POLY = np.uint64(0x9E3779B97F4A7C15)    # odd multiplier of the n-gram polynomial
_PAD = "\0"               # pads a text shorter than n to one n-gram; the cleaner removes all NULs


def mix64(z: int) -> int:
    """splitmix64's finaliser: an independent-looking 64-bit value of a 64-bit int, the same on every
    machine. The one copy for zhgpt (clean's source-weight repeats and prepare's tokenizer sample use
    it too); it lives here because clean imports this module."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64_stream(seed: int, n: int) -> np.ndarray:
    """``n`` outputs of splitmix64: fixed constants for every machine and numpy version."""
    out, state = [], seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        out.append(mix64(state))
    return np.array(out, dtype=np.uint64)


_R = _splitmix64_stream(1998, 2 * NUM_PERM + NUM_PERM + 1)
_A = _R[:NUM_PERM] | np.uint64(1)                  # multipliers (odd) of the hash functions
_B = _R[NUM_PERM:2 * NUM_PERM]                     # their offsets
_ROW_COEF = _R[2 * NUM_PERM:3 * NUM_PERM] | np.uint64(1)   # band key = sum of coef * minhash
_BAND_SALT = _R[3 * NUM_PERM]                     # ... + salt * band number


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: inputs differing in one character (or one minhash)
    get unrelated outputs; the polynomial and linear sums alone keep them close in the low bits."""
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes (as uint64) of the character n-grams of every text, concatenated in order, and
    the number of n-grams per text. A text shorter than ``n`` is padded to one n-gram, so that a
    short document still has a signature (and only equals the same short text)."""
    texts = [t if len(t) >= n else t + _PAD * (n - len(t)) for t in texts]
    lens = np.fromiter(map(len, texts), np.int64, len(texts))
    # UTF-32 gives one uint32 per character (code points, lone surrogates included)
    cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    m = len(cp) - n + 1          # n-grams of the concatenation, some across a document boundary
    h = cp[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):    # n vectorised steps, not one Python step per character
            h *= _POLY
            h += cp[k:k + m]
    # keep the n-grams that start at least n - 1 characters before their document's end
    counts = lens - n + 1
    starts = np.cumsum(lens) - lens
    pos = np.arange(m) - np.repeat(starts, lens)[:m]        # position inside its document
    keep = pos < np.repeat(counts, lens)[:m]
    return fmix64(h[keep]) >> np.uint64(32), counts


def signatures(texts: list[str], n: int = 5) -> np.ndarray:
    """MinHash signatures of the sets of character n-grams: shape (len(texts), NUM_PERM) uint32."""
    x, counts = ngram_hashes(texts, n)
    ends = np.cumsum(counts)
    starts = ends - counts
    sig = np.full((len(texts), NUM_PERM), np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, len(x), _CHUNK_ROWS):
            j = min(i + _CHUNK_ROWS, len(x))
            d0, d1 = np.searchsorted(ends, i, "right"), np.searchsorted(starts, j, "left")  # texts in [i, j)
            # (NUM_PERM, rows), wraps mod 2^64; reducing along the contiguous last axis is ~4x
            # faster than along the first (0.75 vs 3 ns an entry)
            v = _A[:, None] * x[None, i:j]
            v += _B[:, None]
            part = np.minimum.reduceat(v, np.maximum(starts[d0:d1], i) - i, axis=1)
            np.minimum(sig[d0:d1], part.T, out=sig[d0:d1])
    # min and ">> 32" commute (monotone), so the shift is done once per signature entry
    return (sig >> np.uint64(32)).astype(np.uint32)


@lru_cache(maxsize=None)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) with bands * rows <= num_perm minimising the weighted area of LSH
    misses (pairs above the threshold never compared) and false candidates (below it compared).

    Misses weigh 0.9 and false candidates 0.1, not datasketch's 0.5/0.5: a false candidate only
    costs one signature comparison here (the verification keeps it), a miss keeps a near-duplicate.
    At 0.8 this gives 14 bands of 9 rows: a pair at J = 0.86 is compared with probability 0.98
    (0.90 with the 0.5/0.5 choice of 9 x 13), one at J = 0.5 with 0.03 (~20 ms to compute, once).
    """
    s = (np.arange(1000) + 0.5) / 1000         # midpoints: integrals are means
    below = s < threshold
    best = (np.inf, 1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s ** r) ** b          # probability of sharing at least one band
            err = 0.1 * np.where(below, p, 0.0).mean() + 0.9 * np.where(below, 0.0, 1.0 - p).mean()
            if err < best[0]:
                best = (err, b, r)
    return best[1], best[2]


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64 keys: each band's minhashes and its number, hashed. Keys of different bands
    differ, so one sorted array holds all bands."""
    m = sigs[:, :bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    with np.errstate(over="ignore"):
        h = (m * _ROW_COEF[:rows]).sum(axis=2, dtype=np.uint64)
        h += np.arange(1, bands + 1, dtype=np.uint64) * _BAND_SALT
    return fmix64(h)


class _SortedRuns:
    """Multimap uint64 key -> uint32 kept-document number as a few sorted arrays (a log-structured
    merge): a batch is looked up with one ``searchsorted`` per array and inserted as a new array;
    arrays of similar size are merged, so there are O(log n) of them. 12 bytes a key, where a dict
    of lists would cost ~150."""

    def __init__(self):
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``keys``, document) for every stored entry equal to a key; ``keys`` sorted."""
        qs, ds = [], []
        for rk, rd in self._runs:
            pos = np.searchsorted(rk, keys)       # sorted queries: ~4x faster than unsorted
            q = np.arange(len(keys))
            while q.size:                          # the same key can be stored more than once
                ok = pos < len(rk)
                q, pos = q[ok], pos[ok]
                hit = rk[pos] == keys[q]
                q, pos = q[hit], pos[hit]
                qs.append(q)
                ds.append(rd[pos])
                pos = pos + 1
        if not qs:
            return np.zeros(0, np.int64), np.zeros(0, np.uint32)
        return np.concatenate(qs), np.concatenate(ds)

    def insert(self, keys: np.ndarray, docs: np.ndarray) -> None:
        order = np.argsort(keys)
        self._runs.append((keys[order], docs[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            new, old = self._runs.pop(), self._runs.pop()
            self._runs.append(_merge(*old, *new))


def _merge(k1: np.ndarray, d1: np.ndarray, k2: np.ndarray, d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one, in linear time and with ~13 bytes of temporaries an entry (a sort of
    the concatenation would need ~32): each entry of run 2 goes after the entries of run 1 that are
    not larger, the entries of run 1 fill the other places in order."""
    at = np.searchsorted(k1, k2, side="right") + np.arange(len(k2))
    k, d = np.empty(len(k1) + len(k2), k1.dtype), np.empty(len(k1) + len(k2), d1.dtype)
    from_1 = np.ones(len(k), dtype=bool)
    from_1[at] = False
    k[at], d[at] = k2, d2
    k[from_1], d[from_1] = k1, d1
    return k, d


class NearDupIndex:
    """Streaming near-duplicate filter over batches: ``add_many(texts)`` says, in order, whether
    each text is kept (not a near-duplicate of an earlier kept text, in this batch or before) and
    remembers the kept ones."""

    def __init__(self, threshold: float = 0.8, ngram: int = 5):
        self.threshold, self.ngram = float(threshold), int(ngram)
        self.bands, self.rows = lsh_params(self.threshold)
        self._keys = _SortedRuns()
        # low bytes of the kept signatures, in blocks of _BLOCK documents: growing never copies
        self._sigs: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, text: str) -> bool:
        return self.add_many([text])[0]

    def add_many(self, texts: list[str]) -> list[bool]:
        if not texts:
            return []
        low = signatures(texts, self.ngram)
        keys = band_keys(low, self.bands, self.rows)          # (N, bands)
        low = low.astype(np.uint8)
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        sk = flat[order]
        # candidates among the documents kept before this batch
        q, docs = self._keys.find(sk)
        earlier: dict[int, set] = {}
        for d, e in zip((order[q] // self.bands).tolist(), docs.tolist()):
            earlier.setdefault(d, set()).add(e)
        # documents sharing a band with another document of this batch
        same = np.flatnonzero(sk[1:] == sk[:-1])
        shared = set((order[np.concatenate([same, same + 1])] // self.bands).tolist())
        keep = np.ones(len(texts), dtype=bool)
        self._decide(sorted(shared | earlier.keys()), earlier, shared, keys, low, keep)
        self._remember(keys[keep], low[keep])
        return keep.tolist()

    def _decide(self, docs, earlier: dict, shared: set, keys, low, keep) -> None:
        """First seen wins, in batch order, for the few documents that have a candidate at all
        (the others are kept without a comparison)."""
        batch_kept: dict[int, list[int]] = {}     # band key -> kept documents of this batch
        for d in docs:
            mine = keys[d].tolist()
            inside = {e for k in mine for e in batch_kept.get(k, ())}
            if self._is_near_dup(low[d], earlier.get(d, ()), inside, low):
                keep[d] = False
            elif d in shared:
                for k in mine:
                    batch_kept.setdefault(k, []).append(d)

    def _is_near_dup(self, sig: np.ndarray, earlier, inside, low) -> bool:
        """Estimated Jaccard >= threshold with one of the candidates: the share of equal 8-bit
        minhashes, corrected for the 1/256 of unequal minhashes whose low bytes agree by chance."""
        rows = [np.stack([self._sigs[e // _BLOCK][e % _BLOCK] for e in earlier])] if earlier else []
        if inside:
            rows.append(low[np.fromiter(inside, np.int64, len(inside))])
        if not rows:
            return False
        same = (np.concatenate(rows) == sig).mean(axis=1)
        return bool(((same - 1 / 256) / (1 - 1 / 256)).max() >= self.threshold)

    def _remember(self, keys: np.ndarray, low: np.ndarray) -> None:
        ids = np.arange(self._n, self._n + len(low), dtype=np.uint32)
        self._keys.insert(keys.ravel(), np.repeat(ids, self.bands))
        while len(low):
            at = self._n % _BLOCK
            if at == 0:
                self._sigs.append(np.empty((_BLOCK, NUM_PERM), np.uint8))
            take = min(len(low), _BLOCK - at)
            self._sigs[-1][at:at + take] = low[:take]
            low = low[take:]
            self._n += take
