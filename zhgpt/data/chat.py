"""Conversations for supervised fine-tuning, read from the formats people actually have.

One conversation per JSONL line (or one per element of a top-level JSON list), in any of:

    OpenAI     {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    ShareGPT   {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}
    MiniMind   {"conversations": [{"role": "user"|"assistant", "content": "..."}, ...]}
    Alpaca     {"instruction": "...", "input": "...", "output": "...", "system"?: "..."}

The format is detected from a file's first record and every later record must have the same one: a
file that mixes formats is almost always two files concatenated by mistake, and guessing per line would
hide that. Every problem is reported as ``file:line: reason; what to do``. Nothing is dropped silently:
with ``skip_bad`` a bad record is skipped and counted in ``ChatReadStats.skipped`` under its reason.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhgpt.errors import ZhgptError

ROLES = ("system", "user", "assistant")
# ShareGPT speaker names -> roles. "human"/"gpt" are the original's; the others appear in its derivatives.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
FORMATS = ("openai", "sharegpt", "minimind", "alpaca")


@dataclass(frozen=True)
class Message:
    role: str          # system | user | assistant
    content: str


@dataclass
class Conversation:
    messages: list[Message]
    source: str = ""   # "file:line", for messages about this conversation later on

    @property
    def has_answer(self) -> bool:
        return any(m.role == "assistant" for m in self.messages)


@dataclass
class ChatReadStats:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)     # reason -> count
    formats: dict = field(default_factory=dict)           # file -> detected format

    def summary(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped), "formats": self.formats}


class BadRecord(ValueError):
    """A record that cannot become a conversation: ``reason`` is a short key for the skipped counts,
    the message says what is wrong and what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def detect_format(rec) -> str:
    if not isinstance(rec, dict):
        raise BadRecord("not an object", f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        turns = rec["conversations"]
        first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
        return "sharegpt" if "from" in first or "value" in first else "minimind"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    raise BadRecord("unknown format", f"no conversation fields (keys: {', '.join(sorted(rec)[:8]) or 'none'}); "
                    "expected messages (OpenAI), conversations (ShareGPT/MiniMind) or instruction+output (Alpaca)")


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadRecord("content not text", f"{where} must be a string, got {type(value).__name__}")
    return value


def _turns(turns, key: str, role_key: str, text_key: str, role_map: dict | None) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise BadRecord("no turns", f'"{key}" must be a non-empty list of turns')
    out = []
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise BadRecord("bad turn", f"{where} must be an object, got {type(t).__name__}")
        for k in (role_key, text_key):
            if k not in t:
                raise BadRecord(f"missing {k}", f'{where} has no "{k}" field')
        role = str(t[role_key]).lower()
        role = role_map.get(role, "") if role_map else role
        if role not in ROLES:
            raise BadRecord("unknown role", f"{where}: role {t[role_key]!r} is not one of "
                            f"{', '.join(role_map or ROLES)}")
        out.append(Message(role, _text(t[text_key], f"{where}.{text_key}")))
    return out


def _alpaca(rec: dict) -> list[Message]:
    for k in ("instruction", "output"):
        if k not in rec:
            raise BadRecord(f"missing {k}", f'an Alpaca record needs "instruction" and "output"; "{k}" is missing')
    prompt = _text(rec["instruction"], "instruction")
    extra = _text(rec.get("input") or "", "input")
    msgs = [Message("system", _text(rec["system"], "system"))] if rec.get("system") else []
    return msgs + [Message("user", f"{prompt}\n{extra}" if extra else prompt),
                   Message("assistant", _text(rec["output"], "output"))]


def parse_record(rec, fmt: str) -> list[Message]:
    """The messages of one record in format ``fmt``; raises BadRecord."""
    if fmt == "openai":
        msgs = _turns(rec.get("messages"), "messages", "role", "content", None)
    elif fmt == "sharegpt":
        msgs = _turns(rec.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    elif fmt == "minimind":
        msgs = _turns(rec.get("conversations"), "conversations", "role", "content", None)
    else:
        msgs = _alpaca(rec)
    if not any(m.role == "assistant" for m in msgs):
        raise BadRecord("no assistant turn", "the conversation has no assistant turn, so there is nothing to learn "
                        "from it; add the answer or drop the record")
    if any(m.role == "system" for m in msgs[1:]):
        raise BadRecord("system not first", "a system message may only open the conversation")
    return msgs


def json_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) for a JSONL file, or for each element of a JSON list."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(1 << 16).lstrip()
            f.seek(0)
            if path.suffix == ".json" or head.startswith("["):
                data = json.load(f)
                if not isinstance(data, list):
                    raise ZhgptError(f"{path}: a .json file must hold a list of records (one per conversation or pair)")
                yield from ((i + 1, rec) for i, rec in enumerate(data))   # "line" = record number here
                return
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, BadRecord("broken JSON", f"not valid JSON ({e.msg} at column {e.colno})")
    except FileNotFoundError:
        raise ZhgptError(f"{path}: file not found; pass JSONL/JSON files") from None
    except UnicodeDecodeError as e:
        raise ZhgptError(f"{path}: not UTF-8 (byte {e.start}); save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise ZhgptError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from None


def parsed_records(path: Path, parse, skip_bad: bool, stats) -> Iterator[tuple[int, object]]:
    """(line, parse(record, line)) for the records of one file. A record ``parse`` rejects with BadRecord is a
    one-line error, or with ``skip_bad`` skipped and counted under its reason; ``stats`` counts read and kept.
    Shared by conversations and preference pairs (``zhgpt.data.preference``)."""
    for line, rec in json_records(path):
        stats.read += 1
        try:
            if isinstance(rec, BadRecord):
                raise rec
            value = parse(rec, line)
        except BadRecord as e:
            if not skip_bad:
                raise ZhgptError(f"{path}:{line}: {e}; fix the record or pass --skip-bad-lines "
                                 "to skip (and count) such records") from None
            stats.skipped[e.reason] += 1
            continue
        stats.kept += 1
        yield line, value


def read_conversations(paths, skip_bad: bool = False, stats: ChatReadStats | None = None) -> Iterator[Conversation]:
    """Conversations from JSONL/JSON files, format detected per file (see the module docstring)."""
    stats = stats if stats is not None else ChatReadStats()
    for path in map(Path, paths):
        fmt = None

        def parse(rec, line):
            nonlocal fmt
            found = detect_format(rec)
            fmt = fmt or found
            if found != fmt:
                raise ZhgptError(f"{path}:{line}: this record is in {found} format but the file started in "
                                 f"{fmt} format; split the file so each holds one format")
            return parse_record(rec, fmt)

        for line, msgs in parsed_records(path, parse, skip_bad, stats):
            stats.formats[str(path)] = fmt
            yield Conversation(msgs, f"{path}:{line}")
        if fmt is None:
            raise ZhgptError(f"{path}: no conversations in the file")
