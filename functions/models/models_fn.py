"""Models function: /api/v1/llm/models (register, get, list, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from mangum import Mangum
from starlette.concurrency import run_in_threadpool

from lora_common.api import AdminPrincipal, ReadPrincipal, context, json_body
from lora_common.context import Context
from lora_common.problem import create_app
from lora_common.schemas import ModelDetail, ModelList, ModelRegistered, ModelSummary
from lora_common.services import models as service
from lora_common.validation import RegisterModelRequest

router = APIRouter(tags=["models"])
BASE = "/api/v1/llm/models"
Ctx = Annotated[Context, Depends(context)]


@router.post(BASE, status_code=201, response_model=ModelRegistered)
async def register_model(request: Request, ctx: Ctx, principal: AdminPrincipal) -> ModelRegistered:
    req = await json_body(request, RegisterModelRequest, ctx.settings.max_body_bytes)
    item = await run_in_threadpool(service.register_model, ctx, req)
    return ModelRegistered(
        model_id=item["model_id"],
        status="registered",
        timestamp=item["created_at"],
        file_status=item["file_status"],
    )


@router.get(BASE, response_model=ModelList)
def list_models(
    ctx: Ctx,
    principal: ReadPrincipal,
    architecture: str | None = Query(None, max_length=64),
    limit: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0),
) -> ModelList:
    items, total = service.list_models(ctx, architecture, limit, offset)
    return ModelList(
        models=[ModelSummary.model_validate(m) for m in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(BASE + "/{model_id}", response_model=ModelDetail)
def get_model(model_id: str, ctx: Ctx, principal: ReadPrincipal) -> ModelDetail:
    return ModelDetail.model_validate(service.get_model(ctx, model_id))


@router.delete(BASE + "/{model_id}", status_code=204)
def delete_model(
    model_id: str,
    ctx: Ctx,
    principal: AdminPrincipal,
    cascade: bool = Query(False),
) -> Response:
    """204. 409 while adapters use the model, unless ``cascade=true`` (those adapters'
    records and files are deleted too)."""
    service.delete_model(ctx, model_id, cascade=cascade)
    return Response(status_code=204)


app = create_app([router])
handler = Mangum(app, lifespan="off")
