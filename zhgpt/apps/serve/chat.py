"""Conversations -> one prompt: the model's own chat template when its tokenizer folder has one (transformers'
apply_chat_template), else the plain one-line-per-message template described in the package docstring."""
from __future__ import annotations

from pathlib import Path

from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.schemas import ChatMessage
from zhgpt.config import load_json

PLAIN_ROLES = {"system": "系统", "developer": "系统", "user": "用户", "assistant": "助手"}
PLAIN_CHAT_STOP = "\n用户："


def load_chat_tokenizer(tok_dir: Path | None):
    """A transformers tokenizer if the folder has a chat template, else None (the plain template is used)."""
    if tok_dir is None:
        return None
    has_template = (tok_dir / "chat_template.jinja").is_file()
    if not has_template and (tok_dir / "tokenizer_config.json").is_file():
        has_template = bool(load_json(tok_dir / "tokenizer_config.json").get("chat_template"))
    if not has_template:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def message_text(m: ChatMessage, i: int) -> str:
    """A message's content as one string; only text parts are accepted."""
    if not isinstance(m.content, list):
        return m.content or ""
    parts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{i}].content: only text parts are supported, got {part.type!r}",
                           param=f"messages.{i}.content", code="unsupported_content")
        parts.append(part.text)
    return "".join(parts)


def render_chat(messages: list[ChatMessage], chat_tokenizer) -> tuple[str, list[str]]:
    """(prompt, extra stop strings) for a conversation; see "Chat template" in the package docstring."""
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
             for i, m in enumerate(messages)]
    if chat_tokenizer is not None:
        try:
            prompt = chat_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as e:   # the template itself rejects e.g. a wrong role order
            raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages",
                           code="invalid_messages")
        return prompt, []
    # Newlines inside a message would start what looks like a new turn; a space keeps it one line.
    lines = [f"{PLAIN_ROLES[t['role']]}：{' '.join(t['content'].splitlines())}" for t in turns]
    return "\n".join(lines) + "\n" + PLAIN_ROLES["assistant"] + "：", [PLAIN_CHAT_STOP]
