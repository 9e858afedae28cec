"""What every request handler shares (ServerState, kept on ``app.state.server``), the FastAPI dependencies
that hand it over and check the API key, and the request -> sampling settings -> queued jobs steps that
both completion endpoints go through."""
from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

from zhgpt.apps.serve.config import MAX_STOP, MAX_STOP_CHARS, ServeConfig
from zhgpt.apps.serve.errors import ApiError
from zhgpt.apps.serve.scheduler import Job, Scheduler
from zhgpt.apps.serve.schemas import SamplingRequest
from zhgpt.apps.serve.served import ServedModel
from zhgpt.model.engine import SamplingParams

try:  # Module level: FastAPI resolves the dependencies' (string) annotations in this module's namespace.
    from starlette.requests import Request
except ImportError:  # pragma: no cover - exercised only without the [serve] extra
    Request = None


@dataclass(eq=False)
class ServerState:
    """One app's model, generation worker and limits (the handlers reach it through ``server_state``)."""
    cfg: ServeConfig
    served: ServedModel
    scheduler: Scheduler
    api_key: str = ""

    @property
    def engine(self):
        return self.served.engine

    @property
    def block(self) -> int:
        return self.engine.block_size

    @property
    def token_limit(self) -> int:
        """The largest max_tokens a request may ask for: --max-tokens-limit capped by the context."""
        return min(self.cfg.max_tokens_limit or self.block, self.block)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served.name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {self.served.name!r}",
                           param="model", code="model_not_found")

    def sampling(self, req: SamplingRequest, max_tokens: int | None, default_max: int,
                 extra_stop=()) -> SamplingParams:
        """The request's sampling fields, checked against the server's limits; omitted ones take zhgpt's
        defaults (SamplingParams), not OpenAI's."""
        if req.logit_bias:
            raise ApiError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
        mt = default_max if max_tokens is None else max_tokens
        if mt > self.token_limit:
            raise ApiError(400, f"max_tokens={mt} is over this server's limit of {self.token_limit} tokens "
                                f"(context {self.block} tokens)", param="max_tokens", code="invalid_value")
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
            frequency_penalty=req.frequency_penalty or 0.0, presence_penalty=req.presence_penalty or 0.0,
            no_repeat_ngram_size=req.no_repeat_ngram_size or 0, seed=-1 if req.seed is None else req.seed, stop=stop + list(extra_stop))

    def fit(self, ids: list[int], p: SamplingParams, warnings: list[str]) -> list[int]:
        """Truncate a prompt from the left so that max_tokens fit the context; say so once in ``warnings``."""
        fitted, truncated = self.engine.fit_prompt(ids, p.max_new_tokens)
        if truncated:
            msg = (f"prompt truncated to the last {len(fitted)} tokens (it had {len(ids)}; the context is "
                   f"{self.block} tokens and max_tokens={p.max_new_tokens} needs room)")
            if msg not in warnings:
                warnings.append(msg)
        return fitted

    def submit(self, specs: list[tuple[list[int], SamplingParams]], stream: bool):
        """Queue one job per prompt; -> (asyncio queue of events, jobs). Admission is all-or-nothing.
        Call from the event loop: the worker thread hands its events back to this loop."""
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
        self.scheduler.submit(jobs)
        return events, jobs


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def check_key(request: Request) -> None:
    """The /v1/* dependency: with an API key set, require 'Authorization: Bearer KEY'."""
    api_key = request.app.state.server.api_key
    if not api_key:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "invalid API key: send 'Authorization: Bearer KEY' with the key the server "
                            "was started with", code="invalid_api_key")
