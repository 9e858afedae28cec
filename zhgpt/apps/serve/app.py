"""``create_app``: the FastAPI app of `zhgpt serve`, assembled from the routers (zhgpt.apps.serve.routes),
the OpenAI-shaped error handlers, the body size limit and the API key check on /v1/*."""
from __future__ import annotations

from contextlib import asynccontextmanager

from zhgpt.apps.serve.config import MAX_BODY_BYTES, ServeConfig
from zhgpt.apps.serve.errors import add_error_handlers
from zhgpt.apps.serve.middleware import BodyLimit
from zhgpt.apps.serve.scheduler import Scheduler
from zhgpt.apps.serve.served import ServedModel, load_model, serve_engine
from zhgpt.apps.serve.state import ServerState, check_key
from zhgpt.errors import ZhgptError
from zhgpt.model.engine import Engine


def new_app(state: ServerState):
    """An empty FastAPI app whose shutdown stops the generation worker (no /docs: an API, not a website)."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(state.scheduler.close)

    app = FastAPI(title="zhgpt", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.state.scheduler, app.state.served = state.scheduler, state.served
    return app


def add_routes(app, routes) -> None:
    """``routes.OPEN`` as they are; ``routes.KEYED`` (/v1/*) behind the API key check."""
    from fastapi import Depends
    for router in routes.OPEN:
        app.include_router(router)
    for router in routes.KEYED:
        app.include_router(router, dependencies=[Depends(check_key)])


def create_app(cfg: ServeConfig | None = None, served: ServedModel | Engine | None = None):
    """The FastAPI app. ``served`` (a ServedModel or a bare Engine) skips loading ``cfg.model``."""
    try:
        from zhgpt.apps.serve import routes   # the routers import FastAPI: fail here, before loading the model
    except ImportError as e:
        raise ZhgptError(f"zhgpt serve needs the [serve] extra ({e.name} is missing): pip install 'zhgpt[serve]'")
    cfg = cfg or ServeConfig()
    if served is None:
        served = load_model(cfg)
    elif isinstance(served, Engine):
        served = serve_engine(cfg, served)
    state = ServerState(cfg, served, Scheduler(served.engine, cfg.max_queue, cfg.max_batch),
                        cfg.effective_api_key())
    app = new_app(state)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    add_routes(app, routes)
    return app
