"""POST /v1/completions: one or more prompts (text or token ids), n choices each, streamed or not."""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from zhgpt.apps.serve.config import COMPLETION_MAX_TOKENS, MAX_CHOICES
from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.routes.common import stream_response, usage, wait_all
from zhgpt.apps.serve.schemas import CompletionRequest
from zhgpt.apps.serve.state import ServerState, server_state

router = APIRouter()


def reject_unsupported(req: CompletionRequest) -> None:
    for name, bad in (("suffix", bool(req.suffix)), ("logprobs", req.logprobs not in (None, 0)),
                      ("best_of", req.best_of not in (None, req.n))):
        if bad:
            raise ApiError(400, f"{name} is not supported by zhgpt serve", param=name, code="unsupported_parameter")


def prompt_list(prompt) -> list[str | list[int]]:
    """OpenAI's four prompt shapes -> a list of prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt: empty list", param="prompt", code="invalid_value")
    if all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    return list(prompt)


def encode_prompt(engine, x: str | list[int], i: int) -> list[int]:
    if isinstance(x, str):
        return engine.encode(x)
    vocab = engine.model.cfg.vocab_size
    bad = [t for t in x if not 0 <= t < vocab]
    if bad:
        raise ApiError(400, f"prompt[{i}]: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                       param="prompt", code="invalid_value")
    return x


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    state.check_model(req.model)
    reject_unsupported(req)
    prompts = prompt_list(req.prompt)
    if len(prompts) * req.n > MAX_CHOICES:
        raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is over {MAX_CHOICES} choices per request",
                       param="n", code="invalid_value")
    p = state.sampling(req, req.max_tokens, COMPLETION_MAX_TOKENS)
    warnings: list[str] = []

    def prepare():   # tokenising a long prompt takes milliseconds: keep it off the event loop
        return [(state.fit(encode_prompt(state.engine, x, i), p, warnings), p) for i, x in enumerate(prompts)]

    specs = await run_in_threadpool(prepare)
    echo = [(x if isinstance(x, str) else state.engine.decode(x)) if req.echo else "" for x in prompts]
    events, jobs = state.submit(specs, req.stream)
    header = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
              "model": state.served.name}
    if req.stream:
        def chunk(i, text, reason):
            return {"text": text or "", "index": i, "logprobs": None, "finish_reason": reason}
        first = (lambda i: chunk(i, echo[i // req.n], None)) if req.echo else None
        return stream_response(events, jobs, header, chunk, first, req.include_usage(), warnings)
    await wait_all(request, events, jobs)
    choices = [{"text": echo[k] + job.texts[c], "index": job.offset + c, "logprobs": None,
                "finish_reason": job.reasons[c]} for k, job in enumerate(jobs) for c in range(job.n)]
    body = {**header, "choices": choices, "usage": usage(jobs)}
    if warnings:
        body["warnings"] = warnings
    return body
