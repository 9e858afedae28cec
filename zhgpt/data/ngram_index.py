"""The copy index: is this 8-character span somewhere in the training text? A Bloom filter of every
character 8-gram of the train split, built once by ``zhgpt data prepare`` and read by ``copy_rate``.

Why a Bloom filter, with numbers. 1 GB of Chinese UTF-8 is ~333M characters, so ~333M 8-grams. The
exact set as sorted 64-bit hashes is 8 bytes each: ~2.7 GB (on disk, and in memory to sort it). A
Bloom filter at 10 bits per 8-gram with k = 7 hash functions answers "not in the train text" wrongly
(a false positive) for (1 - e^(-7/10))^7 = 0.82 % of novel spans, at 1.25 bytes per 8-gram: ~420 MB
for 1 GB of text, built in one streaming pass with nothing but the filter in memory. The false
positives put a floor of ~0.8 % under ``copy_rate`` (the dataset's meta.json states the filter's own
rate, measured from how full it is); copying shows up as tens of per cent, so the floor does not hide it.
(Sampling the hashes instead would leave ~20 of the ~300 spans an evaluation generates: too noisy.)

The number of 8-grams is not known before the pass (compressed sources, weights, duplicates), so the
filter grows: it starts at an estimate and, whenever the current layer holds its capacity, adds a
layer of twice that size (a scalable Bloom filter, Almeida et al. 2007); a span is present when any
layer has it. At the end each layer is folded in half while it stays under the designed fill (with
the word index taken as ``(hash_hi * words) >> 32``, halving an even number of words maps word w to
w // 2, so folding is an OR of neighbouring words), so an over-estimate costs build memory, not file size.

Spans are taken over the text with whitespace removed (as ``zhgpt.data.textstats``), within one
document (none crosses a document boundary).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from zhgpt.data.clean import normalize
from zhgpt.data.neardup import fmix64   # spans differing in one character get unrelated bits

NGRAM = 8                 # characters per span: ~5 Chinese words, rarely shared by chance (see copy_rate_val)
BITS_PER_ITEM = 10        # 1.25 bytes per 8-gram ...
NUM_HASHES = 7            # ... k = round(10 * ln 2) -> 0.82 % false positives when full
DESIGN_FILL = 1 - math.exp(-NUM_HASHES / BITS_PER_ITEM)   # share of set bits at capacity (0.503)
FOLD_WORDS = 256          # layer sizes are multiples of 256 words (2 KB), so a layer can fold 8 times
MIN_CAPACITY = 1 << 16    # 8-grams: the smallest layer is 80 KB
FILE = "train_ngrams8.bloom"
_POLY = np.uint64(0x9E3779B97F4A7C15)     # odd multiplier of the n-gram polynomial
_SEP = "\0"               # document separator inside a batch: the cleaner removes every NUL
_ONE, _SIX3, _S32 = np.uint64(1), np.uint64(63), np.uint64(32)
# Whitespace code points below U+3001 (there is none above it): str.isspace, as textstats.visible.
_SPACE = np.array([chr(i).isspace() for i in range(0x3001)], dtype=bool)


def span_hashes(texts: list[str], n: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every n-character span of every text (whitespace removed), concatenated; a text
    shorter than n has none. Vectorised over the batch: n multiply-adds over one code-point array."""
    cp = np.frombuffer(_SEP.join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    low = cp < len(_SPACE)
    space = np.zeros(len(cp), dtype=bool)
    space[low] = _SPACE[cp[low]]
    cp = cp[~space].astype(np.uint64)
    m = len(cp) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    h = cp[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            h *= _POLY
            h += cp[k:k + m]
    # a span is kept when it holds no separator: separators in cp[i:i+n] = z[i+n] - z[i]
    z = np.concatenate(([0], np.cumsum(cp == 0)))
    return fmix64(h[z[n:n + m] == z[:m]])


def _positions(h: np.ndarray, words: int):
    """(word index, bit mask) of each of the k probes of each hash: double hashing g_i = h + i * h2."""
    g2 = fmix64(h ^ np.uint64(0x5851F42D4C957F2D)) | _ONE
    g = h.copy()
    with np.errstate(over="ignore"):
        for _ in range(NUM_HASHES):
            yield ((g >> _S32) * np.uint64(words)) >> _S32, _ONE << (g & _SIX3)
            g += g2


class BloomBuilder:
    """Adds span hashes to a growing, layered Bloom filter; ``save`` folds and writes it."""

    def __init__(self, expected: int):
        self.layers: list[np.ndarray] = []
        self.capacity: list[int] = []
        self.held = 0             # items added to the current (last) layer
        self.items = 0
        self._add_layer(max(int(expected), MIN_CAPACITY))

    def _add_layer(self, capacity: int) -> None:
        words = -(-capacity * BITS_PER_ITEM // 64 // FOLD_WORDS) * FOLD_WORDS
        self.layers.append(np.zeros(words, np.uint64))
        self.capacity.append(capacity)
        self.held = 0

    def add(self, hashes: np.ndarray) -> None:
        hashes = np.unique(hashes)       # repeats inside a batch (boilerplate) do not use up capacity
        while len(hashes):
            room = self.capacity[-1] - self.held
            if room <= 0:
                self._add_layer(2 * self.capacity[-1])
                continue
            part, hashes = hashes[:room], hashes[room:]
            layer = self.layers[-1]
            for w, mask in _positions(part, len(layer)):
                np.bitwise_or.at(layer, w, mask)
            self.held += len(part)
            self.items += len(part)

    def add_texts(self, texts: list[str]) -> None:
        self.add(span_hashes(texts))

    def save(self, folder: Path) -> dict:
        """Fold each layer while it stays under the designed fill, write FILE; returns the meta entry."""
        layers = []
        for layer in self.layers:
            while len(layer) % 2 == 0 and _fill(layer, folded=True) <= DESIGN_FILL:
                layer = layer[0::2] | layer[1::2]
            layers.append(layer)
        with open(Path(folder) / FILE, "wb") as f:
            for layer in layers:
                layer.astype("<u8", copy=False).tofile(f)
        fills = [_fill(x) for x in layers]
        fpr = 1 - math.prod(1 - fl ** NUM_HASHES for fl in fills)
        return {"file": FILE, "kind": "bloom", "ngram": NGRAM, "hashes": NUM_HASHES, "items": self.items,
                "layers": [{"words": len(x), "fill": round(fl, 4)} for x, fl in zip(layers, fills)],
                "bytes": sum(x.nbytes for x in layers), "false_positive_rate": round(fpr, 5)}


def _fill(layer: np.ndarray, folded: bool = False) -> float:
    """Share of set bits, of the layer or (``folded``) of the layer folded in half; counted 8 MB at a time
    (unpackbits makes a byte per bit), so that checking a fold of a 400 MB filter allocates no 200 MB."""
    step = 1 << 20
    ones = 0
    for i in range(0, len(layer), step):
        part = layer[i:i + step]
        part = part[0::2] | part[1::2] if folded else part
        ones += int(np.unpackbits(part.view(np.uint8)).sum())
    return ones / (64 * len(layer) / (2 if folded else 1)) if len(layer) else 0.0


class CopyIndex:
    """A saved filter, memory-mapped (the OS pages in what lookups touch: ~300 spans x 7 probes)."""

    def __init__(self, folder: Path, entry: dict):
        self.entry = entry
        self.ngram = int(entry.get("ngram", NGRAM))
        data = np.memmap(Path(folder) / entry["file"], dtype="<u8", mode="r")
        self.layers, at = [], 0
        for layer in entry["layers"]:
            self.layers.append(data[at:at + layer["words"]])
            at += layer["words"]

    @classmethod
    def open(cls, folder: Path | str, meta: dict) -> CopyIndex | None:
        """The dataset's index, or None for a dataset prepared before there was one (or without its file)."""
        entry = meta.get("copy_index")
        if not entry or not (Path(folder) / entry.get("file", FILE)).is_file():
            return None
        return cls(Path(folder), entry)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for layer in self.layers:
            hit = np.ones(len(hashes), dtype=bool)
            for w, mask in _positions(hashes, len(layer)):
                hit &= (layer[w] & mask) != 0
            found |= hit
        return found

    def copy_rate(self, texts: list[str]) -> float | None:
        """Share of the texts' 8-character spans (whitespace removed, none across two texts) that occur
        in the training text; None when no text is 8 characters long. The texts are normalised as the
        training text was (NFKC: "１９９８" was indexed as "1998")."""
        nfkc = bool(self.entry.get("nfkc", True))
        h = span_hashes([normalize(t, nfkc) for t in texts], self.ngram)
        return float(self.contains(h).mean()) if len(h) else None
