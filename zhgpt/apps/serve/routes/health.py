"""GET /health: status, queue depth and the model's facts (open even with --api-key)."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from zhgpt.apps.serve.state import ServerState, server_state

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(server_state)):
    c, served, scheduler = state.engine.model.cfg, state.served, state.scheduler
    return {"status": "ok", "model": served.name,
            "queue": {"waiting": scheduler.waiting, "running": scheduler.running, "max_queue": state.cfg.max_queue,
                      "max_batch": state.cfg.max_batch},
            "stats": dict(scheduler.stats),
            "context": state.block, "max_tokens_limit": state.token_limit, "vocab_size": c.vocab_size,
            "arch": c.arch, "params": served.info.get("params"), "device": str(state.engine.device),
            "chat_template": "model" if served.chat_tokenizer is not None else "plain"}
