"""The token surprise map: the rule that spreads a token's loss over its characters, on hand-made tokenizers
with known answers, and RUN/surprise.jsonl as a tiny run writes it."""
from __future__ import annotations

import json
import math

import pytest
import torch

from zhgpt.data.clean import normalize
from zhgpt.training.surprise import (PARAGRAPH_CHARS, SurpriseWatcher, char_bits, pick_paragraph,
                                     token_char_spans)

LN2 = math.log(2)


def bytes_decoder(vocab: dict[int, bytes]):
    """A byte-level tokenizer's decode: the tokens' bytes joined, partial characters as U+FFFD."""
    return lambda ids: b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def test_char_tokenizer_gives_each_character_its_token_bits():
    text = "中国人，好"
    decode = lambda ids: "".join(chr(i) for i in ids)
    ids = [ord(c) for c in text]
    spans = token_char_spans(decode, ids, text)
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    nats = [0.5, 1.0, 2.0, 3.0, 4.0]
    assert char_bits(nats, spans, len(text)) == pytest.approx([n / LN2 for n in nats])


def test_multi_character_token_is_shared_equally():
    vocab = {0: "中国", 1: "人", 2: "，", 3: "人民日报"}
    decode = lambda ids: "".join(vocab[i] for i in ids)
    ids = [0, 1, 2, 3]
    text = decode(ids)                                    # 中国人，人民日报
    spans = token_char_spans(decode, ids, text)
    assert spans == [(0, 2), (2, 3), (3, 4), (4, 8)]
    bits = char_bits([2 * LN2, 1 * LN2, 3 * LN2, 8 * LN2], spans, len(text))
    assert bits == pytest.approx([1, 1, 1, 3, 2, 2, 2, 2])
    assert sum(bits) == pytest.approx(14)                 # the shares add up to the tokens' total


def test_byte_tokens_add_to_the_character_they_are_part_of():
    # 中 = e4 b8 ad, 国 = e5 9b bd: three byte tokens spell 中, then "a", then 国 in two tokens (2 + 1 bytes).
    vocab = {0: b"\xe4", 1: b"\xb8", 2: b"\xad", 3: b"a", 4: b"\xe5\x9b", 5: b"\xbd"}
    ids = [0, 1, 2, 3, 4, 5]
    decode = bytes_decoder(vocab)
    text = decode(ids)
    assert text == "中a国"
    spans = token_char_spans(decode, ids, text)
    assert spans == [(0, 1), (0, 1), (0, 1), (1, 2), (2, 3), (2, 3)]
    bits = char_bits([LN2, 2 * LN2, 3 * LN2, 4 * LN2, 5 * LN2, 6 * LN2], spans, len(text))
    assert bits == pytest.approx([6, 4, 11])


def test_token_across_a_character_boundary_touches_both():
    vocab = {0: b"\xe4\xb8", 1: b"\xad\xe5", 2: b"\x9b\xbd"}   # 中国 cut at the wrong places
    ids = [0, 1, 2]
    decode = bytes_decoder(vocab)
    text = decode(ids)
    assert text == "中国"
    spans = token_char_spans(decode, ids, text)
    assert spans == [(0, 1), (0, 2), (1, 2)]
    assert char_bits([LN2, 2 * LN2, 4 * LN2], spans, 2) == pytest.approx([1 + 1, 1 + 4])


def test_pick_paragraph_prefers_a_whole_document_that_fits():
    decode = lambda ids: "".join(chr(i) for i in ids)
    doc = lambda n, c="字": [ord(c)] * n
    lo, hi = PARAGRAPH_CHARS
    docs = [doc(5), doc(hi + 50, "长"), doc(lo + 10, "好")]
    ids, text = pick_paragraph(iter(docs), decode, max_tokens=200)
    assert text == "好" * (lo + 10)
    # nothing fits the context: the first long-enough document, cut to the context
    ids, text = pick_paragraph(iter(docs), decode, max_tokens=lo + 5)
    assert text == "长" * (lo + 5) and len(ids) == lo + 5
    assert pick_paragraph(iter([doc(3)]), decode, max_tokens=100) is None


def test_scoring_leaves_mode_and_rng_alone():
    from zhgpt.model.gpt import GPT, ModelConfig
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=16))
    model.train()
    w = SurpriseWatcher()
    w.ids = [3, 4, 5, 6]
    before = torch.get_rng_state()
    nats = w.score(model, 0, "cpu", torch.float32)
    assert model.training and torch.equal(before, torch.get_rng_state())
    assert len(nats) == 4 and all(n > 0 for n in nats)
    # the same numbers as the model's own mean loss over those targets
    x, y = torch.tensor([[0, 3, 4, 5]]), torch.tensor([[3, 4, 5, 6]])
    model.eval()
    assert sum(nats) / 4 == pytest.approx(float(model(x, y)[1].detach()), rel=1e-5)


def test_tiny_run_writes_surprise_jsonl(trained_run, pd_text):
    from zhgpt.training.layout import RunFolder
    run = RunFolder(trained_run)
    recs = [json.loads(line) for line in run.surprise.read_text(encoding="utf-8").splitlines()]
    evals = [json.loads(line) for line in run.metrics.read_text(encoding="utf-8").splitlines()]
    evals = [r for r in evals if "val_loss" in r]
    assert [r["step"] for r in recs] == [r["step"] for r in evals] and len(recs) >= 3
    text = recs[0]["text"]
    # a piece of the validation text, as data preparation normalised it (full-width digits -> ASCII)
    assert text in normalize(pd_text[1].read_text(encoding="utf-8"))
    assert len(text) >= 2 and all(r["text"] == text for r in recs)
    for rec, ev in zip(recs, evals):
        assert len(rec["bits"]) == len(text)
        assert all(math.isfinite(b) and b >= 0 for b in rec["bits"])
        assert ev["surprise_bits"] == pytest.approx(sum(rec["bits"]) / len(text), abs=2e-3)
    # the char tokenizer at step 0: every character costs about log2(vocab) bits (near-uniform output)
    vocab = json.loads(run.config.read_text(encoding="utf-8"))["data"]["vocab_size"]
    assert sum(recs[0]["bits"]) / len(text) == pytest.approx(math.log2(vocab), rel=0.15)
    assert recs[-1]["bits"] != recs[0]["bits"]
