"""`zhgpt chat`: the prompt a conversation becomes (plain template for base models, the model's own
template otherwise), the multi-turn loop with /reset, and the command on the test session's tiny run."""
from __future__ import annotations

import io
import subprocess
import sys

from zhgpt.data.chat import Message
from zhgpt.data.chat_template import render, write_chat_tokenizer
from zhgpt.inference.chat import (PLAIN_CHAT_STOP, ChatConfig, ChatSession, load_chat_tokenizer, main, render_turns,
                                  repl)
from zhgpt.model.engine import SamplingParams


class RecordingEngine:
    """Stands in for the engine where only the prompts matter: records them, answers 好."""

    def __init__(self):
        self.prompts, self.stops = [], []

    def stream(self, prompt, params):
        self.prompts.append(prompt)
        self.stops.append(list(params.stop))
        yield "好"


def test_plain_template_for_base_models():
    turns = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "第一行\n第二行"},
             {"role": "assistant", "content": "好的"}, {"role": "user", "content": "再说一遍"}]
    prompt, stops = render_turns(turns, None)
    assert prompt == "系统：你是助手\n用户：第一行 第二行\n助手：好的\n用户：再说一遍\n助手："
    assert stops == [PLAIN_CHAT_STOP]


def test_models_with_a_template_are_prompted_with_it(tiny, tmp_path):
    folder = tmp_path / "tok"
    write_chat_tokenizer(tiny["tokenizer"], folder)
    chat_tok = load_chat_tokenizer(folder)
    assert chat_tok is not None and load_chat_tokenizer(tiny["tokenizer"]) is None
    msgs = [Message("system", "你是助手"), Message("user", "中国的首都是哪里？")]
    prompt, stops = render_turns([{"role": m.role, "content": m.content} for m in msgs], chat_tok)
    assert prompt == render(msgs, add_generation_prompt=True)[0] and stops == []   # what SFT trains on


def test_multi_turn_history_and_reset():
    engine = RecordingEngine()
    session = ChatSession(engine, None, SamplingParams(stop=["。"]), system="你是助手")
    out = io.StringIO()
    assert repl(session, io.StringIO("你好\n\n今天呢？\n/reset\n再见\n/exit\n没读到\n"), out) == 3
    first, second, third = engine.prompts
    assert first == "系统：你是助手\n用户：你好\n助手："
    assert second == first + "好\n用户：今天呢？\n助手："           # the answer joined the history
    assert third == "系统：你是助手\n用户：再见\n助手："              # /reset kept only the system message
    assert engine.stops[0] == ["。", PLAIN_CHAT_STOP]                 # the user's stops and the template's
    assert out.getvalue() == "助手：好\n助手：好\n(conversation reset)\n助手：好\n"


def test_chat_with_the_tiny_run(tiny):
    out = io.StringIO()
    n = main(ChatConfig(model=str(tiny["run"])), SamplingParams(max_new_tokens=12, seed=1),
             inp=io.StringIO("中国的历史\n人工智能是什么？\n"), out=out)
    answers = [line for line in out.getvalue().splitlines() if line.startswith("助手：")]
    assert n == 2 and len(answers) == 2 and any(len(a) > len("助手：") for a in answers)


def test_cli(tiny):
    r = subprocess.run([sys.executable, "-m", "zhgpt", "chat", "--model", str(tiny["run"]), "--max-new-tokens", "8",
                        "--no-repeat-ngram-size", "2"], input="你好\n/exit\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("助手：") and "[chat]" in r.stderr and "no_repeat_ngram_size = 2" in r.stderr
    r = subprocess.run([sys.executable, "-m", "zhgpt", "chat"], input="", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "zhgpt chat needs --model" in r.stderr and "Traceback" not in r.stderr
