"""`zhgpt chat --model DIR`: a multi-turn conversation in the terminal, and the one place a conversation
becomes a prompt (the API's /v1/chat/completions formats it here too).

A model whose tokenizer folder has a chat template (``chat_template`` in tokenizer_config.json, or
chat_template.jinja: every model `zhgpt sft` writes, and Hugging Face chat models) is prompted with
transformers' ``apply_chat_template(add_generation_prompt=True)``. A base model pre-trained by zhgpt has
none and gets a plain template, one line per message, which a model trained on Chinese text can continue:

    系统：{system message}
    用户：{user message}
    助手：{earlier answer}
    用户：{user message}
    助手：

Generation then also stops at "\\n用户：" (the model starting the user's next turn). A base model does not
follow instructions; the template only lets people and chat clients talk to it.

In the terminal: type a message and press Enter; the answer streams. ``/reset`` forgets the conversation,
``/exit`` (or Ctrl-D) ends it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from zhgpt.config import add_args, from_args, load_json, opt, print_config
from zhgpt.errors import ZhgptError
from zhgpt.inference.loading import ModelOptions
from zhgpt.model.engine import SamplingParams

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


def render_turns(turns: list[dict], chat_tokenizer) -> tuple[str, list[str]]:
    """(prompt, extra stop strings) for ``turns`` ([{"role", "content"}], roles system/developer/user/assistant).
    Raises ValueError when the model's own template rejects the conversation."""
    turns = [{"role": "system" if t["role"] == "developer" else t["role"], "content": t["content"]} for t in turns]
    if chat_tokenizer is not None:
        try:
            return chat_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), []
        except Exception as e:   # the template itself rejects e.g. a wrong role order
            raise ValueError(f"the model's chat template rejected the messages: {e}") from None
    # Newlines inside a message would start what looks like a new turn; a space keeps it one line.
    lines = [f"{PLAIN_ROLES[t['role']]}：{' '.join(t['content'].splitlines())}" for t in turns]
    return "\n".join(lines) + "\n" + PLAIN_ROLES["assistant"] + "：", [PLAIN_CHAT_STOP]


# ------------------------------------------------------------------------- zhgpt chat

@dataclass
class ChatConfig(ModelOptions):
    """`zhgpt chat`: its own fields below; which model and how to run it come from ModelOptions, sampling
    from SamplingParams (the same flags as `zhgpt generate`)."""
    system: str = opt("", "a system message that opens the conversation")

    def __post_init__(self):
        self.require_model("chat")


class ChatSession:
    """The turns so far, and one answer at a time streamed from the engine."""

    def __init__(self, engine, chat_tokenizer, params: SamplingParams, system: str = ""):
        self.engine, self.chat_tokenizer, self.params, self.system = engine, chat_tokenizer, params, system
        self.reset()

    def reset(self) -> None:
        self.turns = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str):
        """Yield the answer to ``text`` piece by piece; the whole answer joins the history at the end."""
        self.turns.append({"role": "user", "content": text})
        prompt, stops = render_turns(self.turns, self.chat_tokenizer)
        params = SamplingParams(**{**self.params.__dict__, "stop": list(self.params.stop) + stops})
        pieces = []
        for piece in self.engine.stream(prompt, params):
            pieces.append(piece)
            yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces).strip()})


def repl(conv: "ChatSession", inp: TextIO, out: TextIO) -> int:
    """Read messages from ``inp`` until /exit or end of input; returns the number of answers given."""
    answers = 0
    prompt_mark = "你：" if inp.isatty() else ""
    while True:
        out.write(prompt_mark)
        out.flush()
        line = inp.readline()
        if not line or line.strip() == "/exit":
            return answers
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            conv.reset()
            out.write("(conversation reset)\n")
            continue
        out.write("助手：")
        for piece in conv.reply(text):
            out.write(piece)
            out.flush()
        out.write("\n")
        answers += 1


def main(cfg: ChatConfig, params: SamplingParams, inp: TextIO | None = None, out: TextIO | None = None) -> int:
    from zhgpt.training.runs import tokenizer_dir_of
    loaded = cfg.load()
    chat_tok = load_chat_tokenizer(tokenizer_dir_of(cfg.model))
    inp, out = inp or sys.stdin, out or sys.stdout
    if inp.isatty():
        kind = "its chat template" if chat_tok is not None else "the plain 用户/助手 template (a base model)"
        print(f"chatting with {cfg.model} using {kind}; /reset forgets, /exit ends", file=sys.stderr)
    try:
        return repl(ChatSession(loaded.engine, chat_tok, params, cfg.system), inp, out)
    except ValueError as e:
        raise ZhgptError(str(e)) from None


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ChatConfig)
    add_args(p, SamplingParams, group="sampling", skip=("num_return_sequences",))


def run_cli(args) -> None:
    cfg = from_args(ChatConfig, args)
    params = from_args(SamplingParams, args)
    print_config(cfg, params, titles=("chat", "sampling"))
    main(cfg, params)
