"""zhgpt.data.sources: formats, compression, encodings, folders/globs/weights, builtin corpora, bad input.

Every test writes real files into tmp_path and reads them back through the public API.
"""
from __future__ import annotations

import bz2
import gzip
import json
import os
import random
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from opencc import OpenCC

from zhgpt.data.sources import reader
from zhgpt.errors import ZhgptError
from zhgpt.data.sources import (Document, ReadOptions, ReadStats, SourceFile, detect_encoding,
                           expand_sources, iter_documents, strip_pos_tags)

SHARED_PD = Path(__file__).resolve().parents[3] / "shared" / "data" / "pd1998"

# Simplified paragraphs; every character is in GBK and (after s2tw) in Big5.
PARAS = [
    "迈向充满希望的新世纪——一九九八年新年讲话。",
    "我们的国家正在发生深刻的变化，人民生活水平不断提高。",
    "今天天气很好，我和朋友一起去公园散步，看到很多人在锻炼身体。",
    "这本书写得非常好，内容丰富，值得推荐给大家阅读！",
    "经济发展需要科技进步，也需要良好的社会环境和教育基础。",
    "他说：“明天的会议改到下午三点，请大家准时参加。”",
]
TRAD = [OpenCC("s2tw").convert(p) for p in PARAS]


def texts(specs, **kw):
    return [d.text for d in iter_documents([str(s) for s in specs], ReadOptions(**kw))]


def read(specs, **kw):
    stats = ReadStats()
    docs = list(iter_documents([str(s) for s in specs], ReadOptions(**kw), stats))
    return docs, stats


def raises(specs, *fragments, **kw) -> str:
    """Reading fails with a ZhgptError whose message contains every fragment; returns it."""
    with pytest.raises(ZhgptError) as ei:
        list(iter_documents([str(s) for s in specs], ReadOptions(**kw)))
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# ---------------------------------------------------------------------------------------------
# encodings

def _utf16(bom: bytes, enc: str):
    return lambda t: bom + t.encode(enc)


ENCODINGS = [
    ("utf-8", lambda t: t.encode("utf-8"), "utf-8", PARAS),
    ("utf-8-bom", lambda t: t.encode("utf-8-sig"), "utf-8-sig", PARAS),
    ("gb18030", lambda t: t.encode("gb18030"), "gb18030", PARAS),
    ("gbk", lambda t: t.encode("gbk"), "gb18030", PARAS),          # GBK read as its superset
    ("utf-16-le", _utf16(b"\xff\xfe", "utf-16-le"), "utf-16-le", PARAS),
    ("utf-16-be", _utf16(b"\xfe\xff", "utf-16-be"), "utf-16-be", PARAS),
    ("big5", lambda t: t.encode("big5"), "big5", TRAD),
]


@pytest.mark.parametrize("name,encode,expected,paras", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_encodings_decode_to_same_documents(tmp_path, name, encode, expected, paras):
    p = tmp_path / f"{name}.txt"
    p.write_bytes(encode("\n".join(paras) + "\n"))
    docs, stats = read([p])
    assert [d.text for d in docs] == paras          # BOM stripped, no stray U+FEFF
    assert [d.line for d in docs] == list(range(1, len(paras) + 1))
    assert stats.files[0]["encoding"] == expected
    assert detect_encoding(p) == expected


def test_big5_and_gb18030_not_confused(tmp_path):
    """Random samples of real text, 1 to 200 lines: GB18030 and Big5 are each detected as such."""
    pool = [l for l in (SHARED_PD / "val.txt").read_text("utf-8").splitlines() if l] \
        if (SHARED_PD / "val.txt").exists() else PARAS * 20
    rng = random.Random(1)
    s2tw = OpenCC("s2tw")
    checked = 0
    for n in (1, 1, 2, 3, 5, 20, 200):
        simp = "\n".join(rng.sample(pool, min(n, len(pool)))) + "\n"
        trad = s2tw.convert(simp)
        (tmp_path / "g.txt").write_bytes(simp.encode("gb18030"))
        assert detect_encoding(tmp_path / "g.txt") == "gb18030", simp[:40]
        (tmp_path / "gt.txt").write_bytes(trad.encode("gb18030"))   # Traditional text in GBK
        assert detect_encoding(tmp_path / "gt.txt") == "gb18030", trad[:40]
        try:
            b5 = trad.encode("big5")
        except UnicodeEncodeError:
            continue
        (tmp_path / "b.txt").write_bytes(b5)
        assert detect_encoding(tmp_path / "b.txt") in ("big5", "cp950"), trad[:40]
        assert texts([tmp_path / "b.txt"]) == trad.splitlines()
        checked += 1
    assert checked >= 4


def test_utf16_without_bom_and_forced_encoding(tmp_path):
    p = tmp_path / "nobom.txt"
    p.write_bytes("\n".join(PARAS).encode("utf-16-le"))
    assert detect_encoding(p) == "utf-16-le"
    assert texts([p]) == PARAS
    # --encoding overrides detection (GB18030 bytes forced as gb18030, reported as given)
    g = tmp_path / "g.txt"
    g.write_bytes("\n".join(PARAS).encode("gb18030"))
    docs, stats = read([g], encoding="gbk")
    assert [d.text for d in docs] == PARAS and stats.files[0]["encoding"] == "gbk"


def test_utf8_file_with_bad_bytes(tmp_path):
    p = tmp_path / "bad.txt"
    good = "\n".join(PARAS[:3]).encode("utf-8")
    p.write_bytes(good + b"\n" + "坏".encode() + b"\xff\xfe" + "字节".encode() + b"\n" + PARAS[3].encode())
    assert detect_encoding(p) == "utf-8"        # mostly UTF-8: not re-guessed as something else
    msg = raises([p], f"{p}:4:", "not valid utf-8", "2 bad byte sequence", "--errors replace", "--encoding")
    assert msg.startswith(str(p))
    docs, stats = read([p], errors="replace")
    # one U+FFFD per invalid sequence, as Python's "replace": 0xFF and 0xFE are two
    assert [d.text for d in docs] == PARAS[:3] + ["坏\ufffd\ufffd字节", PARAS[3]]
    assert stats.files[0]["replaced_chars"] == 2 and stats.replaced_chars == 2


def test_bad_bytes_after_the_sample_give_exact_line(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "CHUNK_BYTES", 4096)
    p = tmp_path / "late.txt"
    lines = [f"第{i}行，正常的文字内容。" for i in range(5000)]
    data = "\n".join(lines).encode("utf-8")
    cut = data.index(b"\n", 100_000)          # well beyond the 64 KB sample
    line_no = data[:cut].count(b"\n") + 2
    p.write_bytes(data[:cut + 1] + b"\x80\x80" + data[cut + 1:])
    raises([p], f"{p}:{line_no}:", "not valid utf-8", "0 bad byte sequence(s) in the first 64 KB")
    docs, stats = read([p], errors="replace")
    assert docs[line_no - 1].text.startswith("\ufffd\ufffd第") and stats.files[0]["replaced_chars"] == 2


# ---------------------------------------------------------------------------------------------
# text formats

def test_txt_line_and_blank_modes(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("第一段第一行\r\n第一段第二行\r\n\r\n   \r\n第二段\r\n\n\n第三段第一行\n第三段第二行".encode())
    docs, _ = read([p])
    assert [(d.text, d.line) for d in docs] == [
        ("第一段第一行", 1), ("第一段第二行", 2), ("第二段", 5), ("第三段第一行", 8), ("第三段第二行", 9)]
    docs, _ = read([p], doc_sep="blank")
    assert [(d.text, d.line) for d in docs] == [
        ("第一段第一行\n第一段第二行", 1), ("第二段", 5), ("第三段第一行\n第三段第二行", 8)]
    assert all(d.source == str(p) and d.weight == 1.0 for d in docs)


def test_unknown_extension_explicit_is_text_but_folder_skips_it(tmp_path):
    (tmp_path / "d").mkdir()
    log = tmp_path / "d" / "notes.log"
    log.write_text("日志里的中文内容\n第二行", "utf-8")
    (tmp_path / "d" / "ok.txt").write_text("正常文本", "utf-8")
    assert texts([log]) == ["日志里的中文内容", "第二行"]
    docs, stats = read([tmp_path / "d"])
    assert [d.text for d in docs] == ["正常文本"]
    assert stats.skipped == [str(log)]
    # a glob naming the extension chose those files; a glob ending in a wildcard did not
    assert texts([tmp_path / "d" / "*.log"]) == ["日志里的中文内容", "第二行"]
    assert texts([tmp_path / "d" / "*"]) == ["正常文本"]


def test_jsonl_nested_fields_and_strings(tmp_path):
    p = tmp_path / "a.jsonl"
    recs = [{"meta": {"body": PARAS[0]}, "id": 1}, {"meta": {"body": PARAS[1]}},
            {"meta.body": PARAS[2]}]          # a literal dotted key wins over nesting
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n\n", "utf-8")
    docs, stats = read([p], field="meta.body")
    assert [(d.text, d.line) for d in docs] == [(PARAS[0], 1), (PARAS[1], 2), (PARAS[2], 3)]
    assert stats.files[0]["format"] == "jsonl"
    q = tmp_path / "s.ndjson"
    q.write_text('"字符串记录一"\n{"text": "对象记录"}\n', "utf-8")
    assert texts([q]) == ["字符串记录一", "对象记录"]


def test_json_list_object_and_line_numbers(tmp_path):
    p = tmp_path / "list.json"
    p.write_text(json.dumps([{"text": t, "n": i} for i, t in enumerate(PARAS)], ensure_ascii=False,
                            indent=2), "utf-8")
    docs, _ = read([p])
    assert [d.text for d in docs] == PARAS
    assert [d.line for d in docs] == [2 + 4 * i for i in range(len(PARAS))]   # the line of each "{"
    s = tmp_path / "strings.json"
    s.write_text(json.dumps(PARAS, ensure_ascii=False), "utf-8")
    assert texts([s]) == PARAS
    o = tmp_path / "obj.json"
    o.write_text(json.dumps({"version": 1.25, "meta": {"a": [1, 2]}, "data": [{"content": t} for t in PARAS]},
                            ensure_ascii=False), "utf-8")
    assert texts([o], field="content") == PARAS
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": PARAS[0]}, ensure_ascii=False), "utf-8")
    assert texts([one]) == [PARAS[0]]


def test_json_streaming_across_tiny_chunks(tmp_path, monkeypatch):
    """Values cut at every possible chunk boundary (numbers, literals, strings) parse the same."""
    recs = {"count": 123456789, "ok": True, "pi": 3.14159, "records": [
        {"text": f"{t}{i}", "score": i * 1.5, "tags": ["甲", None, False]} for i, t in enumerate(PARAS * 5)]}
    p = tmp_path / "big.json"
    p.write_text(json.dumps(recs, ensure_ascii=False), "utf-8")
    expected = [r["text"] for r in recs["records"]]
    for chunk in (1, 2, 3, 7, 64, 1000):
        monkeypatch.setattr(reader, "CHUNK_BYTES", chunk)
        assert texts([p]) == expected, chunk


def test_csv_and_tsv(tmp_path):
    c = tmp_path / "a.csv"
    c.write_text('id,text\n1,"逗号,在引号里"\n2,"跨行的\n字段"\n\n3,普通\n', "utf-8")
    docs, _ = read([c])
    assert [(d.text, d.line) for d in docs] == [("逗号,在引号里", 2), ("跨行的\n字段", 3), ("普通", 6)]
    t = tmp_path / "a.tsv"
    t.write_text("content\tlabel\n" + "".join(f"{p}\t{i}\n" for i, p in enumerate(PARAS)), "utf-8")
    assert texts([t], field="content") == PARAS
    g = tmp_path / "gbk.csv"   # CSV goes through the same encoding detection
    g.write_bytes(("text\n" + "\n".join(PARAS)).encode("gb18030"))
    assert texts([g]) == PARAS


def test_parquet_batches_and_column(tmp_path):
    p = tmp_path / "a.parquet"
    many = [f"{PARAS[i % len(PARAS)]}#{i}" for i in range(2500)]
    table = pa.table({"id": list(range(2500)), "text": many})
    pq.write_table(table, p, row_group_size=700)
    docs, stats = read([p])
    assert [d.text for d in docs] == many and docs[-1].line == 2500
    assert stats.files[0]["format"] == "parquet" and stats.files[0]["docs"] == 2500
    raises([p], str(p), "no column 'body'", "columns: id, text", "--field", field="body")
    raises([p], str(p), "column 'id'", "not string", field="id")


def test_compressed_variants(tmp_path):
    body = ("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in PARAS) + "\n").encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n".join(PARAS).encode("gb18030")))
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(("text\n" + "\n".join(PARAS)).encode()))
    (tmp_path / "d.json.zst").write_bytes(zstandard.ZstdCompressor().compress(
        json.dumps(PARAS, ensure_ascii=False).encode()))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": PARAS}), buf)
    (tmp_path / "e.parquet.gz").write_bytes(gzip.compress(buf.getvalue().to_pybytes()))
    docs, stats = read([tmp_path])
    assert [d.text for d in docs] == PARAS * 5
    assert [(f["format"], f["compression"]) for f in stats.files] == [
        ("jsonl", "gz"), ("text", "zst"), ("csv", "gz"), ("json", "zst"), ("parquet", "gz")]
    assert stats.files[1]["encoding"] == "gb18030"


def test_damaged_and_mislabelled_compression(tmp_path):
    z = tmp_path / "cut.txt.gz"
    z.write_bytes(gzip.compress(("\n".join(PARAS) * 200).encode())[:200])
    raises([z], str(z), "cannot decompress", "gzip")
    full = zstandard.ZstdCompressor().compress(("\n".join(PARAS) * 2000).encode())
    zc = tmp_path / "cut.txt.zst"        # zstandard's own readers stop quietly here
    zc.write_bytes(full[: len(full) // 2])
    raises([zc], str(zc), "cannot decompress", "incomplete")
    junk = tmp_path / "junk.jsonl.zst"
    junk.write_bytes(b"not zstd at all" * 10)
    raises([junk], str(junk), "cannot decompress", "zstd")
    frames = tmp_path / "frames.txt.zst"  # concatenated frames (zstd a b > c) read as one stream
    frames.write_bytes(b"".join(zstandard.ZstdCompressor().compress((p + "\n").encode()) for p in PARAS))
    assert texts([frames]) == PARAS
    g = tmp_path / "plain.txt"           # gzip bytes without the .gz extension
    g.write_bytes(gzip.compress(b"hello"))
    raises([g], str(g), "gzip-compressed", ".gz extension")
    b = tmp_path / "x.txt"
    b.write_bytes(bz2.compress(("中文" * 100).encode()))
    raises([b], str(b), "bzip2")


# ---------------------------------------------------------------------------------------------
# folders, globs, weights

def _tree(tmp_path):
    root = tmp_path / "corpus"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("甲", "utf-8")
    (root / "b" / "c.jsonl").write_text('{"text": "乙"}\n', "utf-8")
    (root / "b" / "deep" / "d.txt").write_text("丙", "utf-8")
    (root / "b" / "wiki_00").write_text("丁", "utf-8")          # no extension = text
    (root / "b" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / ".git" / "HEAD").write_text("ref: x", "utf-8")
    (root / ".hidden.txt").write_text("隐藏", "utf-8")
    return root


def test_folder_recursion_is_sorted_and_selective(tmp_path):
    root = _tree(tmp_path)
    files = expand_sources([str(root)])
    assert [os.path.relpath(f.path, root) for f in files] == [
        "a.txt", os.path.join("b", "c.jsonl"), os.path.join("b", "deep", "d.txt"), os.path.join("b", "wiki_00")]
    docs, stats = read([root])
    assert [d.text for d in docs] == ["甲", "乙", "丙", "丁"]
    assert stats.skipped == [str(root / "b" / "image.png")]


def test_glob(tmp_path):
    root = _tree(tmp_path)
    assert texts([root / "**" / "*.txt"]) == ["甲", "丙"]
    assert texts([root / "b" / "*.jsonl"]) == ["乙"]
    raises([root / "**" / "*.csv"], "matched no files")


def test_weights(tmp_path):
    root = _tree(tmp_path)
    a = root / "a.txt"
    docs = list(iter_documents([f"{a}@2", f"{root / 'b'}/@0.5", "builtin:reviews@1.5"], ReadOptions()))
    weights = {}
    for d in docs:
        weights.setdefault(d.source, d.weight)
    assert weights[str(a)] == 2.0 and weights[str(root / "b" / "c.jsonl")] == 0.5
    assert weights["builtin:reviews/pos.txt"] == 1.5
    at = tmp_path / "me@home.txt"       # an existing path keeps its "@"
    at.write_text("有艾特", "utf-8")
    assert [(d.text, d.weight) for d in iter_documents([str(at)], ReadOptions())] == [("有艾特", 1.0)]
    for bad, frag in ((f"{a}@0", "positive"), (f"{a}@-1", "positive"), (f"{a}@nan", "positive"),
                      (f"{a}@abc", "not a number"), ("@2", "no path")):
        with pytest.raises(ZhgptError, match=frag):
            expand_sources([bad])


def test_expand_validates_everything_before_reading(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("好", "utf-8")
    with pytest.raises(ZhgptError, match="no such file"):
        iter_documents([str(ok), str(tmp_path / "missing.txt")], ReadOptions())   # no next() needed
    (tmp_path / "empty_dir").mkdir()
    raises([tmp_path / "empty_dir"], str(tmp_path / "empty_dir"), "no files with a supported extension")
    e = tmp_path / "empty.txt"
    e.write_bytes(b"")
    raises([e], str(e), "empty (0 bytes)")
    raises([], "no sources")


# ---------------------------------------------------------------------------------------------
# builtin corpora

def test_strip_pos_tags():
    assert strip_pos_tags("迈向/v  充满/v  希望/n") == "迈向充满希望"
    assert strip_pos_tags("http://a.cn/b/n  １/m  张/q") == "http://a.cn/b１张"
    assert strip_pos_tags("无标签  一/m") == "无标签一"
    # only ASCII spaces and tabs separate tokens: U+3000 inside a word stays (the non-printable path)
    assert strip_pos_tags(" 中\u3000国/ns\t人民/n  ") == "中\u3000国人民"


@pytest.mark.skipif(not (SHARED_PD / "train.txt").exists(), reason="needs ../shared/data/pd1998")
@pytest.mark.slow
def test_builtin_people_daily_equals_shared_pd1998():
    docs, stats = read(["builtin:people-daily"])
    expected = ((SHARED_PD / "train.txt").read_text("utf-8") + (SHARED_PD / "val.txt").read_text("utf-8")).split("\n")
    assert expected[-1] == ""
    assert len(docs) == 19_484
    assert [d.text for d in docs] == expected[:-1]
    assert docs[0].text.startswith("迈向充满希望的新世纪") and docs[0].source == "builtin:people-daily"
    assert stats.files[0]["encoding"] == "utf-8" and stats.files[0]["bytes"] > 10_000_000


def test_builtin_reviews_and_all():
    docs, stats = read(["builtin:reviews"])
    assert len(docs) > 30_000
    assert {d.source for d in docs} == {"builtin:reviews/pos.txt", "builtin:reviews/neg.txt"}
    assert all(d.text.strip() for d in docs[:1000])
    files = expand_sources(["builtin"])
    assert [f.name for f in files] == ["builtin:people-daily", "builtin:reviews/pos.txt", "builtin:reviews/neg.txt"]
    with pytest.raises(ZhgptError, match="unknown builtin corpus 'nope'"):
        expand_sources(["builtin:nope"])


# ---------------------------------------------------------------------------------------------
# bad input

def test_binary_files(tmp_path):
    png = tmp_path / "pic.png.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    raises([png], str(png), "PNG image, not text")
    rnd = tmp_path / "random.txt"
    rnd.write_bytes(random.Random(0).randbytes(4096))
    raises([rnd], str(rnd), "binary file, not text")
    few = tmp_path / "ctrl.txt"           # no NUL but full of control bytes
    few.write_bytes(bytes(range(1, 32)) * 20)
    raises([few], str(few), "binary file, not text")
    with pytest.raises(ZhgptError, match="binary"):
        detect_encoding(rnd)


def test_jsonl_broken_line_and_skip(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"text": "第一条"}\n{"text": "坏的\n{"text": "第三条"}\n', "utf-8")
    raises([p], f"{p}:2:", "not valid JSON", "--skip-bad-lines")
    docs, stats = read([p], skip_bad_lines=True)
    assert [(d.text, d.line) for d in docs] == [("第一条", 1), ("第三条", 3)]
    assert stats.files[0]["bad_lines"] == 1 and stats.bad_lines == 1


def test_missing_and_non_string_fields(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"text": "好"}\n{"content": "无", "id": 3}\n', "utf-8")
    raises([p], f"{p}:2:", "no field 'text'", "content, id", "--field")
    q = tmp_path / "n.jsonl"
    q.write_text('{"text": "好"}\n{"text": 42}\n{"text": null}\n', "utf-8")
    raises([q], f"{q}:2:", "field 'text' is a number, not a string", "--field")
    docs, stats = read([q], skip_bad_lines=True)
    assert [d.text for d in docs] == ["好"] and stats.files[0]["bad_lines"] == 2
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"a": {"x": "1", "y": "2"}}\n', "utf-8")
    raises([nested], f"{nested}:1:", "no field 'a.b'", "a has: x, y", field="a.b")
    # with --skip-bad-lines a field that no record has is still an error, not an empty corpus
    raises([p], f"{p}:1:", "no field 'nope'", "2 bad, none usable", skip_bad_lines=True, field="nope")
    j = tmp_path / "f.json"
    j.write_text('[\n{"text": "一"},\n{"body": "二"}\n]', "utf-8")
    raises([j], f"{j}:3:", "no field 'text'", "body")
    c = tmp_path / "f.csv"
    c.write_text("id,body\n1,正文\n", "utf-8")
    raises([c], f"{c}:1:", "no column 'text'", "id, body", "--field")
    r = tmp_path / "row.csv"
    r.write_text("id,text\n1,好\n2,坏,多一列\n3,也好\n", "utf-8")
    raises([r], f"{r}:3:", "3 columns", "--skip-bad-lines")
    assert texts([r], skip_bad_lines=True) == ["好", "也好"]


def test_bad_json_files(tmp_path):
    lines_as_json = tmp_path / "really.json"
    lines_as_json.write_text('{"text": "一", "tags": ["x"]}\n{"text": "二"}\n', "utf-8")
    raises([lines_as_json], str(lines_as_json), "JSON Lines", ".jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"text": "一"},\n{"text": "二" "x"}\n]', "utf-8")
    raises([broken], f"{broken}:3:", "not valid JSON")
    truncated = tmp_path / "trunc.json"
    truncated.write_text('[{"text": "一"}, {"text": "二"', "utf-8")
    raises([truncated], str(truncated), "not valid JSON")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42", "utf-8")
    raises([scalar], f"{scalar}:1:", "list of records")


def test_options_validation():
    with pytest.raises(ZhgptError, match="not a known codec"):
        ReadOptions(encoding="klingon-8")
    with pytest.raises(ZhgptError, match="strict or replace"):
        ReadOptions(errors="ignore")
    with pytest.raises(ZhgptError, match="line or blank"):
        ReadOptions(doc_sep="para")


# ---------------------------------------------------------------------------------------------
# long documents, t2s

def _long_line(n_chars: int) -> str:
    rng = random.Random(3)
    out, size = [], 0
    while size < n_chars:
        s = "".join(rng.choice("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年") for _ in range(rng.randint(5, 60)))
        s += rng.choice("。！？，")
        out.append(s)
        size += len(s)
    return "".join(out)


def test_long_line_is_cut_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "CHUNK_BYTES", 64 * 1024)
    text = _long_line(1_000_000)                 # ~3 MB of UTF-8, no newline at all
    p = tmp_path / "long.txt"
    p.write_text(text, "utf-8")
    size = p.stat().st_size
    assert size > 2_900_000
    tracemalloc.start()
    try:
        pieces, ends, lines, stats = [], [], set(), ReadStats()
        for d in iter_documents([str(p)], ReadOptions(max_doc_chars=20_000), stats):
            pieces.append(len(d.text))
            lines.add(d.line)
            ends.append(d.text[-1] in "。！？")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(pieces) == len(text) and max(pieces) <= 20_000 and len(pieces) >= 50
    assert min(pieces[:-1]) >= 10_000                 # a sentence end in the second half, or a hard cut
    assert all(ends[:-1])                             # sentences are <= 61 chars: always one to cut at
    assert lines == {1} and stats.files[0]["cut_docs"] == 1
    assert peak < size / 3, peak                      # memory does not grow with the line
    # the pieces put back together are the original line
    assert "".join(d.text for d in iter_documents([str(p)], ReadOptions(max_doc_chars=20_000))) == text


def test_long_records_and_blank_docs_are_cut(tmp_path):
    text = _long_line(50_000)
    j = tmp_path / "long.jsonl"
    j.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", "utf-8")
    docs, stats = read([j], max_doc_chars=5_000)
    assert "".join(d.text for d in docs) == text and max(len(d.text) for d in docs) <= 5_000
    assert stats.files[0]["cut_docs"] == 1 and {d.line for d in docs} == {1}
    b = tmp_path / "blank.txt"
    b.write_text("短文档\n\n" + "\n".join([text[:3000]] * 5) + "\n\n尾巴", "utf-8")
    docs = texts([b], doc_sep="blank", max_doc_chars=5_000)
    assert docs[0] == "短文档" and docs[-1] == "尾巴"
    assert "".join(docs[1:-1]) == "\n".join([text[:3000]] * 5) and max(map(len, docs)) <= 5_000


def test_t2s(tmp_path):
    p = tmp_path / "trad.txt"
    p.write_text("漢語為什麼這麼難\n經濟發展", "utf-8")
    assert texts([p], t2s=True) == ["汉语为什么这么难", "经济发展"]
    assert texts([p]) == ["漢語為什麼這麼難", "經濟發展"]


def test_documents_and_stats_shape(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("一\n二\n", "utf-8")
    docs, stats = read([f"{p}@3"])
    assert docs == [Document("一", str(p), 1, 3.0), Document("二", str(p), 2, 3.0)]
    f = stats.files[0]
    assert {k: f[k] for k in ("path", "format", "encoding", "bytes", "docs", "bad_lines", "replaced_chars")} == {
        "path": str(p), "format": "text", "encoding": "utf-8", "bytes": 8, "docs": 2, "bad_lines": 0,
        "replaced_chars": 0}
    assert stats.bytes_read == 8 and stats.summary()["docs"] == 2
    # SourceFile objects from expand_sources can be passed back in
    sf = expand_sources([str(p)])
    assert isinstance(sf[0], SourceFile) and [d.text for d in iter_documents(sf, ReadOptions())] == ["一", "二"]


def test_read_options_become_cli_flags():
    import argparse

    from zhgpt.config import add_args, from_args
    p = argparse.ArgumentParser()
    add_args(p, ReadOptions)
    ns = p.parse_args(["--encoding", "gb18030", "--errors", "replace", "--doc-sep", "blank",
                       "--field", "content", "--skip-bad-lines", "--t2s", "--max-doc-chars", "5000"])
    assert from_args(ReadOptions, ns) == ReadOptions("gb18030", "replace", "blank", "content", True, True, 5000)
    assert from_args(ReadOptions, p.parse_args([])) == ReadOptions()
