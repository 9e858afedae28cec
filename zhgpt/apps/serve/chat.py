"""/v1/chat/completions messages -> one prompt, formatted as `zhgpt chat` formats it (``zhgpt.inference.chat``):
the model's own chat template when its tokenizer folder has one, else the plain one-line-per-message template."""
from __future__ import annotations

from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.schemas import ChatMessage
from zhgpt.inference.chat import PLAIN_CHAT_STOP, PLAIN_ROLES, load_chat_tokenizer, render_turns

__all__ = ["PLAIN_CHAT_STOP", "PLAIN_ROLES", "load_chat_tokenizer", "message_text", "render_chat"]


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
    turns = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(messages)]
    try:
        return render_turns(turns, chat_tokenizer)
    except ValueError as e:
        raise ApiError(400, str(e), param="messages", code="invalid_messages") from None
