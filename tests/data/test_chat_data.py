"""SFT data: the four conversation formats, their one-line errors, and the ChatML template, checked against
transformers' own apply_chat_template on a tokenizer trained on real Chinese text."""
from __future__ import annotations

import json

import numpy as np

import pytest

from zhgpt.data.chat import ChatReadStats, Message, read_conversations
from zhgpt.data.chat_template import (CHAT_TEMPLATE, IM_END, IM_START, encode, render, write_chat_tokenizer)
from zhgpt.errors import ZhgptError

Q1, A1, Q2, A2 = "这条评论是正面还是负面？质量很好，物流也快。", "正面", "为什么？", "因为评论说质量很好。"
SYSTEM = "你是一个有帮助的中文助手。"
EXPECTED = [Message("system", SYSTEM), Message("user", Q1), Message("assistant", A1),
            Message("user", Q2), Message("assistant", A2)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def openai_rec():
    return {"messages": [{"role": m.role, "content": m.content} for m in EXPECTED]}


def sharegpt_rec():
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m.role], "value": m.content} for m in EXPECTED]}


def minimind_rec():
    return {"conversations": [{"role": m.role, "content": m.content} for m in EXPECTED]}


@pytest.mark.parametrize("make", [openai_rec, sharegpt_rec, minimind_rec], ids=["openai", "sharegpt", "minimind"])
def test_multi_turn_formats_read_the_same(tmp_path, make):
    stats = ChatReadStats()
    convs = list(read_conversations([write_jsonl(tmp_path / "c.jsonl", [make(), make()])], stats=stats))
    assert [c.messages for c in convs] == [EXPECTED, EXPECTED]
    assert convs[1].source.endswith("c.jsonl:2")
    assert stats.kept == 2 and stats.formats == {str(tmp_path / "c.jsonl"): make.__name__.removesuffix("_rec")}


def test_alpaca_and_json_lists(tmp_path):
    recs = [{"instruction": "把下面的句子翻译成英文", "input": "你好", "output": "Hello"},
            {"instruction": "中国的首都是哪里？", "input": "", "output": "北京", "system": SYSTEM}]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    a, b = read_conversations([p])
    assert a.messages == [Message("user", "把下面的句子翻译成英文\n你好"), Message("assistant", "Hello")]
    assert b.messages == [Message("system", SYSTEM), Message("user", "中国的首都是哪里？"), Message("assistant", "北京")]


@pytest.mark.parametrize("bad, expect", [
    ({"messages": [{"role": "user", "content": "你好"}]}, "no assistant turn"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "好"}]}, 'messages[0] has no "content"'),
    ({"messages": [{"role": "robot", "content": "嗨"}]}, "role 'robot'"),
    ({"conversations": [{"from": "human", "value": "嗨"}, {"from": "gpt"}]}, 'conversations[1] has no "value"'),
    ({"instruction": "写一首诗"}, '"output" is missing'),
    ({"text": "只是一段文字"}, "no conversation fields"),
])
def test_bad_records_name_file_line_and_reason(tmp_path, bad, expect):
    p = tmp_path / "bad.jsonl"     # a blank first line: line numbers still count it
    p.write_text("\n" + json.dumps(bad, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ZhgptError) as e:
        list(read_conversations([p]))
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: ") and expect in msg and "\n" not in msg


def test_mixed_formats_and_skipping_is_counted(tmp_path):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [openai_rec(), sharegpt_rec()])
    with pytest.raises(ZhgptError, match=r"mixed.jsonl:2: .*sharegpt format but the file started in openai"):
        list(read_conversations([mixed]))
    p = tmp_path / "some_bad.jsonl"
    p.write_text(json.dumps(openai_rec(), ensure_ascii=False) + "\n{broken\n"
                 + json.dumps({"messages": [{"role": "user", "content": "嗨"}]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    stats = ChatReadStats()
    assert len(list(read_conversations([p], skip_bad=True, stats=stats))) == 1
    assert stats.read == 3 and stats.kept == 1
    assert stats.skipped == {"broken JSON": 1, "no assistant turn": 1}


@pytest.fixture(scope="module", params=["char", "bpe"])
def base_tok_dir(request, pd_dataset, pd_text, tmp_path_factory):
    """The test dataset's char tokenizer, and a byte-level BPE trained on the same text (its tokens cross
    the template's boundaries, which is what the offset-based mask must survive)."""
    if request.param == "char":
        return pd_dataset / "tokenizer"
    from zhgpt.data.tokenizer import save_tokenizer, train_tokenizer
    docs = pd_text[0].read_text(encoding="utf-8").splitlines()
    return save_tokenizer(train_tokenizer(iter(docs), "bpe", 3000), tmp_path_factory.mktemp("bpe") / "tok", "bpe")


@pytest.fixture(scope="module")
def chat_tok_dir(base_tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "tok"
    write_chat_tokenizer(base_tok_dir, out)
    return out


def test_template_matches_transformers(chat_tok_dir):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(chat_tok_dir))
    assert hf.chat_template == CHAT_TEMPLATE
    as_dicts = [{"role": m.role, "content": m.content} for m in EXPECTED]
    for gen in (False, True):
        text, _ = render(EXPECTED, add_generation_prompt=gen)
        assert hf.apply_chat_template(as_dicts, tokenize=False, add_generation_prompt=gen) == text
    ids = hf.apply_chat_template(as_dicts, tokenize=True, return_dict=False)
    from zhgpt.data.tokenizer import load_tokenizer
    assert encode(load_tokenizer(chat_tok_dir), EXPECTED).ids == list(ids)


def test_new_tokens_extend_the_vocabulary_and_keep_old_ids(base_tok_dir, chat_tok_dir):
    from zhgpt.data.tokenizer import load_tokenizer
    old, new = load_tokenizer(base_tok_dir), load_tokenizer(chat_tok_dir)
    n = old.get_vocab_size()
    assert [new.token_to_id(IM_START), new.token_to_id(IM_END)] == [n, n + 1]
    assert new.get_vocab_size() == n + 2
    text = "人民日报一月一日的社论：新年好！"
    assert new.encode(text).ids == old.encode(text).ids
    # writing it again adds nothing
    again = write_chat_tokenizer(chat_tok_dir, chat_tok_dir.parent / "tok2")
    assert again.get_vocab_size() == n + 2


def test_loss_mask_covers_exactly_the_answers(chat_tok_dir):
    from zhgpt.data.tokenizer import load_tokenizer
    tok = load_tokenizer(chat_tok_dir)
    enc = encode(tok, EXPECTED)
    targets = [i for i, m in zip(enc.ids, enc.mask) if m]
    # the masked tokens decode to the two answers, each followed by its end marker, and nothing else
    assert tok.decode(targets, skip_special_tokens=False).replace(" ", "") == f"{A1}{IM_END}{A2}{IM_END}"
    assert sum(enc.mask) == enc.targets and not enc.mask[0]
    # the user's words never carry loss: a different question leaves the answers' mask the same
    other = [m if m.role != "user" else Message("user", m.content + "请详细回答。") for m in EXPECTED]
    enc2 = encode(tok, other)
    assert [i for i, m in zip(enc2.ids, enc2.mask) if m] == targets
    cut = encode(tok, EXPECTED, max_tokens=10)
    assert cut.truncated and len(cut.ids) == 10 and not encode(tok, EXPECTED).truncated


def test_builtin_sft_set_is_balanced_and_held_out_by_text():
    from zhgpt.data.chat_builtin import LABELS, builtin_sft, sentiment_conversations
    train, val = builtin_sft("train"), builtin_sft("val")
    assert len(train) > 10_000 and 500 < len(val) < len(train) / 10
    prompts = lambda convs: {c.messages[0].content for c in convs}   # noqa: E731
    assert not prompts(train) & prompts(val)
    answers = [c.messages[-1].content for c in sentiment_conversations("val")]
    assert set(answers) == set(LABELS.values()) and abs(answers.count("正面") - answers.count("负面")) <= 1
    assert all(c.has_answer and c.messages[0].role == "user" for c in train[:200] + val)


def test_padded_batches_take_loss_on_answers_only(chat_tok_dir):
    from zhgpt.data.sft import IGNORE, encode_conversations, pad_batch
    from zhgpt.data.tokenizer import load_tokenizer
    tok = load_tokenizer(chat_tok_dir)
    short = [Message("user", "１９９７年好吗？"), Message("assistant", "好")]
    long_question = [Message("user", "很长的问题" * 40), Message("assistant", "答")]
    ex = encode_conversations([EXPECTED, short, long_question, EXPECTED], tok, block_size=64)
    assert len(ex) == 3 and ex.dropped == {"answer beyond the context": 1}
    # cleaned like pre-training text: full-width digits read as ASCII
    assert tok.decode(ex.ids[1].tolist(), skip_special_tokens=False).replace(" ", "").startswith(f"{IM_START}user\n1997")
    x, y = pad_batch(ex, [0, 1], pad_id=0)
    assert x.shape == y.shape == (2, len(ex.ids[0]) - 1)
    assert (x[:, 1:] == np.where(y[:, :-1] >= 0, y[:, :-1], x[:, 1:])).all()   # targets are the next tokens
    want = tok.decode([t for t in y[1] if t != IGNORE], skip_special_tokens=False).replace(" ", "")
    assert want == f"好{IM_END}" and (y[1, len(ex.ids[1]) - 1:] == IGNORE).all()
    assert ex.targets == int((y >= 0).sum()) + int(ex.mask[2][1:].sum())
