"""LoRA adapters: create/update (queue a training job), read, list, delete; training jobs."""

from __future__ import annotations

import logging
from typing import Any

from lora_common import keys
from lora_common.context import Context
from lora_common.errors import BadRequest, Conflict, DomainError, NotFound, ServiceUnavailable
from lora_common.services import paginate
from lora_common.util import iso, new_id, version_name, version_number
from lora_common.validation import (
    TRAINABLE_ARCHITECTURES,
    CreateAdapterRequest,
    UpdateAdapterRequest,
)

log = logging.getLogger("lora.adapters")

FIRST_VERSION = "v1.0"
SERVABLE = ("ready", "stored")


def _not_found(adapter_id: str) -> NotFound:
    return NotFound("Adapter not found", f"Unknown adapter_id: {adapter_id}")


def load_adapter(ctx: Context, tenant: str, adapter_id: str) -> dict[str, Any]:
    adapter = ctx.repo.get_adapter(tenant, adapter_id)
    if adapter is None:
        raise _not_found(adapter_id)
    return adapter


def _trainable_model(ctx: Context, model_id: str) -> dict[str, Any]:
    model = ctx.repo.get_model(model_id)
    if model is None:
        raise NotFound("Model not found", f"Unknown model_id: {model_id}")
    if model.get("file_status") == "invalid":
        reason = (model.get("file_info") or {}).get("error", "the file failed verification")
        raise Conflict("Model file invalid", f"Model {model_id} cannot be used: {reason}")
    arch = (model.get("architecture") or "").lower()
    if arch not in TRAINABLE_ARCHITECTURES:
        raise BadRequest(
            "Architecture not trainable",
            f"Model {model_id} has architecture {arch!r}; trainable architectures are "
            + ", ".join(sorted(TRAINABLE_ARCHITECTURES)),
        )
    return model


def _dataset(ctx: Context, tenant: str, dataset_id: str) -> dict[str, Any]:
    dataset = ctx.repo.get_dataset(tenant, dataset_id)
    if dataset is None:
        raise NotFound("Dataset not found", f"Unknown dataset_id: {dataset_id}")
    return dataset


def _send_or_fail(ctx: Context, message: dict[str, Any], undo: Any) -> None:
    try:
        ctx.queue.send_job(message)
    except Exception as exc:
        log.warning("training job send failed, rolling back: %s", exc)
        undo()
        if isinstance(exc, DomainError) and isinstance(exc, ServiceUnavailable):
            raise
        raise ServiceUnavailable(
            "Training queue unavailable",
            "The training job could not be queued; nothing was created",
        ) from None


def create_adapter(ctx: Context, tenant: str, req: CreateAdapterRequest) -> dict[str, Any]:
    """Adapter + version v1.0 + queued job in one transaction, then the SQS message. If the
    message cannot be sent the three items are deleted and ServiceUnavailable is raised."""
    model = _trainable_model(ctx, req.base_model)
    _dataset(ctx, tenant, req.training_data.dataset_id)
    now = ctx.clock()
    ts = iso(now)
    job_id = new_id("job")
    training = req.training.model_dump()
    adapter = {
        "adapter_id": req.adapter_id,
        "tenant": tenant,
        "base_model": req.base_model,
        "architecture": model.get("architecture"),
        "task": req.task,
        "description": req.description,
        "rank": req.rank,
        "alpha": req.alpha,
        "training": training,
        "latest_version": FIRST_VERSION,
        "serving_version": None,
        "status": "training",
        "created_at": ts,
        "updated_at": ts,
    }
    version, job = _new_version_and_job(
        adapter, tenant, FIRST_VERSION, None, req.training_data, job_id, ts
    )
    ctx.repo.create_adapter(adapter, version, job)
    _send_or_fail(
        ctx,
        _job_message(job),
        lambda: ctx.repo.undo_create_adapter(tenant, req.adapter_id, FIRST_VERSION, job_id),
    )
    return {
        "adapter_id": req.adapter_id,
        "version": FIRST_VERSION,
        "status": "training",
        "job_id": job_id,
    }


def _new_version_and_job(
    adapter: dict[str, Any],
    tenant: str,
    name: str,
    parent: str | None,
    data: Any,
    job_id: str,
    ts: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version item and its training job item (the job carries everything the worker
    needs, so a queue message only names it)."""
    version = {
        "version": name,
        "status": "training",
        "job_id": job_id,
        "dataset_ids": [data.dataset_id],
        "samples": data.samples,
        "parent_version": parent,
        "metrics": {},
        "created_at": ts,
    }
    job = {
        "job_id": job_id,
        "tenant": tenant,
        "adapter_id": adapter["adapter_id"],
        "version": name,
        "base_model": adapter["base_model"],
        "parent_version": parent,
        "dataset_ids": [data.dataset_id],
        "samples": data.samples,
        "rank": adapter["rank"],
        "alpha": adapter["alpha"],
        "training": adapter["training"],
        "state": "queued",
        "step": 0,
        "total_steps": None,
        "loss": None,
        "error": None,
        "created_at": ts,
    }
    return version, job


def _job_message(job: dict[str, Any]) -> dict[str, str]:
    """The SQS message for a job (docs/ARCHITECTURE.md)."""
    return {k: job[k] for k in ("job_id", "tenant", "adapter_id", "version")}


def update_adapter(
    ctx: Context, tenant: str, adapter_id: str, req: UpdateAdapterRequest
) -> dict[str, Any]:
    """Continue training from the serving version on more data: a new version v1.<n+1>.
    409 when a version is already training or when no version is ready to continue from."""
    adapter = load_adapter(ctx, tenant, adapter_id)
    if adapter.get("status") == "training":
        raise Conflict(
            "Adapter is training",
            f"Adapter {adapter_id} already has version {adapter['latest_version']} training",
        )
    parent = adapter.get("serving_version")
    if not parent:
        raise Conflict(
            "Adapter not ready",
            f"Adapter {adapter_id} has no ready version to continue training from",
        )
    _trainable_model(ctx, adapter["base_model"])
    data = req.additional_training_data
    _dataset(ctx, tenant, data.dataset_id)
    now = ctx.clock()
    ts = iso(now)
    new_version = version_name(version_number(adapter["latest_version"]) + 1)
    job_id = new_id("job")
    version, job = _new_version_and_job(adapter, tenant, new_version, parent, data, job_id, ts)
    ctx.repo.add_version(adapter, version, job, now)
    _send_or_fail(
        ctx,
        _job_message(job),
        lambda: ctx.repo.undo_add_version(adapter, new_version, job_id),
    )
    return {
        "adapter_id": adapter_id,
        "version": new_version,
        "status": "training",
        "job_id": job_id,
    }


def _public_version(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": v["version"],
        "status": v["status"],
        "metrics": v.get("metrics") or {},
        "parent_version": v.get("parent_version"),
        "dataset_ids": v.get("dataset_ids") or [],
        "samples": v.get("samples"),
        "job_id": v.get("job_id"),
        "error": v.get("error"),
        "gguf_sha256": v.get("gguf_sha256"),
        "gguf_size": v.get("gguf_size"),
        "created_at": v.get("created_at"),
        "ready_at": v.get("ready_at"),
    }


def describe_adapter(ctx: Context, tenant: str, adapter_id: str) -> dict[str, Any]:
    adapter = load_adapter(ctx, tenant, adapter_id)
    versions = ctx.repo.list_versions(tenant, adapter_id)
    by_name = {v["version"]: v for v in versions}
    serving = adapter.get("serving_version")
    latest = by_name.get(adapter["latest_version"], {})
    metrics = (by_name.get(serving) or latest).get("metrics") or {}
    return {
        "adapter_id": adapter_id,
        "base_model": adapter["base_model"],
        "version": adapter["latest_version"],
        "status": adapter["status"],
        "metrics": metrics,
        "created_at": adapter["created_at"],
        "updated_at": adapter.get("updated_at"),
        "serving_version": serving,
        "task": adapter.get("task"),
        "description": adapter.get("description"),
        "rank": adapter["rank"],
        "alpha": adapter["alpha"],
        "training": adapter.get("training") or {},
        "job_id": latest.get("job_id"),
        "error": latest.get("error"),
        "versions": [_public_version(v) for v in versions],
    }


def list_adapters(
    ctx: Context,
    tenant: str,
    base_model: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the tenant's adapters (filtered), each with ``is_loaded`` from the
    worker when one answers, and the filtered total."""
    items = sorted(ctx.repo.list_adapters(tenant), key=lambda a: a["adapter_id"])
    if base_model:
        items = [a for a in items if a["base_model"] == base_model]
    if status:
        items = [a for a in items if a["status"] == status]
    page, total = paginate(items, limit, offset)
    loaded = is_loaded(ctx, tenant, page)
    return [
        {
            "adapter_id": a["adapter_id"],
            "base_model": a["base_model"],
            "status": a["status"],
            "version": a["latest_version"],
            "serving_version": a.get("serving_version"),
            "is_loaded": loaded[a["adapter_id"]],
        }
        for a in page
    ], total


def is_loaded(ctx: Context, tenant: str, adapters: list[dict[str, Any]]) -> dict[str, bool]:
    """adapter_id -> loaded in the worker; False when no worker answers (asked once per
    adapter on the page, and not at all after the first failure)."""
    out = {a["adapter_id"]: False for a in adapters}
    for a in adapters:
        serving = a.get("serving_version")
        if not serving:
            continue
        version = ctx.repo.get_version(tenant, a["adapter_id"], serving)
        if not version:
            continue
        from lora_common.worker_client import adapter_ref

        try:
            out[a["adapter_id"]] = bool(
                ctx.worker.status(adapter_ref(tenant, a["adapter_id"], version)).get("is_loaded")
            )
        except DomainError:
            break
    return out


def delete_adapter(ctx: Context, tenant: str, adapter_id: str, version: str | None) -> None:
    """Delete every version (``version`` None) or one version, with their S3 files.
    Deleting the serving version makes the newest remaining ready/stored version serve;
    deleting the last version deletes the adapter. A version still training is a 409."""
    adapter = load_adapter(ctx, tenant, adapter_id)
    if version is None:
        ctx.repo.delete_adapter(tenant, adapter_id)
        ctx.blobs.delete_prefix(keys.adapter_prefix(tenant, adapter_id))
        return
    versions = ctx.repo.list_versions(tenant, adapter_id)
    target = next((v for v in versions if v["version"] == version), None)
    if target is None:
        raise NotFound("Version not found", f"Adapter {adapter_id} has no version {version}")
    if target["status"] == "training":
        raise Conflict("Version is training", f"Version {version} of {adapter_id} is training")
    remaining = [v for v in versions if v["version"] != version]
    if not remaining:
        ctx.repo.delete_adapter(tenant, adapter_id)
        ctx.blobs.delete_prefix(keys.adapter_prefix(tenant, adapter_id))
        return
    serving = adapter.get("serving_version")
    promote = None
    if serving == version:
        candidates = [v for v in remaining if v["status"] in SERVABLE]
        serving = candidates[-1]["version"] if candidates else None
        promote = serving
    latest = remaining[-1]
    updates = {
        "latest_version": latest["version"],
        "status": "ready" if latest["version"] == promote else latest["status"],
        "serving_version": serving,
        "updated_at": iso(ctx.clock()),
    }
    ctx.repo.delete_version(adapter, version, updates, promote)
    ctx.blobs.delete_prefix(keys.version_prefix(tenant, adapter_id, version))


def resolve_servable(
    ctx: Context, tenant: str, adapter_id: str, version: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter, version item) that a query/load should use. 404 unknown adapter/version,
    409 when it has no ready version (still training, or failed)."""
    adapter = load_adapter(ctx, tenant, adapter_id)
    name = version or adapter.get("serving_version")
    if not name:
        raise Conflict(
            "Adapter not ready",
            f"Adapter {adapter_id} has no ready version (status: {adapter.get('status')})",
        )
    item = ctx.repo.get_version(tenant, adapter_id, name)
    if item is None:
        raise NotFound("Version not found", f"Adapter {adapter_id} has no version {name}")
    if item["status"] not in SERVABLE:
        raise Conflict("Adapter not ready", f"Version {name} of {adapter_id} is {item['status']}")
    return adapter, item


def get_job(ctx: Context, tenant: str, job_id: str) -> dict[str, Any]:
    job = ctx.repo.get_job(job_id)
    if job is None or job.get("tenant") != tenant:
        raise NotFound("Job not found", f"Unknown job_id: {job_id}")
    total = job.get("total_steps")
    step = job.get("step") or 0
    return {
        "job_id": job_id,
        "adapter_id": job["adapter_id"],
        "version": job["version"],
        "base_model": job.get("base_model"),
        "state": job["state"],
        "step": step,
        "total_steps": total,
        "progress": round(step / total, 4) if total else 0.0,
        "loss": job.get("loss"),
        "error": job.get("error"),
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "heartbeat_at": job.get("heartbeat_at"),
    }
