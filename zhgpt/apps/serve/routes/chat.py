"""POST /v1/chat/completions: a conversation rendered into one prompt (see zhgpt.apps.serve.chat), n choices."""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from zhgpt.apps.serve.chat import render_chat
from zhgpt.apps.serve.config import CHAT_MAX_TOKENS
from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.routes.common import stream_response, usage, wait_all
from zhgpt.apps.serve.schemas import ChatRequest
from zhgpt.apps.serve.state import ServerState, server_state

router = APIRouter()


def reject_unsupported(req: ChatRequest) -> None:
    for name, bad in (("logprobs", bool(req.logprobs)), ("tools", bool(req.tools)),
                      ("tool_choice", req.tool_choice not in (None, "none")),
                      ("response_format", (req.response_format or {}).get("type", "text") != "text")):
        if bad:
            raise ApiError(400, f"{name} is not supported by zhgpt serve", param=name, code="unsupported_parameter")


def chunk(i, text, reason) -> dict:
    delta = {} if text is None else {"content": text}
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}


def first_chunk(i) -> dict:
    return {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request, state: ServerState = Depends(server_state)):
    state.check_model(req.model)
    reject_unsupported(req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    warnings: list[str] = []

    def prepare():   # rendering and tokenising off the event loop
        prompt, extra_stop = render_chat(req.messages, state.served.chat_tokenizer)
        p = state.sampling(req, max_tokens, min(CHAT_MAX_TOKENS, state.token_limit), extra_stop)
        return [(state.fit(state.engine.encode(prompt), p, warnings), p)]

    specs = await run_in_threadpool(prepare)
    events, jobs = state.submit(specs, req.stream)
    header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.served.name,
              "system_fingerprint": None}
    if req.stream:
        header["object"] = "chat.completion.chunk"
        return stream_response(events, jobs, header, chunk, first_chunk, req.include_usage(), warnings)
    await wait_all(request, events, jobs)
    job = jobs[0]
    choices = [{"index": c, "message": {"role": "assistant", "content": job.texts[c]}, "logprobs": None,
                "finish_reason": job.reasons[c]} for c in range(job.n)]
    body = {**header, "object": "chat.completion", "choices": choices, "usage": usage(jobs)}
    if warnings:
        body["warnings"] = warnings
    return body
