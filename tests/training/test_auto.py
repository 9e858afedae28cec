"""`--preset auto`: corpus statistics, the choices and their reasons, flags winning, and the record in config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED, pd_lines, run_cli
from zhgpt.data.corpus_stats import corpus_stats
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


def test_vocabulary_and_context_follow_the_corpus(tmp_path, zhgpt_home):
    news = _write(tmp_path / "news.txt", pd_lines("train", 8000))
    short = _write(tmp_path / "short.txt", [line[:30] for line in pd_lines("train", 8000) * 3])
    a, b = auto.choose({"data": [str(news)]}, {}, "cpu"), auto.choose({"data": [str(short)]}, {}, "cpu")
    for rec in (a, b):
        v = rec.train["vocab_size"]
        assert rec.train["tokenizer"] == "unigram" and auto.VOCAB_MIN <= v <= auto.VOCAB_MAX and v & (v - 1) == 0
        assert rec.train["batch_size"] * rec.model["block_size"] == auto.CPU_TOKENS_PER_STEP
    assert b.model["block_size"] < a.model["block_size"]          # shorter documents, shorter windows
    assert {"tokenizer", "vocab_size", "block_size", "shape", "batch_size"} <= set(a.reasons)
    assert a.facts["epochs_est"] > 0 and a.facts["tokens_per_param_est"] > 0


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
    assert any("passes over this corpus" in w for w in rec.warnings)
    quiet = auto.choose({"data": [str(f)], "time_budget": "20s"}, {}, "cpu")
    assert not quiet.warnings
    big = auto.choose({"data": [str(f)], "time_budget": "20s"}, {"n_layer": 12, "n_embd": 768, "n_head": 12}, "cpu")
    assert any("under-trained" in w and "tokens each" in w for w in big.warnings)


def test_train_with_preset_auto_prints_and_records_its_reasons(pd_text, tmp_path, zhgpt_home):
    train, val = pd_text
    out = tmp_path / "run"
    res = run_cli("train", "--preset", "auto", "--data", train, "--val-data", val, "--out", out, "--max-steps", 3,
                  "--n-layer", 1, "--n-embd", 64, "--n-head", 2, "--eval-every", 100, "--no-report", "--no-export",
                  "--log", "none", "--sample-tokens", 0, "--probes", "none", check=True)
    for field in ("tokenizer", "vocab_size", "block_size", "shape", "batch_size"):
        assert f"auto: {field} = " in res.stdout
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["train"]["preset"] == "auto"
    assert cfg["train"]["auto"]["reasons"]["vocab_size"] and cfg["train"]["auto"]["facts"]["corpus"]["docs"] > 0
    assert cfg["data"]["vocab_size"] == cfg["train"]["vocab_size"] or cfg["data"]["tokenizer_kind"] == "char"
