"""GET /v1/models and /v1/models/{id}: the one model this server serves."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from zhgpt.apps.serve.state import ServerState, server_state

router = APIRouter()


def model_card(state: ServerState) -> dict:
    served = state.served
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "zhgpt"}


@router.get("/v1/models")
async def models(state: ServerState = Depends(server_state)):
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models/{model_id:path}")
async def model_info(model_id: str, state: ServerState = Depends(server_state)):
    state.check_model(model_id)
    return model_card(state)
