"""Load test of `zhgpt serve` on loopback: 32 concurrent clients, every answer checked.

    python bench/bench_serve.py                    # tiny trained model (built in bench/out/serve-tiny)
    python bench/bench_serve.py --size small       # 3.5M-parameter untrained model: the forward dominates
    python bench/bench_serve.py --model runs/NAME  # your model
    python bench/bench_serve.py --results          # also write the section in bench/RESULTS.md
    python bench/bench_serve.py --quick            # smoke run: fewer requests

The server runs as its own process (`python -m zhgpt serve`, as a user would start it), so the clients do
not share its GIL. Clients are asyncio tasks over httpx; each sends requests until the total (--requests)
or the time limit is reached. A quarter of the requests stream, a quarter are chat. Every answer is checked:
HTTP 200, OpenAI's object shape, one choice per request with finish_reason stop|length, usage adding up, and
for streams the final `data: [DONE]`.

Scenarios (each on a fresh server, --rounds times, the order reversed every other round):
  same prompt, batching on   all clients send the same prompt and settings: the worker merges waiting requests
                             into one batched engine call (up to --max-batch sequences)
  same prompt, batching off  the same load with --max-batch 1: one engine call per request
  5 prompts, batching on     the five demo prompts in turn: requests for the same prompt still meet in the queue
  all prompts different      no two requests alike, nothing can be merged (the engine decodes one prompt per
                             call): the throughput of one request at a time
The host is usually shared: compare the ratios within one run, not absolute requests/s across runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROMPTS = ["中国的历史", "人工智能是", "今天天气", "教育的目的", "在科学研究中"]


def tiny_model() -> Path:
    """A tiny GPT trained by `zhgpt train` (2 layers, 64 wide, char tokenizer, 150 steps) on the first 2,000
    paragraphs of People's Daily, built once into bench/out/serve-tiny/run: the same kind of run the tests use."""
    run = common.OUT / "serve-tiny" / "run"
    if (run / "final" / "config.json").is_file():
        return run
    text = common.OUT / "serve-tiny" / "train.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    with open(common.PD_TRAIN, encoding="utf-8") as f:
        text.write_text("".join(line for _, line in zip(range(2000), f)), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "zhgpt", "train", "--data", str(text), "--tokenizer", "char",
                    "--vocab-size", "1000", "--out", str(run), "--max-steps", "150", "--n-layer", "2", "--n-head", "4",
                    "--n-embd", "64", "--block-size", "64", "--batch-size", "8", "--lr", "1e-2", "--eval-every", "50",
                    "--log", "none", "--no-report"], check=True, stdout=subprocess.DEVNULL)
    return run


def small_model() -> Path:
    """An untrained 4-layer, 256-wide GPT (3.5M parameters, context 256) with the tiny run's tokenizer: its
    forward costs more than the HTTP around it, which is where batching matters. Random weights almost
    never emit end-of-text, so every request costs its full max_tokens."""
    import dataclasses

    import torch

    from zhgpt.training.checkpoint import list_checkpoints, save_checkpoint
    from zhgpt.model.gpt import GPT, ModelConfig
    run = common.OUT / "serve-small" / "run"
    if list_checkpoints(run):
        return run
    tiny = tiny_model()
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gpt2", vocab_size=1024, block_size=256, n_layer=4, n_head=4, n_embd=256)
    meta = {"model": dataclasses.asdict(cfg), "train": {}, "eot_id": 0, "tokenizer_hash": "", "metrics": {}}
    save_checkpoint(run, 0, GPT(cfg), None, {"step": 0, "tokens_seen": 0}, meta,
                    list_checkpoints(tiny)[-1] / "tokenizer")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m zhgpt serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, max_batch: int, max_queue: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "zhgpt", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--device", "cpu", "--max-batch", str(max_batch),
               "--max-queue", str(max_queue), "--model-name", "bench", "--log-level", "warning"]
        self.log = open(common.OUT / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=common.REPO)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zhgpt serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"zhgpt serve did not answer /health within {timeout:.0f} s")

    def health(self) -> dict:
        import httpx
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # uvicorn's graceful shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# ------------------------------------------------------------------------- one request, checked

def check_completion(body: dict, chat: bool, max_tokens: int) -> int:
    assert body["object"] == ("chat.completion" if chat else "text_completion"), body
    assert body["model"] == "bench" and isinstance(body["created"], int) and body["id"]
    (c,) = body["choices"]
    assert c["index"] == 0 and c["finish_reason"] in ("stop", "length"), c
    text = c["message"]["content"] if chat else c["text"]
    assert isinstance(text, str)
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 0 <= u["completion_tokens"] <= max_tokens, u
    if c["finish_reason"] == "length":
        assert u["completion_tokens"] == max_tokens, (u, c)
    return u["completion_tokens"]


async def one_request(client, i: int, prompt: str, max_tokens: int) -> tuple[float, float | None, int]:
    """-> (latency s, time to first token s or None, completion tokens). Raises on a malformed answer."""
    kind = ("completion", "completion", "stream", "chat")[i % 4]
    t0 = time.perf_counter()
    if kind == "stream":
        payload = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                   "stream_options": {"include_usage": True}}
        ttft, text, finish, usage, done = None, "", None, None, False
        async with client.stream("POST", "/v1/completions", json=payload) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            async for line in r.aiter_lines():
                if not line:
                    continue
                assert line.startswith("data: "), line
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                assert chunk["object"] == "text_completion" and "error" not in chunk, chunk
                for c in chunk["choices"]:
                    if c["text"] and ttft is None:
                        ttft = time.perf_counter() - t0
                    text += c["text"]
                    finish = c["finish_reason"] or finish
                if chunk.get("usage"):
                    usage = chunk["usage"]
        assert done and finish in ("stop", "length") and usage is not None, (done, finish, usage)
        assert usage["completion_tokens"] <= max_tokens
        return time.perf_counter() - t0, ttft, usage["completion_tokens"]
    if kind == "chat":
        r = await client.post("/v1/chat/completions", json={
            "model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
    else:
        r = await client.post("/v1/completions", json={"model": "bench", "prompt": prompt, "max_tokens": max_tokens})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    n = check_completion(r.json(), kind == "chat", max_tokens)
    return time.perf_counter() - t0, None, n


async def load(url: str, clients: int, total: int, time_limit: float, prompts: list[str], max_tokens: int) -> dict:
    import httpx
    lat, ttfts, tokens, errors = [], [], 0, []
    sent = 0
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=time_limit, limits=limits) as client:
        async def worker():
            nonlocal sent, tokens
            while sent < total and time.monotonic() < deadline:
                i = sent
                sent += 1
                try:
                    dt, ttft, n = await asyncio.wait_for(
                        one_request(client, i, prompts[i % len(prompts)], max_tokens),
                        timeout=max(1.0, deadline - time.monotonic()))
                    lat.append(dt)
                    tokens += n
                    if ttft is not None:
                        ttfts.append(ttft)
                except (AssertionError, httpx.HTTPError, asyncio.TimeoutError, KeyError, ValueError) as e:
                    errors.append(f"request {i}: {type(e).__name__}: {str(e)[:200]}")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
    return {"ok": len(lat), "errors": errors, "wall_s": wall, "rps": len(lat) / wall, "lat": lat, "ttfts": ttfts,
            "tok_s": tokens / wall, "p50_s": q[49], "p99_s": q[98],
            "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan")}


def run_scenario(model: Path, name: str, prompts: list[str], max_batch: int, args) -> dict:
    srv = Server(model, max_batch=max_batch, max_queue=max(64, args.clients * 2))
    try:
        srv.wait_ready()
        # Warm-up: first calls pay for lazy imports and allocator growth.
        asyncio.run(load(srv.url, 4, 8, 60, prompts, args.max_tokens))
        h = srv.health()
        before = h["stats"]
        res = asyncio.run(load(srv.url, args.clients, args.requests, args.time_limit, prompts, args.max_tokens))
        after = srv.health()["stats"]
    finally:
        srv.stop()
    calls = after["engine_calls"] - before["engine_calls"]
    jobs = after["jobs"] - before["jobs"]
    res.update(name=name, max_batch=max_batch, params=h["params"], engine_calls=calls, jobs=jobs,
               merged=jobs / calls if calls else float("nan"))
    print(f"{name:32s} {res['ok']:3d} ok {len(res['errors'])} errors | {res['rps']:6.1f} req/s | "
          f"{res['tok_s']:7.0f} tok/s | p50 {res['p50_s'] * 1e3:6.0f} ms | p99 {res['p99_s'] * 1e3:6.0f} ms | "
          f"{jobs} requests in {calls} engine calls", flush=True)
    for e in res["errors"][:5]:
        print("   ", e)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="run / checkpoint / HF folder (default: see --size)")
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny",
                    help="built-in model when --model is not given: tiny = 170k parameters trained for seconds "
                         "(HTTP overhead dominates), small = 3.5M untrained (the forward dominates)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96, help="requests per scenario")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=120, help="seconds per scenario")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch with batching on")
    ap.add_argument("--rounds", type=int, default=2, help="times each scenario runs (order alternates)")
    ap.add_argument("--quick", action="store_true", help="32 requests per scenario, one round")
    ap.add_argument("--results", action="store_true", help="write the section in bench/RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.rounds = min(args.requests, 32), 1
    common.OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = Path(args.model) if args.model else (small_model() if args.size == "small" else tiny_model())
    info = common.machine_info()
    load_before = common.load_avg()
    print(f"model {model} | {args.clients} clients, {args.requests} requests per scenario and round, max_tokens "
          f"{args.max_tokens} | load {load_before}", flush=True)
    unique = [f"{PROMPTS[i % len(PROMPTS)]}{i}" for i in range(args.requests)]   # no two requests alike
    scenarios = {"same prompt, batching on": (PROMPTS[:1], args.max_batch),
                 "same prompt, batching off": (PROMPTS[:1], 1),
                 "5 prompts, batching on": (PROMPTS, args.max_batch),
                 "all prompts different": (unique, args.max_batch)}
    names = list(scenarios)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        # Forward, then reversed: drift in the shared host's load hits every scenario alike.
        for name in (names if r % 2 == 0 else names[::-1]):
            prompts, batch = scenarios[name]
            runs[name].append(run_scenario(model, name, prompts, batch, args))
    load_after = common.load_avg()

    def summary(name):
        rs = runs[name]
        lat = sorted(x for r in rs for x in r["lat"])
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
        ttfts = [x for r in rs for x in r["ttfts"]]
        return {"name": name, "ok": sum(r["ok"] for r in rs), "errors": sum(len(r["errors"]) for r in rs),
                "rps": statistics.median(r["rps"] for r in rs), "tok_s": statistics.median(r["tok_s"] for r in rs),
                "p50": q[49] * 1e3, "p99": q[98] * 1e3,
                "ttft": statistics.median(ttfts) * 1e3 if ttfts else float("nan"),
                "merge": f"{sum(r['jobs'] for r in rs)} / {sum(r['engine_calls'] for r in rs)}",
                "params": rs[0]["params"]}
    table = [summary(n) for n in names]
    gains = [a["rps"] / b["rps"] for a, b in zip(runs[names[0]], runs[names[1]])]
    gain = statistics.median(gains)
    print(f"batching gain on identical requests: {gain:.2f}x requests/s (per round: "
          f"{', '.join(f'{g:.2f}' for g in gains)})")
    failed = sum(t["errors"] for t in table)
    if args.results:
        import fastapi
        import uvicorn
        rows = [[t["name"], t["ok"], t["errors"], t["rps"], t["tok_s"], t["p50"], t["p99"], t["ttft"], t["merge"]]
                for t in table]
        body = (common.header(info, load_before, load_after, common.command_line())
                + f"- serving: fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}; "
                  f"model `{os.path.relpath(model, common.REPO)}` "
                  f"({table[0]['params']:,} parameters); {args.clients} concurrent clients, {args.requests} "
                  f"requests per scenario and round, {args.rounds} rounds (order reversed every other round), "
                  f"max_tokens {args.max_tokens}; a quarter of the requests streamed, a quarter chat; every "
                  "answer checked\n"
                + "- req/s and tok/s: median over rounds; latency percentiles over all requests of all rounds\n\n"
                + common.md_table(["scenario", "ok", "errors", "req/s", "completion tok/s", "p50 ms", "p99 ms",
                                   "stream TTFT p50 ms", "requests / engine calls"], rows)
                + f"\n\nBatching gain on identical requests: {gain:.2f}x requests/s (median of the per-round "
                  "ratios). Only requests with the same prompt and settings are merged (the engine decodes one "
                  "prompt per call): with all prompts different, throughput is that of one request at a time.\n")
        which = model.name if args.model else f"{args.size} model"
        common.write_section(f"Serving: zhgpt serve, {args.clients} concurrent clients, {which} "
                             "(bench/bench_serve.py)", body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
