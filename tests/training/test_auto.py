"""`--preset auto`: corpus statistics, the choices and their reasons, flags winning, and the record in config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED, pd_lines, run_cli
from zhgpt.data.corpus_stats import corpus_stats, piece_compression
from zhgpt.training import auto
from zhgpt.training.config import resolve_config


def _write(path: Path, docs: list[str]) -> Path:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_corpus_stats_counts_what_the_reader_reads(tmp_path):
    f = _write(tmp_path / "a.txt", ["今天天气很好。", "我们去公园吧！", "OK 好的"])
    s = corpus_stats([str(f)])
    assert (s.chars, s.docs, s.sampled) == (7 + 7 + 5, 3, False)
    assert s.distinct == len(set("今天天气很好。我们去公园吧！OK 好的"))
    assert s.avg_doc_chars == pytest.approx(19 / 3)
    assert s.cjk_share == pytest.approx(14 / 18)      # ideographs over non-space characters


@pytest.mark.skipif(not (SHARED / "train.txt").is_file(), reason="needs ../shared/data/pd1998")
def test_a_sampled_pass_estimates_the_size_of_a_large_corpus():
    full = corpus_stats([str(SHARED / "train.txt")])
    part = corpus_stats([str(SHARED / "train.txt")], max_chars=200_000)
    assert part.sampled and not full.sampled
    assert part.chars == pytest.approx(full.chars, rel=0.05) and part.docs == pytest.approx(full.docs, rel=0.1)


def test_a_small_corpus_gets_the_char_tokenizer(tmp_path, zhgpt_home):
    f = _write(tmp_path / "small.txt", pd_lines("train", 300))
    rec = auto.choose({"data": [str(f)]}, {}, "cpu")
    assert rec.train["tokenizer"] == "char"
    assert any(line.startswith("auto: tokenizer = char: ") for line in rec.lines({}, {}))
    # ~95-character paragraphs: one per window with single characters (64), two with unigram pieces (128)
    assert rec.model["block_size"] == auto.CHAR_CTX_MIN == 64 and rec.train["batch_size"] == 32


def test_single_characters_get_a_document_per_window_except_in_a_short_run(tmp_path, zhgpt_home):
    lines = pd_lines("train", 900)
    novel = _write(tmp_path / "novel.txt", ["".join(lines[i:i + 3]) for i in range(0, len(lines), 3)])
    long = auto.choose({"data": [str(novel)], "time_budget": "12h"}, {}, "cpu")
    assert long.train["tokenizer"] == "char" and long.model["block_size"] == 256     # ~285-character documents
    short = auto.choose({"data": [str(novel)], "time_budget": "30s"}, {}, "cpu")
    assert short.model["block_size"] == auto.CHAR_CTX_MIN and short.train["batch_size"] == 32
    assert "short run" in short.reasons["block_size"]


def test_a_resolved_config_keeps_its_tokenizer_and_fills_an_unset_one(tmp_path, zhgpt_home):
    """The API path (tests, benches): cfg's own tokenizer feeds auto's context; an unset one takes auto's."""
    from zhgpt.training.config import TrainConfig, resolve_run_config
    f = _write(tmp_path / "small.txt", pd_lines("train", 300))
    cfg, model, _ = resolve_run_config(TrainConfig(data=[str(f)], preset="auto"), None, {}, "cpu")
    assert (cfg.tokenizer, cfg.vocab_size, model["block_size"]) == ("char", 8000, 64)
    fixed = TrainConfig(data=[str(f)], preset="auto", tokenizer="unigram", vocab_size=4096)
    cfg, model, _ = resolve_run_config(fixed, None, {}, "cpu")
    assert (cfg.tokenizer, cfg.vocab_size, model["block_size"]) == ("unigram", 4096, 128)
    assert "tokenizer" in cfg.auto["overridden_by_flags"]



def test_text_that_pieces_barely_compress_gets_the_char_tokenizer(tmp_path, zhgpt_home):
    news = _write(tmp_path / "news.txt", pd_lines("train", 8000) * 2)     # ~1.5M characters of prose
    measured = piece_compression([str(news)])
    assert auto.CHAR_PIECES_BELOW < measured < 1.6                   # news: ~1.3 characters per 4k piece
    facts = {**auto.corpus_facts([str(news)]), "unigram4k_chars_per_token": measured}
    assert auto.choose_tokenizer(facts, None)[0]["tokenizer"] == "unigram"
    verse = {**facts, "unigram4k_chars_per_token": 1.1}                # Song ci / Yuan sanqu measured 1.10-1.12
    tok, why = auto.choose_tokenizer(verse, None)
    assert tok["tokenizer"] == "char" and "1.10 characters" in why["tokenizer"]


def test_vocabulary_and_context_follow_the_corpus_and_the_budget(tmp_path, zhgpt_home):
    lines = pd_lines("train", 8000) * 2                                  # ~1.5M characters: unigram
    news = _write(tmp_path / "news.txt", lines)
    long = _write(tmp_path / "long.txt", ["".join(lines[i:i + 12]) for i in range(0, len(lines), 12)])
    a, b = auto.choose({"data": [str(news)]}, {}, "cpu"), auto.choose({"data": [str(long)]}, {}, "cpu")
    for rec in (a, b):
        v = rec.train["vocab_size"]
        assert rec.train["tokenizer"] == "unigram" and auto.VOCAB_MIN <= v <= auto.VOCAB_MAX and v & (v - 1) == 0
        assert rec.train["batch_size"] * rec.model["block_size"] == 16 * 128   # cpu-tiny's tokens per step
    assert a.model["block_size"] == auto.CTX_MIN                 # paragraphs of ~95 characters: the screened 128
    assert b.model["block_size"] > a.model["block_size"]         # documents 12x longer, longer windows
    assert {"tokenizer", "vocab_size", "block_size", "shape", "batch_size", "lr"} <= set(a.reasons)
    assert a.facts["epochs_est"] > 0 and a.facts["tokens_per_param_est"] > 0
    assert any(line.startswith("auto: budget: ~") and "passes over the corpus" in line and "tokens per parameter"
               in line for line in a.lines({}, {}))
    # a GPU shape keeps its preset's 16 x 8 x 1024 tokens per step at a shorter context
    assert auto.choose_batch("small", {"batch_size": 16, "grad_accum": 8}, 1024, 256)[0] == 64
    short = auto.choose({"data": [str(news)], "time_budget": "20s"}, {}, "cpu")
    assert short.train["vocab_size"] == auto.VOCAB_MIN <= a.train["vocab_size"]   # less text seen, fewer pieces
    assert "tokens the budget trains on" in short.reasons["vocab_size"]


def test_auto_is_the_default_and_a_named_preset_is_not_touched(tmp_path, zhgpt_home):
    news = _write(tmp_path / "news.txt", pd_lines("train", 8000) * 2)
    cfg, model, preset = resolve_config({"data": [str(news)]}, {}, "cpu")
    assert preset == "auto" and cfg.auto["facts"]["shape_preset"] == "cpu-tiny" and cfg.auto["reasons"]
    assert (cfg.tokenizer, cfg.vocab_size, model["block_size"]) == ("unigram", model["vocab_size"], 128)
    named, named_model, _ = resolve_config({"data": [str(news)], "preset": "cpu-tiny"}, {}, "cpu")
    assert (named.vocab_size, named_model["block_size"], named.auto) == (16384, 128, {})


def test_flags_win_and_the_reasons_say_so(tmp_path, zhgpt_home):
    news = _write(tmp_path / "news.txt", pd_lines("train", 8000))
    explicit = {"data": [str(news)], "preset": "auto", "tokenizer": "bpe", "batch_size": 4}
    cfg, model, preset = resolve_config(explicit, {"block_size": 96}, "cpu")
    assert (cfg.tokenizer, cfg.batch_size, model["block_size"], preset) == ("bpe", 4, 96, "auto")
    assert set(cfg.auto["overridden_by_flags"]) == {"tokenizer", "batch_size", "block_size"}
    lines = auto.choose(explicit, {"block_size": 96}, "cpu").lines(explicit, {"block_size": 96})
    assert any(line.startswith("auto: tokenizer = bpe (your flag") for line in lines)
    assert any(line.startswith("auto: block_size = 96 (your flag") for line in lines)


def test_a_budget_that_repeats_the_corpus_is_warned_about_with_numbers(tmp_path, zhgpt_home):
    f = _write(tmp_path / "news.txt", pd_lines("train", 2000))
    rec = auto.choose({"data": [str(f)], "time_budget": "3h"}, {}, "cpu")
    assert rec.facts["epochs_est"] > auto.EPOCHS_OK
    assert any("passes over this corpus" in w and "training stops after 4 passes" in w for w in rec.warnings)
    assert rec.train["max_epochs"] == auto.EPOCHS_OK                                          # stops at 4 passes
    cfg, _, _ = resolve_config({"data": [str(f)], "time_budget": "3h", "max_tokens": 10 ** 9}, {}, "cpu")
    assert (cfg.max_tokens, cfg.max_epochs) == (10 ** 9, 0)                                  # the flag wins
    cfg, _, _ = resolve_config({"data": [str(f)], "time_budget": "3h", "max_epochs": 0}, {}, "cpu")
    assert cfg.max_epochs == 0 and "max_epochs" in cfg.auto["overridden_by_flags"]
    unlimited = auto.choose({"data": [str(f)], "time_budget": "3h", "max_epochs": 0}, {}, "cpu")
    assert any(w.endswith("--max-epochs 0: the whole budget is trained") for w in unlimited.warnings)
    short = auto.choose({"data": [str(f)], "time_budget": "3h", "max_steps": 5}, {}, "cpu")
    assert any("--max-steps ends the run sooner" in w for w in short.warnings)                # no false promise
    assert not any("training stops after" in w for w in short.warnings)
    quiet = auto.choose({"data": [str(f)], "time_budget": "20s"}, {}, "cpu")
    assert not quiet.warnings and "max_tokens" not in quiet.train
    big = auto.choose({"data": [str(f)], "time_budget": "20s"}, {"n_layer": 12, "n_embd": 768, "n_head": 12}, "cpu")
    assert any("under-trained" in w and "tokens each" in w for w in big.warnings)


def test_train_with_preset_auto_prints_and_records_its_reasons(pd_text, tmp_path, zhgpt_home):
    train, val = pd_text
    out = tmp_path / "run"
    res = run_cli("train", "--preset", "auto", "--data", train, "--val-data", val, "--out", out, "--max-steps", 3,
                  "--n-layer", 1, "--n-embd", 64, "--n-head", 2, "--eval-every", 100, "--no-report", "--no-export",
                  "--log", "none", "--sample-tokens", 0, "--probes", "none", check=True)
    for field in ("tokenizer", "vocab_size", "block_size", "shape", "batch_size", "lr"):
        assert f"auto: {field} = " in res.stdout
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["train"]["preset"] == "auto"
    assert cfg["train"]["auto"]["reasons"]["vocab_size"] and cfg["train"]["auto"]["facts"]["corpus"]["docs"] > 0
    assert cfg["data"]["vocab_size"] == cfg["train"]["vocab_size"] or cfg["data"]["tokenizer_kind"] == "char"
