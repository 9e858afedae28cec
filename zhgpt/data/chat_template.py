"""The chat template: ChatML special tokens, the Jinja template stored with the tokenizer, and the
conversation -> (token ids, loss mask) encoding that SFT trains on.

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{user}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

ChatML (Qwen, MiniMind, many Chinese chat models) because every tool a user will run the model in
already knows it. The Jinja text below is the one source of the format: it goes into
``tokenizer_config.json`` as ``chat_template``, so ``AutoTokenizer.apply_chat_template``, `zhgpt chat`,
the demo and ``/v1/chat/completions`` format prompts identically; ``render`` reproduces it in Python
(a test compares the two) because training also needs to know which characters are the assistant's.

Loss is taken on the assistant's content and its ``<|im_end|>`` (so the model learns to stop), never on
the system or user text or the role headers: the mask is built from character spans mapped through the
tokenizer's offsets, so it is exact however the tokenizer splits text around the boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

from zhgpt.data.chat import Message

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GENERATION_PROMPT = f"{IM_START}assistant\n"


def add_chat_tokens(tok) -> list[int]:
    """Add the ChatML tokens to a ``tokenizers.Tokenizer`` (in place) as special tokens; returns their ids.
    Existing ids are untouched: the new tokens take the next free ids, so a model's old embedding rows
    keep their meaning and only new rows are added."""
    from tokenizers import AddedToken
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return [tok.token_to_id(t) for t in CHAT_TOKENS]


def render(messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the template applied to ``messages``, and the [start, end) character spans that carry
    loss (each assistant message's content plus its <|im_end|>)."""
    parts, spans, pos = [], [], 0
    for m in messages:
        head = f"{IM_START}{m.role}\n"
        body = f"{m.content}{IM_END}"
        if m.role == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        piece = head + body + "\n"
        parts.append(piece)
        pos += len(piece)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), spans


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]          # True where the token is a training target (assistant content + <|im_end|>)
    truncated: bool = False   # the conversation was longer than max_tokens and was cut

    @property
    def targets(self) -> int:
        return sum(self.mask)


def encode(tok, messages: list[Message], max_tokens: int | None = None) -> Encoded:
    """Token ids of a rendered conversation and its loss mask. A token is a target when it starts inside an
    assistant span. Longer than ``max_tokens``: cut at the end (and flagged, so the caller can count it)."""
    text, spans = render(messages)
    enc = tok.encode(text, add_special_tokens=False)
    mask, j = [], 0
    for start, _ in enc.offsets:
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        mask.append(j < len(spans) and spans[j][0] <= start < spans[j][1])
    ids = list(enc.ids)
    truncated = max_tokens is not None and len(ids) > max_tokens
    if truncated:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return Encoded(ids, mask, truncated)


def tokenizer_config_fields() -> dict:
    """What tokenizer_config.json gains for a chat model (transformers reads all of these)."""
    return {"chat_template": CHAT_TEMPLATE, "additional_special_tokens": list(CHAT_TOKENS)}


def write_chat_tokenizer(src_dir, out_dir):
    """Copy a tokenizer folder to ``out_dir`` with the chat tokens added and the chat template stored, so that
    ``AutoTokenizer.from_pretrained(out_dir).apply_chat_template`` works. Returns the loaded, extended
    ``tokenizers.Tokenizer``. A folder that already has the tokens is copied unchanged."""
    import shutil
    from pathlib import Path

    from zhgpt.config import load_json, save_json
    from zhgpt.core.files import atomic_dir
    from zhgpt.data.tokenizer import load_tokenizer

    src, out = Path(src_dir), Path(out_dir)
    tok = load_tokenizer(src)
    add_chat_tokens(tok)
    with atomic_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        tok.save(str(tmp / "tokenizer.json"))
        cfg_path = tmp / "tokenizer_config.json"
        cfg = load_json(cfg_path) if cfg_path.is_file() else {"tokenizer_class": "PreTrainedTokenizerFast"}
        save_json(cfg_path, {**cfg, **tokenizer_config_fields()})
    return tok
