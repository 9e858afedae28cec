"""zhgpt.data.clean: normalisation table, filters, exact dedup, deterministic split and repeats."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from zhgpt.data import clean as clean_mod
from zhgpt.data.clean import (CleanOptions, Cleaner, HashSet64, doc_hash, is_val, normalize, repeats,
                         val_threshold)
from zhgpt.errors import ZhgptError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# normalisation

CHINESE_PUNCT = "，。！？；：（）《》「」『』“”‘’、【】〔〕—…～·"


def test_chinese_punctuation_is_kept():
    s = "他说" + CHINESE_PUNCT + "好"
    assert normalize(s) == s


@pytest.mark.parametrize("raw,expected", [
    ("１９９８年", "1998年"),                       # full-width digits
    ("ＡＢＣｘｙｚ", "ABCxyz"),                       # full-width letters
    ("价格：１２．５％", "价格：12.5%"),              # full-width symbols -> ASCII, ： kept
    ("Ｅ－ｍａｉｌ＠ｅｘａｍｐｌｅ．ｃｏｍ", "E-mail@example.com"),
    ("［注］＃１＆２＊３", "[注]#1&2*3"),
    ("中文　空格", "中文 空格"),                      # ideographic space U+3000
    ("不\u00a0换行", "不 换行"),                      # NBSP
    ("半角｡句号､顿号｢引号｣", "半角。句号、顿号「引号」"),  # halfwidth forms -> Chinese forms
    ("小逗号﹐小问号﹖竖排︐︙", "小逗号，小问号？竖排，…"),  # small/vertical forms -> Chinese forms
    ("⼈⼤", "人大"),                                # Kangxi radicals (PDF extraction) -> hanzi
    ("\uf900", "\u8c48"),                            # CJK compatibility ideograph -> unified
    ("￥１００", "¥100"),
    ("好……", "好……"),                              # Chinese ellipsis is not "......"
])
def test_nfkc_table(raw, expected):
    assert normalize(raw) == expected


def test_nfkc_off_keeps_full_width():
    assert normalize("１９９８年，ＡＢＣ　好", nfkc=False) == "１９９８年，ＡＢＣ　好"


def test_controls_spaces_and_newlines():
    assert normalize("a\x00b\x07c\u200bd\ufeffe\u202ef\u00adg") == "abcdefg"
    assert normalize("  多个   空格\t\t和制表符  ") == "多个 空格 和制表符"
    assert normalize("一\r\n二\r三\u2028四\x0c五") == "一\n二\n三\n四\n五"
    assert normalize("段一  \n  段二\n\n\n\n\n段三") == "段一\n段二\n\n段三"
    assert normalize("lone \ud83d surrogate") == "lone surrogate"       # from JSON "\ud83d" escapes
    assert normalize(" \t\u3000\n ") == ""


def test_placeholder_collision_slow_path():
    s = "私用区\U0010FF00字符，还有！"
    assert normalize(s) == s
    assert normalize("\U0010FF01１，") == "\U0010FF011，"


def _nfkc_reference(text: str) -> str:
    """The definition: NFKC of each stretch between kept punctuation, compatibility forms of the
    kept punctuation mapped to their Chinese form."""
    parts = clean_mod._KEEP_SPLIT.split(text)
    return "".join(clean_mod._TO_CHINESE.get(p, p) if i % 2 else unicodedata.normalize("NFKC", p)
                   for i, p in enumerate(parts))


@pytest.mark.parametrize("text", [
    "e\u0301 a\u0308 ｅ\u0301",               # composition with the character before a run
    "，\u0301！\u0308",                       # a combining mark after kept punctuation stays loose
    "\u1100\u1161\u11a8 \uac00\u11a8",         # Hangul jamo compose into 각 (L+V+T and LV+T)
    "か\u3099ｶﾞ",                             # kana voicing marks, half-width katakana
    "１\u0301２",                              # a combining mark inside a full-width run
    "a\u0327\u0301\u0323",                     # canonical reordering of several marks
    "😀１２，\U0001d400ｘ",                    # astral characters: the whole-text path
])
def test_nfkc_runs_match_the_definition(text):
    assert clean_mod._nfkc_keep_chinese(text) == _nfkc_reference(text)


def test_nfkc_runs_match_the_definition_random():
    """Only the runs NFKC can change are normalised (clean._unstable_bmp); random strings of the
    characters where that could go wrong -- combining marks, the second halves of canonical pairs,
    their starters, compatibility forms, kept punctuation, astral letters -- agree with NFKC of
    the whole text."""
    rng = random.Random(7)
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u3099", "\u309a", "\u0b3e", "\u0cd5", "\u0dcf"]
    jamo = ["\u1100", "\u1112", "\u1161", "\u1175", "\u11a8", "\u11c2", "\uac00", "\ud7a3"]
    starters = list("aeiouAEIOUcnsz가かカうｳ中") + ["\u0b47", "\u0cc6", "\u0dd9"]
    compat = [chr(c) for c in range(0xFF01, 0xFF5F, 3)] + list("ｶﾞﾟ①℃ﬁ⼈\uf900\u3000\u00a0")
    pool = (marks + jamo + starters * 3 + compat + list(clean_mod._KEEP) * 2 + list(clean_mod._TO_CHINESE)
            + ["😀", "\U0001d400", "\U0002f800"])
    for _ in range(20_000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        assert clean_mod._nfkc_keep_chinese(s) == _nfkc_reference(s), [hex(ord(c)) for c in s]


# ---------------------------------------------------------------------------------------------
# the cleaner

def test_cleaner_counts_drops():
    c = Cleaner(CleanOptions(min_chars=5))
    inputs = ["", "   \u200b ", "太短", "这一句足够长了。", "这一句足够长了。", "  这一句足够长了。\t",
              "１２３４５", "12345", "另一句足够长的话"]
    out = [c.clean(t) for t in inputs]
    assert out == [None, None, None, "这一句足够长了。", None, None, "12345", None, "另一句足够长的话"]
    assert c.kept == 3
    assert c.dropped == {"empty": 2, "short": 1, "duplicate": 3}
    assert c.duplicates == 3
    assert c.summary() == {"kept": 3, "dropped": {"empty": 2, "short": 1, "duplicate": 3}, "duplicates": 3}


def test_cleaner_min_chars_boundary_and_no_dedup():
    c = Cleaner(CleanOptions(min_chars=4, dedup=False))
    assert c.clean("四个字符") == "四个字符"
    assert c.clean("三个字") is None and c.dropped["short"] == 1
    assert c.clean("四个字符") == "四个字符" and c.kept == 2 and c.duplicates == 0


def test_clean_hashed_returns_hash_of_cleaned_text():
    c = Cleaner()
    text, h = c.clean_hashed("  全角１２３和半角混合的文本  ")
    assert text == "全角123和半角混合的文本" and h == doc_hash(text) and c.last_hash == h


def test_clean_options_validation():
    with pytest.raises(ZhgptError, match="min-chars"):
        CleanOptions(min_chars=-1)


# ---------------------------------------------------------------------------------------------
# hashing, split, repeats

def test_doc_hash_is_fixed():
    # golden values: blake2b-64 of the UTF-8 bytes, little-endian; must never change
    assert doc_hash("你好，世界") == 3918592590522897134
    assert doc_hash("") == 13020603013274838756
    assert all(0 <= doc_hash(str(i)) < 1 << 64 for i in range(100))


def test_doc_hash_same_in_another_process():
    docs = [f"文档{i}：内容" for i in range(50)]
    code = ("import sys; from zhgpt.data.clean import doc_hash; "
            "print(' '.join(str(doc_hash(l)) for l in sys.stdin.read().split('\\n')))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(docs), capture_output=True,
                         text=True, env=env, check=True, cwd=str(ROOT)).stdout.split()
    assert [int(x) for x in out] == [doc_hash(d) for d in docs]


def _val_set(docs, fraction):
    t = val_threshold(fraction)
    return {d for d in docs if is_val(doc_hash(d), t)}


def test_split_is_order_and_context_independent():
    docs = [f"第{i}篇文档的内容" for i in range(10_000)]
    val = _val_set(docs, 0.05)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    assert _val_set(shuffled, 0.05) == val
    assert _val_set(docs[:5000], 0.05) == {d for d in val if d in set(docs[:5000])}
    assert 400 <= len(val) <= 600                      # ~5 % of 10,000
    assert _val_set(docs, 0.10) >= val                 # a larger fraction only adds documents
    assert _val_set(docs, 0.0) == set() and _val_set(docs, 1.0) == set(docs)


def test_val_threshold_bounds():
    assert val_threshold(0) == 0 and val_threshold(1) == 1 << 64 and val_threshold(0.5) == 1 << 63
    for bad in (-0.1, 1.5):
        with pytest.raises(ZhgptError, match="val-fraction"):
            val_threshold(bad)


def test_repeats():
    hs = [doc_hash(f"文档{i}") for i in range(20_000)]
    assert {repeats(h, 1.0) for h in hs} == {1}
    assert {repeats(h, 3.0) for h in hs} == {3}
    r = [repeats(h, 1.5) for h in hs]
    assert set(r) == {1, 2} and abs(sum(r) / len(r) - 1.5) < 0.02
    r = [repeats(h, 0.25) for h in hs]
    assert set(r) == {0, 1} and abs(sum(r) / len(r) - 0.25) < 0.02
    assert [repeats(h, 1.5) for h in hs[:100]] == [repeats(h, 1.5) for h in hs[:100]]
    # the extra copy is independent of the validation slice (the lowest 10 % of hashes)
    t = val_threshold(0.10)
    low = [repeats(h, 1.5) for h in hs if h < t]
    assert abs(sum(low) / len(low) - 1.5) < 0.06
    with pytest.raises(ZhgptError):
        repeats(hs[0], 0)


def test_hashset64_matches_python_set():
    rng = random.Random(7)
    s, ref = HashSet64(capacity=4), set()
    values = [rng.getrandbits(64) for _ in range(30_000)] + [0, 0, 5, 5]
    values += values[:1000]
    for v in values:
        assert s.add(v) == ((v or 1) not in ref)
        ref.add(v or 1)
    assert len(s) == len(ref)
    assert all(v in s for v in values[:2000])
    assert sum(rng.getrandbits(64) in s for _ in range(2000)) == 0


def test_clean_options_become_cli_flags():
    import argparse

    from zhgpt.config import add_args, from_args
    p = argparse.ArgumentParser()
    add_args(p, CleanOptions)
    assert from_args(CleanOptions, p.parse_args(["--min-chars", "3", "--no-nfkc", "--no-dedup"])) == \
        CleanOptions(min_chars=3, nfkc=False, dedup=False)
