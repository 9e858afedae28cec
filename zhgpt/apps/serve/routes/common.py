"""What the two completion endpoints share once their jobs are queued: waiting for the answers, the usage
block, and the server-sent-events stream."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse

from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.scheduler import Job


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


def stream_response(events: asyncio.Queue, jobs: list[Job], header: dict, chunk: Callable,
                    first: Callable | None, include_usage: bool, warnings: list[str]) -> StreamingResponse:
    """SSE: first chunk per choice, deltas, a finish chunk per choice, optional usage chunk, [DONE].
    ``chunk(index, text, finish_reason)`` and ``first(index)`` build one choice of the endpoint's shape."""
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
