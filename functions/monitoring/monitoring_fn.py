"""Monitoring function: /api/v1/llm/lora/stats and /api/v1/llm/lora/health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from mangum import Mangum

from lora_common.api import ReadPrincipal, context
from lora_common.context import Context
from lora_common.problem import create_app
from lora_common.schemas import Health, Stats
from lora_common.services import monitoring as service

router = APIRouter(tags=["monitoring"])
Ctx = Annotated[Context, Depends(context)]


@router.get("/api/v1/llm/lora/stats", response_model=Stats)
def stats(ctx: Ctx, principal: ReadPrincipal) -> Stats:
    return Stats(**service.stats(ctx, principal.tenant))


@router.get("/api/v1/llm/lora/health", response_model=Health, responses={503: {"model": Health}})
def health(ctx: Ctx, principal: ReadPrincipal) -> JSONResponse:
    """200 when storage, manager (worker + model) and training (queue) all answer; 503 with
    the same body when any check fails."""
    healthy, body = service.health(ctx)
    return JSONResponse(
        Health(**body).model_dump(exclude_none=True), status_code=200 if healthy else 503
    )


app = create_app([router])
handler = Mangum(app, lifespan="off")
