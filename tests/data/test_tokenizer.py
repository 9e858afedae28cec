"""Tokenizers: lossless round trips, <|endoftext|> at id 0, transformers loading, stats, CLI.

Tokenizers are trained in-process on real People's Daily text with small vocabularies (a few seconds).
"""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import pd_lines, run_cli
from zhgpt.errors import ZhgptError
from zhgpt.data.tokenizer import (BYTE_TOKENS, EOT, KINDS, eot_id, load_tokenizer, save_tokenizer, stats,
                             tokenizer_hash, tokenizer_kind, train_tokenizer)

VOCAB = {"bpe": 1200, "unigram": 2000, "char": 3000}
SAMPLE = {"bpe": 300_000, "unigram": 120_000, "char": 300_000}

TRICKY = [
    "中华人民共和国成立了。",
    "𠀀𪚥龘 are rare; 😀👍🏽 and 👨‍👩‍👧 are emoji 🇨🇳",
    "Hello, World!  Two  spaces, a tab\there and 12345678 digits 3.14159",
    "  leading and trailing spaces  ",
    "line one\nline two\n\nafter a blank line\n",
    "全角标点：，。！？；“引号”（括号）【】《书名》——……",
    "ＡＢＣ１２３ full-width letters (not NFKC-normalised) still round-trip",
    "hello , world . ( spaces before punctuation ) ' s",
    "a literal <0x41> and <0xE4> are text, not bytes",
    "\n",
    "a",
    "",
    "龘" * 40 + "的" * 40,
]


@pytest.fixture(scope="module")
def texts():
    return pd_lines("train", 4000)


@pytest.fixture(scope="module")
def toks(texts):
    return {k: train_tokenizer(texts, k, VOCAB[k], sample_chars=SAMPLE[k], show_progress=False) for k in KINDS}


@pytest.fixture(scope="module")
def tok_dirs(toks, tmp_path_factory):
    d = tmp_path_factory.mktemp("toks")
    return {k: save_tokenizer(t, d / k, k, model_max_length=256) for k, t in toks.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact(toks, kind):
    tok = toks[kind]
    for x in TRICKY:
        ids = tok.encode(x, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == x, (kind, x)
        assert 0 not in ids, "no <unk>/EOT may appear in plain text (byte fallback instead)"
    # a literal <|endoftext|> is the special token (id 0) and decodes back when not skipped
    ids = tok.encode("前<|endoftext|>后", add_special_tokens=False).ids
    assert 0 in ids and tok.decode(ids, skip_special_tokens=False) == "前<|endoftext|>后"


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_and_sizes(toks, kind):
    tok = toks[kind]
    assert tok.token_to_id(EOT) == 0 and tok.id_to_token(0) == EOT
    assert eot_id(tok) == 0
    assert tok.get_vocab_size() <= VOCAB[kind]
    if kind != "bpe":   # byte fallback tokens right after EOT, SentencePiece order
        assert [tok.token_to_id(b) for b in BYTE_TOKENS] == list(range(1, 257))


def test_rare_characters_use_bytes_not_unk(toks):
    for kind in ("unigram", "char"):
        enc = toks[kind].encode("𠀀", add_special_tokens=False)
        assert enc.tokens == ["<0xF0>", "<0xA0>", "<0x80>", "<0x80>"], kind
    # common characters are single tokens in every kind
    for kind in KINDS:
        assert len(toks[kind].encode("的", add_special_tokens=False).ids) == 1, kind


def test_bpe_pretokenizer_splits_digits_in_threes_and_keeps_han_runs(toks):
    pre = toks["bpe"].pre_tokenizer.pre_tokenize_str
    assert [p for p, _ in pre("12345678")] == ["123", "456", "78"]
    words = [toks["bpe"].decoder.decode([p]) for p, _ in pre("1998年，我们在北京")]
    assert words == ["199", "8", "年", "，我们在北京"]


def test_char_vocabulary_is_most_frequent_first_and_capped(texts):
    tok = train_tokenizer(texts, "char", 300, sample_chars=200_000, show_progress=False)
    assert tok.get_vocab_size() == 300
    # 43 most frequent characters after EOT + 256 bytes; the comma and 的 lead People's Daily
    first = {tok.id_to_token(257), tok.id_to_token(258)}
    assert first == {"，", "的"}
    # a small sample sees fewer characters
    small = train_tokenizer(texts, "char", 8000, sample_chars=500, show_progress=False)
    assert small.get_vocab_size() <= 257 + 500 and small.get_vocab_size() < tok.get_vocab_size() + 500


def test_bad_arguments(texts):
    with pytest.raises(ZhgptError, match="unknown tokenizer kind"):
        train_tokenizer(texts, "wordpiece", 1000)
    with pytest.raises(ZhgptError, match="too small"):
        train_tokenizer(texts, "bpe", 100)
    with pytest.raises(ZhgptError, match="no text"):
        train_tokenizer(["", ""], "char", 1000)


@pytest.mark.parametrize("kind", KINDS)
def test_autotokenizer_loads_and_agrees(tok_dirs, toks, kind):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    d = tok_dirs[kind]
    hf = AutoTokenizer.from_pretrained(str(d))
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.eos_token_id == hf.bos_token_id == hf.pad_token_id == hf.unk_token_id == 0
    assert hf.model_max_length == 256
    for x in TRICKY + ["前<|endoftext|>后"]:
        ids = hf(x)["input_ids"]
        assert ids == toks[kind].encode(x).ids, (kind, x)
        assert hf.decode(ids, skip_special_tokens=False) == x, (kind, x)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["zhgpt_kind"] == kind
    assert cfg["clean_up_tokenization_spaces"] is False
    assert json.loads((d / "special_tokens_map.json").read_text())["eos_token"] == EOT


def test_load_hash_kind(tok_dirs, tmp_path):
    d = tok_dirs["bpe"]
    tj = d / "tokenizer.json"
    assert load_tokenizer(d).to_str() == load_tokenizer(tj).to_str()
    assert tokenizer_hash(d) == tokenizer_hash(tj) == hashlib.sha256(tj.read_bytes()).hexdigest()
    assert tokenizer_hash(tok_dirs["char"]) != tokenizer_hash(d)
    assert tokenizer_kind(d) == "bpe" and tokenizer_kind(tok_dirs["unigram"]) == "unigram"
    # a dataset / checkpoint folder holding tokenizer/
    ds = tmp_path / "ds"
    (ds / "tokenizer").mkdir(parents=True)
    (ds / "tokenizer" / "tokenizer.json").write_bytes(tj.read_bytes())
    assert load_tokenizer(ds).get_vocab_size() == load_tokenizer(d).get_vocab_size()
    # errors a user can fix
    with pytest.raises(ZhgptError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZhgptError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text('{"model": 1', encoding="utf-8")
    with pytest.raises(ZhgptError, match="not a valid tokenizer.json"):
        load_tokenizer(bad.parent)
    # a tokenizer.json without our config is "pretrained"
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_bytes(tj.read_bytes())
    assert tokenizer_kind(other) == "pretrained"


def test_hf_folder_without_tokenizer_json(tmp_path):
    """A BERT-style folder (vocab.txt only): transformers builds it; [SEP] separates documents."""
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "国", "人"]) + "\n",
                                 encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}), encoding="utf-8")
    tok = load_tokenizer(d)
    assert tok.encode("中国人", add_special_tokens=False).ids == [5, 6, 7]
    assert eot_id(tok, d) == 3
    assert len(tokenizer_hash(d)) == 64


def test_stats(toks, texts):
    val = pd_lines("val", 200)
    s = stats(toks["bpe"], val, top=5)
    assert s["docs"] == 200 and s["chars"] == sum(map(len, val))
    assert s["chars_per_token"] == pytest.approx(s["chars"] / s["tokens"])
    assert 0.5 < s["chars_per_token"] < 3.0
    assert s["unknown_tokens"] == 0 and s["vocab_size"] == toks["bpe"].get_vocab_size()
    lens = [len(t) for t in s["longest_tokens"]]
    assert len(lens) == 5 and lens == sorted(lens, reverse=True) and lens[0] >= 3
    # fallback: every byte of a missing character counts, for byte-level BPE and byte fallback alike
    for kind in KINDS:
        r = stats(toks[kind], ["𠀀𠀀"])
        assert r["fallback_tokens"] == 8 and r["fallback_rate"] == 1.0 and r["unknown_tokens"] == 0, kind
    char = stats(toks["char"], val)
    assert 0.95 < char["chars_per_token"] <= 1.0
    assert all(len(t) == 1 for t in char["longest_tokens"])


def test_cli_train_and_stats(pd_text, tmp_path):
    train, val = pd_text
    out = tmp_path / "tok"
    r = run_cli("tokenizer", "train", train, "--out", out, "--kind", "char", "--vocab-size", "2000", check=True)
    assert "vocabulary 2,000" in r.stdout
    assert tokenizer_kind(out) == "char" and load_tokenizer(out).get_vocab_size() == 2000
    r = run_cli("tokenizer", "stats", "--tokenizer", out, val, "--top", "3", check=True)
    assert "chars/token" in r.stdout and "fallback" in r.stdout and "vocabulary 2,000" in r.stdout
    r = run_cli("tokenizer", "stats", "--tokenizer", tmp_path / "nope", val)
    assert r.returncode == 2 and "zhgpt: error:" in r.stderr and "Traceback" not in r.stderr
