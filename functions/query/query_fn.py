"""Query function: /api/v1/llm/lora/query and adapter load/unload/status in the worker."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from mangum import Mangum
from starlette.concurrency import run_in_threadpool

from lora_common.api import ReadPrincipal, WritePrincipal, context, json_body
from lora_common.context import Context
from lora_common.problem import create_app
from lora_common.schemas import AdapterStatus, LoadResponse, QueryResponse, UnloadResponse
from lora_common.services import query as service
from lora_common.validation import QueryRequest

router = APIRouter(tags=["inference"])
ADAPTER = "/api/v1/llm/lora/adapters/{adapter_id}"
Ctx = Annotated[Context, Depends(context)]
VERSION_RE = r"^v1\.\d{1,6}$"


@router.post("/api/v1/llm/lora/query", response_model=QueryResponse)
async def query(request: Request, ctx: Ctx, principal: WritePrincipal) -> QueryResponse:
    req = await json_body(request, QueryRequest, ctx.settings.max_body_bytes)
    out = await run_in_threadpool(service.query, ctx, principal.tenant, principal.sub, req)
    return QueryResponse(**out)


@router.post(ADAPTER + "/load", response_model=LoadResponse)
def load_adapter(
    adapter_id: str,
    ctx: Ctx,
    principal: WritePrincipal,
    version: str | None = Query(None, pattern=VERSION_RE),
) -> LoadResponse:
    return LoadResponse(**service.load(ctx, principal.tenant, adapter_id, version))


@router.post(ADAPTER + "/unload", response_model=UnloadResponse)
def unload_adapter(
    adapter_id: str,
    ctx: Ctx,
    principal: WritePrincipal,
    version: str | None = Query(None, pattern=VERSION_RE),
) -> UnloadResponse:
    return UnloadResponse(**service.unload(ctx, principal.tenant, adapter_id, version))


@router.get(ADAPTER + "/status", response_model=AdapterStatus)
def adapter_status(
    adapter_id: str,
    ctx: Ctx,
    principal: ReadPrincipal,
    version: str | None = Query(None, pattern=VERSION_RE),
) -> AdapterStatus:
    return AdapterStatus(**service.status(ctx, principal.tenant, adapter_id, version))


app = create_app([router])
handler = Mangum(app, lifespan="off")
