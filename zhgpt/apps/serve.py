"""`zhgpt serve`: an OpenAI-compatible HTTP API for a zhgpt model (FastAPI + uvicorn, the `[serve]` extra).

    zhgpt serve --model runs/NAME                      # http://127.0.0.1:8000/v1
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY (or anything without --api-key)")
    client.completions.create(model="NAME", prompt="人工智能是", max_tokens=50)

Endpoints
    POST /v1/completions        prompt: str | list[str] | list[int] | list[list[int]] (token ids)
    POST /v1/chat/completions   messages -> one prompt (see "Chat template")
    GET  /v1/models, /v1/models/{id}
    GET  /health                status, queue depth, model facts (open even with --api-key)

Request fields
    As OpenAI: model, max_tokens (chat: also max_completion_tokens), temperature (0-2; 0 = greedy), top_p, n, stop
    (up to 4 strings), stream (+ stream_options.include_usage), seed, echo (completions), user (ignored).
    Extensions: top_k, repetition_penalty (Hugging Face's multiplicative penalty on tokens already present, which
    is what the engine implements; 1.1-1.3 stops small Chinese models looping).
    frequency_penalty / presence_penalty are OpenAI's *additive* penalties, which the engine does not implement:
    0 is accepted, any other value is rejected with 400 pointing to repetition_penalty, rather than silently mapped
    onto a penalty that behaves differently. logprobs, logit_bias, suffix, best_of != n, tools and non-text
    response formats are rejected with 400. Unknown fields are rejected too (a typo such as "max_token" would
    otherwise be ignored silently).
    Omitted sampling fields take zhgpt's defaults, the same as `zhgpt generate` (temperature 0.8, top_k 50,
    top_p 0.95), not OpenAI's (1, off, 1): a small model sampled without truncation produces mostly noise.
    max_tokens defaults to 16 for completions (as OpenAI) and to min(256, the limit) for chat.

Chat template
    If the model's tokenizer folder has a chat template ("chat_template" in tokenizer_config.json, or
    chat_template.jinja), messages are rendered with transformers' apply_chat_template(add_generation_prompt=True).
    A base model trained by zhgpt has none and gets this plain template, one line per message, which a model
    pre-trained on Chinese text can continue:

        系统：{system message}
        用户：{user message}
        助手：{earlier assistant message}
        用户：{user message}
        助手：

    Generation also stops at "\\n用户：" (the model starting the next user turn). A base model does not follow
    instructions; the template only lets chat clients talk to it.

Limits and errors (every error body is OpenAI's {"error": {"message", "type", "param", "code"}})
    - max_tokens must be 1..limit, the limit being --max-tokens-limit capped by the context length: 400 otherwise.
    - A prompt that does not fit the context with room to generate is truncated from the left (the engine's
      Engine.fit_prompt) and the response carries "warnings": ["prompt truncated to the last N tokens ..."].
    - Malformed JSON, wrong types and out-of-range values: 400 (what OpenAI returns; FastAPI's own 422 body is
      replaced). Unknown model: 404. Wrong or missing key with --api-key: 401. Body over 4 MiB: 413.
    - More than --max-queue requests waiting for the generation worker: 429 with Retry-After.
    - No request field is ever a file path: the server only reads the model folder given on its command line.

Concurrency
    Generation is CPU/GPU-bound and PyTorch already uses every core for one forward, so one worker thread runs
    all generations from a queue; the event loop only parses requests and forwards tokens, so streaming never
    blocks other clients. The worker merges waiting requests that share the prompt and all sampling settings
    and carry no seed into one batched call of the engine (one forward for all their sequences); greedy
    (temperature 0) duplicates are computed once. Seeded requests run alone so that the same seed always gives
    the same text. Requests with different prompts are not batched: the engine decodes one prompt at a time.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zhgpt.config import add_args, format_config, from_args, load_json, opt
from zhgpt.model.engine import Engine, SamplingParams
from zhgpt.errors import ZhgptError
from zhgpt.training.runs import tokenizer_dir_of

try:  # the [serve] extra; without it `zhgpt serve --help` still works and main() says what to install
    from pydantic import BaseModel, ConfigDict, Field
    # Module level: FastAPI resolves the handlers' (string) annotations in this module's namespace.
    from starlette.requests import Request
except ImportError:  # pragma: no cover - exercised only without the extra
    BaseModel, ConfigDict, Request = object, dict, None

    def Field(default=None, **_):   # noqa: N802 - stands in for pydantic.Field
        return default

log = logging.getLogger("zhgpt.apps.serve")

MAX_BODY_BYTES = 4 << 20       # 4 MiB: ~1M Chinese characters, far beyond any context; stops memory abuse
MAX_CHOICES = 64               # prompts x n per request
MAX_N = 16                     # sequences per prompt
MAX_STOP = 4                   # OpenAI's limit on stop strings
MAX_STOP_CHARS = 256           # each stop string is searched for after every token: keep that cheap
CHAT_MAX_TOKENS = 256          # default max_tokens for chat when the request gives none
COMPLETION_MAX_TOKENS = 16     # OpenAI's default for /v1/completions
PLAIN_ROLES = {"system": "系统", "developer": "系统", "user": "用户", "assistant": "助手"}
PLAIN_CHAT_STOP = "\n用户："


@dataclass
class ServeConfig:
    model: str = opt("", "run folder, checkpoint folder or exported Hugging Face folder to serve")
    host: str = opt("127.0.0.1", "address to bind; 127.0.0.1 = this machine only (0.0.0.0 exposes the API to "
                                 "the network: set --api-key then)")
    port: int = opt(8000, "TCP port (0 = any free port, printed at start)")
    api_key: str = opt("", "require 'Authorization: Bearer KEY' on /v1/* (empty = no auth; the environment "
                           "variable ZHGPT_API_KEY is used when this is empty, which keeps the key out of `ps`)")
    model_name: str = opt("", "model id shown by /v1/models and accepted in requests (default: the folder's name)")
    max_tokens_limit: int = opt(0, "largest max_tokens a request may ask for (0 = the model's context length)")
    max_queue: int = opt(64, "requests allowed to wait for the generation worker; more are answered 429")
    max_batch: int = opt(16, "most sequences generated together in one batched forward (requests with the same "
                             "prompt and settings are merged)")
    device: str = opt("auto", "cpu, cuda or auto")
    dtype: str = opt("fp32", "inference precision", choices=("fp32", "bf16", "fp16"))
    log_level: str = opt("info", "uvicorn log level", choices=("critical", "error", "warning", "info", "debug"))

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ZhgptError(f"--port must be 0..65535, got {self.port}")
        if self.max_queue < 1:
            raise ZhgptError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_batch < 1:
            raise ZhgptError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_tokens_limit < 0:
            raise ZhgptError(f"--max-tokens-limit must be >= 0 (0 = the context length), got {self.max_tokens_limit}")


# ============================================================================ errors

class ApiError(Exception):
    """An error answered to the client with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ============================================================================ streaming rows

# ============================================================================ the generation worker

@dataclass(eq=False)
class Job:
    """One prompt of one request: ``params.num_return_sequences`` choices starting at response index ``offset``.
    ``sink`` is called from the worker thread with ("delta", index, text) / ("finish", index, reason) (streaming
    jobs only) and finally ("done", job) or ("error", message)."""
    prompt_ids: list[int]
    params: SamplingParams
    offset: int
    sink: Callable[[tuple], None]
    stream: bool = False
    cancelled: bool = False
    texts: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    left: int = 0

    @property
    def n(self) -> int:
        return self.params.num_return_sequences

    def merge_key(self):
        """Jobs with equal keys can share one engine call; None = must run alone."""
        p = self.params
        if p.temperature > 0 and p.seed >= 0:
            # Seeded sampling runs alone: a row's random stream depends on the other rows in its batch,
            # and the same seed must always give the same text.
            return None
        return (tuple(self.prompt_ids), p.max_new_tokens, p.temperature, p.top_k, p.top_p,
                p.repetition_penalty, tuple(p.stop), p.stop_at_eot)


class Scheduler:
    """A bounded queue of jobs and the one thread that runs them through the engine."""

    def __init__(self, engine: Engine, max_queue: int = 64, max_batch: int = 16):
        self.engine, self.max_queue, self.max_batch = engine, max_queue, max_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0                  # jobs in the engine call now
        self._current: list[Job] = []
        self.stats = {"jobs": 0, "engine_calls": 0, "sequences": 0, "tokens": 0, "errors": 0}
        self._thread = threading.Thread(target=self._loop, name="zhgpt-generate", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, jobs: list[Job]) -> None:
        """Queue all jobs of a request or none of them."""
        with self._cv:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down", type="server_error")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise ApiError(429, f"too many requests waiting ({len(self._pending)} queued, limit "
                                    f"{self.max_queue}); retry shortly", code="queue_full",
                               type="rate_limit_error", headers={"Retry-After": "1"})
            self._pending.extend(jobs)
            self._cv.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closed = True
            pending, self._pending = list(self._pending), collections.deque()
            self._cv.notify_all()
        for job in self._current:         # stop the engine call under way at its next token
            job.cancelled = True
        for job in pending:
            job.sink(("error", "the server is shutting down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _take_group(self) -> list[Job]:
        """The oldest job plus every waiting job it can share an engine call with (called under the lock)."""
        first = self._pending.popleft()
        group, key = [first], first.merge_key()
        if key is None:
            return group
        greedy = first.params.temperature == 0
        rows = first.n
        for job in list(self._pending):
            if job.cancelled or job.merge_key() != key:
                continue
            if not greedy and rows + job.n > self.max_batch:
                continue
            rows += 0 if greedy else job.n
            group.append(job)
            self._pending.remove(job)
        return group

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                group = [j for j in self._take_group() if not j.cancelled]
                self.running, self._current = len(group), group
            try:
                if group:
                    self._run(group)
            except Exception as e:   # a bug must fail these requests, never kill the worker
                log.exception("generation failed")
                self.stats["errors"] += 1
                for job in group:
                    if job.left:
                        job.sink(("error", f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self._cv:
                    self.running, self._current = 0, []

    def _run(self, group: list[Job]) -> None:
        base = group[0].params
        targets: list[list[tuple[Job, int]]] = []      # engine row -> the (job, choice) pairs it answers
        if base.temperature == 0:
            # Greedy decoding is deterministic: every choice of every merged job is the same text.
            targets.append([(job, c) for job in group for c in range(job.n)])
        else:
            targets = [[(job, c)] for job in group for c in range(job.n)]
        for job in group:
            job.texts, job.reasons, job.tokens, job.left = [""] * job.n, ["length"] * job.n, [0] * job.n, job.n
        params = dataclasses.replace(base, num_return_sequences=len(targets))
        self.stats["engine_calls"] += 1
        self.stats["jobs"] += len(group)
        self.stats["sequences"] += len(targets)
        for row, delta, reason, ntok in self.engine.stream_rows(group[0].prompt_ids, params,
                                                    cancelled=lambda: all(j.cancelled for j in group)):
            for job, c in targets[row]:
                if delta:
                    job.texts[c] += delta
                    if job.stream:
                        job.sink(("delta", job.offset + c, delta))
                if reason is not None:
                    job.reasons[c], job.tokens[c] = reason, ntok
                    self.stats["tokens"] += ntok
                    job.left -= 1
                    if job.stream:
                        job.sink(("finish", job.offset + c, reason))
                    if job.left == 0:
                        job.sink(("done", job))


# ============================================================================ requests

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, strict=True)


class _SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions. Numbers and booleans are strict:
    "max_tokens": true or "n": "2" is a client bug to report, not something to guess at."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, gt=0, le=1, strict=True)
    top_k: int | None = Field(None, ge=0, strict=True)
    n: int = Field(1, ge=1, le=MAX_N, strict=True)
    stop: str | list[str] | None = None
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1, strict=True)
    repetition_penalty: float | None = Field(None, gt=0, le=10, strict=True)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = Field(False, strict=True)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, strict=True)
    logprobs: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")      # name, tool_call_id ... are carried, not used
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


# ============================================================================ the served model

@dataclass
class ServedModel:
    engine: Engine
    name: str
    info: dict = field(default_factory=dict)
    chat_tokenizer: Any = None            # a transformers tokenizer with a chat template, or None
    created: int = field(default_factory=lambda: int(time.time()))


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


def default_model_name(model_path) -> str:
    """The folder's name; RUN/final (the export every run writes) is named after its run."""
    p = Path(model_path).resolve()
    return p.parent.name if p.name == "final" and (p.parent / "run.json").is_file() else p.name


def load_model(cfg: ServeConfig) -> ServedModel:
    from zhgpt.inference.loading import load_engine
    if not cfg.model:
        raise ZhgptError("zhgpt serve needs --model (a run folder, a checkpoint folder or an exported HF folder)")
    loaded = load_engine(cfg.model, cfg.device, cfg.dtype)
    engine = loaded.engine
    info = {**loaded.info, "device": loaded.device, "dtype": cfg.dtype, "params": loaded.model.num_params()}
    return ServedModel(engine, cfg.model_name or default_model_name(cfg.model), info,
                       load_chat_tokenizer(tokenizer_dir_of(cfg.model)))


def render_chat(messages: list[ChatMessage], chat_tokenizer) -> tuple[str, list[str]]:
    """(prompt, extra stop strings) for a conversation; see "Chat template" in the module docstring."""
    turns = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            parts = []
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported, got {part.type!r}",
                                   param=f"messages.{i}.content", code="unsupported_content")
                parts.append(part.text)
            content = "".join(parts)
        else:
            content = m.content or ""
        turns.append({"role": "system" if m.role == "developer" else m.role, "content": content})
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


# ============================================================================ the app

class BodyLimit:
    """Refuse request bodies over ``limit`` bytes before they are read (plain ASGI, so streaming responses and
    disconnect detection pass through untouched, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            e = ApiError(413, f"request body over {self.limit >> 20} MiB", code="body_too_large")
            body = json.dumps(e.body()).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted():
            # A chunked upload has no content-length: count what arrives (FastAPI answers 400 when this raises).
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"request body over {self.limit >> 20} MiB", code="body_too_large")
            return message

        await self.app(scope, counted, send)


def create_app(cfg: ServeConfig | None = None, served: ServedModel | Engine | None = None):
    """The FastAPI app. ``served`` (a ServedModel or a bare Engine) skips loading ``cfg.model``."""
    try:
        from fastapi import Depends, FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as e:
        raise ZhgptError(f"zhgpt serve needs the [serve] extra ({e.name} is missing): pip install 'zhgpt[serve]'")

    cfg = cfg or ServeConfig()
    if served is None:
        served = load_model(cfg)
    elif isinstance(served, Engine):
        served = ServedModel(served, cfg.model_name or (default_model_name(cfg.model) if cfg.model else "zhgpt"),
                             {"params": served.model.num_params()},
                             load_chat_tokenizer(tokenizer_dir_of(cfg.model)) if cfg.model else None)
    engine = served.engine
    block = engine.block_size
    token_limit = min(cfg.max_tokens_limit or block, block)
    api_key = cfg.api_key or os.environ.get("ZHGPT_API_KEY", "")
    scheduler = Scheduler(engine, cfg.max_queue, cfg.max_batch)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(scheduler.close)

    app = FastAPI(title="zhgpt", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.served = scheduler, served

    # ------------------------------------------------------------------ errors in OpenAI's shape
    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
                                                .rstrip(": "), code="json_invalid"))
        # Unions report one error per member (prompt: str | list[str] ...); name the field, not the member.
        param = ".".join(x for x in loc if not (x in ("str", "list[str]", "list[int]", "list[list[int]]")
                                                 or x.startswith(("function-", "list["))))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field (not supported by this server)"
        return error_response(ApiError(400, f"{param or 'body'}: {msg}", param=param or None,
                                       code=first.get("type", "invalid_value")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(ApiError(e.status_code, msg, code=code))

    @app.exception_handler(Exception)
    async def _server_error(request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error ({type(e).__name__}); see the server log",
                                       type="server_error", code="internal_error"))

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid API key: send 'Authorization: Bearer KEY' with the key the server "
                                "was started with", code="invalid_api_key")

    auth = [Depends(check_key)]

    # ------------------------------------------------------------------ request -> jobs
    def check_model(name: str | None) -> None:
        if name is not None and name != served.name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {served.name!r}",
                           param="model", code="model_not_found")

    def sampling(req: _SamplingRequest, max_tokens: int | None, default_max: int, extra_stop=()) -> SamplingParams:
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(req, name):
                raise ApiError(400, f"{name} (OpenAI's additive penalty) is not supported; use repetition_penalty "
                                    "(multiplicative, e.g. 1.2)", param=name, code="unsupported_parameter")
        if req.logit_bias:
            raise ApiError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
        mt = default_max if max_tokens is None else max_tokens
        if mt > token_limit:
            raise ApiError(400, f"max_tokens={mt} is over this server's limit of {token_limit} tokens "
                                f"(context {block} tokens)", param="max_tokens", code="invalid_value")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
            raise ApiError(400, f"stop: up to {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} characters",
                           param="stop", code="invalid_value")
        d = SamplingParams()
        return SamplingParams(
            max_new_tokens=mt, num_return_sequences=req.n,
            temperature=d.temperature if req.temperature is None else req.temperature,
            top_k=d.top_k if req.top_k is None else req.top_k,
            top_p=d.top_p if req.top_p is None else req.top_p,
            repetition_penalty=d.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            seed=-1 if req.seed is None else req.seed, stop=stop + list(extra_stop))

    def fit(ids: list[int], p: SamplingParams, warnings: list[str]) -> list[int]:
        fitted, truncated = engine.fit_prompt(ids, p.max_new_tokens)
        if truncated:
            msg = (f"prompt truncated to the last {len(fitted)} tokens (it had {len(ids)}; the context is {block} "
                   f"tokens and max_tokens={p.max_new_tokens} needs room)")
            if msg not in warnings:
                warnings.append(msg)
        return fitted

    def prompt_list(prompt) -> list[str | list[int]]:
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ApiError(400, "prompt: empty list", param="prompt", code="invalid_value")
        if all(isinstance(x, int) for x in prompt):
            return [list(prompt)]
        return list(prompt)

    vocab = engine.model.cfg.vocab_size

    def encode_prompt(x: str | list[int], i: int) -> list[int]:
        if isinstance(x, str):
            return engine.encode(x)
        bad = [t for t in x if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"prompt[{i}]: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                           param="prompt", code="invalid_value")
        return x

    async def run_jobs(request: Request, specs: list[tuple[list[int], SamplingParams]], stream: bool):
        """Queue one job per prompt; -> (asyncio queue of events, jobs). Admission is all-or-nothing."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(ev):
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:   # the event loop is gone (server stopped): nobody is listening
                pass

        jobs, offset = [], 0
        for ids, p in specs:
            jobs.append(Job(ids, p, offset, sink, stream=stream))
            offset += p.num_return_sequences
        scheduler.submit(jobs)
        return events, jobs

    async def wait_all(request: Request, events: asyncio.Queue, jobs: list[Job]) -> None:
        """Wait until every job is done; stop their generation if the client goes away."""
        left = len(jobs)
        try:
            while left:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        # Nobody will read the answer; the finally below stops the generation.
                        raise ApiError(499, "client closed the request", code="client_closed")
                    continue
                if ev[0] == "error":
                    raise ApiError(500, ev[1], type="server_error", code="generation_failed")
                if ev[0] == "done":
                    left -= 1
        finally:
            if left:
                for job in jobs:
                    job.cancelled = True

    def usage(jobs: list[Job]) -> dict:
        prompt = sum(len(j.prompt_ids) for j in jobs)
        completion = sum(sum(j.tokens) for j in jobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def streaming(request, events, jobs, header: dict, chunk: Callable, first: Callable | None,
                  include_usage: bool, warnings: list[str]):
        """SSE: first chunk per choice, deltas, a finish chunk per choice, optional usage chunk, [DONE]."""
        async def gen():
            left = len(jobs)
            try:
                n_choices = sum(j.n for j in jobs)
                lead = [first(i) for i in range(n_choices)] if first else []
                for k, c in enumerate(lead):
                    yield sse({**header, "choices": [c], **({"warnings": warnings} if warnings and k == 0 else {})})
                if warnings and not lead:
                    yield sse({**header, "choices": [], "warnings": warnings})
                while left:
                    ev = await events.get()
                    if ev[0] == "delta":
                        yield sse({**header, "choices": [chunk(ev[1], ev[2], None)]})
                    elif ev[0] == "finish":
                        yield sse({**header, "choices": [chunk(ev[1], None, ev[2])]})
                    elif ev[0] == "done":
                        left -= 1
                    elif ev[0] == "error":
                        yield sse(ApiError(500, ev[1], type="server_error", code="generation_failed").body())
                        break
                if include_usage and not left:
                    yield sse({**header, "choices": [], "usage": usage(jobs)})
                yield "data: [DONE]\n\n"
            finally:
                if left:   # the client disconnected (or an error): free the worker
                    for job in jobs:
                        job.cancelled = True
        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ endpoints
    @app.get("/health")
    async def health():
        c = engine.model.cfg
        return {"status": "ok", "model": served.name,
                "queue": {"waiting": scheduler.waiting, "running": scheduler.running, "max_queue": cfg.max_queue,
                          "max_batch": cfg.max_batch},
                "stats": dict(scheduler.stats),
                "context": block, "max_tokens_limit": token_limit, "vocab_size": c.vocab_size, "arch": c.arch,
                "params": served.info.get("params"), "device": str(engine.device),
                "chat_template": "model" if served.chat_tokenizer is not None else "plain"}

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "zhgpt"}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model_info(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        for name, bad in (("suffix", bool(req.suffix)), ("logprobs", req.logprobs not in (None, 0)),
                          ("best_of", req.best_of not in (None, req.n))):
            if bad:
                raise ApiError(400, f"{name} is not supported by zhgpt serve", param=name,
                               code="unsupported_parameter")
        prompts = prompt_list(req.prompt)
        if len(prompts) * req.n > MAX_CHOICES:
            raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is over {MAX_CHOICES} choices per request",
                           param="n", code="invalid_value")
        p = sampling(req, req.max_tokens, COMPLETION_MAX_TOKENS)
        warnings: list[str] = []

        def prepare():   # tokenising a long prompt takes milliseconds: keep it off the event loop
            return [(fit(encode_prompt(x, i), p, warnings), p) for i, x in enumerate(prompts)]

        specs = await run_in_threadpool(prepare)
        echo = [(x if isinstance(x, str) else engine.decode(x)) if req.echo else "" for x in prompts]
        events, jobs = await run_jobs(request, specs, req.stream)
        header = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                  "model": served.name}
        if req.stream:
            def chunk(i, text, reason):
                return {"text": text or "", "index": i, "logprobs": None, "finish_reason": reason}
            first = (lambda i: chunk(i, echo[i // req.n], None)) if req.echo else None
            return streaming(request, events, jobs, header, chunk, first,
                             bool(req.stream_options and req.stream_options.include_usage), warnings)
        await wait_all(request, events, jobs)
        choices = [{"text": echo[k] + job.texts[c], "index": job.offset + c, "logprobs": None,
                    "finish_reason": job.reasons[c]} for k, job in enumerate(jobs) for c in range(job.n)]
        body = {**header, "choices": choices, "usage": usage(jobs)}
        if warnings:
            body["warnings"] = warnings
        return body

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatRequest, request: Request):
        check_model(req.model)
        for name, bad in (("logprobs", bool(req.logprobs)), ("tools", bool(req.tools)),
                          ("tool_choice", req.tool_choice not in (None, "none")),
                          ("response_format", (req.response_format or {}).get("type", "text") != "text")):
            if bad:
                raise ApiError(400, f"{name} is not supported by zhgpt serve", param=name,
                               code="unsupported_parameter")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        warnings: list[str] = []

        def prepare():
            prompt, extra_stop = render_chat(req.messages, served.chat_tokenizer)
            p = sampling(req, max_tokens, min(CHAT_MAX_TOKENS, token_limit), extra_stop)
            return [(fit(engine.encode(prompt), p, warnings), p)]

        specs = await run_in_threadpool(prepare)
        events, jobs = await run_jobs(request, specs, req.stream)
        header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name,
                  "system_fingerprint": None}
        if req.stream:
            header["object"] = "chat.completion.chunk"

            def chunk(i, text, reason):
                delta = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

            def first(i):
                return {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}
            return streaming(request, events, jobs, header, chunk, first,
                             bool(req.stream_options and req.stream_options.include_usage), warnings)
        await wait_all(request, events, jobs)
        job = jobs[0]
        choices = [{"index": c, "message": {"role": "assistant", "content": job.texts[c]}, "logprobs": None,
                    "finish_reason": job.reasons[c]} for c in range(job.n)]
        body = {**header, "object": "chat.completion", "choices": choices, "usage": usage(jobs)}
        if warnings:
            body["warnings"] = warnings
        return body

    return app


# ============================================================================ running it

def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a ZhgptError the user can act on (port taken, bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ZhgptError(f"--host {host}: cannot resolve ({e.strerror}); use an address such as 127.0.0.1")
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ZhgptError(f"cannot listen on {host}:{port} ({e.strerror}); is another server using it? "
                         "pick another --port")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread on a loopback port (tests, benchmarks, notebooks).

        with BackgroundServer(create_app(cfg, engine)) as srv:
            OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 30.0):
        import uvicorn
        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="zhgpt-uvicorn", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def main(cfg: ServeConfig) -> None:
    try:
        import uvicorn
    except ImportError:
        raise ZhgptError("zhgpt serve needs the [serve] extra (uvicorn is missing): pip install 'zhgpt[serve]'")
    served = load_model(cfg)
    app = create_app(cfg, served)
    sock = bind_socket(cfg.host, cfg.port)
    key = cfg.api_key or os.environ.get("ZHGPT_API_KEY", "")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"zhgpt: warning: serving on {cfg.host} without --api-key: anyone who can reach this port can use "
              "the model", file=sys.stderr)
    c = served.engine.model.cfg
    print(f"serving {served.info.get('source', cfg.model)} as {served.name!r}: {c.arch}, "
          f"{served.info.get('params', 0) / 1e6:.1f}M parameters, context {c.block_size}, "
          f"device {served.engine.device}, chat template: {'model' if served.chat_tokenizer else 'plain'}",
          file=sys.stderr)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"OpenAI base_url: http://{host}:{sock.getsockname()[1]}/v1", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ServeConfig)


def run_cli(args) -> None:
    cfg = from_args(ServeConfig, args)
    shown = dataclasses.replace(cfg, api_key="***" if cfg.api_key else "")   # never print the key
    print(format_config(shown, "serve"), file=sys.stderr)
    main(cfg)
