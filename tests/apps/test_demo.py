"""`zhgpt demo`: the page's pieces, and the real page in headless Chromium driven by Selenium.

The browser test uses Debian's chromium + chromium-driver (same package version, so they always match) with
the driver path given explicitly: Selenium Manager is never asked to download a driver or a browser. Every
host but loopback is made unresolvable inside Chromium, and the test checks that no request left the machine,
i.e. the page works offline. Skipped with the reason when Chromium, its driver or selenium is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="needs the [serve] extra (gradio)")
httpx = pytest.importorskip("httpx", reason="needs the [serve] extra")

from zhgpt.apps.demo import (UI_DEFAULTS, DemoConfig, build_demo, chat_handler, chat_prompt,   # noqa: E402
                        chat_template_note, clear_chat, default_compare, find_run_dir, launch, model_facts,
                        render, sample_stream)
from zhgpt.model.engine import Engine, SamplingParams                                        # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def engine(tiny):
    from zhgpt.training.runs import load_for_inference
    model, tok, info = load_for_inference(tiny["run"])
    return Engine(model, tok), info


def cjk(text: str) -> int:
    return sum("\u4e00" <= c <= "\u9fff" for c in text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ pieces

def test_run_dir_and_facts(tiny, engine):
    run = tiny["run"].resolve()
    assert find_run_dir(run) == run
    assert find_run_dir(tiny["checkpoints"][-1]) == run
    assert find_run_dir(tiny["hf"]) == run
    assert find_run_dir(tiny["tokenizer"]) is None
    eng, info = engine
    facts = dict(model_facts(eng, info, run))
    assert facts["parameters"].endswith("k") and facts["context"] == "64 tokens"
    assert float(facts["val bits/char"]) > 0 and "tokens trained" in facts and "checkpoint step" in facts
    assert default_compare([f"s{i}" for i in range(10)], 4) == ["s0", "s3", "s6", "s9"]
    assert default_compare(["a", "b"], 4) == ["a", "b"]


def test_sample_stream_yields_growing_text(engine):
    eng, _ = engine
    p = SamplingParams(max_new_tokens=20, seed=3, num_return_sequences=2)
    steps = list(sample_stream(eng, "人工智能是", p))
    texts, note = steps[-1]
    assert len(texts) == 2 and "tokens/s" in note
    assert texts == eng.generate("人工智能是", p).texts   # the same engine, the same seed, the same text
    out = render("人工智能是", texts)
    assert out.count("--- sample") == 2 and out.count("人工智能是") == 2


def test_page_serves_without_external_urls(tiny, monkeypatch):
    # Every host name the server side looks up while building, launching and serving the page.
    looked_up = []
    real = socket.getaddrinfo

    def spy(host, *a, **kw):
        looked_up.append(host)
        return real(host, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", spy)
    cfg = DemoConfig(model=str(tiny["run"]), port=free_port(), device="cpu")
    demo = build_demo(cfg)
    launch(demo, cfg, block=False)
    try:
        html = httpx.get(f"http://127.0.0.1:{cfg.port}/", timeout=30).text
        assert "zhgpt demo" in html
        assert "fonts.googleapis" not in html and "cdn.jsdelivr" not in html
        cfg_json = httpx.get(f"http://127.0.0.1:{cfg.port}/config", timeout=30).json()
        assert cfg_json.get("analytics_enabled") in (False, None)
    finally:
        demo.close()
    # No analytics, version check or telemetry: the server only ever talks to itself.
    assert set(map(str, looked_up)) <= {"127.0.0.1", "localhost"}, looked_up


def test_missing_model_is_a_user_error(tmp_path):
    from zhgpt.errors import ZhgptError
    with pytest.raises(ZhgptError, match="needs --model"):
        build_demo(DemoConfig(device="cpu"))
    with pytest.raises(ZhgptError, match="no such model"):
        build_demo(DemoConfig(model=str(tmp_path / "nope"), device="cpu"))


# ============================================================================ the chat tab

CHAT_SLIDERS = (12, 0.8, 50, 0.95, 1.1, 1, 7)   # max new, temperature, top-k, top-p, repetition, samples, seed


def spy_prompts(eng, monkeypatch) -> list[str]:
    """Every prompt the engine encodes from now on (the text the chat handler built)."""
    prompts, real = [], eng.encode

    def encode(text):
        prompts.append(text)
        return real(text)
    monkeypatch.setattr(eng, "encode", encode)
    return prompts


def test_chat_streams_a_reply_with_the_plain_template(engine, monkeypatch):
    eng, _ = engine
    prompts = spy_prompts(eng, monkeypatch)
    chat = chat_handler(gr, eng, None)
    # Gradio 6 hands the chatbot's messages back with their content as a list of text parts.
    history = [{"role": "user", "content": [{"type": "text", "text": "你好"}], "metadata": None},
               {"role": "assistant", "content": "你好，有什么事？"}]
    steps = list(chat("中国的历史", history, "你是助手", *CHAT_SLIDERS))
    assert prompts == ["系统：你是助手\n用户：你好\n助手：你好，有什么事？\n用户：中国的历史\n助手："]
    final, box, note = steps[-1]
    assert box == "" and "tokens/s" in note
    assert final[:3] == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，有什么事？"},
                         {"role": "user", "content": "中国的历史"}]
    assert len(final) == 4 and final[3]["role"] == "assistant"
    # The answer is the engine's, stopped where the model would start the user's next turn, as `zhgpt chat`.
    p = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=7,
                       stop=["\n用户："])
    assert final[3]["content"] == eng.generate(prompts[0], p).texts[0].strip()
    # Streamed: every update is the same conversation with a growing answer.
    answers = [s[0][3]["content"] for s in steps]
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:]))
    # The next turn's prompt holds the whole conversation so far, the streamed answer included.
    list(chat("再说一遍", final, "", *CHAT_SLIDERS))
    assert prompts[-1].startswith("用户：你好\n助手：你好，有什么事？\n用户：中国的历史\n助手：" + final[3]["content"])
    assert prompts[-1].endswith("\n用户：再说一遍\n助手：")


def test_chat_prompt_uses_the_models_chat_template(tiny, tmp_path):
    from transformers import AutoTokenizer

    from zhgpt.data.chat_template import write_chat_tokenizer
    from zhgpt.inference.chat import load_chat_tokenizer
    write_chat_tokenizer(tiny["tokenizer"], tmp_path / "chat-tok")
    chat_tok = load_chat_tokenizer(tmp_path / "chat-tok")
    assert chat_tok is not None and load_chat_tokenizer(tiny["tokenizer"]) is None
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    prompt, stops = chat_prompt(history, "今天天气", "你是助手", chat_tok)
    turns = [{"role": "system", "content": "你是助手"}] + history + [{"role": "user", "content": "今天天气"}]
    ref = AutoTokenizer.from_pretrained(str(tmp_path / "chat-tok"), local_files_only=True)
    assert prompt == ref.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\n你是助手<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
                      "<|im_start|>assistant\n你好！<|im_end|>\n<|im_start|>user\n今天天气<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert stops == []   # the engine stops at <|im_end|>; no plain-template stop string
    assert chat_template_note(chat_tok).endswith("chat template of the model (ChatML).")
    assert "plain 用户/助手 template" in chat_template_note(None) and "zhgpt sft" in chat_template_note(None)


def test_chat_tab_and_clear(tiny, engine):
    eng, info = engine
    demo = build_demo(DemoConfig(model=str(tiny["run"]), device="cpu"), engine=eng, info=info)
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Generate", "Compare checkpoints", "Chat"]
    chatbots = [b for b in demo.blocks.values() if isinstance(b, gr.Chatbot)]
    assert len(chatbots) == 1
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "chat-template"]
    assert notes == [chat_template_note(None)]   # the tiny run is a base model
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    assert len(ids) == len(set(ids)), "element ids must be unique across tabs"
    # Clear forgets the conversation (it empties the chatbot, the message box and the status line) ...
    cleared = [f for f in demo.fns.values() if f.fn is clear_chat]
    assert [[o.elem_id for o in f.outputs] for f in cleared] == [["chatbot", "chat-message", "chat-status"]]
    history, box, status = clear_chat()
    assert (history, box, status) == ([], "", "")
    # ... and the next message starts a new one.
    final = list(chat_handler(gr, eng, None)("你好", history, "", *CHAT_SLIDERS))[-1][0]
    assert [m["role"] for m in final] == ["user", "assistant"]
    # An empty message changes nothing.
    assert list(chat_handler(gr, eng, None)("  ", final, "", *CHAT_SLIDERS)) == [(final, "", "")]


# ============================================================================ the browser

def make_driver(tmp_path: Path, monkeypatch):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs `pip install selenium`")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    monkeypatch.setenv("SE_OFFLINE", "true")   # belt and braces: Selenium Manager must never download anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1360,1100", "--lang=zh-CN",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 # The network is closed: any host but loopback fails to resolve at once, nothing can hang.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    return driver


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def chinese_seed(engine, prompt: str) -> tuple[int, str]:
    """(seed, text) such that the page's default settings give several Chinese characters: a model trained
    for seconds often ends its text after a token or two, and the test must not depend on that luck."""
    eng, _ = engine
    for seed in range(100):
        p = SamplingParams(**{**UI_DEFAULTS, "max_new_tokens": min(UI_DEFAULTS["max_new_tokens"], eng.block_size * 4)},
                           seed=seed)
        text = eng.generate(prompt, p).texts[0]
        if cjk(text) >= 5:
            return seed, text
    pytest.fail("the tiny model never wrote 5 Chinese characters")


# Gradio 6.31's queue calls pandas options that pandas 3 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
@pytest.mark.slow
def test_browser_generates_chinese(tiny, engine, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = "人工智能是"
    seed, expected = chinese_seed(engine, prompt)
    driver = make_driver(tmp_path, monkeypatch)
    cfg = DemoConfig(model=str(tiny["run"]), port=free_port(), device="cpu")
    demo = build_demo(cfg)
    launch(demo, cfg, block=False)
    try:
        driver.get(f"http://127.0.0.1:{cfg.port}/")
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys(prompt)
        seed_box = driver.find_element(By.CSS_SELECTOR, "#seed input")
        seed_box.send_keys(Keys.CONTROL, "a")
        seed_box.send_keys(str(seed))
        # Example prompts, sliders, the loss curve and the facts table are on the page.
        body = driver.find_element(By.TAG_NAME, "body").text
        for text in ("中国的历史", "教育的目的", "temperature", "repetition penalty", "val bits/char"):
            assert text in body, text
        assert driver.find_elements(By.CSS_SELECTOR, "img[alt], img[src]"), "loss curve image missing"
        driver.find_element(By.CSS_SELECTOR, "#generate-btn").click()
        out = driver.find_element(By.CSS_SELECTOR, "#output textarea")

        # The status line reports tokens/s once the generation finished.
        WebDriverWait(driver, 120, poll_frequency=0.2).until(
            lambda d: "tokens/s" in d.find_element(By.CSS_SELECTOR, "#status").text)
        value = out.get_property("value")
        assert value.startswith(prompt) and cjk(value[len(prompt):]) >= 3, value
        assert value == prompt + expected   # the page used the engine with the sliders' settings and the seed

        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ZHGPT_SAVE_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "demo.png")

        # Compare tab: the same prompt through every checkpoint of the run, side by side.
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Compare checkpoints')]").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#compare-btn").is_displayed())
        driver.find_element(By.CSS_SELECTOR, "#compare-btn").click()
        n = len(tiny["checkpoints"])

        def compared(d):
            vals = [e.get_property("value") or "" for e in d.find_elements(By.CSS_SELECTOR, ".compare-out textarea")]
            return len([v for v in vals if v.startswith("中国的历史") and not v.endswith("generating")]) == n
        WebDriverWait(driver, 120, poll_frequency=0.2).until(compared)
        driver.save_screenshot(str(tmp_path / "compare.png"))

        urls = requested_urls(driver)
        assert any(urlparse(u).hostname == "127.0.0.1" for u in urls), "the request log is empty"
        external = [u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")
                    and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
        assert not external, f"the page fetched from the network: {external[:5]}"
    finally:
        driver.quit()
        demo.close()
