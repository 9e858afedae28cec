"""Build time and peak memory of the copy index (zhgpt.data.ngram_index) on ~1 GB of Chinese text.

The text: /work/shared/data/pd1998/train.txt (People's Daily, 5.5 MB) repeated until ~1 GB, each copy's
ideographs shifted by a copy-dependent offset inside U+4E00-U+9FFF (str.translate), so that the copies
share no 8-gram: the worst case for the filter's size (every 8-gram new), at the cost of natural text.
Runs the index builder alone (the same batches of 250k characters and BloomBuilder that `zhgpt data
prepare` feeds from its tokenize pass), not a full prepare. Peak memory: ru_maxrss of this process.

    python bench/copy_index_1gb.py [--gb 1.0] [--src FILE]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from zhgpt.data.ngram_index import BloomBuilder, CopyIndex

BATCH_CHARS = 250_000


def shifted(text: str, k: int) -> str:
    if k == 0:
        return text
    table = {c: 0x4E00 + (c - 0x4E00 + 7919 * k) % 20992 for c in range(0x4E00, 0xA000)}
    return text.translate(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--src", default="/work/shared/data/pd1998/train.txt")
    a = ap.parse_args()
    base = [x for x in Path(a.src).read_text(encoding="utf-8").splitlines() if x.strip()]
    base_bytes = sum(len(x.encode()) + 1 for x in base)
    copies = max(1, round(a.gb * 1e9 / base_bytes))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    b = BloomBuilder(expected=int(copies * base_bytes / 3))     # what prepare uses: bytes / 3
    chars, t_gen, t_build = 0, 0.0, 0.0
    for k in range(copies):
        t = time.perf_counter()
        docs = shifted("\n".join(base), k).split("\n")
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        batch, size = [], 0
        for d in docs:
            batch.append(d)
            size += len(d)
            if size >= BATCH_CHARS:
                b.add_texts(batch)
                batch, size = [], 0
        if batch:
            b.add_texts(batch)
        t_build += time.perf_counter() - t
        chars += sum(map(len, docs))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        entry = b.save(Path(d))
        t_save = time.perf_counter() - t
        ix = CopyIndex(Path(d), {**entry, "nfkc": False})   # the text above was indexed as is
        check_in = ix.copy_rate(shifted("\n".join(base[:200]), copies - 1).split("\n"))
        check_out = ix.copy_rate(shifted("\n".join(base[:200]), copies + 3).split("\n"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"text_gb": round(copies * base_bytes / 1e9, 3), "chars": chars, "copies": copies,
                      "items": entry["items"], "index_mb": round(entry["bytes"] / 1e6, 1),
                      "layers": entry["layers"], "false_positive_rate": entry["false_positive_rate"],
                      "build_s": round(t_build, 1), "save_s": round(t_save, 1), "text_generation_s": round(t_gen, 1),
                      "peak_rss_mb": round(peak / 1024, 1), "rss_before_mb": round(rss0 / 1024, 1),
                      "copy_rate_indexed_text": check_in, "copy_rate_unindexed_shift": check_out}, indent=1))


if __name__ == "__main__":
    main()
