"""The copy index: built by `zhgpt data prepare`, it finds spans copied from the train text and only those."""
import json
import random

import numpy as np

from conftest import pd_lines
from zhgpt.data import ngram_index as ni
from zhgpt.data.ngram_index import BloomBuilder, CopyIndex, span_hashes
from zhgpt.data.prepare import DataConfig, main


def test_span_hashes_cover_each_text_without_whitespace_or_joins():
    assert len(span_hashes(["一二三四五六七"])) == 0                     # 7 characters: no 8-gram
    assert len(span_hashes(["一二三四五六七八九"])) == 2
    assert len(span_hashes(["一二三四", "五六七八九"])) == 0             # no span across two texts
    a, b = span_hashes(["一二三四 五六\n七八"]), span_hashes(["一二三四五六七八"])
    assert a.tolist() == b.tolist()                                        # whitespace ignored
    assert span_hashes(["一二三四五六七九"])[0] != b[0]


def test_bloom_has_no_false_negatives_and_about_its_false_positive_rate(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.integers(0, 2 ** 63, 200_000, dtype=np.int64).astype(np.uint64)
    b = BloomBuilder(expected=50_000)                   # too small on purpose: it must grow layers
    for part in np.array_split(items, 7):
        b.add(part)
    entry = b.save(tmp_path)
    assert len(entry["layers"]) > 1 and entry["items"] == len(items)
    ix = CopyIndex(tmp_path, entry)
    assert ix.contains(items).all()
    novel = rng.integers(0, 2 ** 63, 100_000, dtype=np.int64).astype(np.uint64)
    fp = ix.contains(novel).mean()
    assert fp < 0.03 and abs(fp - entry["false_positive_rate"]) < 0.01


def test_an_oversized_filter_folds_to_fit(tmp_path):
    items = np.arange(1, 20_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    b = BloomBuilder(expected=2_000_000)                # 100x too big
    b.add(items)
    entry = b.save(tmp_path)
    assert entry["bytes"] < 2_000_000 * ni.BITS_PER_ITEM / 8 / 16          # folded at least 4 times
    assert entry["layers"][0]["fill"] <= ni.DESIGN_FILL
    assert CopyIndex(tmp_path, entry).contains(items).all()


def _long(lines, n=40):
    return [x for x in lines if len(x) >= 60][:n]


def test_prepare_builds_an_index_that_finds_copies(pd_dataset):
    meta = json.loads((pd_dataset / "meta.json").read_text(encoding="utf-8"))
    entry = meta["copy_index"]
    assert (pd_dataset / entry["file"]).stat().st_size == entry["bytes"] and entry["items"] > 100_000
    assert entry["false_positive_rate"] < 0.01
    ix = CopyIndex.open(pd_dataset, meta)
    train = _long(pd_lines("train", 3000))
    assert ix.copy_rate(train[:5]) == 1.0                   # copied passages (NFKC-normalised like the index)
    val = _long(pd_lines("val", 150))
    assert ix.copy_rate(val) < 0.15                         # held-out news text shares a few set phrases
    rnd = random.Random(0)
    shuffled = ["".join(rnd.sample(t, len(t))) for t in train]
    assert ix.copy_rate(shuffled) < 0.02                    # ~ the false-positive rate
    assert ix.copy_rate(["短"]) is None


def test_val_documents_stay_out_when_the_split_is_decided_after_reading(pd_dataset, tmp_path):
    """A given tokenizer and no --val-source: the val threshold is fixed after the tokenize pass (and
    raised to --min-val-docs), so the index holds back the documents that could still become val."""
    src = tmp_path / "corpus.txt"
    lines = _long(pd_lines("train", 3000), 800)
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = main(DataConfig(sources=[str(src)], out=str(tmp_path / "ds"), tokenizer=str(pd_dataset / "tokenizer"),
                          min_val_docs=40, quiet=True))
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["val"]["docs"] >= 40          # raised above 0.5 % of 800 by min_val_docs
    ix = CopyIndex.open(out, meta)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    ids = np.fromfile(out / meta["splits"]["val"]["shards"][0]["file"], dtype=meta["dtype"]).tolist()
    docs, cur = [], []
    for i in ids:
        if i == meta["eot_id"]:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    rates = [ix.copy_rate([d]) for d in docs]
    assert len(docs) == meta["splits"]["val"]["docs"] and max(rates) < 0.9   # a val document in it would be 1.0
    train = [t for t in lines if ix.copy_rate([t]) == 1.0]
    assert len(train) >= len(lines) - len(docs) - 5      # (the cleaner may drop a few duplicates)


def test_without_the_index(pd_text, tmp_path):
    train, _ = pd_text
    out = main(DataConfig(sources=[str(train)], out=str(tmp_path / "ds"), tokenizer="char", vocab_size=500,
                          sample_chars=50_000, copy_index=False, quiet=True))
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert "copy_index" not in meta and not (out / ni.FILE).exists()
    assert CopyIndex.open(out, meta) is None            # an old dataset: the metric is simply absent
