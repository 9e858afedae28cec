"""`zhgpt data prepare`: shards decode back to the cleaned documents, meta counts, split, cache, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import pd_lines, run_cli
from zhgpt.data import prepare as prep
from zhgpt.data.clean import Cleaner, CleanOptions, repeats
from zhgpt.errors import ZhgptError
from zhgpt.data.prepare import DataConfig, choose_val_threshold, main
from zhgpt.data.shards import TokenDataset
from zhgpt.data.sources import ReadOptions, iter_documents
from zhgpt.data.tokenizer import BYTE_TOKENS, EOT, load_tokenizer, save_tokenizer, tokenizer_hash


def cleaned(path, cleaner=None) -> list[tuple[str, int]]:
    """(text, hash) of the documents prepare keeps, in order (the reference: sources + clean)."""
    c = cleaner or Cleaner(CleanOptions())
    return [r for d in iter_documents([str(path)], ReadOptions()) if (r := c.clean_hashed(d.text))]


def decode_split(out, split: str) -> list[str]:
    ds = TokenDataset(out)
    tok = load_tokenizer(out / "tokenizer")
    arrs = ds.splits[split].arrays
    ids = np.concatenate(arrs).astype(np.int64) if arrs else np.zeros(0, np.int64)
    assert ids.size == 0 or ids[-1] == ds.eot_id, "every document ends with <|endoftext|>"
    cuts = np.flatnonzero(ids == ds.eot_id)
    starts = np.r_[0, cuts[:-1] + 1]
    return tok.decode_batch([ids[s:e].tolist() for s, e in zip(starts, cuts)], skip_special_tokens=False)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_ds(pd_text, tmp_path_factory):
    train, _ = pd_text
    out = tmp_path_factory.mktemp("prep") / "ds"
    main(DataConfig(sources=[str(train)], out=str(out), tokenizer="char", vocab_size=3000, quiet=True))
    return out


def test_shards_decode_to_cleaned_documents(char_ds, pd_text):
    train, _ = pd_text
    meta = json.loads((char_ds / "meta.json").read_text(encoding="utf-8"))
    docs = cleaned(train)
    thr = int(meta["val_threshold"])
    want_val = [t for t, h in docs if h < thr]
    want_train = [t for t, h in docs if h >= thr]
    assert decode_split(char_ds, "val") == want_val
    assert decode_split(char_ds, "train") == want_train
    # meta counts
    assert meta["format"] == "zhgpt-shards/1" and meta["dtype"] == "uint16" and meta["eot_id"] == 0
    assert meta["tokenizer_kind"] == "char" and meta["vocab_size"] == load_tokenizer(char_ds / "tokenizer").get_vocab_size()
    assert meta["tokenizer_hash"] == tokenizer_hash(char_ds / "tokenizer")
    for name, want in (("train", want_train), ("val", want_val)):
        sp = meta["splits"][name]
        assert sp["docs"] == len(want) and sp["chars"] == sum(len(t) + 1 for t in want)
        assert sp["tokens"] == sum(s["tokens"] for s in sp["shards"])
    s = meta["summary"]
    assert s["docs_kept"] == len(docs) and s["docs_read"] == s["docs_kept"] + sum(s["dropped"].values())
    assert s["files"] == 1 and s["encodings"] == ["utf-8"] and s["chars"] == sum(len(t) + 1 for t, _ in docs)
    assert s["train"]["tokens"] + s["val"]["tokens"] == meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    assert s["mb_per_s"] > 0 and "tokenize_s" in s["seconds"]
    assert meta["sources"][0]["path"] == str(train) and meta["sources"][0]["docs"] == s["docs_read"]
    assert meta["config"]["tokenizer"] == "char" and len(meta["cache_key"]) == 64
    # val size: val_fraction 0.5 % of ~3000 docs is ~15; raised to 300 docs (reached before 50k chars)
    assert len(want_val) == 300
    assert oct(os.stat(char_ds).st_mode & 0o777) != oct(0o700), "not left private like a mkdtemp folder"


def test_cache_skip_force_and_invalidation(pd_text, tmp_path, capsys):
    train, _ = pd_text
    src = write_lines(tmp_path / "a.txt", pd_lines("train", 400))
    out = tmp_path / "ds"
    cfg = DataConfig(sources=[str(src)], out=str(out), tokenizer="char", vocab_size=2000)
    main(cfg)
    key = json.loads((out / "meta.json").read_text())["cache_key"]
    mtime = (out / "meta.json").stat().st_mtime_ns
    capsys.readouterr()
    main(cfg)
    assert "up to date" in capsys.readouterr().out
    assert (out / "meta.json").stat().st_mtime_ns == mtime
    main(DataConfig(**{**cfg.__dict__, "force": True, "quiet": True}))
    assert (out / "meta.json").stat().st_mtime_ns != mtime
    assert json.loads((out / "meta.json").read_text())["cache_key"] == key
    # a setting that changes the output -> rebuilt with a new key
    main(DataConfig(**{**cfg.__dict__, "min_chars": 20, "quiet": True}))
    key2 = json.loads((out / "meta.json").read_text())["cache_key"]
    assert key2 != key
    # the input changed (size/mtime) -> rebuilt
    write_lines(src, pd_lines("train", 450))
    main(DataConfig(**{**cfg.__dict__, "min_chars": 20, "quiet": True}))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cache_key"] != key2 and meta["summary"]["docs_read"] == 450
    # a damaged shard is not "up to date"
    shard = out / meta["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    capsys.readouterr()
    main(DataConfig(**{**cfg.__dict__, "min_chars": 20}))
    assert "up to date" not in capsys.readouterr().out
    TokenDataset(out)   # intact again
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temp folders are cleaned up"


def test_val_split_is_deterministic(pd_text, tmp_path):
    src = write_lines(tmp_path / "a.txt", pd_lines("train", 800))
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        main(DataConfig(sources=[str(src)], out=str(out), tokenizer="char", vocab_size=2000, quiet=True))
        outs.append(out)
    m1, m2 = (json.loads((o / "meta.json").read_text()) for o in outs)
    assert m1["splits"] == m2["splits"] and m1["val_threshold"] == m2["val_threshold"]
    for f in ("train_00000.bin", "val_00000.bin", "tokenizer/tokenizer.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes()
    # every val document's hash is below the threshold, every train document's above
    thr = int(m1["val_threshold"])
    val = set(decode_split(outs[0], "val"))
    assert val and all((h < thr) == (t in val) for t, h in cleaned(src))


def test_choose_val_threshold():
    cfg = DataConfig(sources=["x"], out="o", tokenizer="char")
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2 ** 63, size=1000, dtype=np.uint64) * np.uint64(2)
    chars = np.full(1000, 101, dtype=np.int64)
    thr = choose_val_threshold(h, chars, cfg)
    assert int((h < np.uint64(thr)).sum()) == 300                     # 300 docs before 50k chars
    long_docs = np.full(1000, 1001, dtype=np.int64)
    thr = choose_val_threshold(h, long_docs, cfg)
    assert int((h < np.uint64(thr)).sum()) == 50                      # 50 docs * 1001 chars >= 50k
    assert int((h[:10] < np.uint64(choose_val_threshold(h[:10], chars[:10], cfg))).sum()) == 5   # half at most
    big = rng.integers(0, 2 ** 63, size=200_000, dtype=np.uint64) * np.uint64(2)
    assert choose_val_threshold(big, np.full(200_000, 101), cfg) == int(0.005 * 2 ** 64)   # the fraction suffices
    no_min = DataConfig(sources=["x"], out="o", tokenizer="char", min_val_docs=0, val_fraction=0.0)
    assert choose_val_threshold(h, chars, no_min) == 0


def test_val_source_dedup_and_weights(tmp_path):
    lines = pd_lines("train", 300)
    val_lines = pd_lines("val", 40)
    src = write_lines(tmp_path / "train.txt", lines + val_lines[:5])      # 5 val paragraphs leak into train
    val = write_lines(tmp_path / "val.txt", val_lines)
    out = tmp_path / "ds"
    main(DataConfig(sources=[f"{src}@2"], out=str(out), tokenizer="char", vocab_size=2000,
                    val_source=str(val), quiet=True))
    c = Cleaner(CleanOptions())
    want_val = [t for t, _ in cleaned(val, c)]
    want_train = [t for t, _ in cleaned(src, c)]            # same cleaner: the leaked val text is a duplicate
    assert decode_split(out, "val") == want_val
    got = decode_split(out, "train")
    assert got == [t for t in want_train for _ in range(2)]   # weight 2: every document twice
    assert not set(got) & set(want_val)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["docs"] == 2 * len(want_train)
    assert meta["splits"]["train"]["chars"] == 2 * sum(len(t) + 1 for t in want_train)
    assert meta["summary"]["val_from"] == str(val) and meta["summary"]["duplicates"] >= 5
    assert {s["split"] for s in meta["sources"]} == {"train", "val"}
    # a fractional weight keeps the documents repeats() picks, deterministically
    out2 = tmp_path / "ds2"
    main(DataConfig(sources=[f"{src}@0.5"], out=str(out2), tokenizer="char", vocab_size=2000,
                    val_source=str(val), quiet=True))
    c = Cleaner(CleanOptions())
    cleaned(val, c)
    assert decode_split(out2, "train") == [t for t, h in cleaned(src, c) if repeats(h, 0.5)]


def test_bpe_prepare_and_literal_eot(tmp_path):
    lines = pd_lines("train", 600) + ["这一行里有一个 <|endoftext|> 字面量，它只是文本而已。"]
    src = write_lines(tmp_path / "a.txt", lines)
    out = tmp_path / "ds"
    main(DataConfig(sources=[str(src)], out=str(out), tokenizer="bpe", vocab_size=600, sample_chars=60_000,
                    quiet=True))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer_kind"] == "bpe" and meta["vocab_size"] == 600
    docs = sorted(decode_split(out, "train") + decode_split(out, "val"))
    assert docs == sorted(t for t, _ in cleaned(src))
    n_eot = sum(int((a == 0).sum()) for s in TokenDataset(out).splits.values() for a in s.arrays)
    assert n_eot == len(docs), "a literal <|endoftext|> in a document is text, not a separator"


def test_given_tokenizer_is_copied_byte_for_byte(char_ds, tmp_path):
    src = write_lines(tmp_path / "a.txt", pd_lines("val", 100))
    out = tmp_path / "ds"
    main(DataConfig(sources=[str(src)], out=str(out), tokenizer=str(char_ds / "tokenizer"), quiet=True))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer_hash"] == tokenizer_hash(char_ds / "tokenizer") == tokenizer_hash(out / "tokenizer")
    assert meta["tokenizer_kind"] == "char"
    assert sorted(decode_split(out, "train") + decode_split(out, "val")) == sorted(t for t, _ in cleaned(src))
    # the dataset folder itself is accepted as --tokenizer too (tokenizer/ inside it)
    out2 = tmp_path / "ds2"
    main(DataConfig(sources=[str(src)], out=str(out2), tokenizer=str(char_ds), quiet=True))
    assert json.loads((out2 / "meta.json").read_text())["tokenizer_hash"] == meta["tokenizer_hash"]


def test_gc_is_left_as_found(char_ds, tmp_path):
    """prepare freezes the objects alive before it (so full collections skip them) and unfreezes
    them after; a caller's own frozen objects stay frozen."""
    import gc
    src = write_lines(tmp_path / "a.txt", pd_lines("val", 50))
    assert gc.get_freeze_count() == 0
    main(DataConfig(sources=[str(src)], out=str(tmp_path / "ds"), tokenizer=str(char_ds), quiet=True))
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        main(DataConfig(sources=[str(src)], out=str(tmp_path / "ds"), tokenizer=str(char_ds), quiet=True,
                        force=True))
        assert gc.get_freeze_count() == mine
    finally:
        gc.unfreeze()


def _big_vocab_tokenizer(d):
    """A char-style tokenizer of 70,000 tokens whose CJK Extension B characters get ids > 65,535."""
    from tokenizers import Tokenizer, decoders, models
    vocab = {EOT: 0, **{b: i + 1 for i, b in enumerate(BYTE_TOKENS)}}
    for cp in [*range(0x3400, 0x4DC0), *range(0x4E00, 0xA000), *range(0x20000, 0x2A6E0)]:
        if len(vocab) >= 70_000:
            break
        vocab[chr(cp)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.add_special_tokens([EOT])
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    save_tokenizer(tok, d, "char")
    high = [ch for ch, i in vocab.items() if i > 65_535 and len(ch) == 1]
    return high


def test_dtype_follows_vocabulary(tmp_path, monkeypatch):
    high = _big_vocab_tokenizer(tmp_path / "tok")
    lines = ["".join(high[i * 20:(i + 1) * 20]) + "中文" for i in range(30)]
    src = write_lines(tmp_path / "a.txt", lines)
    out = tmp_path / "ds"
    main(DataConfig(sources=[str(src)], out=str(out), tokenizer=str(tmp_path / "tok"), quiet=True))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    ds = TokenDataset(out)
    assert max(int(a.max()) for s in ds.splits.values() for a in s.arrays) > 65_535
    assert sorted(decode_split(out, "train") + decode_split(out, "val")) == sorted(lines)
    # forced to the wrong dtype, the shard writer refuses instead of wrapping ids around
    from zhgpt.data import shards
    monkeypatch.setattr(shards, "dtype_for_vocab", lambda v: np.dtype(np.uint16))
    with pytest.raises(ZhgptError, match="does not fit"):
        main(DataConfig(sources=[str(src)], out=str(tmp_path / "ds2"), tokenizer=str(tmp_path / "tok"),
                        quiet=True))
    assert not (tmp_path / "ds2").exists()


def test_bad_inputs(tmp_path, pd_text):
    train, _ = pd_text
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    # an --out that cannot be created (root ignores chmod, a path under a regular file cannot exist)
    with pytest.raises(ZhgptError, match="cannot write the dataset"):
        main(DataConfig(sources=[str(train)], out=str(afile / "out"), tokenizer="char", quiet=True))
    with pytest.raises(ZhgptError, match="cannot write the dataset"):
        main(DataConfig(sources=[str(train)], out="/proc/zhgpt-out", tokenizer="char", quiet=True))
    # never replace a folder that is not a dataset
    other = tmp_path / "mydocs"
    other.mkdir()
    (other / "keep.txt").write_text("important", encoding="utf-8")
    with pytest.raises(ZhgptError, match="not a prepared dataset"):
        main(DataConfig(sources=[str(train)], out=str(other), tokenizer="char", quiet=True))
    assert (other / "keep.txt").read_text(encoding="utf-8") == "important"
    # nothing left after cleaning
    short = write_lines(tmp_path / "short.txt", ["短", "好的", "短", "   "])
    with pytest.raises(ZhgptError, match=r"short.txt: no usable text after cleaning \(3 documents dropped: "
                                         r"3 short\)"):
        main(DataConfig(sources=[str(short)], out=str(tmp_path / "o1"), tokenizer="char", quiet=True))
    with pytest.raises(ZhgptError, match="no usable text"):
        main(DataConfig(sources=[str(train)], out=str(tmp_path / "o2"), tokenizer="char",
                        val_source=str(short), quiet=True))
    # reading errors come from sources.py, before any work
    with pytest.raises(ZhgptError, match="no such file"):
        main(DataConfig(sources=[str(tmp_path / "missing.txt")], out=str(tmp_path / "o3"), quiet=True))
    # config validation
    with pytest.raises(ZhgptError, match="--val-fraction"):
        DataConfig(sources=[str(train)], out="o", val_fraction=1.5)
    with pytest.raises(ZhgptError, match="--tokenizer"):
        DataConfig(sources=[str(train)], out="o", tokenizer="wordpiece")
    with pytest.raises(ZhgptError, match="--out is required"):
        DataConfig(sources=[str(train)])
    with pytest.raises(ZhgptError, match="--vocab-size"):
        DataConfig(sources=[str(train)], out="o", vocab_size=10)
    with pytest.raises(ZhgptError, match="--encoding"):
        DataConfig(sources=[str(train)], out="o", encoding="no-such-codec")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_tokenizer_sample_leaves_out_validation(pd_text):
    train, _ = pd_text
    cfg = DataConfig(sources=[str(train)], out="unused", tokenizer="char")
    files = prep.expand_sources(cfg.sources)
    sample, thr = prep._sample_pass(cfg, files, [], 10 ** 9)
    docs = cleaned(train)
    assert sorted(sample) == sorted(t for t, h in docs if h >= thr)
    small, _ = prep._sample_pass(cfg, files, [], 20_000)
    assert 0 < sum(map(len, small)) <= 20_000 + max(map(len, small))
    assert set(small) <= set(sample)


def test_cli(pd_text, tmp_path):
    train, val = pd_text
    out = tmp_path / "ds"
    r = run_cli("data", "prepare", train, "--out", out, "--tokenizer", "char", "--vocab-size", "2000",
                "--val-source", val, check=True)
    # The resolved config goes to stderr (as in every stage), the summary to stdout.
    assert "[DataConfig]" in r.stderr and "[DataConfig]" not in r.stdout
    assert "chars/token" in r.stdout and "MB/s" in r.stdout
    assert TokenDataset(out).splits["val"].docs == len(cleaned(val))
    r = run_cli("data", "prepare", train, "--out", out, "--tokenizer", "char", "--vocab-size", "2000",
                "--val-source", val, check=True)
    assert "up to date" in r.stdout
    (tmp_path / "afile.txt").write_text("x", encoding="utf-8")
    r = run_cli("data", "prepare", train, "--out", tmp_path / "afile.txt" / "x")
    assert r.returncode == 2 and "zhgpt: error:" in r.stderr and "Traceback" not in r.stderr
