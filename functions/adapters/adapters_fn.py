"""Adapters function: /api/v1/llm/lora/adapters (CRUD), /api/v1/llm/lora/jobs/{job_id}
(training progress) and /api/v1/llm/datasets (training data)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from mangum import Mangum
from starlette.concurrency import run_in_threadpool

from lora_common.api import (
    ReadPrincipal,
    WritePrincipal,
    context,
    json_body,
    media_type,
    parse_json_model,
    read_body,
)
from lora_common.context import Context
from lora_common.errors import UnsupportedMediaType
from lora_common.problem import create_app
from lora_common.schemas import (
    AdapterDetail,
    AdapterList,
    AdapterSummary,
    DatasetDetail,
    DatasetList,
    JobDetail,
    TrainingAccepted,
)
from lora_common.services import adapters as service
from lora_common.services import datasets as data_service
from lora_common.validation import CreateAdapterRequest, DatasetJsonUpload, UpdateAdapterRequest

router = APIRouter(tags=["adapters"])
BASE = "/api/v1/llm/lora/adapters"
DATASETS = "/api/v1/llm/datasets"
Ctx = Annotated[Context, Depends(context)]
VERSION_RE = r"^v1\.\d{1,6}$"
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain")


@router.post(BASE, status_code=201, response_model=TrainingAccepted)
async def create_adapter(request: Request, ctx: Ctx, principal: WritePrincipal) -> TrainingAccepted:
    req = await json_body(request, CreateAdapterRequest, ctx.settings.max_body_bytes)
    out = await run_in_threadpool(service.create_adapter, ctx, principal.tenant, req)
    return TrainingAccepted(**out)


@router.get(BASE, response_model=AdapterList)
def list_adapters(
    ctx: Ctx,
    principal: ReadPrincipal,
    base_model: str | None = Query(None, max_length=128),
    status: str | None = Query(None, pattern="^(training|ready|stored|failed)$"),
    limit: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0),
) -> AdapterList:
    items, total = service.list_adapters(ctx, principal.tenant, base_model, status, limit, offset)
    return AdapterList(
        adapters=[AdapterSummary.model_validate(a) for a in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(BASE + "/{adapter_id}", response_model=AdapterDetail)
def get_adapter(adapter_id: str, ctx: Ctx, principal: ReadPrincipal) -> AdapterDetail:
    return AdapterDetail.model_validate(service.describe_adapter(ctx, principal.tenant, adapter_id))


@router.put(BASE + "/{adapter_id}", response_model=TrainingAccepted)
async def update_adapter(
    adapter_id: str, request: Request, ctx: Ctx, principal: WritePrincipal
) -> TrainingAccepted:
    req = await json_body(request, UpdateAdapterRequest, ctx.settings.max_body_bytes)
    out = await run_in_threadpool(service.update_adapter, ctx, principal.tenant, adapter_id, req)
    return TrainingAccepted(**out)


@router.delete(BASE + "/{adapter_id}", status_code=204)
def delete_adapter(
    adapter_id: str,
    ctx: Ctx,
    principal: WritePrincipal,
    version: str | None = Query(None, pattern=VERSION_RE),
) -> Response:
    """204. Without ``version`` every version and file goes; with it, only that version."""
    service.delete_adapter(ctx, principal.tenant, adapter_id, version)
    return Response(status_code=204)


@router.get("/api/v1/llm/lora/jobs/{job_id}", response_model=JobDetail)
def get_job(job_id: str, ctx: Ctx, principal: ReadPrincipal) -> JobDetail:
    return JobDetail.model_validate(service.get_job(ctx, principal.tenant, job_id))


@router.post(DATASETS, status_code=201, response_model=DatasetDetail)
async def upload_dataset(
    request: Request,
    ctx: Ctx,
    principal: WritePrincipal,
    dataset_id: str | None = Query(None, max_length=128),
    description: str | None = Query(None, max_length=2000),
) -> DatasetDetail:
    """JSONL body (application/x-ndjson, application/jsonl, text/plain) with ``dataset_id``
    in the query, or application/json ``{"dataset_id", "description", "records": [...]}``."""
    mt = media_type(request)
    limit = ctx.settings.max_body_bytes
    if mt == "application/json":
        upload = parse_json_model(await read_body(request, limit), DatasetJsonUpload)
        item = await run_in_threadpool(
            data_service.create_from_records,
            ctx,
            principal.tenant,
            upload.dataset_id,
            upload.description,
            upload.records,
        )
    elif mt in JSONL_TYPES:
        body = await read_body(request, limit)
        item = await run_in_threadpool(
            data_service.create_from_jsonl, ctx, principal.tenant, dataset_id, description, body
        )
    else:
        raise UnsupportedMediaType(
            "Unsupported media type",
            f"Content-Type {mt or '(none)'} is not accepted; send application/x-ndjson, "
            "application/jsonl, text/plain or application/json",
        )
    return DatasetDetail.model_validate(item)


@router.get(DATASETS, response_model=DatasetList)
def list_datasets(
    ctx: Ctx,
    principal: ReadPrincipal,
    limit: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0),
) -> DatasetList:
    items, total = data_service.list_datasets(ctx, principal.tenant, limit, offset)
    return DatasetList(
        datasets=[DatasetDetail.model_validate(d) for d in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(DATASETS + "/{dataset_id}", response_model=DatasetDetail)
def get_dataset(
    ctx: Ctx, principal: ReadPrincipal, dataset_id: str = Path(max_length=128)
) -> DatasetDetail:
    return DatasetDetail.model_validate(data_service.get_dataset(ctx, principal.tenant, dataset_id))


@router.delete(DATASETS + "/{dataset_id}", status_code=204)
def delete_dataset(
    ctx: Ctx, principal: WritePrincipal, dataset_id: str = Path(max_length=128)
) -> Response:
    data_service.delete_dataset(ctx, principal.tenant, dataset_id)
    return Response(status_code=204)


app = create_app([router])
handler = Mangum(app, lifespan="off")
