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
    frequency_penalty / presence_penalty: OpenAI's additive penalties, on the tokens generated so far (as vLLM).
    Extensions: top_k, repetition_penalty (Hugging Face's multiplicative penalty on tokens already present;
    1.1-1.3 stops small Chinese models looping), no_repeat_ngram_size (never repeat an n-gram of the text).
    logprobs, logit_bias, suffix, best_of != n, tools and non-text
    response formats are rejected with 400. Unknown fields are rejected too (a typo such as "max_token" would
    otherwise be ignored silently).
    Omitted sampling fields take zhgpt's defaults, the same as `zhgpt generate` (temperature 0.8, top_k 50,
    top_p 0.95), not OpenAI's (1, off, 1): a small model sampled without truncation produces mostly noise.
    max_tokens defaults to 16 for completions (as OpenAI) and to min(256, the limit) for chat.

Chat template (chat.py)
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

Concurrency (scheduler.py)
    Generation is CPU/GPU-bound and PyTorch already uses every core for one forward, so one worker thread runs
    all generations from a queue; the event loop only parses requests and forwards tokens, so streaming never
    blocks other clients. The worker merges waiting requests that share the prompt and all sampling settings
    and carry no seed into one batched call of the engine (one forward for all their sequences); greedy
    (temperature 0) duplicates are computed once. Seeded requests run alone so that the same seed always gives
    the same text. Requests with different prompts are not batched: the engine decodes one prompt at a time.

Package layout
    config.py     ServeConfig (the flags) and the fixed request limits
    schemas.py    the request bodies (pydantic)
    errors.py     ApiError and the handlers that give every error OpenAI's body
    scheduler.py  Job, Scheduler: the generation worker
    chat.py       messages -> prompt (the model's chat template or the plain one)
    served.py     ServedModel: the engine, its name and facts
    state.py      ServerState (what the handlers share, on app.state.server), the API key dependency
    middleware.py BodyLimit (413)
    routes/       one APIRouter per endpoint group: health, models, completions, chat
    app.py        create_app: the pieces above put together
    server.py     bind_socket, BackgroundServer, main and the CLI entry points
"""
from zhgpt.apps.serve.app import create_app
from zhgpt.apps.serve.chat import PLAIN_CHAT_STOP, PLAIN_ROLES, load_chat_tokenizer, render_chat
from zhgpt.apps.serve.config import (CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, MAX_BODY_BYTES, MAX_CHOICES, MAX_N,
                                     MAX_STOP, MAX_STOP_CHARS, ServeConfig)
from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.middleware import BodyLimit
from zhgpt.apps.serve.scheduler import Job, Scheduler
from zhgpt.apps.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, ContentPart, StreamOptions
from zhgpt.apps.serve.served import ServedModel, default_model_name, load_model
from zhgpt.apps.serve.server import BackgroundServer, bind_socket, configure_parser, main, run_cli

__all__ = [
    "ApiError", "BackgroundServer", "BodyLimit", "CHAT_MAX_TOKENS", "COMPLETION_MAX_TOKENS", "ChatMessage",
    "ChatRequest", "CompletionRequest", "ContentPart", "Job", "MAX_BODY_BYTES", "MAX_CHOICES", "MAX_N", "MAX_STOP",
    "MAX_STOP_CHARS", "PLAIN_CHAT_STOP", "PLAIN_ROLES", "Scheduler", "ServeConfig", "ServedModel", "StreamOptions",
    "bind_socket", "configure_parser", "create_app", "default_model_name", "load_chat_tokenizer", "load_model",
    "main", "render_chat", "run_cli",
]
