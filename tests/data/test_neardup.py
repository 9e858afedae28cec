"""zhgpt.data.neardup and --near-dup: real People's Daily paragraphs with a few characters edited are dropped,
distinct paragraphs and heavily edited copies are kept, and prepare reports the count."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import pd_lines
from zhgpt import cli
from zhgpt.data import prepare as prep
from zhgpt.data.clean import Cleaner, CleanOptions, normalize
from zhgpt.errors import ZhgptError
from zhgpt.data.neardup import NUM_PERM, NearDupIndex, lsh_params, signatures
from zhgpt.data.prepare import DataConfig
from zhgpt.data.shards import TokenDataset


def grams(text: str, n: int = 5) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    """~300 real news paragraphs of 200-600 characters as the cleaner leaves them, pairwise distinct
    (exact 5-gram Jaccard < 0.5: the paper itself repeats some paragraphs nearly word for word, e.g.
    in quoted speeches)."""
    chosen, sets = [], []
    for p in map(normalize, pd_lines("train", 3000)):
        if 200 <= len(p) <= 600:
            g = grams(p)
            if all(len(g & s) / len(g | s) < 0.5 for s in sets):
                chosen.append(p)
                sets.append(g)
    assert len(chosen) >= 100
    return chosen[:len(chosen) // 2 * 2]     # an even number: the tests pair up two halves


COMMON = "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要"


def edit(text: str, k: int, rng: random.Random) -> str:
    """``text`` with ``k`` characters (at distinct positions) replaced by other common Han characters."""
    chars = list(text)
    for i in rng.sample(range(len(chars)), k):
        chars[i] = rng.choice([c for c in COMMON if c != chars[i]])
    return "".join(chars)


def near_copies(paragraphs, rng) -> list[str]:
    """One near-duplicate per paragraph: 1 character in 100 changed (2 in a 200-character paragraph,
    exact Jaccard ~0.9), or a short sentence appended.

    Not closer to the 0.8 threshold: with 128 minhashes the estimate's standard deviation is ~0.03,
    so a copy at J = 0.87 (3 changes in 220 characters) is missed about once in a hundred."""
    out = []
    for i, p in enumerate(paragraphs):
        out.append(edit(p, len(p) // 100, rng) if i % 2 == 0 else p + "（本报记者报道）")
    return out


def test_edited_copies_dropped_distinct_paragraphs_kept(paragraphs):
    rng = random.Random(0)
    copies = near_copies(paragraphs, rng)
    assert 0.88 <= min(jaccard(p, c) for p, c in zip(paragraphs, copies)) < 1    # near, but not equal
    # every original first, then the copies interleaved with more originals: first seen wins
    half = len(paragraphs) // 2
    stream = paragraphs[:half] + [x for pair in zip(copies[:half], paragraphs[half:]) for x in pair]
    keep = NearDupIndex(threshold=0.8).add_many(stream)
    assert [s for s, k in zip(stream, keep) if k] == paragraphs        # all originals, no copy
    # the copy seen first wins: the original coming after it is the one dropped
    idx = NearDupIndex()
    assert idx.add_many(copies[half:]) == [True] * len(copies[half:])
    assert idx.add_many(paragraphs) == [True] * half + [False] * (len(paragraphs) - half)
    assert len(idx) == len(paragraphs)


def test_threshold(paragraphs):
    """Copies at exact Jaccard 0.55-0.75 are kept at 0.9 and dropped at 0.45; heavily edited ones
    (J < 0.35) are kept at the default."""
    rng = random.Random(1)
    medium = [edit(p, len(p) // 22, rng) for p in paragraphs[:40]]
    js = [jaccard(p, c) for p, c in zip(paragraphs, medium)]
    pairs = [(p, c) for p, c, j in zip(paragraphs, medium, js) if 0.55 <= j <= 0.75]
    assert len(pairs) >= 20, sorted(js)
    for threshold, kept in ((0.9, True), (0.45, False)):
        idx = NearDupIndex(threshold=threshold)
        for p, c in pairs:
            assert idx.add(p) and idx.add(c) is kept, (threshold, jaccard(p, c))
    heavy = [edit(p, len(p) // 6, rng) for p in paragraphs[:40]]
    assert max(jaccard(p, c) for p, c in zip(paragraphs, heavy)) < 0.35
    idx = NearDupIndex()
    assert all(idx.add_many([p, c]) == [True, True] for p, c in zip(paragraphs, heavy))


def test_batches_match_one_by_one(paragraphs):
    rng = random.Random(2)
    stream = paragraphs + near_copies(paragraphs, rng)
    rng.shuffle(stream)
    whole = NearDupIndex().add_many(stream)
    one = NearDupIndex()
    assert [one.add(s) for s in stream] == whole
    chunks = NearDupIndex()
    assert [k for i in range(0, len(stream), 7) for k in chunks.add_many(stream[i:i + 7])] == whole
    assert whole.count(False) == len(paragraphs)    # one of each pair, whichever came first


def test_signatures_fixed_and_batch_independent(paragraphs):
    # golden values: the signature must not depend on the machine, the numpy version or the batch
    sig = signatures(["人民日报社论：迎接新的一年"])[0]
    assert sig.dtype == np.uint32 and sig.shape == (NUM_PERM,)
    assert sig[:4].tolist() == GOLDEN
    texts = paragraphs[:20] + ["", "好", "好的", "一二三四五"]
    together = signatures(texts)
    assert all((signatures([t])[0] == s).all() for t, s in zip(texts, together))
    # texts shorter than an n-gram still differ from each other
    assert not (together[-3] == together[-2]).all()
    assert lsh_params(0.8) == (14, 9)


GOLDEN = [178154239, 475070101, 17006305, 427893249]


def test_cleaner_counts_near_duplicates(paragraphs):
    rng = random.Random(3)
    copies = near_copies(paragraphs[:30], rng)
    texts = paragraphs[:30] + copies + paragraphs[:5] + ["短"]
    c = Cleaner(CleanOptions(near_dup=True))
    batch = [r[0] if r else None for r in c.clean_many(texts)]
    assert batch == paragraphs[:30] + [None] * 36
    assert c.summary() == {"kept": 30, "dropped": {"duplicate": 5, "near-duplicate": 30, "short": 1},
                           "duplicates": 5, "near_duplicates": 30}
    one = Cleaner(CleanOptions(near_dup=True))
    assert [one.clean(t) for t in texts] == batch
    # off by default: the copies are kept and the summary has no near-duplicate entry
    off = Cleaner()
    assert sum(off.clean(t) is not None for t in texts) == 60 and "near_duplicates" not in off.summary()
    for bad in (dict(near_dup_threshold=0.0), dict(near_dup_threshold=1.5), dict(near_dup_ngram=0)):
        with pytest.raises(ZhgptError, match="near-dup"):
            CleanOptions(**bad)


def test_prepare_cli_reports_near_duplicates(paragraphs, tmp_path, capsys):
    rng = random.Random(4)
    src = tmp_path / "news.txt"
    copies = near_copies(paragraphs[:60], rng)
    src.write_text("\n".join(paragraphs + copies) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    args = ["data", "prepare", str(src), "--out", str(out), "--tokenizer", "char", "--vocab-size", "2000",
            "--min-val-docs", "10"]
    cli.main(args + ["--near-dup"])
    printed = capsys.readouterr().out
    assert "60 near-duplicate" in printed
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    s = meta["summary"]
    assert s["near_duplicates"] == 60 and s["dropped"] == {"near-duplicate": 60}
    assert s["docs_kept"] == len(paragraphs) and s["docs_read"] == len(paragraphs) + 60
    assert TokenDataset(out).splits["train"].docs + TokenDataset(out).splits["val"].docs == len(paragraphs)
    assert meta["config"]["near_dup"] is True and meta["config"]["near_dup_threshold"] == 0.8
    key = meta["cache_key"]
    # with a given tokenizer there is no sample pass to replay: the one pass decides the same way
    given = tmp_path / "given"
    cli.main(args[:3] + ["--out", str(given), "--tokenizer", str(out / "tokenizer"), "--min-val-docs", "10",
                         "--near-dup", "--quiet"])
    g = json.loads((given / "meta.json").read_text(encoding="utf-8"))
    assert g["summary"]["dropped"] == s["dropped"] and g["splits"]["train"]["chars"] == meta["splits"]["train"]["chars"]
    # same settings: up to date; another threshold: rebuilt with another key
    cli.main(args + ["--near-dup"])
    assert "up to date" in capsys.readouterr().out
    cli.main(args + ["--near-dup", "--near-dup-threshold", "0.95", "--quiet"])
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["cache_key"] != key and meta["summary"]["near_duplicates"] < 60
    # off (the default): the copies stay, nothing about near-duplicates in the summary
    cli.main(args + ["--quiet"])
    s = json.loads((out / "meta.json").read_text(encoding="utf-8"))["summary"]
    assert s["docs_kept"] == len(paragraphs) + 60 and "near_duplicates" not in s


def test_cache_key_unchanged_without_near_dup(tmp_path):
    """Datasets prepared before --near-dup existed stay up to date: with it off, its settings are not
    part of the key."""
    src = tmp_path / "a.txt"
    src.write_text("人民日报社论：迎接新的一年\n", encoding="utf-8")
    files = prep.expand_sources([str(src)])
    base = dict(sources=[str(src)], out=str(tmp_path / "ds"))
    off = prep.cache_key(DataConfig(**base), files, [], None)
    assert prep.cache_key(DataConfig(**base, near_dup_threshold=0.5, near_dup_ngram=3), files, [], None) == off
    on = prep.cache_key(DataConfig(**base, near_dup=True), files, [], None)
    on3 = prep.cache_key(DataConfig(**base, near_dup=True, near_dup_ngram=3), files, [], None)
    assert len({off, on, on3}) == 3
    with pytest.raises(ZhgptError, match="near-dup-threshold"):
        DataConfig(**base, near_dup_threshold=0)


def test_sorted_runs_find_every_stored_entry():
    from zhgpt.data.neardup import _SortedRuns
    rng = np.random.default_rng(5)
    runs, ref = _SortedRuns(), {}
    for doc in range(300):       # one small batch at a time: many merges; a few keys repeat
        keys = rng.integers(0, 50 if doc % 3 == 0 else 1 << 62, size=int(rng.integers(1, 20))).astype(np.uint64)
        runs.insert(keys, np.full(len(keys), doc, np.uint32))
        for k in keys.tolist():
            ref.setdefault(k, []).append(doc)
    queries = np.sort(np.concatenate([np.array(list(ref), np.uint64), np.arange(60, 90, dtype=np.uint64)]))
    q, docs = runs.find(queries)
    got: dict[int, list[int]] = {}
    for k, d in zip(queries[q].tolist(), docs.tolist()):
        got.setdefault(k, []).append(d)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in ref.items()}
