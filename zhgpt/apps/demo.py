"""`zhgpt demo`: a Gradio page to try a model (the `[serve]` extra).

    zhgpt demo --model runs/NAME                     # http://127.0.0.1:7860, this machine only
    zhgpt demo --model runs/NAME --host 0.0.0.0      # reachable from the network (no login: mind who can reach it)
    zhgpt demo --model runs/NAME --share             # a public *.gradio.live link through Gradio's servers

Tab "Generate": prompt, sliders (max new tokens, temperature, top-k, top-p, repetition penalty, number of
samples, seed), output streamed as it is generated, Chinese example prompts; beside it the run's loss curve
(RUN/loss_curve.png, written by `zhgpt report` at the end of training) and the model's facts (parameters,
tokens trained, validation bits per character, from RUN/run.json and the checkpoint's meta.json).
Tab "Compare checkpoints": one prompt through several checkpoints of the run (RUN/checkpoints/step_*) side by
side, all with the same seed, so the differences come from training alone.
Tab "Chat": a multi-turn conversation (optional system message, the Generate tab's sliders), each answer
streamed into the chat as it is generated. The conversation becomes a prompt in ``zhgpt.inference.chat``, as
in `zhgpt chat` and the API's /v1/chat/completions: the model's chat template (ChatML, for every model `zhgpt
sft` writes; the engine stops at <|im_end|>) or, for a base model, the plain 用户：/助手： template with a stop
string. The tab says which one it uses.

Generation goes through the engine (``Engine.stream_rows``), one request at
a time: PyTorch already uses every core for one forward, so running two at once only makes both slower.

Offline: analytics are off (GRADIO_ANALYTICS_ENABLED=False, set before gradio is imported), the theme uses
system fonts only (no Google Fonts request), server-side rendering is off (it would start Node), and the page
loads nothing from a CDN. tests/apps/test_demo.py loads it in Chromium with every non-loopback host unresolvable and
checks that no request left the machine.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zhgpt.config import add_args, from_args, load_json, opt, print_config
from zhgpt.core import fmt
from zhgpt.data.chat_template import IM_START
from zhgpt.errors import ZhgptError
from zhgpt.inference.chat import load_chat_tokenizer, render_turns
from zhgpt.inference.loading import ModelOptions
from zhgpt.model.engine import Engine, SamplingParams
from zhgpt.training.layout import find_run_dir
from zhgpt.training.runs import tokenizer_dir_of

EXAMPLES = ["中国的历史", "人工智能是", "今天天气", "教育的目的", "在科学研究中"]
MAX_SAMPLES = 4          # samples per prompt in the Generate tab
# The sliders' starting values: zhgpt generate's defaults, plus a mild repetition penalty because small
# Chinese models loop ("的的的…") without one.
UI_DEFAULTS = dict(max_new_tokens=100, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1)
MAX_COMPARE = 4          # checkpoints side by side; each loaded model stays in memory while cached
UPDATE_EVERY_S = 0.05    # stream at most 20 updates/s: each update re-sends the whole text to the browser
FONTS = ["ui-sans-serif", "system-ui", "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei", "sans-serif"]
CSS = "#output textarea, .compare-out textarea {font-size: 1.05rem; line-height: 1.6}"


@dataclass
class DemoConfig(ModelOptions):
    """`zhgpt demo`: its own fields below; which model and how to run it come from ModelOptions."""
    host: str = opt("127.0.0.1", "address to bind; 127.0.0.1 = this machine only (0.0.0.0 opens the demo to "
                                 "the network, without any login)")
    port: int = opt(7860, "TCP port")
    share: bool = opt(False, "also create a public *.gradio.live link (sends traffic through Gradio's servers; "
                             "needs internet)")

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ZhgptError(f"--port must be 1..65535, got {self.port}")


# ============================================================================ the run around a model folder

def model_facts(engine: Engine, info: dict, run_dir: Path | None) -> list[tuple[str, str]]:
    """(name, value) rows for the facts table: architecture from the model, training from run.json/meta.json."""
    c = engine.model.cfg
    rows = [("parameters", fmt.count(engine.model.num_params())),
            ("architecture", f"{c.arch}, {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide"),
            ("context", f"{c.block_size} tokens"),
            ("vocabulary", f"{engine.tokenizer.get_vocab_size():,} tokens")]
    run = load_json(run_dir / "run.json") if run_dir and (run_dir / "run.json").is_file() else {}
    meta = {}
    if info.get("kind") == "checkpoint" and info.get("source"):
        meta_path = Path(info["source"]) / "meta.json"
        meta = load_json(meta_path) if meta_path.is_file() else {}
    step = meta.get("step", run.get("steps"))
    tokens = (meta.get("train_state") or {}).get("tokens_seen", run.get("tokens_seen"))
    metrics = meta.get("metrics") or run.get("final") or {}
    if step is not None:
        rows.append(("checkpoint step", f"{step:,}"))
    if tokens is not None:
        rows.append(("tokens trained", fmt.count(tokens)))
    if metrics.get("val_bpc") is not None:
        rows.append(("val bits/char", f"{metrics['val_bpc']:.3f}"))
    if metrics.get("val_loss") is not None:
        rows.append(("val loss", f"{metrics['val_loss']:.3f}"))
    if run.get("elapsed_s") is not None:
        sec = run["elapsed_s"]
        rows.append(("training time", f"{sec:.0f} s" if sec < 120 else f"{sec / 60:.1f} min" if sec < 7200
                     else f"{sec / 3600:.1f} h"))
    rows.append(("device", str(engine.device)))
    return rows


def facts_markdown(rows: list[tuple[str, str]], title: str) -> str:
    lines = [f"| model | {title} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


class EngineCache:
    """Loaded checkpoints for the compare tab, least recently used dropped first; each loaded as the demo's
    model is (device, dtype, --rope-scaling/--context)."""

    def __init__(self, opts: ModelOptions, size: int = MAX_COMPARE):
        self.opts, self.size = opts, size
        self._engines: collections.OrderedDict[str, Engine] = collections.OrderedDict()

    def get(self, path: Path) -> Engine:
        key = str(path)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        self._engines[key] = self.opts.load(path).engine
        while len(self._engines) > self.size:
            self._engines.popitem(last=False)
        return self._engines[key]


def default_compare(names: list[str], k: int = MAX_COMPARE) -> list[str]:
    """Up to k checkpoints spread evenly over the run, the first and the last included."""
    if len(names) <= k:
        return list(names)
    return [names[round(i * (len(names) - 1) / (k - 1))] for i in range(k)]


# ============================================================================ generation

def sample_stream(engine: Engine, prompt: str, p: SamplingParams):
    """Yield (texts of every sample so far, note) while generating; the last yield is the complete answer."""
    ids, truncated = engine.fit_prompt(engine.encode(prompt), p.max_new_tokens)
    note = f"prompt truncated to its last {len(ids)} tokens (context {engine.block_size}). " if truncated else ""
    texts = [""] * p.num_return_sequences
    tokens = [0] * p.num_return_sequences
    t0 = last = time.monotonic()
    for row, delta, reason, n in engine.stream_rows(ids, p):
        texts[row] += delta
        tokens[row] = n
        now = time.monotonic()
        if now - last >= UPDATE_EVERY_S:
            last = now
            yield texts, note
    dt = max(time.monotonic() - t0, 1e-9)
    yield texts, note + f"{sum(tokens)} tokens in {dt:.1f} s ({sum(tokens) / dt:.0f} tokens/s)"


def render(prompt: str, texts: list[str]) -> str:
    if len(texts) == 1:
        return prompt + texts[0]
    return "\n\n".join(f"--- sample {i + 1} ---\n{prompt}{t}" for i, t in enumerate(texts))


# ============================================================================ chat

def chat_template_note(chat_tokenizer) -> str:
    """The Chat tab's line saying how the conversation is formatted (a base model's answers are no answers)."""
    if chat_tokenizer is None:
        return ("Prompt format: plain 用户/助手 template: this is a base model; fine-tune it with `zhgpt sft` "
                "for real answers.")
    chatml = IM_START in str(getattr(chat_tokenizer, "chat_template", None) or "")
    return f"Prompt format: chat template of the model{' (ChatML)' if chatml else ''}."


def turn_text(content) -> str:
    """A chatbot message's text: Gradio 6 hands content back as a list of parts ({"type": "text", "text": …});
    anything but text (files, images) has no place in a text model's prompt."""
    if isinstance(content, str):
        return content
    parts = [content] if isinstance(content, dict) else content or []
    return "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and p.get("type", "text") == "text")


def chat_history(history) -> list[dict]:
    """The chatbot's messages as plain {"role", "content"} turns (Gradio adds metadata, options, parts)."""
    return [{"role": m["role"], "content": turn_text(m.get("content"))}
            for m in history or [] if m.get("role") in ("user", "assistant")]


def chat_prompt(history: list[dict], message: str, system: str, chat_tokenizer) -> tuple[str, list[str]]:
    """(prompt, extra stop strings) for the conversation plus ``message``: formatted by ``render_turns``, the
    code `zhgpt chat` and the API use, so all three prompt a model the same way."""
    turns = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    turns += chat_history(history) + [{"role": "user", "content": message}]
    return render_turns(turns, chat_tokenizer)


def chat_handler(gr, engine: Engine, chat_tokenizer):
    """The Send button: the message and its answer join the history, the answer streamed into the chatbot."""
    def chat(message, history, system, max_new, temperature, top_k, top_p, rep, n, seed):
        # ``n`` (the samples slider) is hidden in this tab: a conversation continues with one answer.
        message, history = (message or "").strip(), chat_history(history)
        if not message:
            yield history, "", ""
            return
        try:
            p = sampling(max_new, temperature, top_k, top_p, rep, 1, seed)
            prompt, stops = chat_prompt(history, message, system, chat_tokenizer)
        except (ZhgptError, ValueError) as e:
            raise gr.Error(str(e))
        # As ChatSession does: the plain template's stop string ends the answer where the model starts the
        # user's next turn (a chat template needs none: the engine stops at <|im_end|>).
        p = SamplingParams(**{**p.__dict__, "stop": list(p.stop) + stops})
        history = history + [{"role": "user", "content": message}]
        for texts, note in sample_stream(engine, prompt, p):
            yield history + [{"role": "assistant", "content": texts[0].strip()}], "", note
    return chat


def clear_chat():
    """The Clear button: an empty conversation, message box and status line."""
    return [], "", ""


# ============================================================================ the page

def sampling(max_new, temperature, top_k, top_p, rep, n, seed) -> SamplingParams:
    """The sliders' values -> SamplingParams (Gradio hands numbers over as floats; seed -1 or empty = random)."""
    return SamplingParams(max_new_tokens=int(max_new), temperature=float(temperature), top_k=int(top_k),
                          top_p=float(top_p), repetition_penalty=float(rep), num_return_sequences=int(n),
                          seed=int(seed) if seed is not None and seed >= 0 else -1)


def generate_handler(gr, engine: Engine):
    """The Generate button: the prompt's samples, streamed, and a status line."""
    def generate(prompt, max_new, temperature, top_k, top_p, rep, n, seed):
        try:
            p = sampling(max_new, temperature, top_k, top_p, rep, n, seed)
        except ZhgptError as e:
            raise gr.Error(str(e))
        for texts, note in sample_stream(engine, prompt or "", p):
            yield render(prompt or "", texts), note
    return generate


def compare_handler(gr, cache: EngineCache, checkpoints: dict[str, Path]):
    """The Compare button: the prompt through each picked checkpoint in turn, one output box each."""
    def compare(names, prompt, max_new, temperature, seed):
        names = sorted(names or [])[:MAX_COMPARE]
        if not names:
            raise gr.Error("pick at least one checkpoint")
        p = sampling(max_new, temperature, 50, 0.95, 1.0, 1, seed if seed is not None and seed >= 0 else 0)
        outs = [gr.update(visible=False, value="") for _ in range(MAX_COMPARE)]
        for i, name in enumerate(names):
            outs[i] = gr.update(visible=True, label=name, value="… generating")
            yield outs
            text = cache.get(checkpoints[name]).generate(prompt or "", p).texts[0]
            outs[i] = gr.update(visible=True, label=name, value=(prompt or "") + text)
            yield outs
    return compare


def sampling_controls(gr, max_new_limit: int, prefix: str = "", samples: bool = True) -> list:
    """The sliders, in the order ``generate`` and ``chat`` take them (after their text inputs). ``prefix``
    keeps element ids unique when a second tab has its own; ``samples=False`` hides the samples slider."""
    with gr.Accordion("Sampling", open=samples):
        with gr.Row():
            max_new = gr.Slider(1, max_new_limit, step=1, label="max new tokens",
                                value=min(UI_DEFAULTS["max_new_tokens"], max_new_limit))
            temperature = gr.Slider(0, 2, value=UI_DEFAULTS["temperature"], step=0.05,
                                    label="temperature (0 = greedy)")
            top_k = gr.Slider(0, 200, value=UI_DEFAULTS["top_k"], step=1, label="top-k (0 = off)")
        with gr.Row():
            top_p = gr.Slider(0.05, 1, value=UI_DEFAULTS["top_p"], step=0.05, label="top-p")
            rep = gr.Slider(1.0, 2.0, value=UI_DEFAULTS["repetition_penalty"], step=0.05,
                            label="repetition penalty")
            n = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples", visible=samples)
            seed = gr.Number(value=-1, precision=0, label="seed (-1 = random)", elem_id=f"{prefix}seed")
    return [max_new, temperature, top_k, top_p, rep, n, seed]


def generate_tab(gr, generate, facts: str, run_dir: Path | None, max_new_limit: int) -> None:
    with gr.Tab("Generate"):
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="输入开头，模型接着写…", elem_id="prompt")
                gr.Examples(examples=[[e] for e in EXAMPLES], inputs=[prompt], label="Examples")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                output = gr.Textbox(label="Output", lines=12, max_lines=30, interactive=False, elem_id="output")
                status = gr.Markdown(elem_id="status")
                controls = sampling_controls(gr, max_new_limit)
            with gr.Column(scale=2):
                curve = run_dir / "loss_curve.png" if run_dir else None
                if curve is not None and curve.is_file():
                    gr.Image(value=str(curve), label="loss curve", interactive=False, format="png")
                else:
                    gr.Markdown("*No loss curve: `zhgpt report RUN` writes RUN/loss_curve.png.*")
                gr.Markdown(facts, elem_id="facts")
        inputs = [prompt] + controls
        ev = go.click(generate, inputs, [output, status], concurrency_limit=1, concurrency_id="model")
        ev2 = prompt.submit(generate, inputs, [output, status], concurrency_limit=1, concurrency_id="model")
        stop.click(None, None, None, cancels=[ev, ev2])


def compare_tab(gr, compare, names: list[str], max_new_limit: int) -> None:
    with gr.Tab("Compare checkpoints"):
        if not names:
            gr.Markdown("No checkpoints to compare: pass a run folder (runs/NAME) that has "
                        "checkpoints/step_* folders.")
            return
        gr.Markdown("The same prompt and seed through several checkpoints of the run: the differences "
                    "come from training alone.")
        picked = gr.CheckboxGroup(names, value=default_compare(names), elem_id="compare-pick",
                                  label=f"checkpoints (at most {MAX_COMPARE})")
        c_prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2, elem_id="compare-prompt")
        with gr.Row():
            c_max = gr.Slider(1, max_new_limit, value=min(60, max_new_limit), step=1, label="max new tokens")
            c_temp = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature")
            c_seed = gr.Number(value=0, precision=0, label="seed")
        c_go = gr.Button("Compare", variant="primary", elem_id="compare-btn")
        with gr.Row():
            outs = [gr.Textbox(visible=False, lines=10, interactive=False, elem_classes="compare-out",
                               elem_id=f"compare-out-{i}") for i in range(MAX_COMPARE)]
        c_go.click(compare, [picked, c_prompt, c_max, c_temp, c_seed], outs, concurrency_limit=1,
                   concurrency_id="model")


def chat_tab(gr, chat, note: str, max_new_limit: int) -> None:
    with gr.Tab("Chat"):
        gr.Markdown(note, elem_id="chat-template")
        system = gr.Textbox(label="System message (optional)", lines=1, elem_id="chat-system",
                            placeholder="你是一个乐于助人的助手。")
        chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chatbot")
        message = gr.Textbox(label="Message", lines=1, placeholder="输入消息，按 Enter 发送…",
                             elem_id="chat-message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="chat-send")
            stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
            clear = gr.Button("Clear", elem_id="chat-clear")
        status = gr.Markdown(elem_id="chat-status")
        controls = sampling_controls(gr, max_new_limit, prefix="chat-", samples=False)
    inputs, outputs = [message, chatbot, system] + controls, [chatbot, message, status]
    ev = send.click(chat, inputs, outputs, concurrency_limit=1, concurrency_id="model")
    ev2 = message.submit(chat, inputs, outputs, concurrency_limit=1, concurrency_id="model")
    stop.click(None, None, None, cancels=[ev, ev2])
    # Clearing mid-answer also stops it: otherwise the answer's next update would bring the history back.
    clear.click(clear_chat, None, outputs, cancels=[ev, ev2])


def build_demo(cfg: DemoConfig, engine: Engine | None = None, info: dict | None = None):
    """The Gradio Blocks (not launched). ``engine`` skips loading ``cfg.model`` (tests)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ZhgptError("zhgpt demo needs the [serve] extra (gradio is missing): pip install 'zhgpt[serve]'")
    from zhgpt.training.layout import list_checkpoints

    if engine is None:
        cfg.require_model("demo")
        loaded = cfg.load()
        engine, info = loaded.engine, loaded.info
    info = info or {}
    run_dir = find_run_dir(cfg.model) if cfg.model else None
    checkpoints = {p.name: p for p in list_checkpoints(run_dir)} if run_dir else {}
    source = info.get("source") or cfg.model or "model"
    title = run_dir.name if run_dir else Path(source).name
    if run_dir and info.get("kind") == "checkpoint":
        title += f" · {Path(source).name}"
    max_new_limit = max(1, min(1024, engine.block_size * 4))
    chat_tok = load_chat_tokenizer(tokenizer_dir_of(cfg.model)) if cfg.model else None
    with gr.Blocks(title="zhgpt demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## zhgpt · {title}")
        generate_tab(gr, generate_handler(gr, engine), facts_markdown(model_facts(engine, info, run_dir), title),
                     run_dir, max_new_limit)
        compare_tab(gr, compare_handler(gr, EngineCache(cfg), checkpoints), list(checkpoints),
                    max_new_limit)
        chat_tab(gr, chat_handler(gr, engine, chat_tok), chat_template_note(chat_tok), max_new_limit)
    return demo


def launch(demo, cfg: DemoConfig, block: bool = True):
    """Start the server; with block=False return at once (tests) and stop it later with demo.close()."""
    import gradio as gr
    # Strings only: a gr.themes.GoogleFont here would make every page load ask fonts.googleapis.com.
    theme = gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "Consolas", "monospace"])
    demo.queue(max_size=32, default_concurrency_limit=1)
    try:
        # Gradio 6 takes theme and css in launch(), not in Blocks().
        return demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, ssr_mode=False,
                           prevent_thread_lock=not block, quiet=not block, show_error=True, inbrowser=False,
                           theme=theme, css=CSS)
    except OSError as e:
        raise ZhgptError(f"cannot start the demo on {cfg.host}:{cfg.port} ({e}); pick another --port")


def main(cfg: DemoConfig) -> None:
    demo = build_demo(cfg)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"zhgpt: warning: the demo listens on {cfg.host}: anyone who can reach port {cfg.port} can use it",
              file=sys.stderr)
    launch(demo, cfg, block=True)


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, DemoConfig)


def run_cli(args) -> None:
    cfg = from_args(DemoConfig, args)
    print_config(cfg, titles=("demo",))
    main(cfg)
