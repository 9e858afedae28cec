"""Preference pairs for DPO: a conversation so far, a preferred answer and a worse one.

One pair per JSONL line (or per element of a top-level JSON list), in the layout TRL and most published
preference sets use:

    {"prompt": "question" | [messages], "chosen": "answer" | [messages], "rejected": "answer" | [messages]}
    {"messages": [messages before the answer], "chosen": ..., "rejected": ...}

Messages are OpenAI-style ``{"role", "content"}``. A ``chosen`` / ``rejected`` given as messages is its
last assistant message (TRL's "conversational" form repeats the prompt there; it is ignored). Problems are
reported as ``file:line: reason; what to do``; with ``skip_bad`` a bad record is skipped and counted.

`encode_pair` renders both conversations with the chat template. The tokens that carry loss are those of
the *final* answer only (its ``<|im_end|>`` included): earlier assistant turns are context.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zhgpt.data.chat import ROLES, BadRecord, Message, parsed_records
from zhgpt.data.chat_template import encode, render
from zhgpt.data.clean import normalize
from zhgpt.errors import ZhgptError


@dataclass
class Pair:
    context: list[Message]    # ends with a user message
    chosen: str
    rejected: str
    source: str = ""


@dataclass
class PairReadStats:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped)}


def _messages(value, where: str) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise BadRecord("bad prompt", f'"{where}" must be a string or a non-empty list of messages')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadRecord("bad message", f'"{where}"[{i}] must be {{"role": system|user|assistant, "content": str}}')
        out.append(Message(m["role"], m["content"]))
    return out


def _answer(value, where: str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise BadRecord("empty answer", f'"{where}" is empty')
        return value
    msgs = _messages(value, where)
    if msgs[-1].role != "assistant":
        raise BadRecord("no answer", f'"{where}" must be a string or end with an assistant message')
    return msgs[-1].content


def parse_pair(rec) -> tuple[list[Message], str, str]:
    if not isinstance(rec, dict):
        raise BadRecord("not an object", "a preference pair must be a JSON object")
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    key = "prompt" if "prompt" in rec else "messages" if "messages" in rec else None
    if missing or key is None:
        need = missing + ([] if key else ['"prompt" or "messages"'])
        raise BadRecord("missing field", f"missing {', '.join(need)} (expected prompt|messages, chosen, rejected)")
    context = _messages(rec[key], key)
    if context[-1].role != "user":
        raise BadRecord("bad prompt", f'"{key}" must end with a user message (the answers reply to it)')
    chosen, rejected = _answer(rec["chosen"], "chosen"), _answer(rec["rejected"], "rejected")
    if chosen.strip() == rejected.strip():
        raise BadRecord("same answers", '"chosen" and "rejected" are the same text: the pair prefers nothing')
    return context, chosen, rejected


def read_pairs(paths, skip_bad: bool = False, stats: PairReadStats | None = None) -> list[Pair]:
    stats = stats if stats is not None else PairReadStats()
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ZhgptError(f"{path}: no such file (give JSONL/JSON preference pairs, or builtin)")
        before = stats.read
        for line, (context, chosen, rejected) in parsed_records(path, lambda rec, _: parse_pair(rec), skip_bad, stats):
            out.append(Pair(context, chosen, rejected, f"{path}:{line}"))
        if stats.read == before:
            raise ZhgptError(f"{path}: no preference pairs in the file")
    return out


def encode_answer(tok, context: list[Message], answer: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ids, mask, truncated) of context + answer: the mask covers the final answer and its <|im_end|> only."""
    msgs = [Message(m.role, normalize(m.content)) for m in context] + [Message("assistant", normalize(answer))]
    enc = encode(tok, msgs, max_tokens=max_tokens)
    prompt_len = len(tok.encode(render(msgs[:-1], add_generation_prompt=True)[0], add_special_tokens=False).ids)
    mask = np.asarray(enc.mask, dtype=bool)
    mask[:prompt_len] = False
    return np.asarray(enc.ids, dtype=np.int32), mask, enc.truncated
