"""`zhgpt serve`: a real uvicorn server on a loopback port, driven by the official `openai` client.

The model is the test session's tiny run (``tiny`` in conftest.py): a GPT trained by `zhgpt train` on People's
Daily text, so answers are Chinese characters, not noise, in a real run folder (checkpoints, run.json, the
Hugging Face export in final/).
"""
from __future__ import annotations

import collections
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra (fastapi, uvicorn, openai)")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")
openai = pytest.importorskip("openai", reason="needs the [serve] extra")
httpx = pytest.importorskip("httpx", reason="needs the [serve] extra")

from zhgpt.model.engine import Engine, SamplingParams   # noqa: E402

@pytest.fixture(scope="module")
def tokenizer(tiny):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(tiny["hf"] / "tokenizer.json"))


# ============================================================================ servers

def start(cfg, served=None):
    from zhgpt.apps.serve import BackgroundServer, create_app
    return BackgroundServer(create_app(cfg, served), start_timeout=30).__enter__()


def client(srv, key="unused", **kw):
    # max_retries=0: the client would otherwise retry 429/5xx answers and hide them from the test.
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


@pytest.fixture(scope="module")
def hf_server(tiny):
    from zhgpt.apps.serve import ServeConfig
    srv = start(ServeConfig(model=str(tiny["hf"]), device="cpu", model_name="tiny"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oai(hf_server):
    return client(hf_server)


def cjk(text: str) -> int:
    return sum("\u4e00" <= c <= "\u9fff" for c in text)


# ============================================================================ completions

def test_models_and_health(hf_server, oai):
    ids = [m.id for m in oai.models.list().data]
    assert ids == ["tiny"]
    assert oai.models.retrieve("tiny").owned_by == "zhgpt"
    h = httpx.get(hf_server.url + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["context"] == 64 and h["chat_template"] == "plain"


def test_completion_shape_and_usage(oai, tokenizer):
    prompt = "中国的历史"
    r = oai.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0.8, seed=1,
                               extra_body={"top_k": 40})
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
    assert isinstance(r.created, int)
    (c,) = r.choices
    assert c.index == 0 and c.logprobs is None and c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False).ids)
    # A character-level tokenizer: the generated text re-encodes to exactly the generated tokens.
    assert r.usage.completion_tokens == len(tokenizer.encode(c.text, add_special_tokens=False).ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    raw = httpx.post(str(oai.base_url) + "completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 3},
                     timeout=30).json()
    assert set(raw) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(raw["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}


def test_length_finish_counts_max_tokens(oai):
    r = oai.completions.create(model="tiny", prompt="人民", max_tokens=10, temperature=0, n=2)
    for c in r.choices:
        if c.finish_reason == "length":
            assert len(c.text) == 10
    assert r.choices[0].text == r.choices[1].text   # greedy: n copies of the same answer
    assert r.usage.completion_tokens == sum(len(c.text) for c in r.choices)


def ntok(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_n_and_prompt_list(oai, tokenizer):
    r = oai.completions.create(model="tiny", prompt=["中国", "人工智能是"], max_tokens=6, n=3)
    assert [c.index for c in r.choices] == list(range(6))
    assert r.usage.prompt_tokens == ntok(tokenizer, "中国") + ntok(tokenizer, "人工智能是")
    r = oai.completions.create(model="tiny", prompt=[[5, 6, 7]], max_tokens=4)   # token ids
    assert r.usage.prompt_tokens == 3


def test_seed_reproducible_streamed_or_not(oai):
    kw = dict(model="tiny", prompt="今天天气", max_tokens=16, temperature=1.0, seed=1234)
    a = oai.completions.create(**kw).choices[0].text
    b = oai.completions.create(**kw).choices[0].text
    assert a == b and cjk(a) > 0
    streamed = "".join(ch.choices[0].text for ch in oai.completions.create(stream=True, **kw) if ch.choices)
    assert streamed == a
    others = {oai.completions.create(**{**kw, "seed": s}).choices[0].text for s in range(4)}
    assert len(others) > 1   # different seeds give different samples


def _long_sample(oai, prompt="教育的目的"):
    for seed in range(20):
        t = oai.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=1.0, seed=seed,
                                   extra_body={"top_k": 0}).choices[0].text
        if len(t) >= 8:
            return seed, t
    pytest.fail("the tiny model never produced 8 characters")


def test_stop_strings(oai):
    seed, text = _long_sample(oai)
    stop = text[4:6]
    want = text[:text.find(stop)]
    kw = dict(model="tiny", prompt="教育的目的", max_tokens=24, temperature=1.0, seed=seed,
              stop=[stop, "不会出现的"], extra_body={"top_k": 0})
    r = oai.completions.create(**kw)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    chunks = list(oai.completions.create(stream=True, **kw))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    assert chunks[-1].choices[0].finish_reason == "stop"
    # A streamed answer never showed the stop string, even for a moment.
    assert all(stop not in ch.choices[0].text for ch in chunks if ch.choices)


def test_streaming_completion_with_usage(oai, tokenizer):
    chunks = list(oai.completions.create(model="tiny", prompt=["中国", "人民"], max_tokens=8, n=2, stream=True,
                                         stream_options={"include_usage": True}))
    texts = collections.defaultdict(str)
    finish = {}
    for ch in chunks:
        assert ch.object == "text_completion"
        for c in ch.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert sorted(finish) == [0, 1, 2, 3]
    assert chunks[-1].usage.completion_tokens == sum(len(t) for t in texts.values())
    assert chunks[-1].usage.prompt_tokens == ntok(tokenizer, "中国") + ntok(tokenizer, "人民")


def test_echo(oai):
    """echo returns the prompt followed by exactly the continuation the same request gives without echo."""
    kw = dict(model="tiny", prompt="中国", max_tokens=4, temperature=0)
    plain, echoed = oai.completions.create(**kw), oai.completions.create(**kw, echo=True)
    assert plain.choices[0].text and echoed.choices[0].text == "中国" + plain.choices[0].text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens


def test_ngram_and_openai_penalties_reach_the_engine(oai):
    kw = dict(model="tiny", prompt="中国", max_tokens=30, temperature=0)
    plain = oai.completions.create(**kw).choices[0].text
    once = oai.completions.create(**kw, extra_body={"no_repeat_ngram_size": 1}).choices[0].text
    assert once and len(set("中国" + once)) == len("中国" + once)    # no token (here: character) twice
    freq = oai.completions.create(**kw, frequency_penalty=2.0, presence_penalty=1.0).choices[0].text
    assert isinstance(freq, str) and (len(set(plain)) < len(plain)) <= (freq != plain)


# ============================================================================ chat

def test_chat_plain_template(oai, tokenizer):
    from zhgpt.apps.serve import render_chat, ChatMessage
    msgs = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "人工智能是什么？"}]
    prompt, stops = render_chat([ChatMessage(**m) for m in msgs], None)
    assert prompt == "系统：你是助手\n用户：人工智能是什么？\n助手：" and stops == ["\n用户："]
    r = oai.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, seed=3)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    m = r.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str)
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False).ids)
    chunks = list(oai.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, seed=3, stream=True))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == m.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_chat_uses_the_models_template(tiny, tmp_path):
    from zhgpt.config import load_json, save_json
    from zhgpt.apps.serve import ServeConfig
    folder = tmp_path / "chat-model"
    shutil.copytree(tiny["hf"], folder)
    tcfg = load_json(folder / "tokenizer_config.json")
    tcfg["chat_template"] = ("{% for m in messages %}【{{ m['role'] }}】{{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}【assistant】{% endif %}")
    save_json(folder / "tokenizer_config.json", tcfg)
    srv = start(ServeConfig(model=str(folder), device="cpu"))
    try:
        assert httpx.get(srv.url + "/health", timeout=10).json()["chat_template"] == "model"
        r = client(srv).chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "你好"}],
                                                max_tokens=5)
        rendered = "【user】你好\n【assistant】"
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert r.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False).ids)
    finally:
        srv.stop()


# ============================================================================ limits and errors

@pytest.mark.parametrize("kw,param", [
    ({"temperature": -1}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10 ** 6}, "max_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"n": 1000}, "n"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"extra_body": {"no_repeat_ngram_size": -1}}, "no_repeat_ngram_size"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "长" * 300}, "stop"),
    ({"extra_body": {"top_k": -3}}, "top_k"),
    ({"extra_body": {"max_token": 5}}, "max_token"),
    ({"logprobs": 2}, "logprobs"),
    ({"extra_body": {"max_tokens": True}}, "max_tokens"),     # strict types: no guessing at client bugs
    ({"extra_body": {"n": "2"}}, "n"),
])
def test_bad_params_are_400_with_openai_body(oai, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="tiny", prompt="中国", **kw)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error" and e.value.param == param
    assert e.value.body["message"]


def test_raw_http_errors(hf_server):
    url = hf_server.url + "/v1/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_invalid"
    r = httpx.post(url, json={"prompt": 123}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(url, json={"prompt": [999999]}, timeout=10)
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    r = httpx.post(url, json=[1, 2], timeout=10)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(hf_server.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(hf_server.url + "/v1/chat/completions", json={"messages": []}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(hf_server.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                   timeout=10)
    assert r.status_code == 400
    r = httpx.post(url, content=b"x" * (5 << 20), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-4", prompt="中国", max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "你好"}])


def test_long_prompt_is_truncated_with_warning(oai, tokenizer):
    prompt = "中国人民" * 40                       # 160 tokens, the context is 64
    r = oai.completions.create(model="tiny", prompt=prompt, max_tokens=8)
    kept = 64 - 8
    assert r.usage.prompt_tokens == kept
    assert r.model_extra["warnings"] == [f"prompt truncated to the last {kept} tokens (it had "
                                         f"{ntok(tokenizer, prompt)}; the context is 64 tokens and max_tokens=8 "
                                         "needs room)"]
    chunks = list(oai.completions.create(model="tiny", prompt=prompt, max_tokens=8, stream=True))
    assert any((ch.model_extra or {}).get("warnings") for ch in chunks)


# ============================================================================ run folder, auth, queue, load

@pytest.fixture(scope="module")
def keyed_server(tiny):
    from zhgpt.apps.serve import ServeConfig
    srv = start(ServeConfig(model=str(tiny["run"]), device="cpu", api_key="s3cret", max_tokens_limit=32))
    yield srv
    srv.stop()


def test_run_folder_with_api_key(keyed_server, tiny):
    from zhgpt.apps.serve import default_model_name
    good = client(keyed_server, key="s3cret")
    name = tiny["run"].name
    assert default_model_name(tiny["hf"]) == name    # RUN/final is named after its run
    assert [m.id for m in good.models.list().data] == [name]
    r = good.completions.create(model=name, prompt="人工智能是", max_tokens=8, seed=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError) as e:
        client(keyed_server, key="wrong").completions.create(model=name, prompt="中国", max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.post(keyed_server.url + "/v1/completions", json={"prompt": "中国"}, timeout=10)
    assert r.status_code == 401
    assert httpx.get(keyed_server.url + "/health", timeout=10).status_code == 200   # health needs no key
    with pytest.raises(openai.BadRequestError):    # --max-tokens-limit 32
        good.completions.create(model=name, prompt="中国", max_tokens=33)


class GatedEngine(Engine):
    """Holds every generation at its first token until the test opens the gate."""
    gate: threading.Event

    def generate_ids(self, *a, **kw):
        self.gate.wait(30)
        yield from super().generate_ids(*a, **kw)


def _wait_health(srv, pred, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = httpx.get(srv.url + "/health", timeout=5).json()
        if pred(h["queue"]):
            return h
        time.sleep(0.02)
    pytest.fail(f"server never reached the expected queue state: {h}")


@pytest.fixture(scope="module")
def gated(tiny):
    from zhgpt.training.runs import load_for_inference
    from zhgpt.apps.serve import ServeConfig
    model, tok, _ = load_for_inference(tiny["hf"])
    engine = GatedEngine(model, tok)
    engine.gate = threading.Event()
    srv = start(ServeConfig(model_name="gated", max_queue=1), engine)
    yield srv, engine
    engine.gate.set()
    srv.stop()


def test_queue_full_is_429_and_nothing_hangs(gated):
    srv, engine = gated
    engine.gate.clear()
    c = client(srv)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.completions.create, model="gated", prompt="中国", max_tokens=4)
            _wait_health(srv, lambda q: q["running"] == 1)
            second = pool.submit(c.completions.create, model="gated", prompt="人民", max_tokens=4)
            _wait_health(srv, lambda q: q["waiting"] == 1)
            with pytest.raises(openai.RateLimitError) as e:
                c.completions.create(model="gated", prompt="今天", max_tokens=4)
            assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
            engine.gate.set()
            assert first.result(30).choices and second.result(30).choices
    finally:
        engine.gate.set()


@pytest.mark.slow
def test_client_that_gives_up_is_not_computed(gated):
    srv, engine = gated
    engine.gate.clear()
    try:
        before = httpx.get(srv.url + "/health", timeout=5).json()["stats"]
        with pytest.raises(httpx.ReadTimeout):   # the client leaves while its request is in the engine
            httpx.post(srv.url + "/v1/completions", json={"prompt": "中国", "max_tokens": 50, "temperature": 0},
                       timeout=0.5)
        time.sleep(1.5)        # the handler notices the disconnect within its 1 s poll
        engine.gate.set()
        _wait_health(srv, lambda q: q["running"] == 0)
        after = httpx.get(srv.url + "/health", timeout=5).json()["stats"]
        assert after["tokens"] == before["tokens"], "the abandoned request was generated anyway"
    finally:
        engine.gate.set()


def test_disconnected_stream_frees_the_worker(hf_server, oai):
    with httpx.stream("POST", hf_server.url + "/v1/completions", timeout=30,
                      json={"prompt": "中国", "max_tokens": 64, "stream": True, "temperature": 0}) as r:
        next(r.iter_lines())
    _wait_health(hf_server, lambda q: q["running"] == 0 and q["waiting"] == 0)
    assert oai.completions.create(model="tiny", prompt="中国", max_tokens=2).choices


def test_32_concurrent_clients(hf_server, oai, tokenizer):
    prompts = ["中国的历史", "人工智能是", "今天天气", "教育的目的", "在科学研究中"]
    before = httpx.get(hf_server.url + "/health", timeout=5).json()["stats"]

    def one(i):
        kw = dict(model="tiny", prompt=prompts[i % 5], max_tokens=8)
        if i % 4 == 0:   # seeded: must equal a sequential run with the same seed
            return i, oai.completions.create(seed=i, **kw)
        if i % 4 == 1:
            return i, "".join(ch.choices[0].text for ch in oai.completions.create(stream=True, **kw) if ch.choices)
        return i, oai.completions.create(**kw)

    with ThreadPoolExecutor(32) as pool:
        results = dict(pool.map(one, range(32)))
    for i, r in results.items():
        if isinstance(r, str):
            assert len(r) <= 8
        else:
            assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
            assert r.usage.prompt_tokens == ntok(tokenizer, prompts[i % 5])
    for i in (0, 4, 8):
        again = oai.completions.create(model="tiny", prompt=prompts[i % 5], max_tokens=8, seed=i)
        assert again.choices[0].text == results[i].choices[0].text
    after = httpx.get(hf_server.url + "/health", timeout=5).json()["stats"]
    assert after["jobs"] - before["jobs"] == 35
    # Unseeded requests with the same prompt and settings were merged into shared engine calls.
    assert after["engine_calls"] - before["engine_calls"] < 35


# ============================================================================ pieces

def test_stream_rows_equals_engine_generate(tiny):
    from zhgpt.training.runs import load_for_inference
    model, tok, _ = load_for_inference(tiny["hf"])
    engine = Engine(model, tok)
    for stop in ([], ["的"], ["，", "。"]):
        p = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=0, seed=7, num_return_sequences=3, stop=stop)
        # Reference built independently of stream_rows: the raw token rows, decoded whole, cut at the first stop.
        rows, ended = [[] for _ in range(3)], [False] * 3
        for nxt in engine.generate_ids(engine.encode("中国"), p):
            for i, t in enumerate(nxt.tolist()):
                if not ended[i]:
                    ended[i] = t == engine.eot_id
                    rows[i] += [] if ended[i] else [t]
        want_texts = []
        for r in rows:
            text = engine.decode(r)
            cuts = [text.find(s) for s in stop if s in text]
            want_texts.append(text[:min(cuts)] if cuts else text)
        want = engine.generate("中国", p)
        assert want.texts == want_texts
        texts, reasons, tokens = [""] * 3, [None] * 3, [0] * 3
        for row, delta, reason, n in engine.stream_rows(engine.encode("中国"), p):
            assert reasons[row] is None, "no event after a row finished"
            texts[row] += delta
            if reason:
                reasons[row], tokens[row] = reason, n
        assert texts == want.texts and reasons == want.finish_reasons
        assert tokens == want.completion_tokens


def test_cli_flags_and_errors(tmp_path):
    import argparse

    from zhgpt.config import from_args
    from zhgpt.errors import ZhgptError
    from zhgpt.apps.serve import ServeConfig, bind_socket, configure_parser, create_app
    p = argparse.ArgumentParser()
    configure_parser(p)
    cfg = from_args(ServeConfig, p.parse_args(["--model", "m", "--port", "9001", "--max-queue", "3"]))
    assert (cfg.port, cfg.max_queue, cfg.host) == (9001, 3, "127.0.0.1")
    with pytest.raises(ZhgptError):
        ServeConfig(max_queue=0)
    with pytest.raises(ZhgptError, match="no such model"):
        create_app(ServeConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ZhgptError, match="needs --model"):
        create_app(ServeConfig())
    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ZhgptError, match="another --port"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
