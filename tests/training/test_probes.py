"""Probes of Chinese: the built-in items (size, form, no overlap with the training text), the file format's
one-line errors, the scorer on cases with known answers, and the watcher on a real tokenizer and model."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zhgpt.errors import ZhgptError
from zhgpt.training.probes import (BUILTIN, ProbeWatcher, credit, load_probes, log_likelihoods, make_batches,
                                   probe_metrics, token_baseline)

BUILTIN_GROUPS = {"measure_words", "word_order", "particles", "punctuation", "collocations", "facts"}
PD_TRAIN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pd1998" / "train.txt"


# ------------------------------------------------------------------------- the built-in set

def test_builtin_set_size_groups_and_form():
    items = load_probes(BUILTIN)
    assert len(items) >= 300
    groups = {p.group for p in items}
    assert groups == BUILTIN_GROUPS
    for g in groups:
        assert sum(p.group == g for p in items) >= 40, g
    for p in items:
        assert len(p.texts) == 2 and p.answer == 0, p.where
        # equal lengths: the total log-likelihoods compare like with like (no length normalisation)
        assert len(p.texts[0]) == len(p.texts[1]), p.where
    assert len({p.texts for p in items}) == len(items)          # no item twice


def _corpus_texts() -> list[tuple[str, str]]:
    from zhgpt.data.clean import normalize
    from zhgpt.data.sources import ReadOptions, iter_documents
    docs = [d.text for d in iter_documents(["builtin"], ReadOptions())]
    # Normalised as data preparation does (probe texts are too): NFKC that keeps Chinese punctuation.
    out = [("builtin", "\n".join(normalize(d) for d in docs))]
    if PD_TRAIN.is_file():
        out.append(("pd1998/train.txt", normalize(PD_TRAIN.read_text(encoding="utf-8"))))
    return out


@pytest.mark.slow   # ~1,300 substring searches in 9 M characters: ~5-10 s on 2 shared cores
def test_no_probe_text_occurs_verbatim_in_the_training_text():
    """Neither the right nor the wrong text of any item is in the built-in corpus (nor in the pd1998 benchmark
    text): a probe measures what the model generalised, never what it memorised."""
    texts = {t for p in load_probes(BUILTIN) for t in p.texts}
    for name, corpus in _corpus_texts():
        found = sorted(t for t in texts if t in corpus)
        assert not found, f"{len(found)} probe texts occur verbatim in {name}: {found[:5]}"


def test_facts_are_learnable_from_the_corpus():
    """Each capital of the facts group appears in the corpus in documents that name its country: the fact
    is there in other words (datelines, news), though never as the probe's sentence."""
    from zhgpt.data.sources import ReadOptions, iter_documents
    docs = [d.text for d in iter_documents(["builtin:people-daily"], ReadOptions())]
    for p in load_probes(BUILTIN):
        if p.group == "facts" and p.texts[0].endswith("的首都。"):
            capital, country = p.texts[0][:-4].split("是")
            assert sum(country.replace("印度尼西亚", "印尼") in d and capital in d for d in docs) >= 3, p.texts[0]


# ------------------------------------------------------------------------- file format errors

def _write(tmp_path, *lines) -> Path:
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


GOOD = '{"group": "mine", "good": "我买了一本书。", "bad": "我买了一只书。"}'


@pytest.mark.parametrize("line, message", [
    ('{"group": "mine", "good": "对的"', "not valid JSON"),
    ('["a", "b"]', "must be a JSON object"),
    ('{"group": "mine", "good": "一本书", "bad": "一只书", "optoins": []}', "unknown key"),
    ('{"group": "Measure Words", "good": "一本书", "bad": "一只书"}', "lower-case letters"),
    ('{"good": "一本书", "bad": "一只书"}', "'group' must be"),
    ('{"group": "mine", "good": "一本书"}', "needs both 'good' and 'bad'"),
    ('{"group": "mine", "prefix": "一", "options": ["本书", "只书"], "answer": 2}', "'answer' must be the index"),
    ('{"group": "mine", "prefix": "一", "options": ["本书"]}', "at least two alternatives"),
    ('{"group": "mine", "good": "一本书", "bad": "一本书"}', "the same text"),
    ('{"group": "mine", "good": "一本书", "bad": "一只书", "options": ["a", "b"]}', "not both"),
    ('{"group": "mine", "prefix": "一"}', "no alternatives"),
])
def test_bad_probe_file_gives_file_line_error(tmp_path, line, message):
    f = _write(tmp_path, GOOD, "", line)
    with pytest.raises(ZhgptError, match=message) as err:
        load_probes(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}:3: ") and "\n" not in msg


def test_probes_flag_is_validated_with_the_config(tmp_path):
    from zhgpt.training.config import TrainConfig
    with pytest.raises(ZhgptError, match="cannot read"):
        TrainConfig(probes=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ZhgptError, match="no probe items"):
        TrainConfig(probes=str(_write(tmp_path, "")))
    assert TrainConfig(probes=str(_write(tmp_path, GOOD))).probes.endswith("mine.jsonl")
    assert TrainConfig(probes="none").probes == "none"


def test_cloze_and_pair_forms_give_whole_texts(tmp_path):
    f = _write(tmp_path, GOOD, '{"group": "facts2", "prefix": "日本的首都是", "options": ["巴黎。", "东京。"], '
                                '"answer": 1, "note": "Ｔokyo"}')
    a, b = load_probes(f)
    assert a.texts == ("我买了一本书。", "我买了一只书。") and a.answer == 0
    assert b.texts == ("日本的首都是巴黎。", "日本的首都是东京。") and b.answer == 1


# ------------------------------------------------------------------------- scoring

class TokenCost(torch.nn.Module):
    """A 'model' whose loss for predicting token t is t nats: a sequence's log-likelihood is minus the sum of
    its ids after the first, whatever the batch, padding or order."""

    def forward(self, idx, targets, reduction="mean"):
        keep = targets != -1
        return None, targets[keep].float()


def test_log_likelihoods_are_exact_through_padding_and_batching():
    seqs = [[0, 5, 1], [0, 2], [0, 1, 1, 1, 1, 1], [0, 9, 9, 9], [0, 3]]
    for budget in (1, 4, 100):      # one row per batch ... all rows in one
        batches = make_batches(seqs, budget)
        assert log_likelihoods(TokenCost(), batches, len(seqs), "cpu", torch.float32) == [-6, -2, -5, -27, -3]


def test_batched_scores_match_one_sequence_at_a_time():
    """The real GPT: right padding in a batch changes nothing (causal attention), so each sequence scores the
    same as alone."""
    from zhgpt.model.gpt import GPT
    from zhgpt.model.presets import model_config
    torch.manual_seed(0)
    model = GPT(model_config("cpu-tiny", n_layer=2, n_embd=64, n_head=4, block_size=32, vocab_size=50))
    model.train()
    seqs = [[0] + torch.randint(1, 50, (n,)).tolist() for n in (3, 9, 1, 15, 6, 6)]
    batched = log_likelihoods(model, make_batches(seqs, 1000), len(seqs), "cpu", torch.float32)
    alone = [log_likelihoods(model, make_batches([s], 1000), 1, "cpu", torch.float32)[0] for s in seqs]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert model.training                                    # left as found


def test_leaving_out_the_shared_prefix_changes_no_answer(pd_dataset):
    """The targets every alternative shares at the start are not scored: the same winner as scoring all."""
    from zhgpt.data.shards import TokenDataset
    from zhgpt.data.tokenizer import load_tokenizer
    from zhgpt.model.gpt import GPT
    from zhgpt.model.presets import model_config
    from zhgpt.training.probes import shared_prefix
    assert shared_prefix([[0, 5, 6, 7], [0, 5, 6, 8], [0, 5, 9]]) == 1
    assert shared_prefix([[0, 5, 6], [0, 5, 6, 8]]) == 2
    ds = TokenDataset(pd_dataset)
    tok = load_tokenizer(ds.tokenizer_dir)
    items = load_probes(BUILTIN)[::5]
    seqs = [[ds.eot_id] + tok.encode(t, add_special_tokens=False).ids for p in items for t in p.texts]
    skip = [shared_prefix(seqs[2 * i:2 * i + 2]) for i in range(len(items)) for _ in range(2)]
    assert sum(skip) > 0.2 * sum(len(s) - 1 for s in seqs)
    torch.manual_seed(0)
    model = GPT(model_config("cpu-tiny", n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=ds.vocab_size))
    full = log_likelihoods(model, make_batches(seqs, 4096), len(seqs), "cpu", torch.float32)
    part = log_likelihoods(model, make_batches(seqs, 4096, skip), len(seqs), "cpu", torch.float32)
    for i in range(len(items)):
        assert full[2 * i] - full[2 * i + 1] == pytest.approx(part[2 * i] - part[2 * i + 1], abs=1e-3)


def test_credit_and_metrics():
    assert credit([-3.0, -5.0], 0) == 1 and credit([-5.0, -3.0], 0) == 0
    assert credit([-3.0, -3.0], 0) == 0.5 and credit([-1.0, -1.0, -1.0], 2) == pytest.approx(1 / 3)
    items = load_probes(BUILTIN)[:4]
    m = probe_metrics(items, [1, 0, 0.5, 1])
    assert m["probe_acc"] == 0.625 and all(0 <= v <= 1 for v in m.values())
    assert token_baseline(items, [[2, 3], [3, 2], [2, 2], [1, 1]]) == [1, 0, 0.5, 0.5]


def _tr(tmp_path, ds, model, block_size=64):
    from zhgpt.training.layout import RunFolder
    return SimpleNamespace(ds=ds, mcfg=SimpleNamespace(block_size=block_size, vocab_size=ds.vocab_size),
                           raw_model=model, device="cpu", amp_dtype=torch.float32,
                           dist=SimpleNamespace(master=True), run=RunFolder(tmp_path))


def test_watcher_scores_builtin_and_user_groups(pd_dataset, tmp_path):
    """A random model, the char tokenizer of real text, the built-in set plus a user file with a new group:
    every metric in [0, 1]; RUN/probes.json names the files and groups; the step-0 accuracy is near chance
    (a char tokenizer gives both alternatives the same number of tokens)."""
    from zhgpt.data.shards import TokenDataset
    from zhgpt.model.gpt import GPT
    from zhgpt.model.presets import model_config
    ds = TokenDataset(pd_dataset)
    torch.manual_seed(0)
    model = GPT(model_config("cpu-tiny", n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=ds.vocab_size))
    user = _write(tmp_path, GOOD, '{"group": "mine", "prefix": "日本的首都是", "options": ["东京。", "巴黎。", "伦敦。"]}')
    w = ProbeWatcher(str(user))
    tr = _tr(tmp_path, ds, model)
    w.start(tr)
    m = w.at_eval(tr, 0, [])
    assert set(m) == {"probe_acc", "probe_base"} | {f"probe_acc_{g}" for g in BUILTIN_GROUPS | {"mine"}}
    assert all(0 <= v <= 1 for v in m.values())
    assert abs(m["probe_acc"] - 0.5) < 0.1
    info = json.loads(tr.run.probes.read_text(encoding="utf-8"))
    assert info["files"] == ["builtin", str(user)] and info["items"] == len(load_probes(BUILTIN)) + 2
    assert info["groups"]["mine"]["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-4)
    assert m["probe_base"] == pytest.approx(info["token_baseline"], abs=1e-4)   # the whole set's, for the stages
    assert 0.4 <= info["groups"]["facts"]["token_baseline"] <= 0.6
    assert w.at_eval(tr, 0, []) == m                         # deterministic
    off = ProbeWatcher("none")
    off.start(tr)
    assert off.at_eval(tr, 0, []) == {}


def test_watcher_skips_items_longer_than_the_context(pd_dataset, tmp_path):
    from zhgpt.data.shards import TokenDataset
    ds = TokenDataset(pd_dataset)
    w = ProbeWatcher()
    w.start(_tr(tmp_path, ds, None, block_size=12))
    assert 0 < len(w.items) < len(load_probes(BUILTIN))
    assert all(len(t) <= 12 for p in w.items for t in p.texts)   # char tokenizer: one token per character


def test_a_run_records_probe_accuracy_at_every_evaluation(trained_run):
    from zhgpt.training.layout import RunFolder
    rf = RunFolder(trained_run)
    evals = [r for r in map(json.loads, rf.metrics.read_text(encoding="utf-8").splitlines()) if "val_loss" in r]
    assert evals and all(0 <= e["probe_acc"] <= 1 for e in evals)
    for g in BUILTIN_GROUPS:
        assert all(0 <= e[f"probe_acc_{g}"] <= 1 for e in evals)
        assert not math.isnan(evals[-1][f"probe_acc_{g}"])
    assert json.loads(rf.probes.read_text(encoding="utf-8"))["files"] == ["builtin"]


def test_a_chat_model_is_probed_as_plain_text(sft_run):
    """SFT inherits the probes: the fine-tuned model is scored on the same plain-text items (after the
    end-of-text token), which shows whether fine-tuning kept what pre-training learned."""
    from zhgpt.training.layout import RunFolder
    rows = [json.loads(r) for r in RunFolder(sft_run).metrics.read_text(encoding="utf-8").splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert evals and all(0 <= e["probe_acc"] <= 1 for e in evals)
